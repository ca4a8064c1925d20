package engine

import (
	"bytes"
	"net/netip"
	"testing"
)

// testAddr6 is fd00:10:5:subnet::host.
func testAddr6(subnet, host int) string {
	a := testSubnet6(subnet).Addr().As16()
	a[14], a[15] = byte(host>>8), byte(host)
	return netip.AddrFrom16(a).String()
}

// payload6 makes an IPv6/UDP packet as long as the IPv4 ones of fillTx
// (1428 bytes), so the benchmarks compare equal packet sizes.
const payload6 = 1400 - (ipv6HeaderLen - ipv4MinHeaderLen)

// fillTx6 puts n IPv6 packets into the tx loop's buffers, spread over the
// peers, some to a subnet no peer holds; with mixed, every other packet is
// IPv4 (to the same peers).
func fillTx6(t testing.TB, l *txLoop, n int, mixed bool) {
	for i := 0; i < n; i++ {
		// i%6 has i's parity: with mixed, each peer gets both families.
		peer, host := []int{2, 2, 3, 3, 4, 4}[i%6], 9+i%4/3
		if i%32 == 30 {
			peer = 99 // no route, an IPv6 packet also when mixed
		}
		var p []byte
		if mixed && i%2 == 1 {
			p = udpPacket(t, "10.5.1.2", netip.AddrFrom4([4]byte{10, 5, byte(peer), byte(host)}).String(), 64, make([]byte, 1400))
		} else {
			p = udp6Packet(t, testAddr6(1, 2), testAddr6(peer, host), 64, make([]byte, payload6))
		}
		l.sizes[i] = copy(l.bufs[i][Headroom:], p)
	}
}

// resetHops undoes the loops' TTL and hop-limit decrements.
func resetHops(bufs [][]byte, n int) {
	for i := 0; i < n; i++ {
		if b := bufs[i][Headroom:]; isIPv6(b) {
			b[7] = 64
		} else {
			resetTTL(bufs[i:i+1], 1)
		}
	}
}

func TestTx6ClassifyGroupsByPeer(t *testing.T) {
	for _, mixed := range []bool{false, true} {
		e := testEngine(t, 128)
		l := e.tx[0]
		fillTx6(t, l, 128, mixed)
		k := l.classify(e.Table(), 128)
		if k != 124 {
			t.Fatalf("mixed %v: classify kept %d packets, want 124 (4 have no route)", mixed, k)
		}
		if l.bc.drops[DropNoRoute] != 4 || len(l.icmp.out) != 4 {
			t.Errorf("mixed %v: no-route drops %d, ICMP queued %d; want 4 and 4", mixed, l.bc.drops[DropNoRoute], len(l.icmp.out))
		}
		for _, b := range l.icmp.out {
			ip, _ := verifyICMPv6(t, b[Headroom:], icmp6DestUnreachable, icmp6CodeNoRoute)
			if ip.DstIP.String() != testAddr6(1, 2) || ip.SrcIP.String() != testOwn6.Addr().Next().String() {
				t.Errorf("ICMPv6 error %s -> %s", ip.SrcIP, ip.DstIP)
			}
		}
		seen := map[netip.AddrPort]bool{}
		families := map[netip.AddrPort]int{}
		for i := 0; i < k; i++ {
			if i > 0 && l.outDst[i] != l.outDst[i-1] && seen[l.outDst[i]] {
				t.Fatalf("peer %s appears in two runs", l.outDst[i])
			}
			seen[l.outDst[i]] = true
			var p *Peer
			if pkt := l.out[i]; isIPv6(pkt) {
				if pkt[7] != 63 {
					t.Fatalf("hop limit %d, want 63", pkt[7])
				}
				if _, r := checkIPv6(pkt); r != DropNone {
					t.Fatal(r)
				}
				p = e.Table().lookup6(dst6(pkt))
				families[l.outDst[i]] |= 2
			} else {
				if pkt[8] != 63 || checksum(pkt[:20]) != 0 {
					t.Fatalf("TTL %d or header checksum broken", pkt[8])
				}
				p = e.Table().lookup(dstIP(pkt))
				families[l.outDst[i]] |= 1
			}
			if p == nil || p.Endpoint != l.outDst[i] {
				t.Fatalf("packet %d sent to %s, its peer is %v", i, l.outDst[i], p)
			}
		}
		if len(seen) != 3 {
			t.Errorf("%d peers, want 3", len(seen))
		}
		for ep, f := range families {
			if want := map[bool]int{false: 2, true: 3}[mixed]; f != want {
				t.Errorf("mixed %v: peer %s got families %b, want %b", mixed, ep, f, want)
			}
		}
		l.bc.flush(&l.c)
		var perPeer uint64
		for _, p := range e.Table().Peers() {
			perPeer += p.Stats().TxPackets
		}
		if s := e.Stats(); perPeer != 124 || s.TxPackets != 124 {
			t.Errorf("per-peer tx packets %d, engine %d; want 124", perPeer, s.TxPackets)
		}
	}
}

