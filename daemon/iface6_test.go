package daemon

import (
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/encap/kernel/kerneltest"
)

// ifaceLab6 is a namespace with three interfaces for an IPv6-only host:
//
//	va0: 192.0.2.7/24 (an IPv4 address, first), 2001:db8:a::1/64,
//	     2001:db8:a::2/64
//	vb0: 2001:db8:b::1/64; the IPv6 default route via 2001:db8:b::fe;
//	     2001:db8:99::/64 via 2001:db8:b::fe src 2001:db8:b::1
//	vc0: 10.99.9.1/24 only (and its link-local IPv6 address)
func ifaceLab6(t *testing.T) *kerneltest.NS {
	t.Helper()
	ns := kerneltest.New(t)
	va := ns.Underlay(t, "va0", netip.MustParsePrefix("192.0.2.7/24"), 1500)
	ns.AddAddr(t, va, netip.MustParsePrefix("2001:db8:a::1/64"))
	ns.AddAddr(t, va, netip.MustParsePrefix("2001:db8:a::2/64"))
	vb := ns.Underlay(t, "vb0", netip.MustParsePrefix("2001:db8:b::1/64"), 1400)
	ns.Underlay(t, "vc0", netip.MustParsePrefix("10.99.9.1/24"), 1500)
	for _, r := range []*netlink.Route{
		{LinkIndex: vb, Gw: net.ParseIP("2001:db8:b::fe")},
		{LinkIndex: vb, Gw: net.ParseIP("2001:db8:b::fe"), Dst: &net.IPNet{IP: net.ParseIP("2001:db8:99::"), Mask: net.CIDRMask(64, 128)},
			Src: net.ParseIP("2001:db8:b::1")},
	} {
		if err := ns.H.RouteAdd(r); err != nil {
			t.Fatalf("route %v: %v", r, err)
		}
	}
	return ns
}

