package auto

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/weft-net/weft/lease"
)

// TestChoose is auto's rule without a kernel.
func TestChoose(t *testing.T) {
	seg := []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}
	peer := func(ip, typ string) lease.Lease {
		return lease.Lease{Subnet: netip.MustParsePrefix("10.5.9.0/24"), Attrs: lease.Attrs{PublicIP: netip.MustParseAddr(ip), BackendType: typ}}
	}
	ok := func() error { return nil }
	no := func() error { return errors.New("no vxlan") }
	for _, c := range []struct {
		name    string
		peers   []lease.Lease
		unknown string
		probe   func() error
		want    string
	}{
		{"no peers", nil, "", no, "host-gw"},
		{"all on segment", []lease.Lease{peer("192.0.2.2", "host-gw"), peer("192.0.2.3", "host-gw")}, "", ok, "host-gw"},
		{"one behind a router", []lease.Lease{peer("192.0.2.2", "host-gw"), peer("198.51.100.3", "host-gw")}, "", ok, "vxlan"},
		{"behind a router, no vxlan", []lease.Lease{peer("198.51.100.3", "host-gw")}, "", no, "udp"},
		{"join a vxlan cluster on one segment", []lease.Lease{peer("192.0.2.2", "vxlan")}, "", ok, "vxlan"},
		{"join a udp cluster", []lease.Lease{peer("192.0.2.2", "")}, "", ok, "udp"},
		{"vxlan cluster, no vxlan here", []lease.Lease{peer("192.0.2.2", "vxlan")}, "", no, "vxlan"}, // userspace
		{"peers unknown", nil, "etcd down", ok, "vxlan"},
	} {
		got, why := Choose(Facts{Peers: c.peers, Connected: seg, Unknown: c.unknown, Probe: c.probe})
		if got != c.want || !strings.HasPrefix(why, "auto: ") {
			t.Errorf("%s: %s (%s), want %s", c.name, got, why, c.want)
		}
	}
}
