package kernel_test

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/encap/kernel"
	"github.com/weft-net/weft/encap/kernel/kerneltest"
)

// peers is a vxlan-shaped wanted state: per peer i, an onlink route to
// 10.(100+i/256).(i%256).0/24 via its network address, a neighbour and an
// FDB entry, as the vxlan backend programs; with dev6, the same for
// fd00:10:(100+i/256):(i%256)::/64 on it.
type peers struct {
	dev, dev6 int
	ids       []int
}

func peerSubnet(i int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(100 + i>>8), byte(i), 0}), 24)
}

func (p *peers) state() kernel.State {
	s := kernel.State{Dev: p.dev}
	for _, i := range p.ids {
		sn := peerSubnet(i)
		mac := net.HardwareAddr{0x0e, 0x57, 0, 0, byte(i >> 8), byte(i)}
		s.Routes = append(s.Routes, kernel.Route{Dst: sn, Gw: sn.Addr(), LinkIndex: p.dev, Onlink: true})
		s.Neighs = append(s.Neighs, kernel.Neigh{IP: sn.Addr(), MAC: mac})
		s.FDB = append(s.FDB, kernel.FDB{MAC: mac, Dst: netip.AddrFrom4([4]byte{192, 0, 2, byte(10 + i%200)})})
		if p.dev6 == 0 {
			continue
		}
		s.Dev6 = p.dev6
		sn6 := netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfd, 0, 0, 0x10, 0, byte(100 + i>>8), 0, byte(i)}), 64)
		mac6 := net.HardwareAddr{0x0e, 0x66, 0, 0, byte(i >> 8), byte(i)}
		s.Routes = append(s.Routes, kernel.Route{Dst: sn6, Gw: sn6.Addr(), LinkIndex: p.dev6, Onlink: true})
		s.Neighs6 = append(s.Neighs6, kernel.Neigh{IP: sn6.Addr(), MAC: mac6})
		s.FDB6 = append(s.FDB6, kernel.FDB{MAC: mac6, Dst: netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: byte(10 + i%200)})})
	}
	return s
}

func newReconciler(t *testing.T, n int) (*kerneltest.NS, *kernel.Reconciler, *peers, int) {
	t.Helper()
	ns := kerneltest.New(t)
	under := ns.Underlay(t, "under0", netip.MustParsePrefix("192.0.2.1/24"), 1500)
	p := &peers{dev: vxlanDev(t, ns, under)}
	for i := range n {
		p.ids = append(p.ids, i+1)
	}
	r := &kernel.Reconciler{NL: ns.Netlink, Log: slog.New(slog.DiscardHandler),
		Desired: func() (kernel.State, bool, error) { return p.state(), true, nil }}
	if err := r.Pass(); err != nil {
		t.Fatal(err)
	}
	return ns, r, p, under
}

// TestUpdateCostIndependentOfN: one peer leaving and one joining cost the
// same netlink requests, and no dump, with 10 peers as with 1,000; a full
// pass afterwards finds nothing to repair.
func TestUpdateCostIndependentOfN(t *testing.T) {
	var first kernel.Ops
	for _, n := range []int{10, 1000} {
		ns, r, p, _ := newReconciler(t, n)
		before := ns.Ops()
		p.ids = append(p.ids[1:], n+1) // peer 1 leaves, peer n+1 joins
		if err := r.Update(); err != nil {
			t.Fatal(err)
		}
		after := ns.Ops()
		got := kernel.Ops{Requests: after.Requests - before.Requests, Dumps: after.Dumps - before.Dumps, Dumped: after.Dumped - before.Dumped}
		t.Logf("N=%d: one leave and one join: %+v", n, got)
		if got.Dumps != 0 {
			t.Errorf("N=%d: an update dumped %d tables (%d entries); want none", n, got.Dumps, got.Dumped)
		}
		if n == 10 {
			first = got
		} else if got != first {
			t.Errorf("an update's netlink work grew with N: %+v at N=10, %+v at N=%d", first, got, n)
		}
		st := r.Stats()
		if st.Updates != 1 || st.Programmed != uint64(3*n+3) || st.StaleRemoved != 3 {
			t.Errorf("N=%d: stats %+v; want 1 update, %d programmed, 3 stale removed", n, st, 3*n+3)
		}
		if err := r.Pass(); err != nil {
			t.Fatal(err)
		}
		if st2 := r.Stats(); st2.Programmed != st.Programmed || st2.StaleRemoved != st.StaleRemoved || st2.Repairs != 0 {
			t.Errorf("N=%d: the full pass after the update changed the kernel: %+v", n, st2)
		}
	}
}

