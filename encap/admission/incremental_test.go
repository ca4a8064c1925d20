package admission

import (
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"testing"

	"github.com/weft-net/weft/lease"
)

// incrementalRules are the networks the comparison runs on: IPv4 only,
// dual-stack, IPv6-only.
func incrementalRules() map[string]Rule {
	own4 := netip.MustParsePrefix("10.5.1.0/24")
	own6 := netip.MustParsePrefix("fd00:10:5:1::/64")
	ip4, ip6 := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8::1")
	acc := AcceptType("udp")
	// A backend claiming its data, as vxlan claims each VtepMAC.
	claims := func(a lease.Attrs) []string {
		if a.BackendData == nil {
			return nil
		}
		return []string{"data " + string(a.BackendData)}
	}
	own := lease.Attrs{PublicIP: ip4, PublicIPv6: ip6, BackendData: []byte(`"own"`)}
	return map[string]Rule{
		"claims": {Network: netip.MustParsePrefix("10.5.0.0/16"), SubnetLen: 24, IPv6Network: netip.MustParsePrefix("fd00:10:5::/48"), IPv6SubnetLen: 64, Accept: acc,
			Claims: claims, Own: lease.Lease{Subnet: own4, IPv6Subnet: own6, Attrs: own}},
		"ipv4": {Network: netip.MustParsePrefix("10.5.0.0/16"), SubnetLen: 24, Accept: acc,
			Own: lease.Lease{Subnet: own4, Attrs: lease.Attrs{PublicIP: ip4}}},
		"dual": {Network: netip.MustParsePrefix("10.5.0.0/16"), SubnetLen: 24, IPv6Network: netip.MustParsePrefix("fd00:10:5::/48"), IPv6SubnetLen: 64, Accept: acc,
			Own: lease.Lease{Subnet: own4, IPv6Subnet: own6, Attrs: lease.Attrs{PublicIP: ip4, PublicIPv6: ip6}}},
		"ipv6only": {IPv6Network: netip.MustParsePrefix("fd00:10:5::/48"), IPv6SubnetLen: 64, Accept: acc,
			Own: lease.Lease{IPv6Subnet: own6, Attrs: lease.Attrs{PublicIPv6: ip6}}},
	}
}

// randomLease draws a lease from small pools, so that subnets and public
// IPs collide often, with bad ones (outside, wrong length, this host's,
// another backend) among them.
func randomLease(r *rand.Rand, rev int64) lease.Lease {
	var l lease.Lease
	v4 := []string{"10.5.1.0/24", "10.5.2.0/24", "10.5.3.0/24", "10.5.4.0/24", "10.5.5.0/24", "10.6.0.0/24", "10.5.6.0/25"}
	v6 := []string{"fd00:10:5:1::/64", "fd00:10:5:2::/64", "fd00:10:5:3::/64", "fd00:10:5:4::/64", "fd00:99::/64"}
	ip4 := []string{"192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4", "127.0.0.1"}
	ip6 := []string{"2001:db8::1", "2001:db8::2", "2001:db8::3", "2001:db8::4"}
	switch r.IntN(4) {
	case 0: // IPv6-only lease
		l.IPv6Subnet = netip.MustParsePrefix(v6[r.IntN(len(v6))])
	case 1: // dual-stack
		l.Subnet = netip.MustParsePrefix(v4[r.IntN(len(v4))])
		l.IPv6Subnet = netip.MustParsePrefix(v6[r.IntN(len(v6))])
	default:
		l.Subnet = netip.MustParsePrefix(v4[r.IntN(len(v4))])
	}
	if r.IntN(8) != 0 {
		l.Attrs.PublicIP = netip.MustParseAddr(ip4[r.IntN(len(ip4))])
	}
	if r.IntN(3) != 0 {
		l.Attrs.PublicIPv6 = netip.MustParseAddr(ip6[r.IntN(len(ip6))])
	}
	if r.IntN(10) == 0 {
		l.Attrs.BackendType = "host-gw"
	}
	if r.IntN(3) == 0 {
		l.Attrs.BackendData = []byte([]string{`"a"`, `"b"`, `"c"`, `"own"`}[r.IntN(4)])
	}
	l.Revision = rev
	l.CreateRevision = int64(r.IntN(6)) // ties broken by ID
	return l
}

