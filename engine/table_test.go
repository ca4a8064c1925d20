package engine

import (
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
