package engine

import (
	"bytes"
	"net/netip"
	"os"
	"strings"
	"testing"
)

// Stand-ins for the loops' two sides, for tests that call classify
// directly (package enginetest has working fakes, but importing it here
// would be an import cycle).
type nopDevice struct{}

func (nopDevice) Read([][]byte, []int, int) (int, error) { return 0, os.ErrClosed }
func (nopDevice) Write(b [][]byte, _ int) (int, error)   { return len(b), nil }
func (nopDevice) BatchSize() int                         { return 1 }
func (nopDevice) Close() error                           { return nil }

type nopTransport struct{}

func (nopTransport) ReadBatch([][]byte, []int, []netip.AddrPort, int) (int, error) {
	return 0, os.ErrClosed
}
func (nopTransport) WriteBatch(p [][]byte, _ []netip.AddrPort) (int, error) { return 0, nil }
func (nopTransport) BatchSize() int                                         { return MaxBatch }
func (nopTransport) Close() error                                           { return nil }

var (
	testNetwork  = netip.MustParsePrefix("10.5.0.0/16")
	testOwn      = netip.MustParsePrefix("10.5.1.0/24")
	testNetwork6 = netip.MustParsePrefix("fd00:10:5::/56")
	testOwn6     = netip.MustParsePrefix("fd00:10:5:1::/64")
)

// testSubnet6 is the IPv6 lease of host i: fd00:10:5:i::/64.
func testSubnet6(i int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfd, 0, 0, 0x10, 0, 5, 0, byte(i)}), 64)
}

// testTable: a dual-stack cluster. This host is 10.5.1.0/24 and
// fd00:10:5:1::/64; peers 2-4 hold 10.5.i.0/24 and fd00:10:5:i::/64, at
// 192.0.2.i.
func testTable(t testing.TB) *Table {
	var peers []PeerSpec
	for i := 2; i <= 4; i++ {
		peers = append(peers, PeerSpec{
			Subnet:   netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 5, byte(i), 0}), 24),
			Subnet6:  testSubnet6(i),
			Endpoint: netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}), 8285),
		})
	}
	tab, err := NewTableFor(Networks{Network: testNetwork, SubnetLen: 24, Own: testOwn, Network6: testNetwork6, SubnetLen6: 64, Own6: testOwn6}, peers, nil)
	if err != nil {
		t.Fatal(err)
	}
	return tab
}

func testEngine(t testing.TB, batch int) *Engine {
	e, err := New(nopDevice{}, nopTransport{}, Config{BatchSize: batch, MTU: 1472, AntiSpoof: true, ICMPSource: testOwn.Addr(), ICMPSource6: testOwn6.Addr().Next()})
	if err != nil {
		t.Fatal(err)
	}
	e.SetTable(testTable(t))
	return e
}

// fillTx puts n packets into the tx loop's buffers, spread over the
// peers, some to an address with no peer.
func fillTx(t testing.TB, l *txLoop, n int) {
	for i := 0; i < n; i++ {
		dst := []string{"10.5.2.9", "10.5.3.9", "10.5.4.9", "10.5.2.10"}[i%4]
		if i%32 == 31 {
			dst = "10.5.99.9" // no route
		}
		p := udpPacket(t, "10.5.1.2", dst, 64, make([]byte, 1400))
		l.sizes[i] = copy(l.bufs[i][Headroom:], p)
	}
}

func resetTTL(bufs [][]byte, n int) {
	for i := 0; i < n; i++ {
		b := bufs[i][Headroom:]
		for b[8] < 64 {
			b[8]++
			// undo decrementTTL: add 0x0100 back into the checksum
			sum := uint32(b[10])<<8 | uint32(b[11])
			sum -= 0x100
			if sum > 0xffff {
				sum = (sum + 0xffff) & 0xffff
			}
			b[10], b[11] = byte(sum>>8), byte(sum)
		}
	}
}

