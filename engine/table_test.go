package engine

import (
	"cmp"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
)

// slowLookup is the reference: a linear scan of the peers' prefixes.
func slowLookup(peers []PeerSpec, own netip.Prefix, a netip.Addr) (netip.Prefix, bool) {
	for _, p := range peers {
		if p.Subnet != own && p.Subnet.Contains(a) {
			return p.Subnet, true
		}
	}
	return netip.Prefix{}, false
}

func randomPeers(r *rand.Rand, network netip.Prefix, subnetLen, n int) []PeerSpec {
	span := 1 << (subnetLen - network.Bits())
	seen := map[int]bool{}
	var out []PeerSpec
	base := u32(network.Addr())
	for len(out) < n && len(seen) < span {
		i := r.IntN(span)
		if seen[i] {
			continue
		}
		seen[i] = true
		a := base | uint32(i)<<(32-subnetLen)
		out = append(out, PeerSpec{
			Subnet:   netip.PrefixFrom(addrFrom(a), subnetLen),
			Endpoint: netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, byte(len(out) >> 8), byte(len(out))}), 8285),
		})
	}
	return out
}

func addrFrom(a uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(a >> 24), byte(a >> 16), byte(a >> 8), byte(a)})
}

// TestTableMatchesReference checks the O(1) table against the linear scan
// for random networks, splits (direct slots and the map fallback) and
// addresses inside and outside the network.
func TestTableMatchesReference(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	shapes := []struct {
		net    string
		sub, n int
	}{
		{"10.5.0.0/16", 24, 50},
		{"10.0.0.0/8", 24, 500},
		{"10.5.0.0/22", 24, 3},
		{"10.5.0.0/28", 30, 3},
		{"10.0.0.0/8", 24, 300},    // 2^16 slots: direct, the limit
		{"10.0.0.0/8", 25, 300},    // 2^17 slots: map fallback
		{"100.64.0.0/10", 30, 300}, // 2^20 slots: map fallback
		{"10.0.0.0/8", 30, 300},    // 2^22 slots: map fallback
	}
	for _, s := range shapes {
		network := netip.MustParsePrefix(s.net)
		peers := randomPeers(r, network, s.sub, s.n)
		own := peers[0].Subnet
		tab, err := NewTable(network, s.sub, own, peers, nil)
		if err != nil {
			t.Fatal(err)
		}
		if (tab.v4.chunks == nil) != (s.sub-network.Bits() > 16) {
			t.Errorf("%s/%d: direct slots %v", s.net, s.sub, tab.v4.chunks != nil)
		}
		probe := func(a netip.Addr) {
			want, ok := slowLookup(peers, own, a)
			got := tab.Lookup(a)
			if ok != (got != nil) || (ok && got.Subnet != want) {
				t.Fatalf("%s/%d: Lookup(%s) = %v, want %v (%v)", s.net, s.sub, a, got, want, ok)
			}
			if tab.isLocal(u32(a)) != own.Contains(a) {
				t.Fatalf("isLocal(%s) wrong", a)
			}
		}
		for i := 0; i < 20000; i++ {
			probe(addrFrom(r.Uint32()))
			probe(addrFrom(u32(network.Addr()) | r.Uint32()&^prefixMask(network.Bits())))
		}
		for _, p := range peers {
			probe(p.Subnet.Addr())
			if got := tab.peerByIP(u32(p.Endpoint.Addr())); p.Subnet != own && (got == nil || got.Subnet != p.Subnet) {
				t.Fatalf("peerByIP(%s) = %v", p.Endpoint.Addr(), got)
			}
		}
		if len(tab.Peers()) != len(peers)-1 {
			t.Errorf("%d peers, want %d", len(tab.Peers()), len(peers)-1)
		}
	}
}