// TestLookupExtIface6: on an IPv6-only network the interface and address
// are chosen as flanneld's ipv6Stack does (ipmatch.LookupExtIface): by
// IPv6 address, the IPv6 default route's interface without a choice, and
// the interface that holds --public-ipv6; IPv4 addresses play no part,
// and a link-local address is never chosen.
func TestLookupExtIface6(t *testing.T) {
	ns := ifaceLab6(t)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	type want struct{ name, addr6, public6 string }
	pub := netip.MustParseAddr("2001:db8:ffff::9")
	for _, c := range []struct {
		name string
		opts InterfaceOptions
		want want
	}{
		{"IPv6 default route", InterfaceOptions{}, want{"vb0", "2001:db8:b::1", "2001:db8:b::1"}},
		{"public-ipv6 alone picks its interface and address", InterfaceOptions{PublicIPv6: netip.MustParseAddr("2001:db8:a::1")}, want{"va0", "2001:db8:a::1", "2001:db8:a::1"}},
		// The kernel lists a link's IPv6 addresses newest first, and
		// flanneld takes the first listed (of equal rank): a::2.
		{"iface by name: first IPv6 address, not the IPv4 one", InterfaceOptions{Ifaces: []string{"va0"}}, want{"va0", "2001:db8:a::2", "2001:db8:a::2"}},
		{"iface by IPv6 address: that address", InterfaceOptions{Ifaces: []string{"2001:db8:a::1"}}, want{"va0", "2001:db8:a::1", "2001:db8:a::1"}},
		{"iface falls through IPv4 address, IPv4-only interface", InterfaceOptions{Ifaces: []string{"192.0.2.7", "vc0", "vb0"}}, want{"vb0", "2001:db8:b::1", "2001:db8:b::1"}},
		{"regex on IPv6 addresses", InterfaceOptions{IfaceRegex: []string{`^2001:db8:a::1$`}}, want{"va0", "2001:db8:a::1", "2001:db8:a::1"}},
		{"regex does not match IPv4 addresses", InterfaceOptions{IfaceRegex: []string{`^192\.0\.2\.7$`, "^vb0$"}}, want{"vb0", "2001:db8:b::1", "2001:db8:b::1"}},
		{"can-reach: the route's source address", InterfaceOptions{IfaceCanReach: []string{"2001:db8:99::7"}}, want{"vb0", "2001:db8:b::1", "2001:db8:b::1"}},
		{"public-ipv6 with iface: advertised, not bound", InterfaceOptions{Ifaces: []string{"va0"}, PublicIPv6: pub}, want{"va0", "2001:db8:a::2", "2001:db8:ffff::9"}},
	} {
		e, err := lookupExtIface6(ns.H, c.opts, log)
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		if got := (want{e.Name, e.Addr6.String(), e.PublicIPv6.String()}); got != c.want || e.Addr.IsValid() || e.PublicIP.IsValid() {
			t.Errorf("%s: got %+v (IPv4 %s, %s), want %+v", c.name, got, e.Addr, e.PublicIP, c.want)
		}
	}
	if e, _ := lookupExtIface6(ns.H, InterfaceOptions{Ifaces: []string{"vb0"}}, log); e == nil || e.MTU != 1400 || e.host().IfaceAddr.IsValid() || e.host().PublicIPv6.String() != "2001:db8:b::1" {
		t.Errorf("vb0: %+v", e)
	}
	for _, c := range []struct {
		opts InterfaceOptions
		want []string
	}{
		{InterfaceOptions{Ifaces: []string{"vc0"}}, []string{"vc0", "no global IPv6 address"}},
		{InterfaceOptions{Ifaces: []string{"192.0.2.7"}}, []string{"not an IPv6 address"}},
		{InterfaceOptions{IfaceCanReach: []string{"192.0.2.9"}}, []string{"--iface-can-reach", "IPv6"}},
		{InterfaceOptions{PublicIPv6: pub}, []string{"2001:db8:ffff::9", "--public-ipv6", "--iface"}},
		{InterfaceOptions{Ifaces: []string{"va0"}, PublicIPv6: netip.MustParseAddr("fe80::1")}, []string{"fe80::1"}},
	} {
		_, err := lookupExtIface6(ns.H, c.opts, log)
		for _, w := range c.want {
			if err == nil || !strings.Contains(err.Error(), w) {
				t.Errorf("%+v: error %v does not name %q", c.opts, err, w)
			}
		}
	}
	// Without an IPv6 default route: refused, naming it.
	vb, _ := ns.H.LinkByName("vb0")
	if err := ns.H.LinkSetDown(vb); err != nil {
		t.Fatal(err)
	}
	if _, err := lookupExtIface6(ns.H, InterfaceOptions{}, log); err == nil || !strings.Contains(err.Error(), "IPv6 default route") {
		t.Errorf("no IPv6 default route: %v", err)
	}
}

// The blackhole route of --ip-blackhole-route covers an IPv6 subnet too
// (flanneld's AddBlackholeV6Route), beside the pods' bridge route.
func TestBlackholeIPv6(t *testing.T) {
	ns := kerneltest.New(t)
	subnet := netip.MustParsePrefix("fd00:10:5:12::/64")
	if err := ensureBlackhole(ns.H.RouteAdd, subnet); err != nil {
		t.Fatal(err)
	}
	if err := ensureBlackhole(ns.H.RouteAdd, subnet); err != nil {
		t.Fatalf("a second ensure: %v", err)
	}
	n := 0
	for _, r := range ns.Routes6(t) {
		if r.Type == unix.RTN_BLACKHOLE && r.Dst.String() == subnet.String() {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("%d IPv6 blackhole routes, want 1", n)
	}
	bridge := ns.Underlay(t, "cni0", netip.MustParsePrefix("fd00:10:5:12::1/64"), 1500)
	rs, err := ns.H.RouteGet(net.ParseIP("fd00:10:5:12::5"))
	if err != nil || len(rs) == 0 || rs[0].LinkIndex != bridge {
		t.Fatalf("fd00:10:5:12::5 goes %v (%v), want the bridge %d", rs, err, bridge)
	}
}