func TestTxClassifyGroupsByPeer(t *testing.T) {
	e := testEngine(t, 128)
	l := e.tx[0]
	fillTx(t, l, 128)
	k := l.classify(e.Table(), 128)
	if k != 124 {
		t.Fatalf("classify kept %d packets, want 124 (4 have no route)", k)
	}
	if l.bc.drops[DropNoRoute] != 4 || len(l.icmp.out) != 4 {
		t.Errorf("no-route drops %d, ICMP queued %d; want 4 and 4", l.bc.drops[DropNoRoute], len(l.icmp.out))
	}
	// Each peer's packets are adjacent and in their original order.
	seen := map[netip.AddrPort]bool{}
	for i := 0; i < k; i++ {
		if i > 0 && l.outDst[i] != l.outDst[i-1] && seen[l.outDst[i]] {
			t.Fatalf("peer %s appears in two runs", l.outDst[i])
		}
		seen[l.outDst[i]] = true
		if l.out[i][8] != 63 {
			t.Fatalf("TTL %d, want 63", l.out[i][8])
		}
		if checksum(l.out[i][:20]) != 0 {
			t.Fatal("header checksum broken")
		}
		p := e.Table().lookup(dstIP(l.out[i]))
		if p == nil || p.Endpoint != l.outDst[i] {
			t.Fatalf("packet to %x sent to %s", dstIP(l.out[i]), l.outDst[i])
		}
	}
	if len(seen) != 3 {
		t.Errorf("%d peers, want 3", len(seen))
	}
}

func TestTxPathAllocatesNothing(t *testing.T) {
	e := testEngine(t, 128)
	l := e.tx[0]
	fillTx(t, l, 128)
	tab := e.Table()
	allocs := testing.AllocsPerRun(200, func() {
		resetTTL(l.bufs, 128)
		l.classify(tab, 128)
		l.bc.flush(&l.c)
		l.icmp.flush(&l.c)
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per batch, want 0", allocs)
	}
}

// fillRx puts n datagrams into the rx loop's buffers: mostly good ones from
// the peers, plus one of each kind of bad one.
func fillRx(t testing.TB, l *rxLoop, n int) (good int) {
	for i := 0; i < n; i++ {
		peer := 2 + i%3
		src := netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(peer)}), 8285)
		inner := netip.AddrFrom4([4]byte{10, 5, byte(peer), 7}).String()
		p := udpPacket(t, inner, "10.5.1.2", 64, make([]byte, 1400))
		switch i {
		case 5:
			src = netip.MustParseAddrPort("192.0.2.99:8285") // not a peer
		case 6:
			p = udpPacket(t, "10.5.3.7", "10.5.1.2", 64, nil) // from peer 2 with peer 3's source
			src = netip.MustParseAddrPort("192.0.2.2:8285")
		case 7:
			p = udpPacket(t, inner, "10.5.4.2", 64, nil) // not for this host
		case 8:
			p = p[:10]
		default:
			good++
		}
		l.sizes[i] = copy(l.bufs[i][Headroom:], p)
		l.srcs[i] = src
	}
	return good
}

func TestRxClassifyDropsAndCounts(t *testing.T) {
	e := testEngine(t, 64)
	l := e.rx[0]
	good := fillRx(t, l, 64)
	k := l.classify(e.Table(), 64)
	if k != good {
		t.Fatalf("delivered %d, want %d", k, good)
	}
	want := map[DropReason]uint32{DropUnknownPeer: 1, DropSpoofedSource: 1, DropNotLocal: 1, DropShort: 1}
	for r, n := range want {
		if l.bc.drops[r] != n {
			t.Errorf("%v: %d drops, want %d", r, l.bc.drops[r], n)
		}
	}
	l.bc.flush(&l.c)
	s := e.Stats()
	if s.RxPackets != uint64(good) {
		t.Errorf("RxPackets %d, want %d", s.RxPackets, good)
	}
	var perPeer uint64
	for _, p := range e.Table().Peers() {
		perPeer += p.Stats().RxPackets
	}
	if perPeer != uint64(good) {
		t.Errorf("per-peer rx packets sum to %d, want %d", perPeer, good)
	}
	for i := 0; i < k; i++ {
		if l.out[i][Headroom+8] != 63 {
			t.Fatal("TTL not decremented on receive")
		}
	}
}