// TestTx6Errors: the hop limit, the MTU and unroutable destinations, each
// with its ICMPv6 error, and the packets RFC 4443 2.4 (e) says get none.
func TestTx6Errors(t *testing.T) {
	e := testEngine(t, 16)
	l := e.tx[0]
	me, peer := testAddr6(1, 2), testAddr6(2, 9)
	pkts := []struct {
		pkt    []byte
		reason DropReason
		typ    int // ICMPv6 type expected, -1 for none
		param  uint32
	}{
		{udp6Packet(t, me, peer, 1, []byte("x")), DropTTLExpired, icmp6TimeExceeded, 0},
		{udp6Packet(t, me, peer, 0, []byte("x")), DropTTLExpired, icmp6TimeExceeded, 0},
		{udp6Packet(t, me, peer, 64, make([]byte, 1500)), DropOversize, icmp6PacketTooBig, 1472},
		{udp6Packet(t, me, testAddr6(200, 1), 64, []byte("x")), DropNoRoute, icmp6DestUnreachable, 0},
		{udp6Packet(t, me, "fd00:10:6::1", 64, []byte("x")), DropNoRoute, icmp6DestUnreachable, 0}, // outside the network
		{udp6Packet(t, me, "2001:db8::1", 64, []byte("x")), DropNoRoute, icmp6DestUnreachable, 0},
		{udp6Packet(t, me, "ff05::2", 64, []byte("x")), DropNoRoute, -1, 0},
		{udp6Packet(t, "::", testAddr6(200, 1), 64, []byte("x")), DropNoRoute, -1, 0},
		{udp6Packet(t, "ff02::1", peer, 1, []byte("x")), DropTTLExpired, -1, 0},
		{icmp6Packet(t, me, testAddr6(200, 1), 1), DropNoRoute, -1, 0},
		{icmp6Packet(t, me, testAddr6(200, 1), 128), DropNoRoute, icmp6DestUnreachable, 0},
		{udp6Packet(t, me, peer, 2, []byte("ok")), DropNone, -1, 0},
	}
	for i, c := range pkts {
		l.sizes[i] = copy(l.bufs[i][Headroom:], c.pkt)
	}
	// Each packet alone, so its drop and its error can be told apart.
	for i, c := range pkts {
		l.bufs[0], l.bufs[i] = l.bufs[i], l.bufs[0]
		l.sizes[0], l.sizes[i] = l.sizes[i], l.sizes[0]
		k := l.classify(e.Table(), 1)
		switch {
		case c.reason == DropNone && (k != 1 || l.out[0][7] != 1):
			t.Errorf("packet %d: kept %d, want 1 with hop limit 1", i, k)
		case c.reason != DropNone && (k != 0 || l.bc.drops[c.reason] != 1):
			t.Errorf("packet %d: kept %d, drops %v; want a %v drop", i, k, l.bc.drops, c.reason)
		}
		if c.typ < 0 {
			if len(l.icmp.out) != 0 {
				t.Errorf("packet %d: answered with an ICMPv6 error", i)
			}
		} else if len(l.icmp.out) != 1 {
			t.Errorf("packet %d: %d ICMPv6 errors, want 1", i, len(l.icmp.out))
		} else {
			b := l.icmp.out[0][Headroom:]
			verifyICMPv6(t, b, uint8(c.typ), 0)
			if got := uint32(b[44])<<24 | uint32(b[45])<<16 | uint32(b[46])<<8 | uint32(b[47]); got != c.param {
				t.Errorf("packet %d: MTU field %d, want %d", i, got, c.param)
			}
			if !bytes.Equal(b[24:40], c.pkt[8:24]) {
				t.Errorf("packet %d: error not sent to the offender's source", i)
			}
		}
		l.bc, l.icmp.out = batchCounters{}, l.icmp.out[:0]
		l.bufs[0], l.bufs[i] = l.bufs[i], l.bufs[0]
		l.sizes[0], l.sizes[i] = l.sizes[i], l.sizes[0]
	}
}

