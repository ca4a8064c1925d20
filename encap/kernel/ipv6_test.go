package kernel_test

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/encap/kernel"
	"github.com/weft-net/weft/encap/kernel/kerneltest"
)

// dualStackUnderlay is under0 with 192.0.2.1/24 and 2001:db8::1/64, as
// the fixtures' fk-v1.
func dualStackUnderlay(t *testing.T, ns *kerneltest.NS) int {
	t.Helper()
	under := ns.Underlay(t, "under0", netip.MustParsePrefix("192.0.2.1/24"), 1500)
	ns.AddAddr(t, under, netip.MustParsePrefix("2001:db8::1/64"))
	return under
}

// vxlanDev6 adds flannel-v6.7, a vxlan device with an IPv6 local address
// beside flannel.7 (the same VNI and port, as flanneld's two devices).
func vxlanDev6(t *testing.T, ns *kerneltest.NS, under int) int {
	t.Helper()
	attrs := netlink.NewLinkAttrs()
	attrs.Name = "flannel-v6.7"
	if err := ns.H.LinkAdd(&netlink.Vxlan{LinkAttrs: attrs, VxlanId: 7, VtepDevIndex: under, Port: 8472,
		SrcAddr: net.ParseIP("2001:db8::1")}); err != nil {
		t.Fatal(err)
	}
	l, err := ns.H.LinkByName("flannel-v6.7")
	if err != nil {
		t.Fatal(err)
	}
	if err := ns.H.LinkSetUp(l); err != nil {
		t.Fatal(err)
	}
	return l.Attrs().Index
}

func v6net(s string) *net.IPNet {
	p := netip.MustParsePrefix(s)
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), 128)}
}

