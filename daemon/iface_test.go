package daemon

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/weft-net/weft/encap/kernel/kerneltest"
	"github.com/weft-net/weft/encap/vxlan"
	"github.com/weft-net/weft/lease"
)

// ifaceLab is a namespace with three interfaces:
//
//	wa0: 169.254.7.7/16 (added first), 10.99.1.1/24, 10.99.1.2/24
//	wb0: 10.99.2.1/24, 10.99.3.1/24; default via 10.99.2.254;
//	     198.51.100.0/24 via 10.99.3.254 src 10.99.3.1
//	wc0: no IPv4 address
func ifaceLab(t *testing.T) *kerneltest.NS {
	t.Helper()
	ns := kerneltest.New(t)
	ns.Underlay(t, "wa0", netip.MustParsePrefix("169.254.7.7/16"), 1500)
	ns.Underlay(t, "wb0", netip.MustParsePrefix("10.99.2.1/24"), 1400)
	ns.Underlay(t, "wc0", netip.MustParsePrefix("10.99.9.1/24"), 1500)
	addr := func(link, p string) {
		l, err := ns.H.LinkByName(link)
		if err != nil {
			t.Fatal(err)
		}
		pre := netip.MustParsePrefix(p)
		a := &netlink.Addr{IPNet: &net.IPNet{IP: pre.Addr().AsSlice(), Mask: net.CIDRMask(pre.Bits(), 32)}}
		if err := ns.H.AddrAdd(l, a); err != nil {
			t.Fatalf("%s %s: %v", link, p, err)
		}
	}
	addr("wa0", "10.99.1.1/24")
	addr("wa0", "10.99.1.2/24")
	addr("wb0", "10.99.3.1/24")
	wc, _ := ns.H.LinkByName("wc0")
	addrs, _ := ns.H.AddrList(wc, netlink.FAMILY_V4)
	for _, a := range addrs {
		if err := ns.H.AddrDel(wc, &a); err != nil {
			t.Fatal(err)
		}
	}
	wb, _ := ns.H.LinkByName("wb0")
	route := func(dst string, gw, src string) {
		r := &netlink.Route{LinkIndex: wb.Attrs().Index, Gw: net.ParseIP(gw)}
		if dst != "" {
			_, r.Dst, _ = net.ParseCIDR(dst)
		}
		if src != "" {
			r.Src = net.ParseIP(src)
		}
		if err := ns.H.RouteAdd(r); err != nil {
			t.Fatalf("route %s: %v", dst, err)
		}
	}
	route("", "10.99.2.254", "")
	route("198.51.100.0/24", "10.99.3.254", "10.99.3.1")
	return ns
}

