package daemon

import (
	"net/netip"
	"strings"
	"testing"
	"time"
)

// weft status prints the store, the peers and what admission refused.
func TestPrintStatus(t *testing.T) {
	now := time.Now()
	r := StatusReport{Store: "etcd", Backend: "vxlan", Why: "test", Subnet: netip.MustParsePrefix("10.5.1.0/24"),
		Peers:    []PeerStatus{{Subnet: netip.MustParsePrefix("10.5.2.0/24"), PublicIP: netip.MustParseAddr("192.0.2.2"), Backend: "vxlan", FirstSeen: now}},
		Refused:  map[string]string{"0.0.0.0/0": "subnet-length: 0.0.0.0/0 is not a /24"},
		Refusals: map[string]uint64{"subnet-length": 1},
		Moves:    2, LastMove: &Move{At: now.Add(-time.Minute), From: "host-gw", To: "vxlan", Why: "auto: peer behind a router"},
	}
	var out strings.Builder
	r.WriteText(&out, now)
	for _, want := range []string{"store:", "etcd", "10.5.2.0/24  192.0.2.2  vxlan", "subnet-length 1", "0.0.0.0/0  subnet-length",
		"2; last 1m0s ago: host-gw -> vxlan (auto: peer behind a router)"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("weft status lacks %q:\n%s", want, out.String())
		}
	}
}
