package capture

import (
	"context"
	"io"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/weft-net/weft/engine"
)

// The benchmarks run the engine's real loops between a fake TUN and a fake
// socket that allocate nothing and cost only a copy per packet, so what
// differs between the variants is the tap: none, a capture whose filter
// matches nothing (headers parsed, nothing copied), and a capture of every
// packet (copied into the ring, written as pcapng to io.Discard by a
// reader goroutine).
//
//	go test -run '^$' -bench 'Engine' -benchmem -count 6 ./capture/

const benchBatch = 128

// benchSide feeds the loop under test batches of prebuilt packets, b.N in
// all, then blocks until closed; the other side only absorbs.
type benchSide struct {
	pkts   [][]byte
	src    netip.AddrPort
	left   atomic.Int64
	once   sync.Once
	done   chan struct{}
	closed chan struct{}
	cOnce  sync.Once
}

func newBenchSide(pkts [][]byte, src netip.AddrPort, batches int) *benchSide {
	s := &benchSide{pkts: pkts, src: src, done: make(chan struct{}), closed: make(chan struct{})}
	s.left.Store(int64(batches))
	return s
}

func (s *benchSide) next(bufs [][]byte, sizes []int, srcs []netip.AddrPort, off int) (int, error) {
	if s.left.Add(-1) < 0 {
		s.once.Do(func() { close(s.done) })
		<-s.closed
		return 0, os.ErrClosed
	}
	n := min(len(bufs), len(s.pkts))
	for i := 0; i < n; i++ {
		sizes[i] = copy(bufs[i][off:], s.pkts[i])
		if srcs != nil {
			srcs[i] = s.src
		}
	}
	return n, nil
}

func (s *benchSide) Close() error { s.cOnce.Do(func() { close(s.closed) }); return nil }

// benchDev is the TUN: it feeds (tx benchmark) or absorbs (rx).
type benchDev struct{ *benchSide }

func (d benchDev) Read(bufs [][]byte, sizes []int, off int) (int, error) {
	return d.next(bufs, sizes, nil, off)
}
func (benchDev) Write(bufs [][]byte, _ int) (int, error) { return len(bufs), nil }
func (benchDev) BatchSize() int                          { return benchBatch }

// benchTr is the socket: it feeds (rx benchmark) or absorbs (tx).
type benchTr struct{ *benchSide }

func (t benchTr) ReadBatch(bufs [][]byte, sizes []int, srcs []netip.AddrPort, off int) (int, error) {
	return t.next(bufs, sizes, srcs, off)
}
func (benchTr) WriteBatch(p [][]byte, _ []netip.AddrPort) (int, error) { return 0, nil }
func (benchTr) BatchSize() int                                         { return engine.MaxBatch }

func benchPackets(src, dst string) [][]byte {
	pkts := make([][]byte, benchBatch)
	for i := range pkts {
		p := make([]byte, 1400)
		copy(p, ipv4(17, src, dst, 4000, 5000))
		p[2], p[3] = byte(len(p)>>8), byte(len(p))
		pkts[i] = p
	}
	return pkts
}

func benchEngine(b *testing.B, tx bool, filter string) {
	peer := netip.MustParseAddrPort("192.0.2.2:8285")
	var feed *benchSide
	var dev engine.Device
	var tr engine.Transport
	if tx {
		feed = newBenchSide(benchPackets("10.5.1.2", "10.5.2.3"), peer, b.N)
		dev, tr = benchDev{feed}, benchTr{newBenchSide(nil, peer, 0)}
	} else {
		feed = newBenchSide(benchPackets("10.5.2.3", "10.5.1.2"), peer, b.N)
		dev, tr = benchDev{newBenchSide(nil, peer, 0)}, benchTr{feed}
	}
	e, err := engine.New(dev, tr, engine.Config{BatchSize: benchBatch, MTU: 1472, AntiSpoof: true})
	if err != nil {
		b.Fatal(err)
	}
	tab, err := engine.NewTable(netip.MustParsePrefix("10.5.0.0/16"), 24, netip.MustParsePrefix("10.5.1.0/24"),
		[]engine.PeerSpec{{Subnet: netip.MustParsePrefix("10.5.2.0/24"), Endpoint: peer}}, nil)
	if err != nil {
		b.Fatal(err)
	}
	e.SetTable(tab)
	var (
		c      *Capture
		reader sync.WaitGroup
	)
	if filter != "none" {
		f, err := ParseFilter(filter)
		if err != nil {
			b.Fatal(err)
		}
		if c, err = NewHub(e).Start(Options{Filter: f}); err != nil {
			b.Fatal(err)
		}
		w, _ := NewWriter(io.Discard, filter, 0, false)
		reader.Add(1)
		go func() { defer reader.Done(); c.Read(context.Background(), w.Write, w.Flush) }()
	}
	ctx, cancel := context.WithCancel(context.Background())
	b.ReportAllocs()
	b.ResetTimer()
	ran := make(chan struct{})
	go func() { e.Run(ctx); close(ran) }()
	<-feed.done
	b.StopTimer()
	cancel()
	<-ran
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*benchBatch), "ns/packet")
	if c != nil {
		c.Stop()
		reader.Wait()
		s := c.Stats()
		if total := s.TotalCaptured() + s.TotalOverflow(); total > 0 {
			b.ReportMetric(float64(s.TotalOverflow())/float64(total), "overflow-ratio")
		}
	}
}

func BenchmarkEngineTx(b *testing.B) {
	for _, f := range []string{"none", "port 1", "all"} {
		name := map[string]string{"none": "tap=none", "port 1": "tap=nomatch", "all": "tap=all"}[f]
		if f == "all" {
			f = ""
		}
		b.Run(name, func(b *testing.B) { benchEngine(b, true, f) })
	}
}

func BenchmarkEngineRx(b *testing.B) {
	for _, f := range []string{"none", "port 1", "all"} {
		name := map[string]string{"none": "tap=none", "port 1": "tap=nomatch", "all": "tap=all"}[f]
		if f == "all" {
			f = ""
		}
		b.Run(name, func(b *testing.B) { benchEngine(b, false, f) })
	}
}

// BenchmarkHubCapture is the per-packet cost the tap adds while one
// capture of everything runs (reader drained between rounds).
func BenchmarkHubCapture(b *testing.B) {
	h := NewHub(&fakeTarget{})
	c, _ := h.Start(Options{})
	p := &engine.TapPacket{Point: engine.PointFromTUN, FromTUN: true, Data: benchPackets("10.5.1.2", "10.5.2.3")[0]}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		h.Capture(p)
		if i%1024 == 1023 {
			c.rings[1].discard()
		}
	}
}