func TestRxPathAllocatesNothing(t *testing.T) {
	e := testEngine(t, 128)
	l := e.rx[0]
	fillRx(t, l, 128)
	tab := e.Table()
	allocs := testing.AllocsPerRun(200, func() {
		resetTTL(l.bufs, 4) // only the first few matter; others cycle down slowly
		l.classify(tab, 128)
		l.bc.flush(&l.c)
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per batch, want 0", allocs)
	}
}

func BenchmarkTxBatch(b *testing.B) {
	e := testEngine(b, 128)
	l := e.tx[0]
	fillTx(b, l, 128)
	tab := e.Table()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		resetTTL(l.bufs, 128)
		l.classify(tab, 128)
		l.bc.flush(&l.c)
		l.icmp.out = l.icmp.out[:0]
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*128), "ns/packet")
}

func BenchmarkRxBatch(b *testing.B) {
	e := testEngine(b, 128)
	l := e.rx[0]
	fillRx(b, l, 128)
	tab := e.Table()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		resetTTL(l.bufs, 128)
		l.classify(tab, 128)
		l.bc.flush(&l.c)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*128), "ns/packet")
}

// countingTap counts what it is shown, without allocating.
type countingTap struct {
	points  [NumPoints]int
	reasons [NumDropReasons]int
	bytes   int
}

func (c *countingTap) Capture(p *TapPacket) {
	c.points[p.Point]++
	c.reasons[p.Reason]++
	c.bytes += len(p.Data)
}

func TestTapSeesEveryPacketWithoutAllocating(t *testing.T) {
	e := testEngine(t, 128)
	tap := &countingTap{}
	e.SetTap(tap)
	fillTx(t, e.tx[0], 128)
	e.tx[0].classify(e.Table(), 128)
	if tap.points[PointFromTUN] != 128 || tap.points[PointDrop] != 4 || tap.reasons[DropNoRoute] != 4 {
		t.Errorf("tx: points %v, reasons %v; want 128 from-tun, 4 no-route drops", tap.points, tap.reasons)
	}
	*tap = countingTap{}
	good := fillRx(t, e.rx[0], 64)
	e.rx[0].classify(e.Table(), 64)
	if tap.points[PointToTUN] != good || tap.points[PointDrop] != 64-good || tap.reasons[DropSpoofedSource] != 1 {
		t.Errorf("rx: points %v, reasons %v; want %d to-tun, %d drops", tap.points, tap.reasons, good, 64-good)
	}
	tab := e.Table()
	allocs := testing.AllocsPerRun(100, func() {
		resetTTL(e.tx[0].bufs, 128)
		e.tx[0].classify(tab, 128)
		e.tx[0].icmp.out = e.tx[0].icmp.out[:0]
		resetTTL(e.rx[0].bufs, 64)
		e.rx[0].classify(tab, 64)
	})
	if allocs != 0 {
		t.Errorf("%v allocations per batch with a tap attached", allocs)
	}
	e.SetTap(nil)
	*tap = countingTap{}
	e.tx[0].classify(tab, 128)
	if tap.points != [NumPoints]int{} {
		t.Error("a removed tap still saw packets")
	}
}

// magicEncap is a 22-byte test encapsulation (VXLAN's size): a magic
// byte, then the peer's HWAddr; no TTL change.
type magicEncap struct{}

func (magicEncap) Overhead() int { return 22 }
func (magicEncap) Encapsulate(hdr, _ []byte, p *Peer) {
	hdr[0] = 0xab
	copy(hdr[1:7], p.HWAddr[:])
}
func (magicEncap) Decapsulate(hdr []byte, _ *Peer) DropReason {
	if hdr[0] != 0xab {
		return DropBadEncap
	}
	return DropNone
}
func (magicEncap) DecrementsTTL() bool { return false }

