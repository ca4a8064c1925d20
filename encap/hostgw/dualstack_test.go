package hostgw

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/weft-net/weft/encap"
	"github.com/weft-net/weft/encap/kernel"
	"github.com/weft-net/weft/encap/kernel/kerneltest"
	"github.com/weft-net/weft/lease"
)

// The dual-stack lease is flanneld's byte for byte: PublicIPv6, and no
// BackendData or BackendV6Data (fixture dualstack/host-gw/lease-h1.json).
func TestDualStackLeaseBytesMatchFlanneld(t *testing.T) {
	want, err := os.ReadFile("testdata/dualstack-lease-h1.json")
	if err != nil {
		t.Fatal(err)
	}
	b, err := New(Options{Host: encap.Host{IfaceAddr: netip.MustParseAddr("192.0.2.1"), PublicIP: netip.MustParseAddr("192.0.2.1"),
		IfaceAddr6: netip.MustParseAddr("2001:db8::1"), PublicIPv6: netip.MustParseAddr("2001:db8::1")}})
	if err != nil {
		t.Fatal(err)
	}
	a, _ := b.Attrs()
	if got, err := json.Marshal(a); err != nil || string(got) != string(want) {
		t.Fatalf("got %s (%v), want %s", got, err, want)
	}
}

// dsHost is one "host" of the fixture's dual-stack host-gw run.
type dsHost struct {
	ns  *kerneltest.NS
	b   *Backend
	own lease.Lease
}

// dualStackPair builds the fixture's two hosts (fk-v1 192.0.2.1/24
// 2001:db8::1/64; fk-v2 .2), each with its subnets ("pod" addresses .1 on
// lo) and a started backend, and gives each the other as its peer.
func dualStackPair(t *testing.T) [2]*dsHost {
	t.Helper()
	subnet := [2]string{"10.5.83.0/24", "10.5.53.0/24"}
	subnet6 := [2]string{"fd00:10:5:62::/64", "fd00:10:5:27::/64"}
	nss := [2]*kerneltest.NS{kerneltest.New(t), kerneltest.New(t)}
	a4 := [2]netip.Prefix{netip.MustParsePrefix("192.0.2.1/24"), netip.MustParsePrefix("192.0.2.2/24")}
	a6 := [2]netip.Prefix{netip.MustParsePrefix("2001:db8::1/64"), netip.MustParsePrefix("2001:db8::2/64")}
	i1, i2 := nss[0].Link(t, nss[1], "fk-v1", "fk-v2", 1500, []netip.Prefix{a4[0], a6[0]}, []netip.Prefix{a4[1], a6[1]})
	var h [2]*dsHost
	for k, index := range []int{i1, i2} {
		ns := nss[k]
		host := encap.Host{Iface: fmt.Sprintf("fk-v%d", k+1), IfaceIndex: index, IfaceAddr: a4[k].Addr(), PublicIP: a4[k].Addr(), IfaceMTU: 1500,
			IfaceAddr6: a6[k].Addr(), PublicIPv6: a6[k].Addr()}
		b, err := New(Options{Host: host, NL: ns.Netlink})
		if err != nil {
			t.Fatal(err)
		}
		attrs, _ := b.Attrs()
		own := lease.Lease{Subnet: netip.MustParsePrefix(subnet[k]), IPv6Subnet: netip.MustParsePrefix(subnet6[k]), Attrs: attrs}
		if mtu, err := b.Start(context.Background(), own); err != nil || mtu != 1500 {
			t.Fatalf("Start: %d %v", mtu, err)
		}
		lo, err := ns.H.LinkByName("lo")
		if err != nil {
			t.Fatal(err)
		}
		ns.AddAddr(t, lo.Attrs().Index, netip.PrefixFrom(own.Subnet.Addr().Next(), 32))
		ns.AddAddr(t, lo.Attrs().Index, netip.PrefixFrom(own.IPv6Subnet.Addr().Next(), 128))
		h[k] = &dsHost{ns: ns, b: b, own: own}
	}
	for k := range h {
		h[k].b.SetPeers([]lease.Lease{h[1-k].own})
		if err := h[k].b.Reconcile(); err != nil {
			t.Fatal(err)
		}
	}
	return h
}

