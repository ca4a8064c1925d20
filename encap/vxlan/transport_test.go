package vxlan

import (
	"encoding/binary"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/weft-net/weft/encap/udp"
	"github.com/weft-net/weft/engine"
)

// flowFrame is a VXLAN frame around an inner TCP/IPv4 header of the flow
// (sport -> 80), in a buffer laid out as the engine's.
func flowFrame(sport uint16, size int) []byte {
	b := make([]byte, engine.BufferSize)
	f := b[engine.Headroom-HeaderLen : engine.Headroom+size]
	e, _ := NewEncap(EncapOptions{VNI: 1, MAC: ownMAC})
	pkt := f[HeaderLen:]
	pkt[0], pkt[9] = 0x45, 6
	binary.BigEndian.PutUint16(pkt[2:4], uint16(size))
	copy(pkt[12:20], []byte{10, 5, 1, 2, 10, 5, 2, 2})
	binary.BigEndian.PutUint16(pkt[20:22], sport)
	binary.BigEndian.PutUint16(pkt[22:24], 80)
	e.Encapsulate(f[:HeaderLen], pkt, testPeer())
	return f
}

// Each inner flow leaves from one source port, flows spread over several,
// and the ports are ones the kernel picked (not the VXLAN port).
func TestTransportSourcePortPerFlow(t *testing.T) {
	lo := netip.MustParseAddr("127.0.0.1")
	recv, err := udp.Listen(udp.Options{Local: netip.AddrPortFrom(lo, 0), NoGRO: true})
	if err != nil {
		t.Fatal(err)
	}
	defer recv.Close()
	tr, err := ListenTransport(TransportOptions{Local: netip.AddrPortFrom(lo, 0)})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	const flows, perFlow = 32, 4
	var pkts [][]byte
	var dsts []netip.AddrPort
	for round := 0; round < perFlow; round++ {
		for f := range flows {
			pkts = append(pkts, flowFrame(uint16(1000+f), 100))
			dsts = append(dsts, recv.LocalAddr())
		}
	}
	if refused, err := tr.WriteBatch(pkts, dsts); err != nil || refused != 0 {
		t.Fatalf("refused %d: %v", refused, err)
	}
	portOf := map[uint16]uint16{} // inner source port -> outer source port
	seen := map[uint16]bool{}
	bufs, sizes, srcs := make([][]byte, 128), make([]int, 128), make([]netip.AddrPort, 128)
	for i := range bufs {
		bufs[i] = make([]byte, engine.BufferSize)
	}
	got := 0
	deadline := time.Now().Add(5 * time.Second)
	for got < len(pkts) && time.Now().Before(deadline) {
		n, err := recv.ReadBatch(bufs, sizes, srcs, engine.Headroom)
		if err != nil {
			t.Fatal(err)
		}
		for i := range n {
			inner := bufs[i][engine.Headroom+HeaderLen:]
			sp := binary.BigEndian.Uint16(inner[20:22])
			if p, ok := portOf[sp]; ok && p != srcs[i].Port() {
				t.Fatalf("flow %d left from ports %d and %d", sp, p, srcs[i].Port())
			}
			portOf[sp] = srcs[i].Port()
			seen[srcs[i].Port()] = true
		}
		got += n
	}
	if got != len(pkts) {
		t.Fatalf("received %d of %d", got, len(pkts))
	}
	if len(seen) < DefaultSourcePorts/2 {
		t.Fatalf("%d flows used only %d source ports: %v", flows, len(seen), seen)
	}
	for p := range seen {
		if p == tr.LocalAddr().Port() {
			t.Fatal("a frame left from the VXLAN port")
		}
	}
}

// Spreading flows over sockets allocates nothing per packet.
func TestTransportWriteBatchAllocs(t *testing.T) {
	lo := netip.MustParseAddr("127.0.0.1")
	sink, err := udp.Listen(udp.Options{Local: netip.AddrPortFrom(lo, 0)})
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	tr, err := ListenTransport(TransportOptions{Local: netip.AddrPortFrom(lo, 0)})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	pkts := make([][]byte, 64)
	dsts := make([]netip.AddrPort, 64)
	for i := range pkts {
		pkts[i], dsts[i] = flowFrame(uint16(i%16), 1000), sink.LocalAddr()
	}
	if a := testing.AllocsPerRun(50, func() { tr.WriteBatch(pkts, dsts) }); a != 0 {
		t.Fatalf("%v allocations per WriteBatch", a)
	}
}

