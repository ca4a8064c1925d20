package admission_test

import (
	"log/slog"
	"net/netip"
	"testing"

	"github.com/weft-net/weft/encap/admission"
	"github.com/weft-net/weft/engine"
	"github.com/weft-net/weft/lease"
)

// TestEventAllocsIndependentOfN: one lease event (a peer leaves, another
// joins) through the gate and into the engine's table, as the udp backend
// applies it, allocates as much at 5,000 peers as at 100 (issue 19: the
// cost of an event must not grow with the cluster). Allocations, not time.
func TestEventAllocsIndependentOfN(t *testing.T) {
	mk := func(i int) lease.Lease {
		return lease.Lease{Subnet: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 24),
			Attrs:    lease.Attrs{PublicIP: netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)})},
			Revision: int64(i + 1), CreateRevision: int64(i + 1)}
	}
	own := lease.Lease{Subnet: netip.MustParsePrefix("10.255.0.0/24"), Attrs: lease.Attrs{PublicIP: netip.MustParseAddr("198.19.0.1")}}
	nets := engine.Networks{Network: netip.MustParsePrefix("10.0.0.0/8"), SubnetLen: 24, Own: own.Subnet}
	specs := func(ls []lease.Lease) []engine.PeerSpec {
		out := make([]engine.PeerSpec, 0, len(ls))
		for _, l := range ls {
			out = append(out, engine.PeerSpec{Subnet: l.Subnet, Endpoint: netip.AddrPortFrom(l.Attrs.PublicIP, 8285)})
		}
		return out
	}
	allocs := map[int]float64{}
	for _, n := range []int{100, 5000} {
		g := admission.NewGate(admission.Rule{Network: nets.Network, SubnetLen: 24, Own: own, Accept: admission.AcceptType("udp")}, slog.New(slog.DiscardHandler))
		var all []lease.Lease
		for i := range n {
			all = append(all, mk(i))
		}
		peers := g.Admit(all)
		tab, err := engine.NewTableFor(nets, specs(peers), nil)
		if err != nil {
			t.Fatal(err)
		}
		next := n
		oldest := 0
		allocs[n] = testing.AllocsPerRun(100, func() {
			// The oldest peer leaves, a new one joins: the bench's churn.
			c := lease.Changes{Put: []lease.Lease{mk(next)}, Deleted: []netip.Prefix{mk(oldest).Subnet}}
			next, oldest = next+1, oldest+1
			put, removed := g.Update(c)
			if len(put) != 1 || len(removed) != 1 {
				t.Fatalf("put %v removed %v", put, removed)
			}
			if tab, err = tab.Update(specs(put), removed); err != nil {
				t.Fatal(err)
			}
		})
	}
	t.Logf("allocations per lease event (leave + join): %v", allocs)
	if allocs[5000] > allocs[100]+3 {
		t.Errorf("a lease event's allocations grew with N: %v at 100, %v at 5,000", allocs[100], allocs[5000])
	}
}