// TestTableSnapshotsShareChunks: successive snapshots under churn (peers
// added, removed, moved, kept) share the direct slots' unchanged chunks
// and still answer exactly as the linear scan; duplicates are refused
// whether or not the peer was in the previous snapshot.
func TestTableSnapshotsShareChunks(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	network := netip.MustParsePrefix("10.0.0.0/8")
	peers := randomPeers(r, network, 24, 1000)
	own := peers[0].Subnet
	tab, err := NewTable(network, 24, own, peers, nil)
	if err != nil {
		t.Fatal(err)
	}
	for round := range 60 {
		prevPeers, prev := peers, tab
		peers = slices.Clone(peers)
		switch round % 3 {
		case 0: // a peer leaves
			i := 1 + r.IntN(len(peers)-1)
			peers = slices.Delete(peers, i, i+1)
		case 1: // a peer joins
			more := randomPeers(r, network, 24, 1)
			if _, ok := slowLookup(peers, netip.Prefix{}, more[0].Subnet.Addr()); !ok {
				peers = append(peers, more[0])
			}
		case 2: // a peer moves
			i := 1 + r.IntN(len(peers)-1)
			peers[i].Endpoint = netip.AddrPortFrom(addrFrom(r.Uint32()|1), 8285)
		}
		if tab, err = NewTable(network, 24, own, peers, prev); err != nil {
			t.Fatal(err)
		}
		shared := 0
		for c := range tab.v4.chunks {
			if tab.v4.chunks[c] != nil && tab.v4.chunks[c] == prev.v4.chunks[c] {
				shared++
			}
		}
		if used := countChunks(tab); shared < used-2 {
			t.Fatalf("round %d: %d of %d chunks shared with the previous snapshot; want all but the changed one", round, shared, used)
		}
		for _, p := range append(slices.Clone(prevPeers), peers...) {
			a := p.Subnet.Addr()
			want, ok := slowLookup(peers, own, a)
			if got := tab.Lookup(a); ok != (got != nil) || (ok && (got.Subnet != want || got.Endpoint != endpointOf(peers, want))) {
				t.Fatalf("round %d: Lookup(%s) = %v, want %v (%v)", round, a, got, want, ok)
			}
		}
	}
	dup := append(slices.Clone(peers), peers[len(peers)-1])
	if _, err := NewTable(network, 24, own, dup, tab); err == nil {
		t.Error("a peer of the previous snapshot listed twice was accepted")
	}
	fresh := randomPeers(r, network, 24, 1)[0]
	if _, err := NewTable(network, 24, own, append(slices.Clone(peers), fresh, fresh), tab); err == nil {
		t.Error("a new peer listed twice was accepted")
	}
}

func countChunks(t *Table) int {
	n := 0
	for _, c := range t.v4.chunks {
		if c != nil {
			n++
		}
	}
	return n
}

func endpointOf(peers []PeerSpec, sn netip.Prefix) netip.AddrPort {
	for _, p := range peers {
		if p.Subnet == sn {
			return p.Endpoint
		}
	}
	return netip.AddrPort{}
}

// TestTableSnapshotMemory: a snapshot's size follows its peers, not the
// span of subnet numbers, once that span is above maxDirectSlots: a /8
// split into /28s (2^20 subnet numbers) with a few peers must not cost
// megabytes on every lease change.
func TestTableSnapshotMemory(t *testing.T) {
	network := netip.MustParsePrefix("10.0.0.0/8")
	peers := randomPeers(rand.New(rand.NewPCG(7, 8)), network, 28, 10)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	if _, err := NewTable(network, 28, peers[0].Subnet, peers, nil); err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&after)
	if n := after.TotalAlloc - before.TotalAlloc; n > 64<<10 {
		t.Errorf("a snapshot of %d peers allocated %d bytes", len(peers), n)
	}
	// At the limit the direct slots are 8 bytes each and no more.
	if maxDirectSlots*8 > 512<<10 {
		t.Errorf("maxDirectSlots %d: more than 512 KiB of slots per snapshot", maxDirectSlots)
	}
	// One peer more on a /8 of /24s: the chunks of the others are shared.
	peers = randomPeers(rand.New(rand.NewPCG(7, 9)), network, 24, 1000)
	prev, err := NewTable(network, 24, peers[0].Subnet, peers[:999], nil)
	if err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&before)
	if _, err := NewTable(network, 24, peers[0].Subnet, peers, prev); err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&after)
	if n := after.TotalAlloc - before.TotalAlloc; n > 160<<10 {
		t.Errorf("a snapshot of 1,000 peers after one change allocated %d bytes", n)
	}
}