// TestReconcileIPv6 programs a dual-stack vxlan peer's IPv6 state in the
// shape flanneld left (fixture dualstack/vxlan/kernel-state-h1.txt:
// "fd00:10:5:32::/64 via fd00:10:5:32:: dev flannel-v6.1 metric 1024
// onlink", a PERMANENT neighbour, "<MAC> dev flannel-v6.1 dst 2001:db8::2
// self permanent") and a host-gw IPv6 route, and holds IPv6 to the rules
// of IPv4: a second pass changes nothing (the kernel's metric 1024 is
// weft's), hand-deleted entries are repaired, a stale tagged route goes,
// someone else's route is refused and kept, flanneld's identical route is
// taken over, a departed peer's entries go, and cleanup leaves nothing.
func TestReconcileIPv6(t *testing.T) {
	ns := kerneltest.New(t)
	under := dualStackUnderlay(t, ns)
	dev := vxlanDev(t, ns, under)
	dev6 := vxlanDev6(t, ns, under)
	mac, _ := net.ParseMAC("62:a3:0b:92:83:ae")
	onlink := kernel.Route{Dst: netip.MustParsePrefix("fd00:10:5:32::/64"), Gw: netip.MustParseAddr("fd00:10:5:32::"), LinkIndex: dev6, Onlink: true}
	direct := kernel.Route{Dst: netip.MustParsePrefix("fd00:10:5:27::/64"), Gw: netip.MustParseAddr("2001:db8::2"), LinkIndex: under}
	clash := kernel.Route{Dst: netip.MustParsePrefix("fd00:10:5:9::/64"), Gw: netip.MustParseAddr("2001:db8::66"), LinkIndex: under}
	adopt := kernel.Route{Dst: netip.MustParsePrefix("fd00:10:5:10::/64"), Gw: netip.MustParseAddr("2001:db8::10"), LinkIndex: under}
	want := kernel.State{
		Dev: dev, Dev6: dev6,
		Routes:  []kernel.Route{onlink, direct, clash, adopt},
		Neighs6: []kernel.Neigh{{IP: netip.MustParseAddr("fd00:10:5:32::"), MAC: mac}},
		FDB6:    []kernel.FDB{{MAC: mac, Dst: netip.MustParseAddr("2001:db8::2")}},
	}
	for _, r := range []*netlink.Route{
		{Dst: v6net("fd00:10:5:77::/64"), Gw: net.ParseIP("2001:db8::77"), LinkIndex: under, Protocol: kernel.RouteProtocol}, // stale
		{Dst: v6net("fd00:10:5:9::/64"), Gw: net.ParseIP("2001:db8::fe"), LinkIndex: under, Protocol: unix.RTPROT_STATIC},    // the host's
		{Dst: v6net("fd00:10:5:10::/64"), Gw: net.ParseIP("2001:db8::10"), LinkIndex: under, Protocol: unix.RTPROT_BOOT},     // flanneld's
	} {
		if err := ns.H.RouteAdd(r); err != nil {
			t.Fatalf("%v: %v", r, err)
		}
	}
	c, err := ns.Reconcile(want)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Added) != 5 || len(c.Removed) != 1 || len(c.Conflicts) != 1 {
		t.Fatalf("first pass: %+v; want 5 added (3 routes, neighbour, fdb), the stale route removed, the host's route refused", c)
	}
	if _, ok := c.Conflicts["route "+clash.String()]; !ok {
		t.Fatalf("conflicts %v; want %s", c.Conflicts, clash)
	}
	c, err = ns.Reconcile(want)
	if err != nil || len(c.Added)+len(c.Removed) != 0 {
		t.Fatalf("second pass changed %+v (%v); want nothing", c, err)
	}
	checkIPv6(t, ns, dev6, mac, true)
	for _, r := range ns.Routes6(t) {
		switch {
		case r.Dst == nil:
		case r.Dst.String() == "fd00:10:5:77::/64":
			t.Error("the stale tagged route is still there")
		case r.Dst.String() == "fd00:10:5:9::/64" && (r.Protocol != unix.RTPROT_STATIC || r.Gw.String() != "2001:db8::fe"):
			t.Errorf("the host's route was changed: %v", r)
		case r.Dst.String() == "fd00:10:5:10::/64" && r.Protocol != kernel.RouteProtocol:
			t.Errorf("flanneld's identical route was not taken over: %v", r)
		case r.Dst.String() == "fd00:10:5:27::/64" && (r.Gw.String() != "2001:db8::2" || r.LinkIndex != under || r.Protocol != kernel.RouteProtocol):
			t.Errorf("host-gw route: %v", r)
		}
	}

	// Deleted by hand: the route, the neighbour, the fdb entry.
	ns.H.RouteDel(&netlink.Route{Dst: v6net("fd00:10:5:32::/64"), Table: unix.RT_TABLE_MAIN})
	ns.H.NeighDel(&netlink.Neigh{LinkIndex: dev6, Family: netlink.FAMILY_V6, IP: net.ParseIP("fd00:10:5:32::")})
	ns.H.NeighDel(&netlink.Neigh{LinkIndex: dev6, Family: unix.AF_BRIDGE, Flags: netlink.NTF_SELF, HardwareAddr: mac, IP: net.ParseIP("2001:db8::2")})
	checkIPv6(t, ns, dev6, mac, false)
	c, err = ns.Reconcile(want)
	if err != nil || len(c.Added) != 3 || len(c.Removed) != 0 {
		t.Fatalf("repair pass: %+v (%v); want 3 added", c, err)
	}
	checkIPv6(t, ns, dev6, mac, true)

	// The peer leaves: its IPv6 entries go, the host's route stays.
	c, err = ns.Reconcile(kernel.State{Dev: dev, Dev6: dev6})
	if err != nil || len(c.Removed) != 5 {
		t.Fatalf("leave pass: %+v (%v); want 5 removed", c, err)
	}
	checkIPv6(t, ns, dev6, mac, false)
	if fdb, _ := ns.H.NeighList(dev6, unix.AF_BRIDGE); len(fdb) != 0 {
		t.Errorf("fdb left: %+v", fdb)
	}

	// Cleanup: tagged IPv6 routes and both devices go; keeping flannel.7
	// keeps its IPv6 companion too.
	if _, err := ns.Reconcile(want); err != nil {
		t.Fatal(err)
	}
	var r kernel.Removed
	if err := ns.RemoveVXLANDevices("flannel.7", &r); err != nil || len(r.Links) != 0 {
		t.Fatalf("keeping flannel.7 removed %v (%v)", r.Links, err)
	}
	if err := ns.RemoveVXLANDevices("", &r); err != nil {
		t.Fatal(err)
	}
	if err := ns.RemoveTaggedRoutes(&r); err != nil {
		t.Fatal(err)
	}
	slices.Sort(r.Links)
	slices.Sort(r.Routes)
	if !slices.Equal(r.Links, []string{"flannel-v6.7", "flannel.7"}) || !slices.Equal(r.Routes, []string{"fd00:10:5:10::/64", "fd00:10:5:27::/64"}) {
		t.Fatalf("cleanup removed %+v", r)
	}
	for _, rt := range ns.Routes6(t) {
		if rt.Protocol == kernel.RouteProtocol {
			t.Errorf("tagged route left after cleanup: %v", rt)
		}
	}
}

// checkIPv6 looks for the vxlan peer's IPv6 route, neighbour and fdb entry.
func checkIPv6(t *testing.T, ns *kerneltest.NS, dev6 int, mac net.HardwareAddr, present bool) {
	t.Helper()
	var route, neigh, fdb bool
	for _, r := range ns.Routes6(t) {
		if r.Dst != nil && r.Dst.String() == "fd00:10:5:32::/64" && r.Gw.String() == "fd00:10:5:32::" && r.LinkIndex == dev6 &&
			r.Flags&int(netlink.FLAG_ONLINK) != 0 && r.Protocol == kernel.RouteProtocol && r.Priority == 1024 {
			route = true
		}
	}
	nb, _ := ns.H.NeighList(dev6, netlink.FAMILY_V6)
	for _, n := range nb {
		if n.IP.String() == "fd00:10:5:32::" && n.HardwareAddr.String() == mac.String() && n.State == netlink.NUD_PERMANENT {
			neigh = true
		}
	}
	br, _ := ns.H.NeighList(dev6, unix.AF_BRIDGE)
	for _, n := range br {
		if n.HardwareAddr.String() == mac.String() && n.IP.String() == "2001:db8::2" && n.State == netlink.NUD_PERMANENT && n.Flags&netlink.NTF_SELF != 0 {
			fdb = true
		}
	}
	if route != present || neigh != present || fdb != present {
		t.Fatalf("route %v, neighbour %v, fdb %v; want all %v", route, neigh, fdb, present)
	}
}

