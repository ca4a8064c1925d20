package kernel_test

import (
	"errors"
	"net"
	"net/netip"
	"slices"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/encap/kernel"
	"github.com/weft-net/weft/encap/kernel/kerneltest"
)

func TestOnSegment(t *testing.T) {
	c := []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24"), netip.MustParsePrefix("198.51.100.0/25")}
	for ip, want := range map[string]bool{"192.0.2.9": true, "198.51.100.127": true, "198.51.100.128": false, "203.0.113.1": false} {
		if got := kernel.OnSegment(c, netip.MustParseAddr(ip)); got != want {
			t.Errorf("OnSegment(%s) = %v, want %v", ip, got, want)
		}
	}
}

func TestDumpRetriesInterrupted(t *testing.T) {
	n := 0
	got, err := kernel.Dump(func() ([]int, error) {
		n++
		if n < 3 {
			return []int{1}, netlink.ErrDumpInterrupted
		}
		return []int{1, 2}, nil
	})
	if err != nil || len(got) != 2 || n != 3 {
		t.Fatalf("got %v, %v after %d calls; want [1 2] after 3", got, err, n)
	}
	_, err = kernel.Dump(func() ([]int, error) { return nil, netlink.ErrDumpInterrupted })
	if !errors.Is(err, netlink.ErrDumpInterrupted) {
		t.Fatalf("endless interruption: %v", err)
	}
}

func vxlanDev(t *testing.T, ns *kerneltest.NS, under int) int {
	t.Helper()
	attrs := netlink.NewLinkAttrs()
	attrs.Name = "flannel.7"
	if err := ns.H.LinkAdd(&netlink.Vxlan{LinkAttrs: attrs, VxlanId: 7, VtepDevIndex: under, Port: 8472}); err != nil {
		t.Fatal(err)
	}
	l, err := ns.H.LinkByName("flannel.7")
	if err != nil {
		t.Fatal(err)
	}
	ns.H.LinkSetUp(l)
	return l.Attrs().Index
}