// BenchmarkTableSnapshot measures building a snapshot (what every lease
// change costs) at the direct-slot limit and just above it, with 1000 or
// 5000 peers (issue 19's scale) reused from the previous snapshot as in
// steady state.
func BenchmarkTableSnapshot(b *testing.B) {
	for _, s := range []struct {
		name  string
		sub   int
		peers int
	}{{"direct-2^16", 24, 1000}, {"map-2^17", 25, 1000}, {"map-2^20", 28, 1000}, {"direct-2^16-5000peers", 24, 5000}, {"map-2^17-5000peers", 25, 5000}} {
		b.Run(s.name, func(b *testing.B) {
			network := netip.MustParsePrefix("10.0.0.0/8")
			peers := randomPeers(rand.New(rand.NewPCG(9, 10)), network, s.sub, s.peers)
			prev, err := NewTable(network, s.sub, peers[0].Subnet, peers, nil)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				if prev, err = NewTable(network, s.sub, peers[0].Subnet, peers, prev); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func TestTableRefusesBadInput(t *testing.T) {
	n := netip.MustParsePrefix("10.5.0.0/16")
	ep := netip.MustParseAddrPort("192.0.2.2:8285")
	own := netip.MustParsePrefix("10.5.1.0/24")
	bad := [][]PeerSpec{
		{{Subnet: netip.MustParsePrefix("10.6.1.0/24"), Endpoint: ep}}, // outside
		{{Subnet: netip.MustParsePrefix("10.5.2.0/25"), Endpoint: ep}}, // wrong length
		{{Subnet: netip.MustParsePrefix("10.5.2.1/24"), Endpoint: ep}}, // host bits
		{{Subnet: netip.MustParsePrefix("10.5.2.0/24")}},               // no endpoint
		{{Subnet: netip.MustParsePrefix("10.5.2.0/24"), Endpoint: ep}, {Subnet: netip.MustParsePrefix("10.5.2.0/24"), Endpoint: ep}},
	}
	for i, peers := range bad {
		if _, err := NewTable(n, 24, own, peers, nil); err == nil {
			t.Errorf("case %d: accepted %v", i, peers)
		}
	}
	if _, err := NewTable(n, 16, own, nil, nil); err == nil {
		t.Error("accepted subnet length equal to the network's")
	}
}

func TestTableKeepsPeersAcrossRebuilds(t *testing.T) {
	n := netip.MustParsePrefix("10.5.0.0/16")
	a := PeerSpec{Subnet: netip.MustParsePrefix("10.5.2.0/24"), Endpoint: netip.MustParseAddrPort("192.0.2.2:8285")}
	b := PeerSpec{Subnet: netip.MustParsePrefix("10.5.3.0/24"), Endpoint: netip.MustParseAddrPort("192.0.2.3:8285")}
	t1, _ := NewTable(n, 24, netip.Prefix{}, []PeerSpec{a, b}, nil)
	b.Endpoint = netip.MustParseAddrPort("192.0.2.33:8285")
	t2, _ := NewTable(n, 24, netip.Prefix{}, []PeerSpec{a, b}, t1)
	if t1.Lookup(a.Subnet.Addr()) != t2.Lookup(a.Subnet.Addr()) {
		t.Error("an unchanged peer got a new Peer (its counters would reset)")
	}
	if t1.Lookup(b.Subnet.Addr()) == t2.Lookup(b.Subnet.Addr()) {
		t.Error("a peer whose endpoint changed kept its old Peer")
	}
}

// TestTableConcurrentSwap has readers look up addresses while a writer
// publishes new tables; run under -race it proves readers need no lock,
// and every answer must be one some published table gave.
func TestTableConcurrentSwap(t *testing.T) {
	n := netip.MustParsePrefix("10.5.0.0/16")
	var ref TableRef
	mk := func(gen int) *Table {
		var peers []PeerSpec
		for i := 1; i <= 20; i++ {
			peers = append(peers, PeerSpec{
				Subnet:   netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 5, byte(i), 0}), 24),
				Endpoint: netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}), uint16(1000+gen%2)),
			})
		}
		tab, err := NewTable(n, 24, netip.Prefix{}, peers, ref.Load())
		if err != nil {
			t.Error(err)
		}
		return tab
	}
	ref.Store(mk(0))
	var stop atomic.Bool
	var wg sync.WaitGroup
	for r := 0; r < 4; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; !stop.Load(); i++ {
				tab := ref.Load()
				p := tab.lookup(0x0a050000 | uint32(1+i%20)<<8 | 7)
				if p == nil || p.Endpoint.Addr().As4()[3] != byte(1+i%20) {
					t.Errorf("lookup during swap returned %v", p)
					return
				}
			}
		}()
	}
	for gen := 1; gen < 2000; gen++ {
		ref.Store(mk(gen))
	}
	stop.Store(true)
	wg.Wait()
}