// TestTx6ICMPBounds: ICMPv6 errors share the IPv4 ones' bounds, per batch
// and per second, and need a source address.
func TestTx6ICMPBounds(t *testing.T) {
	e := testEngine(t, 64)
	l := e.tx[0]
	for i := 0; i < 64; i++ {
		var p []byte
		if i%2 == 0 {
			p = udp6Packet(t, testAddr6(1, 2), testAddr6(99, 1), 64, nil)
		} else {
			p = udpPacket(t, "10.5.1.2", "10.5.99.1", 64, nil)
		}
		l.sizes[i] = copy(l.bufs[i][Headroom:], p)
	}
	l.classify(e.Table(), 64)
	if len(l.icmp.out) != icmpPerBatch || l.bc.drops[DropNoRoute] != 64 {
		t.Fatalf("%d errors queued for 64 unroutable packets, want %d", len(l.icmp.out), icmpPerBatch)
	}
	l.icmp.out = l.icmp.out[:0]
	// Spend the second's tokens: no more errors of either family.
	l.icmp.tokens = 0
	l.classify(e.Table(), 64)
	if len(l.icmp.out) != 0 {
		t.Fatalf("%d errors beyond the rate", len(l.icmp.out))
	}

	e2, err := New(nopDevice{}, nopTransport{}, Config{BatchSize: 64, MTU: 1472, ICMPSource: testOwn.Addr()})
	if err != nil {
		t.Fatal(err)
	}
	e2.SetTable(testTable(t))
	copy(e2.tx[0].sizes, l.sizes)
	e2.tx[0].bufs, l.bufs = l.bufs, e2.tx[0].bufs
	e2.tx[0].classify(e2.Table(), 64)
	for _, b := range e2.tx[0].icmp.out {
		if isIPv6(b[Headroom:]) {
			t.Fatal("an ICMPv6 error without Config.ICMPSource6")
		}
	}
	if len(e2.tx[0].icmp.out) == 0 {
		t.Fatal("no ICMP errors for the IPv4 packets")
	}
}

// fillRx6 puts n IPv6 datagrams (with mixed, every other one IPv4) into
// the rx loop's buffers: mostly good ones from the peers, plus one of each
// kind of bad one.
func fillRx6(t testing.TB, l *rxLoop, n int, mixed bool) (good int) {
	for i := 0; i < n; i++ {
		peer := 2 + i%3
		src := netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(peer)}), 8285)
		p := udp6Packet(t, testAddr6(peer, 7), testAddr6(1, 2), 64, make([]byte, payload6))
		if mixed && i%2 == 1 {
			p = udpPacket(t, netip.AddrFrom4([4]byte{10, 5, byte(peer), 7}).String(), "10.5.1.2", 64, make([]byte, 1400))
		}
		switch i {
		case 4:
			src = netip.MustParseAddrPort("192.0.2.99:8285") // not a peer
		case 6:
			p = udp6Packet(t, testAddr6(3, 7), testAddr6(1, 2), 64, nil) // from peer 2 with peer 3's source
			src = netip.MustParseAddrPort("192.0.2.2:8285")
		case 8:
			p = udp6Packet(t, testAddr6(peer, 7), testAddr6(4, 2), 64, nil) // not for this host
		case 10:
			p = p[:30] // shorter than the IPv6 header
		case 12:
			p = udp6Packet(t, testAddr6(peer, 7), testAddr6(1, 2), 64, make([]byte, 1500)) // above the MTU
		case 14:
			p = udp6Packet(t, testAddr6(peer, 7), testAddr6(1, 2), 1, nil) // hop limit runs out
		case 16:
			p = udp6Packet(t, "10.5.2.7", testAddr6(1, 2), 64, nil) // a v4-mapped source
		default:
			good++
		}
		l.sizes[i] = copy(l.bufs[i][Headroom:], p)
		l.srcs[i] = src
	}
	return good
}

func TestRx6ClassifyDropsAndCounts(t *testing.T) {
	for _, mixed := range []bool{false, true} {
		e := testEngine(t, 64)
		l := e.rx[0]
		good := fillRx6(t, l, 64, mixed)
		k := l.classify(e.Table(), 64)
		if k != good {
			t.Fatalf("mixed %v: delivered %d, want %d", mixed, k, good)
		}
		want := map[DropReason]uint32{DropUnknownPeer: 1, DropSpoofedSource: 2, DropNotLocal: 1, DropShort: 1, DropOversize: 1, DropTTLExpired: 1}
		for r, n := range want {
			if l.bc.drops[r] != n {
				t.Errorf("mixed %v: %v: %d drops, want %d", mixed, r, l.bc.drops[r], n)
			}
		}
		l.bc.flush(&l.c)
		var perPeer uint64
		for _, p := range e.Table().Peers() {
			perPeer += p.Stats().RxPackets
		}
		if s := e.Stats(); s.RxPackets != uint64(good) || perPeer != uint64(good) {
			t.Errorf("mixed %v: RxPackets %d, per-peer sum %d, want %d", mixed, s.RxPackets, perPeer, good)
		}
		v6 := 0
		for i := 0; i < k; i++ {
			pkt := l.out[i][Headroom:]
			if isIPv6(pkt) {
				v6++
				if pkt[7] != 63 {
					t.Fatal("hop limit not decremented on receive")
				}
			} else if pkt[8] != 63 {
				t.Fatal("TTL not decremented on receive")
			}
		}
		if v6 == 0 || (mixed && v6 == k) {
			t.Errorf("mixed %v: %d of %d delivered are IPv6", mixed, v6, k)
		}
	}
}

