package engine

import (
	"encoding/binary"
	"net/netip"
	"testing"
)

// TestFlowQueue: both directions of a flow hash alike, fragments of a
// datagram hash by addresses alone, and flows spread over the queues.
func TestFlowQueue(t *testing.T) {
	p := func(src, dst string, sport, dport uint16, frag uint16) []byte {
		b := make([]byte, 28)
		b[0], b[9] = 0x45, protoUDP
		binary.BigEndian.PutUint16(b[6:], frag)
		s, d := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
		copy(b[12:], s[:])
		copy(b[16:], d[:])
		binary.BigEndian.PutUint16(b[20:], sport)
		binary.BigEndian.PutUint16(b[22:], dport)
		return b
	}
	for n := 2; n <= 8; n++ {
		counts := make([]int, n)
		for f := range 1000 {
			sport := uint16(10000 + f)
			q := flowQueue(p("10.5.1.2", "10.5.2.3", sport, 80, 0), n)
			if back := flowQueue(p("10.5.2.3", "10.5.1.2", 80, sport, 0), n); back != q {
				t.Fatalf("n %d: flow %d hashes to %d one way, %d the other", n, f, q, back)
			}
			counts[q]++
		}
		for q, c := range counts {
			if c < 1000/n/2 {
				t.Errorf("n %d: queue %d got %d of 1000 flows: %v", n, q, c, counts)
			}
		}
		// A later fragment has no ports; the first fragment (MF) must
		// hash as it does.
		first := flowQueue(p("10.5.1.2", "10.5.2.3", 1, 2, 0x2000), n)
		if later := flowQueue(p("10.5.1.2", "10.5.2.3", 77, 78, 0x0010), n); later != first {
			t.Errorf("n %d: fragments of one datagram in queues %d and %d", n, first, later)
		}
	}
	v6 := make([]byte, 48)
	v6[0], v6[6] = 0x60, protoTCP
	v6[8], v6[24] = 0xfd, 0xfd
	if q := flowQueue(v6, 4); q < 0 || q >= 4 {
		t.Errorf("IPv6 queue %d", q)
	}
}

// TestRxQueuesAllocateNothing: an rx loop of a multi-queue engine sorts
// a batch by flow and writes each queue's share without allocating.
func TestRxQueuesAllocateNothing(t *testing.T) {
	e, err := NewQueues([]Queue{{nopDevice{}, nopTransport{}}, {nopDevice{}, nopTransport{}}}, Config{BatchSize: 128, MTU: 1472, AntiSpoof: true})
	if err != nil {
		t.Fatal(err)
	}
	e.SetTable(testTable(t))
	if len(e.rx) != 2 || len(e.tx) != 2 {
		t.Fatalf("%d rx and %d tx loops; want 2 each", len(e.rx), len(e.tx))
	}
	l := e.rx[0]
	fillRx6(t, l, 128, true)
	tab := e.Table()
	k := 0
	allocs := testing.AllocsPerRun(200, func() {
		resetHops(l.bufs, 128)
		k = l.classify(tab, 128)
		if err := l.writeQueues(l.out[:k]); err != nil {
			t.Fatal(err)
		}
		l.bc.flush(&l.c)
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per batch, want 0", allocs)
	}
	if k == 0 {
		t.Fatal("nothing classified")
	}
}

// BenchmarkRxBatchQueues2 is BenchmarkRxBatch in an engine of two
// queues: each packet's flow hashed to its queue, and the batch written
// in two shares.
func BenchmarkRxBatchQueues2(b *testing.B) {
	e, err := NewQueues([]Queue{{nopDevice{}, nopTransport{}}, {nopDevice{}, nopTransport{}}}, Config{BatchSize: 128, MTU: 1472, AntiSpoof: true})
	if err != nil {
		b.Fatal(err)
	}
	e.SetTable(testTable(b))
	l := e.rx[0]
	fillRx(b, l, 128)
	tab := e.Table()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		resetTTL(l.bufs, 128)
		k := l.classify(tab, 128)
		if err := l.writeQueues(l.out[:k]); err != nil {
			b.Fatal(err)
		}
		l.bc.flush(&l.c)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*128), "ns/packet")
}
