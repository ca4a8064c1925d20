package engine

import (
	"bytes"
	"context"
	"encoding/binary"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"
)

// segDevice is a SegmentingDevice: ReadSegments hands over what load put
// in front of it once, then waits for Close.
type segDevice struct {
	nopDevice
	mu     sync.Mutex
	pkts   [][]byte // whole packets to hand over
	split  []int    // where each is cut into head and tail (0: not cut)
	closed chan struct{}
	calls  int
}

func (d *segDevice) ReadSegments(bufs [][]byte, sizes []int, tails [][]byte, offset int, wait bool) (int, error) {
	d.mu.Lock()
	d.calls++
	pkts, split := d.pkts, d.split
	d.pkts, d.split = nil, nil
	d.mu.Unlock()
	if len(pkts) == 0 {
		if !wait {
			return 0, nil
		}
		<-d.closed
		return 0, os.ErrClosed
	}
	layTails(bufs, sizes, tails, offset, pkts, split)
	return len(pkts), nil
}

func (d *segDevice) Close() error { close(d.closed); return nil }

// layTails lays packets out as a SegmentingDevice does: packet i's head
// (its first split[i] bytes) in bufs[i], its tail in the last buffer, far
// from every head.
func layTails(bufs [][]byte, sizes []int, tails [][]byte, offset int, pkts [][]byte, split []int) {
	store := bufs[len(bufs)-1][offset:]
	at := 0
	for i, p := range pkts {
		h := split[i]
		if h == 0 {
			h = len(p)
		}
		sizes[i] = copy(bufs[i][offset:], p[:h])
		tails[i] = nil
		if h < len(p) {
			tails[i] = store[at : at+copy(store[at:], p[h:])]
			at += len(tails[i])
		}
	}
}

// gatherTransport is a GatherTransport that keeps what it is asked to send,
// joined.
type gatherTransport struct {
	nopTransport
	mu   sync.Mutex
	sent [][]byte
	dsts []netip.AddrPort
	got  chan struct{}
}

func (g *gatherTransport) WriteBatchGather(pkts, tails [][]byte, dsts []netip.AddrPort) (int, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for i, p := range pkts {
		g.sent = append(g.sent, append(append([]byte(nil), p...), tails[i]...))
		g.dsts = append(g.dsts, dsts[i])
	}
	select {
	case g.got <- struct{}{}:
	default:
	}
	return 0, nil
}

func (*gatherTransport) WriteBatch([][]byte, []netip.AddrPort) (int, error) {
	panic("WriteBatch with a GatherTransport and a SegmentingDevice")
}

// segmentsBatch is a batch as a SegmentingDevice hands it over: packets
// to peers 2 and 3 cut after their UDP header, whole ones, one cut and
// to no peer, one IPv6 cut and longer than the MTU, and one cut whose
// IPv4 header claims more than head and tail hold.
func segmentsBatch(t testing.TB) (pkts [][]byte, split []int) {
	add := func(p []byte, at int) {
		pkts, split = append(pkts, p), append(split, at)
	}
	for i := range 40 {
		dst := []string{"10.5.2.9", "10.5.3.9"}[i/20]
		add(udpPacket(t, "10.5.1.2", dst, 64, bytes.Repeat([]byte{byte(i)}, 1400-i%3)), 28)
	}
	add(udpPacket(t, "10.5.1.2", "10.5.2.9", 64, []byte("whole")), 0)
	add(udpPacket(t, "10.5.1.2", "10.5.99.9", 64, make([]byte, 1000)), 28) // no route
	add(udp6Packet(t, "fd00:10:5:1::2", "fd00:10:5:2::9", 64, make([]byte, 1460)), 48)
	bad := udpPacket(t, "10.5.1.2", "10.5.2.9", 64, make([]byte, 1000))
	binary.BigEndian.PutUint16(bad[2:], uint16(len(bad)+1))
	add(bad, 28)
	return pkts, split
}

func segEngine(t testing.TB) (*Engine, *segDevice, *gatherTransport) {
	d := &segDevice{closed: make(chan struct{})}
	g := &gatherTransport{got: make(chan struct{}, 1)}
	e, err := New(d, g, Config{BatchSize: 128, MTU: 1472, AntiSpoof: true, ICMPSource: testOwn.Addr(), ICMPSource6: testOwn6.Addr().Next()})
	if err != nil {
		t.Fatal(err)
	}
	e.SetTable(testTable(t))
	return e, d, g
}