// TestRx6WithoutAntiSpoof: like flanneld, accept what any sender sends,
// but still validate the header and the hop limit.
func TestRx6WithoutAntiSpoof(t *testing.T) {
	e, err := New(nopDevice{}, nopTransport{}, Config{BatchSize: 64, MTU: 1472})
	if err != nil {
		t.Fatal(err)
	}
	e.SetTable(testTable(t))
	good := fillRx6(t, e.rx[0], 64, false)
	k := e.rx[0].classify(e.Table(), 64)
	// Unknown peer, spoofed, not local, oversize and the mapped source
	// pass without anti-spoofing; short and hop limit do not.
	if k != good+5 || e.rx[0].bc.drops[DropShort] != 1 || e.rx[0].bc.drops[DropTTLExpired] != 1 {
		t.Errorf("delivered %d (want %d), drops %v", k, good+5, e.rx[0].bc.drops)
	}
}

// TestV6OnlyTable: a cluster with only an IPv6 network forwards IPv6 and
// routes no IPv4; its peers have no IPv4 subnet, so an IPv4 packet from
// one is spoofed.
func TestV6OnlyTable(t *testing.T) {
	var peers []PeerSpec
	for i := 2; i <= 4; i++ {
		peers = append(peers, PeerSpec{Subnet6: testSubnet6(i), Endpoint: netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}), 8285)})
	}
	tab, err := NewTableFor(Networks{Network6: testNetwork6, SubnetLen6: 64, Own6: testOwn6}, peers, nil)
	if err != nil {
		t.Fatal(err)
	}
	if tab.Own().IsValid() || tab.Own6() != testOwn6 || len(tab.Peers()) != 3 {
		t.Fatalf("own %v/%v, %d peers", tab.Own(), tab.Own6(), len(tab.Peers()))
	}
	e := testEngine(t, 64)
	e.SetTable(tab)
	fillTx6(t, e.tx[0], 64, true)
	if k := e.tx[0].classify(tab, 64); k != 30 || e.tx[0].bc.drops[DropNoRoute] != 34 {
		t.Errorf("tx kept %d, no-route %d; want 30 IPv6 and 34 no-route (32 IPv4, 2 IPv6)", k, e.tx[0].bc.drops[DropNoRoute])
	}
	for i := range e.tx[0].out {
		if !isIPv6(e.tx[0].out[i]) {
			t.Fatal("an IPv4 packet forwarded by an IPv6-only table")
		}
	}
	good := fillRx6(t, e.rx[0], 64, true)
	k := e.rx[0].classify(tab, 64)
	if k != good-32 { // the 32 odd ones are IPv4, all otherwise good
		t.Errorf("rx delivered %d of %d good, want the %d IPv6 ones", k, good, good-32)
	}
	for _, b := range e.rx[0].out {
		if !isIPv6(b[Headroom:]) {
			t.Fatal("an IPv4 packet delivered by an IPv6-only table")
		}
	}
	if e.rx[0].bc.drops[DropSpoofedSource] != 32+2 {
		t.Errorf("spoofed-source drops %d: the IPv4 packets of v6-only peers must be dropped", e.rx[0].bc.drops[DropSpoofedSource])
	}
}

// TestV4OnlyTableDropsIPv6: the tables existing callers build know no
// IPv6 subnet: an IPv6 packet has no route and, from a peer, no valid
// source.
func TestV4OnlyTableDropsIPv6(t *testing.T) {
	var peers []PeerSpec
	for i := 2; i <= 4; i++ {
		peers = append(peers, PeerSpec{Subnet: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 5, byte(i), 0}), 24), Endpoint: netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}), 8285)})
	}
	tab, err := NewTable(testNetwork, 24, testOwn, peers, nil)
	if err != nil {
		t.Fatal(err)
	}
	e := testEngine(t, 64)
	e.SetTable(tab)
	fillTx6(t, e.tx[0], 64, false)
	if k := e.tx[0].classify(tab, 64); k != 0 || e.tx[0].bc.drops[DropNoRoute] != 64 {
		t.Errorf("tx kept %d IPv6 packets, no-route %d", k, e.tx[0].bc.drops[DropNoRoute])
	}
	fillRx6(t, e.rx[0], 64, false)
	if k := e.rx[0].classify(tab, 64); k != 0 {
		t.Errorf("rx delivered %d IPv6 packets", k)
	}
}

