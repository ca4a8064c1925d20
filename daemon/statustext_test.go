package daemon

import (
	"encoding/json"
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

// On an IPv6-only network the lease and the peers are named by their IPv6
// subnets and public IPv6 addresses; the JSON has no IPv4 fields.
func TestPrintStatusIPv6Only(t *testing.T) {
	now := time.Now()
	own6, peer6 := netip.MustParsePrefix("fd00:10:5:12::/64"), netip.MustParsePrefix("fd00:10:5:3::/64")
	ip6, pip6 := netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("2001:db8::2")
	r := StatusReport{Store: "etcd", Backend: "vxlan", Why: "test", IPv6Subnet: &own6, PublicIPv6: &ip6, MTU: 1430,
		Peers:    []PeerStatus{{IPv6Subnet: &peer6, PublicIPv6: &pip6, Backend: "vxlan", FirstSeen: now}},
		Refused:  map[string]string{"fd00:10:5:40::/60": "subnet-length: fd00:10:5:40::/60 is not a /64"},
		Refusals: map[string]uint64{"subnet-length": 1},
	}
	var out strings.Builder
	r.WriteText(&out, now)
	for _, want := range []string{"fd00:10:5:12::/64, public IPv6 2001:db8::1, MTU 1430", "fd00:10:5:3::/64  2001:db8::2  vxlan",
		"fd00:10:5:40::/60  subnet-length"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("weft status lacks %q:\n%s", want, out.String())
		}
	}
	if strings.Contains(out.String(), "invalid") || strings.Contains(out.String(), "lease (IPv6)") {
		t.Errorf("weft status shows an IPv4 part:\n%s", out.String())
	}
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	if s := string(b); strings.Contains(s, `"subnet"`) || strings.Contains(s, `"public_ip"`) || !strings.Contains(s, `"ipv6_subnet":"fd00:10:5:12::/64"`) {
		t.Errorf("status JSON: %s", s)
	}
}