// TestGateUpdateMatchesAdmit: after any sequence of changes, the gate's
// incremental decisions equal Admit's over the whole set, for every
// lease: admitted as Admit passes it on, or refused with Admit's reason
// and words. Deletions that un-refuse an older-refused lease, and the
// cascades behind them, are what this exercises.
func TestGateUpdateMatchesAdmit(t *testing.T) {
	for name, rule := range incrementalRules() {
		t.Run(name, func(t *testing.T) {
			for seed := range uint64(200) {
				compareRandom(t, rule, rand.New(rand.NewPCG(seed, 19)), 60)
				if t.Failed() {
					t.Fatalf("seed %d", seed)
				}
			}
		})
	}
}

func compareRandom(t *testing.T, rule Rule, r *rand.Rand, steps int) {
	t.Helper()
	g := NewGate(rule, slog.New(slog.DiscardHandler))
	store := map[netip.Prefix]lease.Lease{}
	rev := int64(100)
	admitted := map[netip.Prefix]lease.Lease{} // what a backend holds, from the deltas
	apply := func(c lease.Changes) {
		put, removed := g.Update(c)
		if c.Full {
			clear(admitted)
			for _, p := range g.Peers() {
				admitted[p.ID()] = p
			}
			return
		}
		for _, id := range removed {
			delete(admitted, id)
		}
		for _, p := range put {
			admitted[p.ID()] = p
		}
	}
	for step := range steps {
		var c lease.Changes
		switch k := r.IntN(10); {
		case k == 0 || step == 0:
			c.Full = true
			for range r.IntN(8) {
				rev++
				l := randomLease(r, rev)
				store[l.ID()] = l
			}
			c.Put = slices.Collect(maps.Values(store))
		case k < 4 && len(store) > 0:
			ids := slices.Collect(maps.Keys(store))
			for range 1 + r.IntN(2) {
				id := ids[r.IntN(len(ids))]
				delete(store, id)
				c.Deleted = append(c.Deleted, id)
			}
		default:
			for range 1 + r.IntN(2) {
				rev++
				l := randomLease(r, rev)
				store[l.ID()] = l
				c.Put = append(c.Put, l)
			}
		}
		apply(c)
		g.set.Check()
		for id := range g.leases {
			if _, ok := store[id]; !ok {
				t.Fatalf("step %d: gate holds %v, not in the store; change %+v", step, id, c)
			}
		}
		snap := slices.Collect(maps.Values(store))
		slices.SortFunc(snap, lease.CompareID)
		want := Admit(rule, snap)
		var wantPeers []lease.Lease
		wantRefused := map[int64]string{} // by revision: unique per lease
		for _, d := range want {
			if d.Refused == nil {
				wantPeers = append(wantPeers, d.Lease)
			} else {
				wantRefused[d.Lease.Revision] = d.Refused.Error()
			}
		}
		slices.SortFunc(wantPeers, lease.CompareID)
		if got := g.Peers(); !reflect.DeepEqual(got, wantPeers) {
			t.Errorf("step %d: admitted\n got %v\nwant %v\nstore %v", step, got, wantPeers, snap)
			return
		}
		var fromDeltas []lease.Lease
		for _, p := range admitted {
			fromDeltas = append(fromDeltas, p)
		}
		slices.SortFunc(fromDeltas, lease.CompareID)
		if !slices.EqualFunc(fromDeltas, wantPeers, sameForBackends) {
			t.Errorf("step %d: the deltas applied give\n %v\nwant %v", step, fromDeltas, wantPeers)
			return
		}
		gotRefused := map[int64]string{}
		for id, ref := range g.refused {
			gotRefused[store[id].Revision] = ref.Error()
		}
		if !reflect.DeepEqual(gotRefused, wantRefused) {
			t.Errorf("step %d: refused\n got %v\nwant %v\nstore %v", step, gotRefused, wantRefused, fmt.Sprint(snap))
			for _, l := range snap {
				t.Logf("%v rev %d created %d ip %v ip6 %v holds %v", l, l.Revision, l.CreateRevision, l.Attrs.PublicIP, l.Attrs.PublicIPv6, g.set.Holds(l.ID()))
			}
			return
		}
	}
}

// FuzzGateUpdate is TestGateUpdateMatchesAdmit from fuzzed seeds.
func FuzzGateUpdate(f *testing.F) {
	f.Add(uint64(1), uint64(2))
	f.Fuzz(func(t *testing.T, a, b uint64) {
		for _, rule := range incrementalRules() {
			compareRandom(t, rule, rand.New(rand.NewPCG(a, b)), 40)
		}
	})
}