// TestNoHopLimitChangeWithVXLAN: an encapsulation that leaves the TTL
// alone leaves the hop limit alone too, and forwards hop limit 1.
func TestNoHopLimitChangeWithVXLAN(t *testing.T) {
	e, err := New(nopDevice{}, nopTransport{}, Config{BatchSize: 8, MTU: 1472, AntiSpoof: true, Encap: magicEncap{}})
	if err != nil {
		t.Fatal(err)
	}
	tab := testTable(t)
	e.SetTable(tab)
	inner := udp6Packet(t, testAddr6(1, 2), testAddr6(2, 9), 1, []byte("x"))
	e.tx[0].sizes[0] = copy(e.tx[0].bufs[0][Headroom:], inner)
	if k := e.tx[0].classify(tab, 1); k != 1 || !bytes.Equal(e.tx[0].out[0][22:], inner) {
		t.Fatalf("kept %d; want the packet unchanged behind the header", k)
	}
	back := udp6Packet(t, testAddr6(2, 9), testAddr6(1, 2), 1, []byte("y"))
	b := e.rx[0].bufs[0][Headroom:]
	b[0] = 0xab
	e.rx[0].sizes[0] = 22 + copy(b[22:], back)
	e.rx[0].srcs[0] = netip.MustParseAddrPort("192.0.2.2:8285")
	if k := e.rx[0].classify(tab, 1); k != 1 || !bytes.Equal(e.rx[0].out[0][e.rx[0].off:], back) {
		t.Fatalf("rx kept %d; want the packet unchanged", k)
	}
}

func TestTx6PathAllocatesNothing(t *testing.T) {
	for _, mixed := range []bool{false, true} {
		e := testEngine(t, 128)
		l := e.tx[0]
		fillTx6(t, l, 128, mixed)
		tab := e.Table()
		allocs := testing.AllocsPerRun(200, func() {
			resetHops(l.bufs, 128)
			l.classify(tab, 128)
			l.bc.flush(&l.c)
			l.icmp.flush(&l.c) // ICMPv6 errors built and written
		})
		if allocs != 0 {
			t.Fatalf("mixed %v: %v allocations per batch, want 0", mixed, allocs)
		}
	}
}

func TestRx6PathAllocatesNothing(t *testing.T) {
	for _, mixed := range []bool{false, true} {
		e := testEngine(t, 128)
		l := e.rx[0]
		fillRx6(t, l, 128, mixed)
		tab := e.Table()
		allocs := testing.AllocsPerRun(200, func() {
			resetHops(l.bufs, 128)
			l.classify(tab, 128)
			l.bc.flush(&l.c)
		})
		if allocs != 0 {
			t.Fatalf("mixed %v: %v allocations per batch, want 0", mixed, allocs)
		}
	}
}

// BenchmarkTxBatch6 and BenchmarkRxBatch6 are BenchmarkTxBatch and
// BenchmarkRxBatch with IPv6 packets of the same length (1428 bytes), and
// with every other packet IPv4 (mixed).
func BenchmarkTxBatch6(b *testing.B) {
	for _, mixed := range []bool{false, true} {
		b.Run(map[bool]string{false: "v6", true: "mixed"}[mixed], func(b *testing.B) {
			e := testEngine(b, 128)
			l := e.tx[0]
			fillTx6(b, l, 128, mixed)
			tab := e.Table()
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				resetHops(l.bufs, 128)
				l.classify(tab, 128)
				l.bc.flush(&l.c)
				l.icmp.out = l.icmp.out[:0]
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*128), "ns/packet")
		})
	}
}

func BenchmarkRxBatch6(b *testing.B) {
	for _, mixed := range []bool{false, true} {
		b.Run(map[bool]string{false: "v6", true: "mixed"}[mixed], func(b *testing.B) {
			e := testEngine(b, 128)
			l := e.rx[0]
			fillRx6(b, l, 128, mixed)
			tab := e.Table()
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				resetHops(l.bufs, 128)
				l.classify(tab, 128)
				l.bc.flush(&l.c)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*128), "ns/packet")
		})
	}
}
