package kernel_test

import (
	"net/netip"
	"testing"

	"github.com/weft-net/weft/encap/kernel"
)

// TestChangeCostIndependentOfN: a change queued with Change (one peer
// leaving, one joining, one moving) is programmed without calling
// Desired, with the same netlink requests and no dump at 10 peers as at
// 1,000; a full pass afterwards finds nothing to repair.
func TestChangeCostIndependentOfN(t *testing.T) {
	var first kernel.Ops
	for _, n := range []int{10, 1000} {
		ns, r, p, _ := newReconciler(t, n)
		calls := 0
		desired := r.Desired
		r.Desired = func() (kernel.State, bool, error) { calls++; return desired() }
		one := func(i int) kernel.State {
			q := &peers{dev: p.dev, ids: []int{i}}
			return q.state()
		}
		before := ns.Ops()
		p.ids = append(p.ids[1:], n+1) // peer 1 leaves, peer n+1 joins
		r.Change(one(1), kernel.State{})
		r.Change(kernel.State{}, one(n+1))
		if err := r.Update(); err != nil {
			t.Fatal(err)
		}
		after := ns.Ops()
		got := kernel.Ops{Requests: after.Requests - before.Requests, Dumps: after.Dumps - before.Dumps, Dumped: after.Dumped - before.Dumped}
		t.Logf("N=%d: one leave and one join: %+v", n, got)
		if calls != 0 {
			t.Errorf("N=%d: the update read the whole wanted state %d times", n, calls)
		}
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

// TestChangeKeepsWhatAMoveLeaves: a vxlan peer whose public IP changed is
// one Change removing its old entries and adding its new ones; the route
// and neighbour are the same in both and stay as they are (no request, no
// moment without them, no route add, which the kernel makes cost O(N));
// only the FDB entry moves: one delete, one add.
func TestChangeKeepsWhatAMoveLeaves(t *testing.T) {
	ns, r, p, _ := newReconciler(t, 10)
	old := (&peers{dev: p.dev, ids: []int{5}}).state()
	moved := old
	moved.FDB = []kernel.FDB{{MAC: old.FDB[0].MAC, Dst: netip.MustParseAddr("192.0.2.250")}}
	desired := r.Desired
	r.Desired = func() (kernel.State, bool, error) {
		s, ok, err := desired()
		for i, f := range s.FDB {
			if f.Dst == old.FDB[0].Dst && f.MAC.String() == old.FDB[0].MAC.String() {
				s.FDB[i] = moved.FDB[0]
			}
		}
		return s, ok, err
	}
	routes := len(ns.Routes(t))
	before, st0 := ns.Ops(), r.Stats()
	r.Change(old, moved)
	if err := r.Update(); err != nil {
		t.Fatal(err)
	}
	after, st := ns.Ops(), r.Stats()
	if got := after.Requests - before.Requests; got != 2 || after.Dumps != before.Dumps {
		t.Errorf("a moved peer cost %d requests and %d dumps; want 2 (the FDB entry's delete and add), no dump", got, after.Dumps-before.Dumps)
	}
	if st.Programmed-st0.Programmed != 1 || st.StaleRemoved-st0.StaleRemoved != 1 {
		t.Errorf("stats %+v after %+v; want 1 programmed and 1 removed (the FDB entry)", st, st0)
	}
	if got := len(ns.Routes(t)); got != routes {
		t.Errorf("%d routes after the move, want %d", got, routes)
	}
	// The kernel holds the moved state: a full pass has nothing to do.
	if err := r.Pass(); err != nil {
		t.Fatal(err)
	}
	if st2 := r.Stats(); st2.Programmed != st.Programmed || st2.StaleRemoved != st.StaleRemoved || st2.Repairs != 0 {
		t.Errorf("the full pass after the move changed the kernel: %+v", st2)
	}
}