// TestDualStackRoutes: each host's routes are flanneld's (fixture
// dualstack/host-gw/kernel-state-h1.txt: "10.5.53.0/24 via 192.0.2.2 dev
// fk-v1" and "fd00:10:5:27::/64 via 2001:db8::2 dev fk-v1 metric 1024"),
// tagged, pod traffic crosses in both families, and cleanup leaves none.
func TestDualStackRoutes(t *testing.T) {
	h := dualStackPair(t)
	want := kerneltest.FixtureLines(t, "testdata/dualstack-kernel-state-h1.txt")
	if got := h[0].ns.StateLines(t); !slices.Equal(got, want) {
		t.Fatalf("h1 kernel state\n got %q\nwant %q", got, want)
	}
	for _, r := range h[0].ns.Routes6(t) {
		if r.Gw != nil && r.Protocol != kernel.RouteProtocol {
			t.Errorf("route %v is not tagged", r)
		}
	}
	for k := range h {
		for _, c := range [][2]netip.Addr{
			{h[k].own.Subnet.Addr().Next(), h[1-k].own.Subnet.Addr().Next()},
			{h[k].own.IPv6Subnet.Addr().Next(), h[1-k].own.IPv6Subnet.Addr().Next()},
		} {
			if err := kerneltest.UDPRoundTrip(h[k].ns, h[1-k].ns, c[0], c[1], 1400); err != nil {
				t.Errorf("%s -> %s: %v", c[0], c[1], err)
			}
		}
	}
	if st := h[0].b.Status().(Status); len(st.Peers) != 1 || st.Peers[0].PublicIPv6.String() != "2001:db8::2" || st.Peers[0].IPv6Subnet.String() != "fd00:10:5:27::/64" {
		t.Fatalf("status %+v", st)
	}

	// A hand-deleted IPv6 route is repaired.
	for _, r := range h[0].ns.Routes6(t) {
		if r.Protocol == kernel.RouteProtocol {
			h[0].ns.H.RouteDel(&r)
		}
	}
	if err := h[0].b.Reconcile(); err != nil {
		t.Fatal(err)
	}
	if got := h[0].ns.StateLines(t); !slices.Equal(got, want) || h[0].b.Status().(Status).Reconcile.Repairs != 1 {
		t.Fatalf("after deletion: %q, %+v", got, h[0].b.Status().(Status).Reconcile)
	}

	var r kernel.Removed
	if err := h[0].ns.RemoveTaggedRoutes(&r); err != nil {
		t.Fatal(err)
	}
	if got := h[0].ns.StateLines(t); len(got) != 0 || len(r.Routes) != 2 {
		t.Fatalf("cleanup removed %v, left %q", r.Routes, got)
	}
}

// TestDualStackPeerFamilies: on a dual-stack network a peer without IPv6
// gets its IPv4 route only; a peer whose public IPv6 is behind a router
// keeps its IPv4 route and its IPv6 subnet is refused by name; a departed
// peer's IPv6 route goes.
func TestDualStackPeerFamilies(t *testing.T) {
	h := dualStackPair(t)
	x := h[0]
	v4only := lease.Lease{Subnet: netip.MustParsePrefix("10.5.9.0/24"), Attrs: lease.Attrs{PublicIP: netip.MustParseAddr("192.0.2.9"), BackendType: "host-gw"}}
	far6 := lease.Lease{Subnet: netip.MustParsePrefix("10.5.10.0/24"), IPv6Subnet: netip.MustParsePrefix("fd00:10:5:a::/64"),
		Attrs: lease.Attrs{PublicIP: netip.MustParseAddr("192.0.2.10"), PublicIPv6: netip.MustParseAddr("2001:db8:1::10"), BackendType: "host-gw"}}
	x.b.SetPeers([]lease.Lease{v4only, far6})
	if err := x.b.Reconcile(); err != nil {
		t.Fatal(err)
	}
	want := []string{"10.5.10.0/24 via 192.0.2.10 dev fk-v1", "10.5.9.0/24 via 192.0.2.9 dev fk-v1"}
	if got := x.ns.StateLines(t); !slices.Equal(got, want) {
		t.Fatalf("state\n got %q\nwant %q", got, want)
	}
	st := x.b.Status().(Status)
	if why := st.Refused["fd00:10:5:a::/64"]; !strings.Contains(why, "2001:db8:1::10") || !strings.Contains(why, "2001:db8::/64") || strings.Contains(why, "192.0.2.0/24") {
		t.Fatalf("refusal of the off-segment IPv6 subnet: %q", why)
	}
	if len(st.Peers) != 2 || st.Peers[1].IPv6Subnet.IsValid() {
		t.Fatalf("peers %+v", st.Peers)
	}
}

// A public IPv6 other than the interface's IPv6 address is refused as the
// IPv4 one is.
func TestRefusesPublicIPv6OtherThanIfaceAddr(t *testing.T) {
	host := encap.Host{Iface: "eth0", IfaceAddr: netip.MustParseAddr("192.0.2.1"), PublicIP: netip.MustParseAddr("192.0.2.1"),
		IfaceAddr6: netip.MustParseAddr("2001:db8::1"), PublicIPv6: netip.MustParseAddr("2001:db8:ffff::9")}
	if _, err := New(Options{Host: host}); err == nil || !strings.Contains(err.Error(), "2001:db8:ffff::9") || !strings.Contains(err.Error(), "2001:db8::1") {
		t.Fatalf("other public IPv6: %v", err)
	}
	host.PublicIPv6 = host.IfaceAddr6
	if _, err := New(Options{Host: host}); err != nil {
		t.Fatalf("public IPv6 = interface address: %v", err)
	}
}
