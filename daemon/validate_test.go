package daemon

import (
	"strings"
	"testing"

	"github.com/weft-net/weft/lease"
)

// TestValidateBackend: the Backend fields each backend type reads are
// checked by that backend's own parser; auto by both that it may become.
func TestValidateBackend(t *testing.T) {
	for conf, want := range map[string]string{
		`{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","VNI":99999999}}`: "Backend.VNI",
		`{"Network":"10.5.0.0/16","Backend":{"Type":"udp","Port":99999}}`:     "Backend.Port",
		`{"Network":"10.5.0.0/16","Backend":{"Type":"auto","VNI":99999999}}`:  "Backend.VNI",
		`{"Network":"10.5.0.0/16","Backend":{"Type":"auto","Port":99999}}`:    "Backend.Port",
		`{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","VNI":7}}`:        "",
		`{"Network":"10.5.0.0/16","Backend":{"Type":"udp"}}`:                  "",
		// host-gw reads no Backend field, as in flanneld.
		`{"Network":"10.5.0.0/16","Backend":{"Type":"host-gw","VNI":99999999}}`: "",
	} {
		cfg, err := lease.ParseConfig([]byte(conf))
		if err != nil {
			t.Fatalf("%s: %v", conf, err)
		}
		err = ValidateBackend(cfg)
		if want == "" && err != nil || want != "" && (err == nil || !strings.Contains(err.Error(), want)) {
			t.Errorf("%s: %v; want %q", conf, err, want)
		}
	}
}