func BenchmarkLookup(b *testing.B) {
	for _, c := range []struct{ n, sub int }{{10, 24}, {1000, 24}, {65536, 24}, {1000, 28}} {
		n, sub := c.n, c.sub
		name := fmt.Sprintf("peers=%d", n)
		if sub != 24 {
			name += fmt.Sprintf("/map-fallback-%d", sub)
		}
		b.Run(name, func(b *testing.B) {
			r := rand.New(rand.NewPCG(5, 6))
			network := netip.MustParsePrefix("10.0.0.0/8")
			peers := randomPeers(r, network, sub, n)
			tab, err := NewTable(network, sub, netip.Prefix{}, peers, nil)
			if err != nil {
				b.Fatal(err)
			}
			addrs := make([]uint32, 1024)
			for i := range addrs {
				addrs[i] = u32(peers[r.IntN(len(peers))].Subnet.Addr()) | 9
			}
			b.ReportAllocs()
			b.ResetTimer()
			var hit int
			for i := 0; i < b.N; i++ {
				if tab.lookup(addrs[i&1023]) != nil {
					hit++
				}
			}
			if hit != b.N {
				b.Fatal("missed")
			}
		})
	}
}

// randomPeers6 returns n peers with distinct random IPv6 subnets of
// network, every third one dual-stack with an IPv4 subnet of 10.0.0.0/8's
// /24s (i-th), the others IPv6-only.
func randomPeers6(r *rand.Rand, network netip.Prefix, subnetLen, n int) []PeerSpec {
	bits := subnetLen - network.Bits()
	seen := map[uint64]bool{}
	base := addr6Of(network.Masked().Addr())
	var out []PeerSpec
	for len(out) < n && (bits >= 63 || uint64(len(seen)) < uint64(1)<<bits) {
		num := r.Uint64()
		if bits < 64 {
			num &= uint64(1)<<bits - 1
		}
		if seen[num] {
			continue
		}
		seen[num] = true
		// place num at bits [network.Bits(), subnetLen)
		s := uint(128 - subnetLen)
		a := addr6{base.hi | hiPart(num, s), base.lo | loPart(num, s)}
		p := PeerSpec{
			Subnet6:  netip.PrefixFrom(a.addr(), subnetLen),
			Endpoint: netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, byte(len(out) >> 8), byte(len(out))}), 8285),
		}
		if len(out)%3 == 0 {
			p.Subnet = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(len(out) >> 8), byte(len(out)), 0}), 24)
		}
		out = append(out, p)
	}
	return out
}