// TestLookupExtIface: the interface and addresses flanneld v0.28.9 picks
// (main.go, ipmatch.LookupExtIface) on a multi-NIC, multi-address host:
// each kind of choice in order, falling through when it matches nothing
// usable; --iface <IP> and --public-ip use that address, not the
// interface's first.
func TestLookupExtIface(t *testing.T) {
	ns := ifaceLab(t)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	type want struct{ name, addr, public string }
	pub := netip.MustParseAddr("203.0.113.9")
	for _, c := range []struct {
		name string
		opts InterfaceOptions
		want want
	}{
		{"default route", InterfaceOptions{}, want{"wb0", "10.99.2.1", "10.99.2.1"}},
		{"public-ip alone picks its interface and address", InterfaceOptions{PublicIP: netip.MustParseAddr("10.99.3.1")}, want{"wb0", "10.99.3.1", "10.99.3.1"}},
		{"iface by name: first global address, not the link-local one", InterfaceOptions{Ifaces: []string{"wa0"}}, want{"wa0", "10.99.1.1", "10.99.1.1"}},
		{"iface by address: that address", InterfaceOptions{Ifaces: []string{"10.99.1.2"}}, want{"wa0", "10.99.1.2", "10.99.1.2"}},
		{"iface falls through missing and addressless", InterfaceOptions{Ifaces: []string{"nosuch0", "wc0", "10.99.7.7", "wb0"}}, want{"wb0", "10.99.2.1", "10.99.2.1"}},
		{"iface before regex", InterfaceOptions{Ifaces: []string{"wb0"}, IfaceRegex: []string{"^wa0$"}}, want{"wb0", "10.99.2.1", "10.99.2.1"}},
		{"iface falls through to regex", InterfaceOptions{Ifaces: []string{"nosuch0"}, IfaceRegex: []string{`^10\.99\.3\.`}}, want{"wb0", "10.99.3.1", "10.99.3.1"}},
		{"regex: addresses of all interfaces before names", InterfaceOptions{IfaceRegex: []string{`^(wa0|10\.99\.3\.1)$`}}, want{"wb0", "10.99.3.1", "10.99.3.1"}},
		{"regex by name: first address", InterfaceOptions{IfaceRegex: []string{"^wa0$"}}, want{"wa0", "10.99.1.1", "10.99.1.1"}},
		{"regexes in order, then can-reach", InterfaceOptions{IfaceRegex: []string{"^nomatch$", "^wc0$"}, IfaceCanReach: []string{"198.51.100.7"}}, want{"wb0", "10.99.3.1", "10.99.3.1"}},
		{"can-reach: the route's source address", InterfaceOptions{IfaceCanReach: []string{"198.51.100.7"}}, want{"wb0", "10.99.3.1", "10.99.3.1"}},
		{"public-ip with iface: advertised, not bound", InterfaceOptions{Ifaces: []string{"10.99.1.2"}, PublicIP: pub}, want{"wa0", "10.99.1.2", "203.0.113.9"}},
	} {
		e, err := lookupExtIface(ns.H, c.opts, log)
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		if got := (want{e.Name, e.Addr.String(), e.PublicIP.String()}); got != c.want {
			t.Errorf("%s: got %+v, want %+v", c.name, got, c.want)
		}
	}
	if e, _ := lookupExtIface(ns.H, InterfaceOptions{Ifaces: []string{"wb0"}}, log); e == nil || e.MTU != 1400 {
		t.Errorf("wb0's MTU: %+v", e)
	}
	for _, c := range []struct {
		opts InterfaceOptions
		want []string // the error names each
	}{
		{InterfaceOptions{Ifaces: []string{"nosuch0", "wc0"}}, []string{"nosuch0", "wc0", "no IPv4 address"}},
		{InterfaceOptions{IfaceRegex: []string{"^nomatch$"}}, []string{"^nomatch$", "wa0:[10.99.1.1 10.99.1.2 169.254.7.7]"}},
		{InterfaceOptions{IfaceRegex: []string{"("}}, []string{"--iface-regex"}},
		{InterfaceOptions{IfaceCanReach: []string{"nope"}}, []string{"--iface-can-reach"}},
		{InterfaceOptions{PublicIP: pub}, []string{"203.0.113.9", "--iface"}},
	} {
		_, err := lookupExtIface(ns.H, c.opts, log)
		for _, w := range c.want {
			if err == nil || !strings.Contains(err.Error(), w) {
				t.Errorf("%+v: error %v does not name %q", c.opts, err, w)
			}
		}
	}
}

// The kernel vxlan device sends from the chosen address, as flanneld's
// (vtepAddr: extIface.IfaceAddr): --iface 10.99.1.2 gives "local
// 10.99.1.2 dev wa0", not wa0's first address.
func TestVXLANSourceIsChosenAddress(t *testing.T) {
	ns := ifaceLab(t)
	e, err := lookupExtIface(ns.H, InterfaceOptions{Ifaces: []string{"10.99.1.2"}}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	b, err := vxlan.New(vxlan.Options{Host: e.host(), Config: vxlan.Config{VNI: 1, Port: 8472}, NL: ns.Netlink, Sysctl: ns.Sysctl})
	if err != nil {
		t.Fatal(err)
	}
	attrs, err := b.Attrs()
	if err != nil || attrs.PublicIP.String() != "10.99.1.2" {
		t.Fatalf("lease attrs %+v, %v", attrs, err)
	}
	if _, err := b.Start(context.Background(), lease.Lease{Subnet: netip.MustParsePrefix("10.5.92.0/24"), Attrs: attrs}); err != nil {
		t.Fatal(err)
	}
	l, err := ns.H.LinkByName("flannel.1")
	if err != nil {
		t.Fatal(err)
	}
	v := l.(*netlink.Vxlan)
	if !v.SrcAddr.Equal(net.ParseIP("10.99.1.2")) || v.VtepDevIndex != e.Index || e.Name != "wa0" {
		t.Fatalf("flannel.1 local %s dev #%d; want local 10.99.1.2 dev wa0 (#%d)", v.SrcAddr, v.VtepDevIndex, e.Index)
	}
}
