package auto

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/weft-net/weft/lease"
)

func peer(ip, typ string) lease.Lease {
	return lease.Lease{Subnet: netip.MustParsePrefix("10.5.9.0/24"), Attrs: lease.Attrs{PublicIP: netip.MustParseAddr(ip), BackendType: typ}}
}

var seg = []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}

// TestChoose is auto's rule without a kernel. The peers' own backends do
// not matter: during a move they are mid-change, and the rule must give
// the same answer before and after.
func TestChoose(t *testing.T) {
	self := netip.MustParseAddr("192.0.2.1")
	for _, c := range []struct {
		name     string
		self     netip.Addr
		peers    []lease.Lease
		noHostGW string
		want     string
		whyHas   string
	}{
		{"no peers", self, nil, "", "host-gw", "no peers"},
		{"all on segment", self, []lease.Lease{peer("192.0.2.2", "host-gw"), peer("192.0.2.3", "vxlan")}, "", "host-gw", "all 2 peers"},
		{"one behind a router", self, []lease.Lease{peer("192.0.2.2", "host-gw"), peer("198.51.100.3", "host-gw")}, "", "vxlan", "198.51.100.3"},
		{"peers on vxlan still on segment", self, []lease.Lease{peer("192.0.2.2", "vxlan")}, "", "host-gw", "all 1 peers"},
		{"self behind a router", netip.MustParseAddr("198.51.100.3"), []lease.Lease{peer("192.0.2.2", "host-gw")}, "", "vxlan", "this host's public IP"},
		{"self behind a router, alone", netip.MustParseAddr("198.51.100.3"), nil, "", "vxlan", "this host's public IP"},
		{"NAT'd public IP", self, nil, "public IP is not the interface's", "vxlan", "not the interface's"},
	} {
		got, why := Choose(Facts{Self: c.self, Peers: c.peers, Connected: seg, NoHostGW: c.noHostGW})
		if got != c.want || !strings.HasPrefix(why, "auto: ") || !strings.Contains(why, c.whyHas) {
			t.Errorf("%s: %s (%s), want %s naming %q", c.name, got, why, c.want, c.whyHas)
		}
	}
}

// TestChooseAgrees: hosts that see the same leases decide alike, whatever
// order they started in, when hosts on one segment share its prefix.
func TestChooseAgrees(t *testing.T) {
	segB := []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}
	hosts := []struct {
		ip   string
		conn []netip.Prefix
	}{{"192.0.2.1", seg}, {"192.0.2.2", seg}, {"198.51.100.3", segB}}
	for n := 1; n <= len(hosts); n++ {
		// The first n hosts are up; each sees the others' leases.
		var first string
		for i := range n {
			var peers []lease.Lease
			for j := range n {
				if j != i {
					peers = append(peers, peer(hosts[j].ip, ""))
				}
			}
			got, why := Choose(Facts{Self: netip.MustParseAddr(hosts[i].ip), Peers: peers, Connected: hosts[i].conn})
			if i == 0 {
				first = got
			} else if got != first {
				t.Errorf("%d hosts up: host %s chose %s (%s), host %s chose %s", n, hosts[i].ip, got, why, hosts[0].ip, first)
			}
		}
		if want := map[bool]string{true: "vxlan", false: "host-gw"}[n == 3]; first != want {
			t.Errorf("%d hosts up: %s, want %s", n, first, want)
		}
	}
}

// On a dual-stack network the IPv6 addresses count too: a peer whose
// IPv6 underlay is behind a router needs vxlan, a peer without IPv6 does
// not.
func TestChooseDualStack(t *testing.T) {
	seg := []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24"), netip.MustParsePrefix("2001:db8::/64")}
	peer := func(ip, sn6, ip6 string) lease.Lease {
		l := lease.Lease{Subnet: netip.MustParsePrefix("10.5.2.0/24"), Attrs: lease.Attrs{PublicIP: netip.MustParseAddr(ip)}}
		if sn6 != "" {
			l.IPv6Subnet, l.Attrs.PublicIPv6 = netip.MustParsePrefix(sn6), netip.MustParseAddr(ip6)
		}
		return l
	}
	self, self6 := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8::1")
	for _, tc := range []struct {
		self6 netip.Addr
		peer  lease.Lease
		want  string
	}{
		{self6, peer("192.0.2.2", "fd00::/64", "2001:db8::2"), "host-gw"},
		{self6, peer("192.0.2.2", "fd00::/64", "2001:db9::2"), "vxlan"},
		{self6, peer("192.0.2.2", "", ""), "host-gw"},
		{netip.MustParseAddr("2001:db9::1"), peer("192.0.2.2", "", ""), "vxlan"},
		{netip.Addr{}, peer("192.0.2.2", "fd00::/64", "2001:db9::2"), "host-gw"}, // no IPv6 in the network
	} {
		if got, why := Choose(Facts{Self: self, Self6: tc.self6, Peers: []lease.Lease{tc.peer}, Connected: seg}); got != tc.want {
			t.Errorf("self6 %v, peer %+v: %s (%s), want %s", tc.self6, tc.peer, got, why, tc.want)
		}
	}
}

// On an IPv6-only network only the IPv6 addresses count: this host has
// no public IP, and its peers' leases no IPv4 part.
func TestChooseIPv6Only(t *testing.T) {
	seg := []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24"), netip.MustParsePrefix("2001:db8::/64")}
	peer := func(ip6 string) lease.Lease {
		return lease.Lease{IPv6Subnet: netip.MustParsePrefix("fd00:10:5:2::/64"), Attrs: lease.Attrs{PublicIPv6: netip.MustParseAddr(ip6)}}
	}
	self6 := netip.MustParseAddr("2001:db8::1")
	for _, tc := range []struct {
		self6 netip.Addr
		peers []lease.Lease
		want  string
	}{
		{self6, nil, "host-gw"},
		{self6, []lease.Lease{peer("2001:db8::2")}, "host-gw"},
		{self6, []lease.Lease{peer("2001:db8::2"), peer("2001:db9::3")}, "vxlan"},
		{netip.MustParseAddr("2001:db9::1"), []lease.Lease{peer("2001:db8::2")}, "vxlan"},
		{netip.Addr{}, nil, "vxlan"}, // no address at all: nothing to route to
	} {
		if got, why := Choose(Facts{Self6: tc.self6, Peers: tc.peers, Connected: seg}); got != tc.want {
			t.Errorf("self6 %v, peers %+v: %s (%s), want %s", tc.self6, tc.peers, got, why, tc.want)
		}
	}
}