// hiPart and loPart are num shifted left by s inside a 128-bit address.
func hiPart(num uint64, s uint) uint64 {
	if s >= 64 {
		return num << (s - 64)
	}
	return num >> (64 - s)
}

func loPart(num uint64, s uint) uint64 {
	if s >= 64 {
		return 0
	}
	return num << s
}

func slowLookup6(peers []PeerSpec, own netip.Prefix, a netip.Addr) (netip.Prefix, bool) {
	for _, p := range peers {
		if p.Subnet6.IsValid() && p.Subnet6 != own && p.Subnet6.Contains(a) {
			return p.Subnet6, true
		}
	}
	return netip.Prefix{}, false
}

// TestTable6MatchesReference checks the IPv6 index against the linear
// scan for splits on either side of the 64-bit boundary, direct and
// through the map, dual-stack and IPv6-only peers mixed.
func TestTable6MatchesReference(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 12))
	shapes := []struct {
		net    string
		sub, n int
		direct bool
	}{
		{"fd00:10:5::/56", 64, 100, true},
		{"fd00:10::/48", 64, 500, true},   // 2^16 slots: direct, the limit
		{"fd00:10::/47", 64, 300, false},  // 2^17: map
		{"fd00::/32", 64, 300, false},     // 2^32: map
		{"fd00:1:2:3::/60", 68, 10, true}, // across the 64-bit boundary
		{"fd00:1:2:3::/62", 80, 100, false},
		{"fd00:1:2:3:4:5::/96", 112, 300, true}, // low half only
		{"fd00:1:2:3:4:5:6:0/112", 120, 256, true},
		{"::/0", 64, 300, false}, // the widest split allowed
		{"fd00::/8", 72, 300, false},
	}
	v4 := netip.MustParsePrefix("10.0.0.0/8")
	for _, s := range shapes {
		network := netip.MustParsePrefix(s.net)
		peers := randomPeers6(r, network, s.sub, s.n)
		own := peers[1].Subnet6 // an IPv6-only peer
		tab, err := NewTableFor(Networks{Network: v4, SubnetLen: 24, Network6: network, SubnetLen6: s.sub, Own6: own}, peers, nil)
		if err != nil {
			t.Fatalf("%s/%d: %v", s.net, s.sub, err)
		}
		if (tab.v6.chunks != nil) != s.direct {
			t.Errorf("%s/%d: direct slots %v", s.net, s.sub, tab.v6.chunks != nil)
		}
		probe := func(a netip.Addr) {
			want, ok := slowLookup6(peers, own, a)
			got := tab.Lookup(a)
			if ok != (got != nil) || (ok && got.Subnet6 != want) {
				t.Fatalf("%s/%d: Lookup(%s) = %v, want %v (%v)", s.net, s.sub, a, got, want, ok)
			}
			if tab.isLocal6(addr6Of(a)) != own.Contains(a) {
				t.Fatalf("isLocal6(%s) wrong", a)
			}
		}
		netA, netM := addr6Of(network.Masked().Addr()), prefixMask6(network.Bits())
		for i := 0; i < 20000; i++ {
			rnd := addr6{r.Uint64(), r.Uint64()}
			probe(rnd.addr())
			probe(addr6{netA.hi | rnd.hi&^netM.hi, netA.lo | rnd.lo&^netM.lo}.addr())
		}
		for _, p := range peers {
			probe(p.Subnet6.Addr())
			last := addr6Of(p.Subnet6.Addr())
			m := prefixMask6(s.sub)
			probe(addr6{last.hi | ^m.hi, last.lo | ^m.lo}.addr())
			if p.Subnet.IsValid() {
				if got := tab.Lookup(p.Subnet.Addr().Next()); got == nil || got.Subnet6 != p.Subnet6 {
					t.Fatalf("the IPv4 subnet of a dual-stack peer: Lookup = %v", got)
				}
			}
		}
		if len(tab.Peers()) != len(peers)-1 {
			t.Errorf("%d peers, want %d", len(tab.Peers()), len(peers)-1)
		}
		sorted := slices.IsSortedFunc(tab.Peers(), func(a, b *Peer) int {
			if a.Subnet.IsValid() != b.Subnet.IsValid() {
				return map[bool]int{true: -1, false: 1}[a.Subnet.IsValid()]
			}
			return cmp.Or(a.Subnet.Addr().Compare(b.Subnet.Addr()), a.Subnet6.Addr().Compare(b.Subnet6.Addr()))
		})
		if !sorted {
			t.Errorf("%s/%d: peers not sorted", s.net, s.sub)
		}
	}
}