func TestEncapHeadersInHeadroom(t *testing.T) {
	e, err := New(nopDevice{}, nopTransport{}, Config{BatchSize: 8, MTU: 1472, AntiSpoof: true, Encap: magicEncap{}})
	if err != nil {
		t.Fatal(err)
	}
	peers := []PeerSpec{{Subnet: netip.MustParsePrefix("10.5.2.0/24"), Endpoint: netip.MustParseAddrPort("192.0.2.2:8472"), HWAddr: [6]byte{2, 0, 0, 0, 0, 2}}}
	tab, err := NewTable(testNetwork, 24, testOwn, peers, nil)
	if err != nil {
		t.Fatal(err)
	}
	e.SetTable(tab)
	inner := udpPacket(t, "10.5.1.2", "10.5.2.9", 64, []byte("x"))
	e.tx[0].sizes[0] = copy(e.tx[0].bufs[0][Headroom:], inner)
	if k := e.tx[0].classify(tab, 1); k != 1 {
		t.Fatalf("classify kept %d", k)
	}
	out := e.tx[0].out[0]
	if len(out) != 22+len(inner) || out[0] != 0xab || out[6] != 2 || !bytes.Equal(out[22:], inner) {
		t.Fatalf("datagram % x: want header then the unchanged packet (TTL kept)", out[:30])
	}
	if &out[22] != &e.tx[0].bufs[0][Headroom] {
		t.Fatal("the packet moved: the header must go into the headroom")
	}

	// Receive it back (from the peer, to us), and one with a bad header.
	back := udpPacket(t, "10.5.2.9", "10.5.1.2", 64, []byte("y"))
	for i, magic := range []byte{0xab, 0x00} {
		b := e.rx[0].bufs[i][Headroom:]
		b[0] = magic
		e.rx[0].sizes[i] = 22 + copy(b[22:], back)
		e.rx[0].srcs[i] = netip.MustParseAddrPort("192.0.2.2:8472")
	}
	if k := e.rx[0].classify(tab, 2); k != 1 {
		t.Fatalf("rx kept %d, want 1", k)
	}
	if e.rx[0].bc.drops[DropBadEncap] != 1 {
		t.Errorf("bad-encap drops %d, want 1", e.rx[0].bc.drops[DropBadEncap])
	}
	if got := e.rx[0].out[0][e.rx[0].off:]; !bytes.Equal(got, back) || e.rx[0].off != Headroom+22 {
		t.Errorf("inner packet not handed on unchanged at Headroom+22")
	}
}

// TestNewRefusesBadConfig: values that would silently misbehave are
// refused, naming the field: a negative ICMP rate meant no rate limit at
// all, a negative MTU dropped every packet as oversize.
func TestNewRefusesBadConfig(t *testing.T) {
	for _, c := range []struct {
		cfg  Config
		want string
	}{
		{Config{ICMPRate: -1}, "ICMP rate"},
		{Config{MTU: -1}, "MTU"},
		{Config{MTU: 20}, "MTU"},
		{Config{MTU: MaxPacket + 1}, "MTU"},
		{Config{BusyPoll: -1}, "busy-poll"},
		{Config{BatchSize: MaxBatch + 1}, "batch size"},
	} {
		if _, err := New(nopDevice{}, nopTransport{}, c.cfg); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want an error naming %q", c.cfg, err, c.want)
		}
	}
	if _, err := New(nopDevice{}, nopTransport{}, Config{}); err != nil {
		t.Errorf("the zero Config: %v", err)
	}
}

// TestNoICMPErrorAboutSubnetBroadcast: a packet to a subnet's directed
// broadcast address gets no ICMP error (RFC 1122 3.2.2), whether no peer
// holds the subnet or its TTL ran out; a unicast neighbour still does.
func TestNoICMPErrorAboutSubnetBroadcast(t *testing.T) {
	e := testEngine(t, 8)
	l := e.tx[0]
	for i, dst := range []string{"10.5.99.255", "10.5.255.255", "10.5.99.254"} {
		p := udpPacket(t, "10.5.1.2", dst, 64, []byte("x"))
		l.sizes[i] = copy(l.bufs[i][Headroom:], p)
	}
	l.classify(e.Table(), 3)
	if l.bc.drops[DropNoRoute] != 3 || len(l.icmp.out) != 1 {
		t.Errorf("no-route drops %d, ICMP errors %d; want 3 and 1 (only for 10.5.99.254)", l.bc.drops[DropNoRoute], len(l.icmp.out))
	}
	tab := e.Table()
	for _, c := range []struct {
		ip   string
		want bool
	}{{"10.5.2.255", true}, {"10.5.2.254", false}, {"10.6.2.255", false}, {"10.5.255.255", true}} {
		if got := tab.subnetBroadcast(u32(netip.MustParseAddr(c.ip))); got != c.want {
			t.Errorf("subnetBroadcast(%s) = %v", c.ip, got)
		}
	}
	n32, err := NewTable(netip.MustParsePrefix("10.7.0.0/24"), 32, netip.Prefix{}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if n32.subnetBroadcast(u32(netip.MustParseAddr("10.7.0.255"))) {
		t.Error("a /32 subnet has no broadcast address")
	}
}