func BenchmarkFlowHash(b *testing.B) {
	f := flowFrame(1234, 1400)[HeaderLen:]
	var h uint32
	for b.Loop() {
		h += flowHash(f, 42)
	}
	_ = h
}

// BenchmarkTransportWriteBatch sends 64 MTU-sized frames of 4 flows to
// one peer per call over loopback, through N sender sockets.
func BenchmarkTransportWriteBatch(b *testing.B) {
	for _, n := range []int{1, 8} {
		b.Run(map[int]string{1: "1-port", 8: "8-ports"}[n], func(b *testing.B) {
			lo := netip.MustParseAddr("127.0.0.1")
			sink, err := udp.Listen(udp.Options{Local: netip.AddrPortFrom(lo, 0)})
			if err != nil {
				b.Fatal(err)
			}
			defer sink.Close()
			tr, err := ListenTransport(TransportOptions{Local: netip.AddrPortFrom(lo, 0), SourcePorts: n})
			if err != nil {
				b.Fatal(err)
			}
			defer tr.Close()
			pkts := make([][]byte, 64)
			dsts := make([]netip.AddrPort, 64)
			for i := range pkts {
				pkts[i], dsts[i] = flowFrame(uint16(i%4), 1450), sink.LocalAddr()
			}
			b.SetBytes(64 * 1450)
			for b.Loop() {
				tr.WriteBatch(pkts, dsts)
			}
		})
	}
}

// The Transports of several queues share the VXLAN port in an
// SO_REUSEPORT group: a sender's per-flow source ports spread one peer's
// flows over the group's receiving sockets, and Add sums their counters.
func TestTransportGroup(t *testing.T) {
	lo := netip.MustParseAddr("127.0.0.1")
	first, err := ListenTransport(TransportOptions{Local: netip.AddrPortFrom(lo, 0), ReusePort: true})
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	second, err := ListenTransport(TransportOptions{Local: first.LocalAddr(), ReusePort: true})
	if err != nil {
		t.Fatalf("a second receiving socket on %s: %v", first.LocalAddr(), err)
	}
	defer second.Close()
	if _, err := ListenTransport(TransportOptions{Local: first.LocalAddr()}); err == nil {
		t.Fatal("a Transport without ReusePort joined the group")
	}
	sender, err := ListenTransport(TransportOptions{Local: netip.AddrPortFrom(lo, 0), SourcePorts: 16})
	if err != nil {
		t.Fatal(err)
	}
	defer sender.Close()
	const flows = 64
	var pkts [][]byte
	var dsts []netip.AddrPort
	for f := range flows {
		pkts = append(pkts, flowFrame(uint16(2000+f), 100))
		dsts = append(dsts, first.LocalAddr())
	}
	if refused, err := sender.WriteBatch(pkts, dsts); err != nil || refused != 0 {
		t.Fatalf("refused %d: %v", refused, err)
	}
	// Each socket is read by a goroutine of its own until the test closes
	// it (a blocked ReadBatch returns then).
	var got [2]atomic.Int64
	for i, tr := range []*Transport{first, second} {
		go func() {
			bufs, sizes, srcs := make([][]byte, flows), make([]int, flows), make([]netip.AddrPort, flows)
			for i := range bufs {
				bufs[i] = make([]byte, engine.BufferSize)
			}
			for {
				n, err := tr.ReadBatch(bufs, sizes, srcs, engine.Headroom)
				if err != nil {
					return
				}
				got[i].Add(int64(n))
			}
		}()
	}
	total := func() int64 { return got[0].Load() + got[1].Load() }
	for deadline := time.Now().Add(5 * time.Second); total() < flows && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if total() != flows || got[0].Load() == 0 || got[1].Load() == 0 {
		t.Fatalf("the group's sockets received %d and %d of %d frames from %d source ports; want all, on both", got[0].Load(), got[1].Load(), flows, len(sender.SourcePorts()))
	}
	sum := first.Stats().Add(second.Stats())
	if int(sum.Receive.RecvSegments) != flows {
		t.Errorf("summed receive counters: %d packets, want %d", sum.Receive.RecvSegments, flows)
	}
	if len(sum.SourcePorts) != 2*DefaultSourcePorts {
		t.Errorf("summed source ports %v, want both Transports' %d", sum.SourcePorts, 2*DefaultSourcePorts)
	}
}