// TestTable6SnapshotsShareChunks: the IPv6 direct slots are shared between
// snapshots like the IPv4 ones, and a peer gaining or losing a family gets
// a new Peer.
func TestTable6SnapshotsShareChunks(t *testing.T) {
	r := rand.New(rand.NewPCG(13, 14))
	network := netip.MustParsePrefix("fd00:10::/48")
	n := Networks{Network: netip.MustParsePrefix("10.0.0.0/8"), SubnetLen: 24, Network6: network, SubnetLen6: 64}
	peers := randomPeers6(r, network, 64, 1000)
	tab, err := NewTableFor(n, peers, nil)
	if err != nil {
		t.Fatal(err)
	}
	for round := range 30 {
		prev := tab
		peers = slices.Clone(peers)
		i := r.IntN(len(peers))
		switch round % 3 {
		case 0: // a peer leaves
			peers = slices.Delete(peers, i, i+1)
		case 1: // a peer moves
			peers[i].Endpoint = netip.AddrPortFrom(addrFrom(r.Uint32()|1), 8285)
		case 2: // a dual-stack peer drops IPv4, or an IPv6-only one gains it
			if peers[i].Subnet.IsValid() {
				peers[i].Subnet = netip.Prefix{}
			} else {
				peers[i].Subnet = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 200, byte(round), 0}), 24)
			}
		}
		if tab, err = NewTableFor(n, peers, prev); err != nil {
			t.Fatal(err)
		}
		shared, used := 0, 0
		for c := range tab.v6.chunks {
			if tab.v6.chunks[c] != nil {
				used++
				if tab.v6.chunks[c] == prev.v6.chunks[c] {
					shared++
				}
			}
		}
		if shared < used-2 {
			t.Fatalf("round %d: %d of %d IPv6 chunks shared", round, shared, used)
		}
		for _, p := range peers {
			got := tab.Lookup(p.Subnet6.Addr())
			if got == nil || got.Subnet != p.Subnet || got.Endpoint != p.Endpoint {
				t.Fatalf("round %d: Lookup(%s) = %v, want %+v", round, p.Subnet6, got, p)
			}
			if old := prev.Lookup(p.Subnet6.Addr()); old != nil && (old.Subnet == p.Subnet && old.Endpoint == p.Endpoint) != (old == got) {
				t.Fatalf("round %d: %s reused %v, changed %v", round, p.Subnet6, old == got, old.Subnet != p.Subnet || old.Endpoint != p.Endpoint)
			}
		}
	}
}