// TestTxClassifyTails: packets whose payload lies in a tail are judged by
// their whole length, patched in their head, counted and shown to the tap
// whole, and sent as head and tail; a cut packet too long for the MTU, too
// short for its header, or without a route is dropped as a whole one is.
func TestTxClassifyTails(t *testing.T) {
	e, _, _ := segEngine(t)
	l := e.tx[0]
	if l.seg == nil || l.gather == nil {
		t.Fatal("the tx loop does not use the SegmentingDevice and GatherTransport")
	}
	tap := &countingTap{}
	e.SetTap(tap)
	pkts, split := segmentsBatch(t)
	layTails(l.bufs, l.sizes, l.tails, Headroom, pkts, split)
	k := l.classify(e.Table(), len(pkts))
	if k != 41 {
		t.Fatalf("classify kept %d packets, want 41", k)
	}
	want := map[DropReason]uint32{DropNoRoute: 1, DropOversize: 1, DropBadLength: 1}
	for r, n := range want {
		if l.bc.drops[r] != n {
			t.Errorf("%v: %d drops, want %d", r, l.bc.drops[r], n)
		}
	}
	if len(l.icmp.out) != 2 {
		t.Errorf("%d ICMP errors queued, want 2 (no route, packet too big)", len(l.icmp.out))
	}
	var whole uint64
	sent := map[string]bool{}
	for i := range k {
		p := append(append([]byte(nil), l.out[i]...), l.outTail[i]...)
		if p[8] != 63 || checksum(p[:20]) != 0 {
			t.Fatalf("packet %d: TTL %d or header checksum not patched in its head", i, p[8])
		}
		whole += uint64(len(p))
		sent[string(p[9:10])+string(p[12:])] = true // all but TTL and checksum
	}
	for i, p := range pkts[:41] {
		if !sent[string(p[9:10])+string(p[12:])] {
			t.Fatalf("packet %d (%d bytes, cut at %d) not sent whole", i, len(p), split[i])
		}
	}
	if l.bc.bytes != whole {
		t.Errorf("counted %d bytes, sent %d", l.bc.bytes, whole)
	}
	var shown int
	for _, p := range pkts {
		shown += len(p)
	}
	// from-tun: every packet whole; drops: the three dropped, whole.
	shown += len(pkts[41]) + len(pkts[42]) + len(pkts[43])
	if tap.points[PointFromTUN] != len(pkts) || tap.bytes != shown {
		t.Errorf("tap saw %d packets, %d bytes; want %d, %d", tap.points[PointFromTUN], tap.bytes, len(pkts), shown)
	}
}

// TestTxTailsRun forwards through Run: the tx loop reads with ReadSegments
// and sends with WriteBatchGather (the fake transport's WriteBatch
// panics).
func TestTxTailsRun(t *testing.T) {
	e, d, g := segEngine(t)
	pkts, split := segmentsBatch(t)
	d.pkts, d.split = pkts[:41], split[:41]
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	select {
	case <-g.got:
	case <-time.After(5 * time.Second):
		t.Fatal("nothing sent")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.sent) != 41 {
		t.Fatalf("sent %d packets, want 41", len(g.sent))
	}
	for _, p := range g.sent {
		if len(p) < 1000 && len(p) != len(pkts[40]) {
			t.Fatalf("a packet of %d bytes sent without its tail", len(p))
		}
	}
	if s := e.Stats(); s.TxPackets != 41 {
		t.Errorf("TxPackets %d, want 41", s.TxPackets)
	}
}

// TestCopySegmentsSwitchesTailsOff: Config.CopySegments keeps the copy
// path whatever the sides offer.
func TestCopySegmentsSwitchesTailsOff(t *testing.T) {
	e, err := New(&segDevice{closed: make(chan struct{})}, &gatherTransport{}, Config{CopySegments: true})
	if err != nil {
		t.Fatal(err)
	}
	if e.tx[0].seg != nil || e.tx[0].gather != nil {
		t.Fatal("CopySegments is on but the tx loop reads segments")
	}
	if e2, _ := New(&segDevice{closed: make(chan struct{})}, nopTransport{}, Config{}); e2.tx[0].seg != nil {
		t.Fatal("segments read for a transport that cannot send them")
	}
}