// TestUpdateDualStack: with IPv6 peers too, a lease event is still an
// update without dumps, of the same cost at 10 peers as at 500, and the
// full pass after it finds the kernel as the update left it.
func TestUpdateDualStack(t *testing.T) {
	var first kernel.Ops
	for _, n := range []int{10, 500} {
		ns := kerneltest.New(t)
		under := dualStackUnderlay(t, ns)
		p := &peers{dev: vxlanDev(t, ns, under), dev6: vxlanDev6(t, ns, under)}
		for i := range n {
			p.ids = append(p.ids, i+1)
		}
		r := &kernel.Reconciler{NL: ns.Netlink, Log: slog.New(slog.DiscardHandler),
			Desired: func() (kernel.State, bool, error) { return p.state(), true, nil }}
		if err := r.Pass(); err != nil {
			t.Fatal(err)
		}
		before := ns.Ops()
		p.ids = append(p.ids[1:], n+1)
		if err := r.Update(); err != nil {
			t.Fatal(err)
		}
		after := ns.Ops()
		got := kernel.Ops{Requests: after.Requests - before.Requests, Dumps: after.Dumps - before.Dumps}
		if got.Dumps != 0 {
			t.Errorf("N=%d: an update dumped %d tables; want none", n, got.Dumps)
		}
		if n == 10 {
			first = got
		} else if got != first {
			t.Errorf("an update's netlink work grew with N: %+v at N=10, %+v at N=%d", first, got, n)
		}
		st := r.Stats()
		if st.Updates != 1 || st.Programmed != uint64(6*n+6) || st.StaleRemoved != 6 {
			t.Errorf("N=%d: stats %+v; want 1 update, %d programmed, 6 stale removed", n, st, 6*n+6)
		}
		if err := r.Pass(); err != nil {
			t.Fatal(err)
		}
		if st2 := r.Stats(); st2.Programmed != st.Programmed || st2.StaleRemoved != st.StaleRemoved || st2.Repairs != 0 {
			t.Errorf("N=%d: the full pass after the update changed the kernel: %+v", n, st2)
		}
	}
}

// TestUpdateAndRunIPv6: an update refuses a joining peer's IPv6 route that
// someone else's route holds, and leaves that route when the peer goes; in
// the loop, a neighbour deleted by hand on the IPv6 device wakes a full
// pass that repairs it.
func TestUpdateAndRunIPv6(t *testing.T) {
	ns := kerneltest.New(t)
	under := dualStackUnderlay(t, ns)
	p := &peers{dev: vxlanDev(t, ns, under), dev6: vxlanDev6(t, ns, under), ids: []int{1, 2, 3}}
	r := &kernel.Reconciler{NL: ns.Netlink, Log: slog.New(slog.DiscardHandler), Interval: time.Hour,
		Desired: func() (kernel.State, bool, error) { return p.state(), true, nil }}
	if err := r.Pass(); err != nil {
		t.Fatal(err)
	}
	foreign := &netlink.Route{Dst: v6net("fd00:10:64:9::/64"), Gw: net.ParseIP("2001:db8::fe"), LinkIndex: under, Protocol: unix.RTPROT_STATIC}
	if err := ns.H.RouteAdd(foreign); err != nil {
		t.Fatal(err)
	}
	p.ids = append(p.ids, 9)
	if err := r.Update(); err != nil {
		t.Fatal(err)
	}
	if st := r.Stats(); st.Updates != 1 || st.Conflicts != 1 || len(st.Refused) != 1 {
		t.Fatalf("stats %+v; want peer 9's IPv6 route refused by an update", st)
	}
	p.ids = p.ids[:3]
	if err := r.Update(); err != nil {
		t.Fatal(err)
	}
	kept := slices.ContainsFunc(ns.Routes6(t), func(rt netlink.Route) bool {
		return rt.Dst != nil && rt.Dst.String() == "fd00:10:64:9::/64" && rt.Protocol == unix.RTPROT_STATIC
	})
	if !kept {
		t.Fatal("someone else's IPv6 route went when the peer it blocked left")
	}

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	deadline := time.Now().Add(5 * time.Second)
	for r.Stats().Passes < 2 {
		if time.Now().After(deadline) {
			t.Fatal("no first pass of the loop")
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond) // the subscription is up once the pass ran
	sn := netip.MustParseAddr("fd00:10:64:2::")
	if err := ns.H.NeighDel(&netlink.Neigh{LinkIndex: p.dev6, Family: netlink.FAMILY_V6, IP: sn.AsSlice()}); err != nil {
		t.Fatal(err)
	}
	for r.Stats().Repairs != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("the hand-deleted IPv6 neighbour was not repaired: %+v", r.Stats())
		}
		time.Sleep(10 * time.Millisecond)
	}
}