func TestTable6RefusesBadInput(t *testing.T) {
	v4, v6 := netip.MustParsePrefix("10.5.0.0/16"), netip.MustParsePrefix("fd00:10:5::/56")
	dual := Networks{Network: v4, SubnetLen: 24, Network6: v6, SubnetLen6: 64}
	ep := netip.MustParseAddrPort("192.0.2.2:8285")
	sn := func(s string) netip.Prefix { return netip.MustParsePrefix(s) }
	bad := []struct {
		name  string
		n     Networks
		peers []PeerSpec
	}{
		{"no network", Networks{}, nil},
		{"v6 network with v4 address", Networks{Network6: v4, SubnetLen6: 24}, nil},
		{"v4-mapped v6 network", Networks{Network6: sn("::ffff:10.0.0.0/104"), SubnetLen6: 120}, nil},
		{"subnet length not above the network's", Networks{Network6: v6, SubnetLen6: 56}, nil},
		{"subnet length past 128", Networks{Network6: v6, SubnetLen6: 129}, nil},
		{"2^72 subnets", Networks{Network6: sn("fd00::/48"), SubnetLen6: 120}, nil},
		{"own6 outside", Networks{Network6: v6, SubnetLen6: 64, Own6: sn("fd00:10:6::/64")}, nil},
		{"own6 wrong length", Networks{Network6: v6, SubnetLen6: 64, Own6: sn("fd00:10:5::/60")}, nil},
		{"v6 subnet outside", dual, []PeerSpec{{Subnet6: sn("fd00:10:6:1::/64"), Endpoint: ep}}},
		{"v6 subnet wrong length", dual, []PeerSpec{{Subnet6: sn("fd00:10:5:1::/72"), Endpoint: ep}}},
		{"v6 subnet host bits", dual, []PeerSpec{{Subnet6: sn("fd00:10:5:1::1/64"), Endpoint: ep}}},
		{"v4 subnet as v6", dual, []PeerSpec{{Subnet6: sn("10.5.1.0/24"), Endpoint: ep}}},
		{"v6 subnet as v4", dual, []PeerSpec{{Subnet: sn("fd00:10:5:1::/64"), Endpoint: ep}}},
		{"no subnet", dual, []PeerSpec{{Endpoint: ep}}},
		{"v6 peer in a v4 table", Networks{Network: v4, SubnetLen: 24}, []PeerSpec{{Subnet6: sn("fd00:10:5:1::/64"), Endpoint: ep}}},
		{"v4 peer in a v6 table", Networks{Network6: v6, SubnetLen6: 64}, []PeerSpec{{Subnet: sn("10.5.1.0/24"), Endpoint: ep}}},
		{"v6 endpoint", dual, []PeerSpec{{Subnet6: sn("fd00:10:5:1::/64"), Endpoint: netip.MustParseAddrPort("[2001:db8::1]:8285")}}},
		{"v6 subnet twice", dual, []PeerSpec{
			{Subnet: sn("10.5.1.0/24"), Subnet6: sn("fd00:10:5:1::/64"), Endpoint: ep},
			{Subnet: sn("10.5.2.0/24"), Subnet6: sn("fd00:10:5:1::/64"), Endpoint: netip.MustParseAddrPort("192.0.2.3:8285")}}},
		{"v6-only peer twice", dual, []PeerSpec{{Subnet6: sn("fd00:10:5:1::/64"), Endpoint: ep}, {Subnet6: sn("fd00:10:5:1::/64"), Endpoint: ep}}},
	}
	for _, c := range bad {
		if _, err := NewTableFor(c.n, c.peers, nil); err == nil {
			t.Errorf("%s: accepted", c.name)
		}
	}
	// A v6-only peer listed twice is refused also when prev holds it.
	p := PeerSpec{Subnet6: sn("fd00:10:5:1::/64"), Endpoint: ep}
	prev, err := NewTableFor(dual, []PeerSpec{p}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := NewTableFor(dual, []PeerSpec{p, p}, prev); err == nil {
		t.Error("a v6-only peer of the previous snapshot listed twice was accepted")
	}
	// This host's own entry is left out, by either family.
	own := Networks{Network: v4, SubnetLen: 24, Own: sn("10.5.1.0/24"), Network6: v6, SubnetLen6: 64, Own6: sn("fd00:10:5:1::/64")}
	tab, err := NewTableFor(own, []PeerSpec{{Subnet: sn("10.5.1.0/24"), Subnet6: sn("fd00:10:5:1::/64"), Endpoint: ep}}, nil)
	if err != nil || len(tab.Peers()) != 0 {
		t.Errorf("own entry: %v, %d peers", err, len(tab.Peers()))
	}
	if tab.Lookup(netip.MustParseAddr("fd00:10:5:1::1")) != nil || !tab.isLocal6(addr6Of(netip.MustParseAddr("fd00:10:5:1::1"))) {
		t.Error("own IPv6 subnet is a peer, or not local")
	}
}

// TestTableFamiliesDoNotLeak: an address of one family never matches the
// other family's subnets, and a peer without a family matches no address
// of it, not even the zero address.
func TestTableFamiliesDoNotLeak(t *testing.T) {
	ep := netip.MustParseAddrPort("192.0.2.2:8285")
	v6only, err := NewTableFor(Networks{Network6: netip.MustParsePrefix("::/0"), SubnetLen6: 64}, []PeerSpec{{Subnet6: netip.MustParsePrefix("::/64"), Endpoint: ep}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{"0.0.0.0", "0.0.0.1", "10.5.1.1", "255.255.255.255"} {
		if v6only.Lookup(netip.MustParseAddr(a)) != nil || v6only.lookup(u32(netip.MustParseAddr(a))) != nil || v6only.isLocal(u32(netip.MustParseAddr(a))) {
			t.Errorf("IPv6-only table matched IPv4 %s", a)
		}
		if v6only.Peers()[0].contains(u32(netip.MustParseAddr(a))) {
			t.Errorf("IPv6-only peer contains IPv4 %s", a)
		}
	}
	if v6only.Lookup(netip.MustParseAddr("::ffff:10.5.1.1")) != nil {
		t.Error("a v4-mapped address matched")
	}
	v4only, err := NewTable(netip.MustParsePrefix("0.0.0.0/0"), 24, netip.Prefix{}, []PeerSpec{{Subnet: netip.MustParsePrefix("0.0.0.0/24"), Endpoint: ep}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{"::", "::1", "fd00::1", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"} {
		x := addr6Of(netip.MustParseAddr(a))
		if v4only.Lookup(netip.MustParseAddr(a)) != nil || v4only.isLocal6(x) || v4only.Peers()[0].contains6(x) {
			t.Errorf("IPv4-only table matched IPv6 %s", a)
		}
	}
}

func BenchmarkLookup6(b *testing.B) {
	for _, c := range []struct {
		net      string
		sub, n   int
		fallback bool
	}{{"fd00:10:5::/56", 64, 200, false}, {"fd00:10::/48", 64, 1000, false}, {"fd00::/32", 64, 1000, true}} {
		name := fmt.Sprintf("peers=%d", c.n)
		if c.fallback {
			name += "/map-fallback"
		}
		b.Run(name, func(b *testing.B) {
			r := rand.New(rand.NewPCG(5, 6))
			network := netip.MustParsePrefix(c.net)
			peers := randomPeers6(r, network, c.sub, c.n)
			tab, err := NewTableFor(Networks{Network6: network, SubnetLen6: c.sub}, stripV4(peers), nil)
			if err != nil {
				b.Fatal(err)
			}
			addrs := make([]addr6, 1024)
			for i := range addrs {
				addrs[i] = addr6Of(peers[r.IntN(len(peers))].Subnet6.Addr())
				addrs[i].lo |= 9
			}
			b.ReportAllocs()
			b.ResetTimer()
			var hit int
			for i := 0; i < b.N; i++ {
				if tab.lookup6(addrs[i&1023]) != nil {
					hit++
				}
			}
			if hit != b.N {
				b.Fatal("missed")
			}
		})
	}
}

func stripV4(peers []PeerSpec) []PeerSpec {
	out := slices.Clone(peers)
	for i := range out {
		out[i].Subnet = netip.Prefix{}
	}
	return out
}