// TestReconcile programs a vxlan-shaped state, checks a second pass changes
// nothing, then that deleted and stale entries are repaired and removed
// while a route weft did not tag stays.
func TestReconcile(t *testing.T) {
	ns := kerneltest.New(t)
	under := ns.Underlay(t, "under0", netip.MustParsePrefix("192.0.2.1/24"), 1500)
	dev := vxlanDev(t, ns, under)
	mac, _ := net.ParseMAC("d6:61:c5:27:4e:01")
	want := kernel.State{
		Dev: dev,
		Routes: []kernel.Route{
			{Dst: netip.MustParsePrefix("10.5.55.0/24"), Gw: netip.MustParseAddr("10.5.55.0"), LinkIndex: dev, Onlink: true},
			{Dst: netip.MustParsePrefix("10.5.60.0/24"), Gw: netip.MustParseAddr("192.0.2.3"), LinkIndex: under},
		},
		Neighs: []kernel.Neigh{{IP: netip.MustParseAddr("10.5.55.0"), MAC: mac}},
		FDB:    []kernel.FDB{{MAC: mac, Dst: netip.MustParseAddr("192.0.2.2")}},
	}
	// Someone else's route, and a stale one of weft's.
	foreign := &netlink.Route{Dst: &net.IPNet{IP: net.IPv4(10, 9, 0, 0).To4(), Mask: net.CIDRMask(16, 32)},
		Gw: net.IPv4(192, 0, 2, 9).To4(), LinkIndex: under, Protocol: unix.RTPROT_STATIC}
	stale := &netlink.Route{Dst: &net.IPNet{IP: net.IPv4(10, 5, 77, 0).To4(), Mask: net.CIDRMask(24, 32)},
		Gw: net.IPv4(192, 0, 2, 77).To4(), LinkIndex: under, Protocol: kernel.RouteProtocol}
	for _, r := range []*netlink.Route{foreign, stale} {
		if err := ns.H.RouteAdd(r); err != nil {
			t.Fatal(err)
		}
	}
	c, err := ns.Reconcile(want)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Added) != 4 || len(c.Removed) != 1 {
		t.Fatalf("first pass: %+v; want 4 added, the stale route removed", c)
	}
	c, err = ns.Reconcile(want)
	if err != nil || len(c.Added)+len(c.Removed) != 0 {
		t.Fatalf("second pass changed %+v (%v); want nothing", c, err)
	}
	// The onlink route as flanneld's: "10.5.55.0/24 via 10.5.55.0 dev flannel.1 onlink".
	var onlink, foreignSeen bool
	for _, r := range ns.Routes(t) {
		if r.Dst != nil && r.Dst.String() == "10.5.55.0/24" {
			onlink = r.Flags&int(netlink.FLAG_ONLINK) != 0 && r.LinkIndex == dev && r.Gw.String() == "10.5.55.0" && r.Protocol == kernel.RouteProtocol
		}
		if r.Dst != nil && r.Dst.String() == "10.9.0.0/16" {
			foreignSeen = true
		}
		if r.Dst != nil && r.Dst.String() == "10.5.77.0/24" {
			t.Error("the stale tagged route is still there")
		}
	}
	if !onlink || !foreignSeen {
		t.Fatalf("onlink route right: %v; foreign route kept: %v", onlink, foreignSeen)
	}
	fdb, _ := ns.H.NeighList(dev, unix.AF_BRIDGE)
	if !slices.ContainsFunc(fdb, func(n netlink.Neigh) bool {
		return n.HardwareAddr.String() == mac.String() && n.IP.String() == "192.0.2.2" && n.State&netlink.NUD_PERMANENT != 0
	}) {
		t.Fatalf("fdb entry missing: %+v", fdb)
	}

	// Delete by hand: one route, the neighbour, the fdb entry.
	ns.H.RouteDel(&netlink.Route{Dst: &net.IPNet{IP: net.IPv4(10, 5, 60, 0).To4(), Mask: net.CIDRMask(24, 32)}, Table: unix.RT_TABLE_MAIN})
	ns.H.NeighDel(&netlink.Neigh{LinkIndex: dev, Family: netlink.FAMILY_V4, IP: net.IPv4(10, 5, 55, 0).To4()})
	ns.H.NeighDel(&netlink.Neigh{LinkIndex: dev, Family: unix.AF_BRIDGE, Flags: netlink.NTF_SELF, HardwareAddr: mac, IP: net.IPv4(192, 0, 2, 2).To4()})
	c, err = ns.Reconcile(want)
	if err != nil || len(c.Added) != 3 || len(c.Removed) != 0 {
		t.Fatalf("repair pass: %+v (%v); want 3 added", c, err)
	}

	// The peer leaves: everything of it goes, only that.
	c, err = ns.Reconcile(kernel.State{Dev: dev})
	if err != nil || len(c.Removed) != 4 {
		t.Fatalf("leave pass: %+v (%v); want 4 removed", c, err)
	}
	if fdb, _ := ns.H.NeighList(dev, unix.AF_BRIDGE); len(fdb) != 0 {
		t.Errorf("fdb left: %+v", fdb)
	}
}

func TestProbeAndCleanup(t *testing.T) {
	ns := kerneltest.New(t)
	under := ns.Underlay(t, "under0", netip.MustParsePrefix("192.0.2.1/24"), 1500)
	if err := ns.ProbeVXLAN("weftprobe"); err != nil {
		t.Fatalf("probe: %v", err)
	}
	if _, err := ns.H.LinkByName("weftprobe"); err == nil {
		t.Fatal("probe device left behind")
	}
	dev := vxlanDev(t, ns, under)
	if _, err := ns.Reconcile(kernel.State{Dev: dev, Routes: []kernel.Route{
		{Dst: netip.MustParsePrefix("10.5.60.0/24"), Gw: netip.MustParseAddr("192.0.2.3"), LinkIndex: under}}}); err != nil {
		t.Fatal(err)
	}
	var r kernel.Removed
	if err := ns.RemoveVXLANDevices("", &r); err != nil {
		t.Fatal(err)
	}
	if err := ns.RemoveTaggedRoutes(&r); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(r.Links, []string{"flannel.7"}) || !slices.Equal(r.Routes, []string{"10.5.60.0/24"}) {
		t.Fatalf("removed %+v", r)
	}
	if _, err := ns.H.LinkByName("under0"); err != nil {
		t.Fatal("cleanup removed the underlay")
	}
}