// TestUpdateKeepsForeignRoutes: an update never replaces or deletes a
// route weft did not make: a joining peer whose destination someone
// else's route holds is refused and counted, and its leaving leaves that
// route; flanneld's identical route is taken over. A hand-deleted entry is
// repaired by the next full pass.
func TestUpdateKeepsForeignRoutes(t *testing.T) {
	ns, r, p, under := newReconciler(t, 3)
	foreign := &netlink.Route{Dst: &net.IPNet{IP: net.IPv4(10, 100, 9, 0).To4(), Mask: net.CIDRMask(24, 32)},
		Gw: net.IPv4(192, 0, 2, 254).To4(), LinkIndex: under, Protocol: unix.RTPROT_STATIC, Priority: 50}
	if err := ns.H.RouteAdd(foreign); err != nil {
		t.Fatal(err)
	}
	p.ids = append(p.ids, 9)
	if err := r.Update(); err != nil {
		t.Fatal(err)
	}
	st := r.Stats()
	if st.Conflicts != 1 || len(st.Refused) != 1 {
		t.Fatalf("stats %+v; want peer 9's route to 10.100.9.0/24 refused", st)
	}
	p.ids = p.ids[:3] // peer 9 leaves
	if err := r.Update(); err != nil {
		t.Fatal(err)
	}
	kept := false
	for _, rt := range ns.Routes(t) {
		if rt.Dst != nil && rt.Dst.String() == "10.100.9.0/24" && rt.Protocol == unix.RTPROT_STATIC {
			kept = true
		}
	}
	if !kept {
		t.Fatal("someone else's route went when the peer it blocked left")
	}
	if st := r.Stats(); len(st.Refused) != 0 {
		t.Errorf("refused routes after the peer left: %v", st.Refused)
	}

	// flanneld's identical route (proto boot) is taken over.
	sn := peerSubnet(20)
	boot := &netlink.Route{Dst: &net.IPNet{IP: sn.Addr().AsSlice(), Mask: net.CIDRMask(24, 32)}, Gw: sn.Addr().AsSlice(),
		LinkIndex: p.dev, Flags: int(netlink.FLAG_ONLINK), Protocol: unix.RTPROT_BOOT}
	if err := ns.H.RouteAdd(boot); err != nil {
		t.Fatal(err)
	}
	p.ids = append(p.ids, 20)
	if err := r.Update(); err != nil {
		t.Fatal(err)
	}
	for _, rt := range ns.Routes(t) {
		if rt.Dst != nil && rt.Dst.String() == sn.String() && rt.Protocol != kernel.RouteProtocol {
			t.Errorf("flanneld's identical route was not taken over: %v", rt)
		}
	}

	// Deleted by hand: the next full pass repairs it.
	ns.H.RouteDel(&netlink.Route{Dst: &net.IPNet{IP: sn.Addr().AsSlice(), Mask: net.CIDRMask(24, 32)}, Table: unix.RT_TABLE_MAIN})
	if err := r.Pass(); err != nil {
		t.Fatal(err)
	}
	if st := r.Stats(); st.Repairs != 1 {
		t.Errorf("repairs %d after a hand-deleted route; want 1", st.Repairs)
	}
}

// runReconciler is newReconciler with the loop running, its period an
// hour (so only events wake a pass), until the test ends.
func runReconciler(t *testing.T, n int) (*kerneltest.NS, *kernel.Reconciler, *peers) {
	t.Helper()
	ns, r, p, _ := newReconciler(t, n)
	r.Interval = time.Hour
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return ns, r, p
}

// TestRunUpdatesWithoutFullPasses: in the loop, a lease change is an
// update, and the netlink events of its own deletions wake no full pass;
// a route deleted by hand does, and is repaired.
func TestRunUpdatesWithoutFullPasses(t *testing.T) {
	ns, r, p := runReconciler(t, 50)
	waitFor := func(what string, ok func(kernel.Stats) bool) kernel.Stats {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			st := r.Stats()
			if ok(st) {
				return st
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: stats %+v", what, st)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	base := waitFor("the loop's first pass", func(s kernel.Stats) bool { return s.Passes >= 2 }).Passes
	for i := range 5 {
		p.ids = append(p.ids[1:], 100+i) // one leaves, one joins
		r.Trigger()
		waitFor("update", func(s kernel.Stats) bool { return s.Updates == uint64(i+1) })
	}
	time.Sleep(300 * time.Millisecond) // past the events' debounce
	if st := r.Stats(); st.Passes != base || st.StaleRemoved != 15 {
		t.Fatalf("after 5 updates: %+v; want no full pass beyond the first %d, 15 entries removed", st, base)
	}
	sn := peerSubnet(p.ids[0])
	ns.H.RouteDel(&netlink.Route{Dst: &net.IPNet{IP: sn.Addr().AsSlice(), Mask: net.CIDRMask(24, 32)}, Table: unix.RT_TABLE_MAIN})
	waitFor("repair of a hand-deleted route", func(s kernel.Stats) bool { return s.Repairs == 1 && s.Passes > base })
}

// TestRunRepairsAfterDeviceDown: taking the device down flushes its IPv4
// routes (on some kernels without a netlink event for any of them); the
// device's link events wake a pass, so the routes are back once it is up,
// long before the period.
func TestRunRepairsAfterDeviceDown(t *testing.T) {
	ns, r, p := runReconciler(t, 20)
	ours := func() int {
		n := 0
		for _, rt := range ns.Routes(t) {
			if rt.Protocol == kernel.RouteProtocol {
				n++
			}
		}
		return n
	}
	waitRoutes := func(what string, want int) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); ours() != want; time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: %d of weft's routes, want %d; stats %+v", what, ours(), want, r.Stats())
			}
		}
	}
	waitRoutes("the first pass", 20)
	link, err := ns.H.LinkByIndex(p.dev)
	if err != nil {
		t.Fatal(err)
	}
	if err := ns.H.LinkSetDown(link); err != nil {
		t.Fatal(err)
	}
	waitRoutes("device down (the kernel flushes its routes)", 0)
	if err := ns.H.LinkSetUp(link); err != nil {
		t.Fatal(err)
	}
	waitRoutes("device up again, with a pass an hour away", 20)
}