func TestTxTailsAllocateNothing(t *testing.T) {
	e, _, _ := segEngine(t)
	l := e.tx[0]
	pkts, split := segmentsBatch(t)
	tab := e.Table()
	allocs := testing.AllocsPerRun(200, func() {
		layTails(l.bufs, l.sizes, l.tails, Headroom, pkts, split)
		l.classify(tab, len(pkts))
		l.bc.flush(&l.c)
		l.icmp.out = l.icmp.out[:0]
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per batch, want 0", allocs)
	}
}

// BenchmarkTxBatchTails is BenchmarkTxBatch with every packet's payload in
// a tail, as TSO segments come from a SegmentingDevice.
func BenchmarkTxBatchTails(b *testing.B) {
	e, _, _ := segEngine(b)
	l := e.tx[0]
	var pkts [][]byte
	var split []int
	for i := range 128 {
		dst := []string{"10.5.2.9", "10.5.3.9", "10.5.4.9", "10.5.2.10"}[i/32]
		pkts = append(pkts, udpPacket(b, "10.5.1.2", dst, 64, make([]byte, 1400)))
		split = append(split, 28)
	}
	layTails(l.bufs, l.sizes, l.tails, Headroom, pkts, split)
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

type inPlaceDevice struct{ nopDevice }

func (inPlaceDevice) WritesInPlace() bool { return true }

type trainTransport struct{ nopTransport }

func (trainTransport) ReadTrains([][]byte, [][]byte, []netip.AddrPort, int) (int, error) {
	return 0, os.ErrClosed
}

// TestRxClassifyTrains: datagrams that lie back to back in one buffer (a
// GRO train from a TrainReceiver) are judged one by one, patched only
// within themselves, and handed to the device as slices whose capacity
// ends with the packet; a dropped one is left as it came.
func TestRxClassifyTrains(t *testing.T) {
	e, err := New(inPlaceDevice{}, trainTransport{}, Config{BatchSize: 64, MTU: 1472, AntiSpoof: true})
	if err != nil {
		t.Fatal(err)
	}
	e.SetTable(testTable(t))
	l := e.rx[0]
	if l.trains == nil {
		t.Fatal("the rx loop does not take trains from a TrainReceiver with an InPlaceWriter")
	}
	buf := l.bufs[0]
	var want []byte
	at := 0
	for i := range 10 {
		src := "10.5.2.7"
		if i == 4 {
			src = "10.5.3.7" // peer 3's address from peer 2: spoofed
		}
		p := udpPacket(t, src, "10.5.1.2", 64, bytes.Repeat([]byte{byte(i)}, 1000))
		copy(buf[at+Headroom:], p)
		end := at + Headroom + len(p)
		l.pkts[i], l.srcs[i] = buf[at:end:end], netip.MustParseAddrPort("192.0.2.2:8285")
		if i != 4 {
			decrementTTL(p)
		}
		want = append(want, p...)
		at += len(p)
	}
	k := l.classify(e.Table(), 10)
	if k != 9 || l.bc.drops[DropSpoofedSource] != 1 {
		t.Fatalf("kept %d, %d spoofed; want 9, 1", k, l.bc.drops[DropSpoofedSource])
	}
	if !bytes.Equal(buf[Headroom:Headroom+len(want)], want) {
		t.Fatal("the train is not its packets with their TTLs lowered")
	}
	for i := range k {
		if cap(l.out[i]) != len(l.out[i]) || len(l.out[i])-l.off != 1028 {
			t.Fatalf("packet %d: %d bytes at offset %d, capacity %d", i, len(l.out[i])-l.off, l.off, cap(l.out[i]))
		}
	}
	if a := testing.AllocsPerRun(100, func() { l.classify(e.Table(), 10); l.bc.flush(&l.c) }); a != 0 {
		t.Fatalf("%v allocations per batch, want 0", a)
	}
	if e2, _ := New(inPlaceDevice{}, trainTransport{}, Config{CopyTrains: true}); e2.rx[0].trains != nil {
		t.Fatal("CopyTrains is on but the rx loop takes trains")
	}
}