// TestReconcileRefusesForeignRoute: a peer's route whose destination a
// route weft did not make already holds (the host's own, or a default
// route a hostile lease aims at) is refused and reported, and the other
// route stays exactly as it was; an untagged route identical to weft's
// (flanneld's, on a host moved from flanneld) is taken over.
func TestReconcileRefusesForeignRoute(t *testing.T) {
	ns := kerneltest.New(t)
	under := ns.Underlay(t, "under0", netip.MustParsePrefix("192.0.2.1/24"), 1500)
	host := &netlink.Route{Dst: &net.IPNet{IP: net.IPv4(10, 5, 9, 0).To4(), Mask: net.CIDRMask(24, 32)},
		Gw: net.IPv4(192, 0, 2, 254).To4(), LinkIndex: under, Protocol: unix.RTPROT_STATIC}
	flanneld := &netlink.Route{Dst: &net.IPNet{IP: net.IPv4(10, 5, 10, 0).To4(), Mask: net.CIDRMask(24, 32)},
		Gw: net.IPv4(192, 0, 2, 10).To4(), LinkIndex: under, Protocol: unix.RTPROT_BOOT}
	for _, r := range []*netlink.Route{host, flanneld} {
		if err := ns.H.RouteAdd(r); err != nil {
			t.Fatal(err)
		}
	}
	clash := kernel.Route{Dst: netip.MustParsePrefix("10.5.9.0/24"), Gw: netip.MustParseAddr("192.0.2.66"), LinkIndex: under}
	adopt := kernel.Route{Dst: netip.MustParsePrefix("10.5.10.0/24"), Gw: netip.MustParseAddr("192.0.2.10"), LinkIndex: under}
	for pass := range 2 {
		c, err := ns.Reconcile(kernel.State{Routes: []kernel.Route{clash, adopt}})
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := c.Conflicts["route "+clash.String()]; !ok || len(c.Conflicts) != 1 {
			t.Fatalf("pass %d: conflicts %v", pass, c.Conflicts)
		}
	}
	for _, r := range ns.Routes(t) {
		switch r.Dst.String() {
		case "10.5.9.0/24":
			if r.Gw.String() != "192.0.2.254" || r.Protocol != unix.RTPROT_STATIC {
				t.Errorf("the host's route was changed: %v", r)
			}
		case "10.5.10.0/24":
			if r.Protocol != kernel.RouteProtocol {
				t.Errorf("flanneld's identical route was not taken over: %v", r)
			}
		}
	}
}

// TestConnected reads a link's connected prefixes from one address dump:
// its own addresses only (not another link's), link-local ones left out;
// a link without addresses has none, and a link that does not exist is an
// error, not an empty segment (host-gw would refuse every peer).
func TestConnected(t *testing.T) {
	ns := kerneltest.New(t)
	a := ns.Underlay(t, "ua", netip.MustParsePrefix("192.0.2.1/24"), 1500)
	ns.AddAddr(t, a, netip.MustParsePrefix("2001:db8::1/64"))
	ns.Underlay(t, "ub", netip.MustParsePrefix("198.51.100.1/24"), 1500)
	got, err := ns.Connected(a)
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24"), netip.MustParsePrefix("2001:db8::/64")}
	slices.SortFunc(got, func(x, y netip.Prefix) int { return x.Addr().Compare(y.Addr()) })
	if !slices.Equal(got, want) {
		t.Fatalf("Connected(ua) = %v, want %v (no link-local, nothing of ub)", got, want)
	}
	bare, err := ns.H.LinkByName("uap") // the veth's peer end: up, only a link-local address
	if err != nil {
		t.Fatal(err)
	}
	if got, err := ns.Connected(bare.Attrs().Index); err != nil || len(got) != 0 {
		t.Fatalf("Connected(uap) = %v, %v; want none, no error", got, err)
	}
	if got, err := ns.Connected(9999); err == nil {
		t.Fatalf("Connected(9999) = %v, want an error: no such link", got)
	}
}
