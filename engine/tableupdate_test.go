package engine

import (
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
)

// TestTableUpdateMatchesNewTable: after any sequence of changes, a table
// made by Update answers every lookup as NewTableFor over the same peers
// does, keeps the Peer of an unchanged spec, and leaves the table it came
// from as it was.
func TestTableUpdateMatchesNewTable(t *testing.T) {
	for _, n := range []Networks{
		{Network: netip.MustParsePrefix("10.0.0.0/8"), SubnetLen: 24, Own: netip.MustParsePrefix("10.0.0.0/24")},
		{Network: netip.MustParsePrefix("10.0.0.0/8"), SubnetLen: 28}, // the map fallback
		{Network: netip.MustParsePrefix("10.5.0.0/16"), SubnetLen: 24, Network6: netip.MustParsePrefix("fd00:10:5::/48"), SubnetLen6: 64},
	} {
		r := rand.New(rand.NewPCG(1, 19))
		specs := map[netip.Prefix]PeerSpec{}
		cur, err := NewTableFor(n, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		for step := range 400 {
			var put []PeerSpec
			var removed []netip.Prefix
			touched := map[int]bool{}
			for range 1 + r.IntN(3) {
				i := r.IntN(40)
				if touched[i] {
					continue // a change names an ID once
				}
				touched[i] = true
				sn := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i % 4), byte(i), 0}), n.SubnetLen)
				if n.Network.Bits() == 16 {
					sn = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 5, byte(i), 0}), 24)
				}
				if _, ok := specs[sn]; ok && r.IntN(2) == 0 {
					delete(specs, sn)
					removed = append(removed, sn)
					continue
				}
				s := PeerSpec{Subnet: sn, Endpoint: netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, byte(i), byte(r.IntN(2))}), 8285)}
				if n.Network6.IsValid() && r.IntN(2) == 0 {
					s.Subnet6 = netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfd, 0, 0, 0x10, 0, 5, 0, byte(i)}), 64)
					s.Endpoint6 = netip.AddrPortFrom(netip.AddrFrom16([16]byte{0x20, 1, 0xd, 0xb8, 15: byte(i)}), 8472)
				}
				specs[sn] = s
				put = append(put, s)
			}
			before := slices.Clone(cur.Peers())
			next, err := cur.Update(put, removed)
			if err != nil {
				t.Fatalf("step %d: %v", step, err)
			}
			if !slices.Equal(cur.Peers(), before) {
				t.Fatalf("step %d: Update changed the table it came from", step)
			}
			want, err := NewTableFor(n, slices.Collect(maps.Values(specs)), nil)
			if err != nil {
				t.Fatal(err)
			}
			for i := range 64 {
				for _, a := range []netip.Addr{netip.AddrFrom4([4]byte{10, byte(i % 4), byte(i), 1}), netip.AddrFrom4([4]byte{10, 5, byte(i), 1}),
					netip.AddrFrom16([16]byte{0xfd, 0, 0, 0x10, 0, 5, 0, byte(i), 15: 1})} {
					g, w := next.Lookup(a), want.Lookup(a)
					if (g == nil) != (w == nil) || g != nil && (g.Subnet != w.Subnet || g.Subnet6 != w.Subnet6 || g.Endpoint != w.Endpoint || g.Endpoint6 != w.Endpoint6) {
						t.Fatalf("step %d: Lookup(%s) = %v, want %v", step, a, g, w)
					}
				}
				for _, ip := range []netip.Addr{netip.AddrFrom4([4]byte{198, 18, byte(i), 0}), netip.AddrFrom4([4]byte{198, 18, byte(i), 1}),
					netip.AddrFrom16([16]byte{0x20, 1, 0xd, 0xb8, 15: byte(i)})} {
					g, w := next.peerBySource(ip), want.peerBySource(ip)
					if (g == nil) != (w == nil) || g != nil && g.Subnet != w.Subnet {
						t.Fatalf("step %d: peerBySource(%s) = %v, want %v", step, ip, g, w)
					}
				}
			}
			var gs, ws []netip.Prefix
			for _, p := range next.Peers() {
				gs = append(gs, p.Subnet)
			}
			for _, p := range want.Peers() {
				ws = append(ws, p.Subnet)
			}
			if !slices.Equal(gs, ws) {
				t.Fatalf("step %d: Peers %v, want %v", step, gs, ws)
			}
			for _, s := range put {
				if p := cur.byID(s.Subnet); p != nil && p.Endpoint == s.Endpoint && p.Subnet6 == s.Subnet6 && p.Endpoint6 == s.Endpoint6 && next.byID(s.Subnet) != p {
					t.Fatalf("step %d: an unchanged peer %s lost its Peer", step, s.Subnet)
				}
			}
			cur = next
		}
	}
}

// TestTableUpdateAllocsIndependentOfN: one peer leaving and one joining
// through Update allocate as much at 5,000 peers as at 100 (a /8 of /24s:
// one slot chunk and one address shard copied, whatever the count).
func TestTableUpdateAllocsIndependentOfN(t *testing.T) {
	n := Networks{Network: netip.MustParsePrefix("10.0.0.0/8"), SubnetLen: 24}
	spec := func(i int) PeerSpec {
		return PeerSpec{Subnet: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 24),
			Endpoint: netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), 8285)}
	}
	allocs := map[int]float64{}
	for _, size := range []int{100, 5000} {
		var specs []PeerSpec
		for i := range size {
			specs = append(specs, spec(i))
		}
		tab, err := NewTableFor(n, specs, nil)
		if err != nil {
			t.Fatal(err)
		}
		k := 0
		allocs[size] = testing.AllocsPerRun(50, func() {
			leave, join := spec(k%size), spec(size+k)
			next, err := tab.Update([]PeerSpec{join}, []netip.Prefix{leave.Subnet})
			if err != nil {
				t.Fatal(err)
			}
			if next, err = next.Update([]PeerSpec{leave}, []netip.Prefix{join.Subnet}); err != nil {
				t.Fatal(err)
			}
			tab = next
			k++
		})
	}
	t.Logf("allocations per leave and join: %v", allocs)
	if allocs[5000] > allocs[100]+2 {
		t.Errorf("an update's allocations grew with N: %v at 100, %v at 5,000", allocs[100], allocs[5000])
	}
}
