package lease

import (
	"strings"
	"testing"
)

func TestParseSubnetKey(t *testing.T) {
	for in, want := range map[string]string{
		"10.5.42.0-24":           "10.5.42.0/24",
		"10.5.42.0-24&fd00::-64": "10.5.42.0/24",
		"10.5.42.0/24":           "",
		"10.5.42.1-24":           "",
		"10.5.42.0-33":           "",
		"fd00::-64":              "",
		"10.5.42.0-x":            "",
	} {
		p, err := ParseSubnetKey(in)
		if (want == "") != (err != nil) || (err == nil && p.String() != want) {
			t.Errorf("%q: %v, %v; want %q", in, p, err, want)
		}
		if err == nil && SubnetKey(p) != strings.Split(in, "&")[0] {
			t.Errorf("%q: SubnetKey gives %q", in, SubnetKey(p))
		}
	}
}
