package udp

import (
	"bytes"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/engine"
)

func listen(t testing.TB, o Options) *Conn {
	t.Helper()
	if !o.Local.IsValid() {
		o.Local = netip.MustParseAddrPort("127.0.0.1:0")
	}
	c, err := Listen(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func packet(i, size int) []byte {
	b := make([]byte, size)
	for j := range b {
		b[j] = byte(i*7 + j)
	}
	if size >= 4 {
		b[0], b[1], b[2], b[3] = byte(i>>8), byte(i), byte(size>>8), byte(size)
	}
	return b
}

func TestPackGroupsGSORuns(t *testing.T) {
	c := listen(t, Options{BatchSize: 128})
	if !c.gso.Load() {
		t.Skip("kernel without UDP_SEGMENT")
	}
	a := netip.MustParseAddrPort("192.0.2.2:8285")
	b := netip.MustParseAddrPort("192.0.2.3:8285")
	var pkts [][]byte
	var dsts []netip.AddrPort
	add := func(dst netip.AddrPort, sizes ...int) {
		for _, s := range sizes {
			pkts = append(pkts, packet(len(pkts), s))
			dsts = append(dsts, dst)
		}
	}
	add(a, 1400, 1400, 1400, 900) // one run, shorter last
	add(a, 1400, 1400)            // a new run: the shorter one ended the last
	add(b, 1400, 100)             // destination change; the shorter one ends the run
	add(b, 200)                   // a longer one cannot follow a shorter
	for range 70 {                // longer than udpMaxSegments
		add(a, 1000)
	}
	m := c.pack(pkts, nil, dsts, 0)
	want := []int{4, 2, 2, 1, 64, 6}
	if m != len(want) {
		t.Fatalf("%d messages, want %d", m, len(want))
	}
	for i, w := range want {
		if c.tx.segs[i] != w {
			t.Errorf("message %d carries %d packets, want %d", i, c.tx.segs[i], w)
		}
	}
}

// TestLoopbackDelivery sends batches of mixed sizes and destinations over
// loopback with each combination of offloads, and checks every datagram
// arrives once, intact, from the right source: GSO must not merge two
// packets into one datagram, GRO splitting must cut them back exactly.
// Over IPv6 (userspace VXLAN's flannel-v6.<VNI> underlay) the same holds.
func TestLoopbackDelivery(t *testing.T) {
	for _, local := range []string{"127.0.0.1:0", "[::1]:0"} {
		for _, o := range []Options{{}, {NoGSO: true}, {NoGRO: true}, {NoGSO: true, NoGRO: true}, {BatchSize: 1, NoGSO: true, NoGRO: true}} {
			o.Local = netip.MustParseAddrPort(local)
			t.Run(fmt.Sprintf("%s,gso=%v,gro=%v,batch=%d", o.Local.Addr(), !o.NoGSO, !o.NoGRO, o.BatchSize), func(t *testing.T) {
				tx := listen(t, o)
				rx1 := listen(t, o)
				rx2 := listen(t, o)
				var pkts [][]byte
				var dsts []netip.AddrPort
				sizes := []int{1400, 1400, 1400, 1400, 700, 20, 1400, 1400, 64, 64, 64, 1}
				for i := 0; i < 300; i++ {
					dst := rx1.LocalAddr()
					if i%50 >= 40 {
						dst = rx2.LocalAddr()
					}
					pkts = append(pkts, packet(i, sizes[i%len(sizes)]))
					dsts = append(dsts, dst)
				}
				for i := 0; i < len(pkts); i += tx.BatchSize() {
					end := min(i+tx.BatchSize(), len(pkts))
					if refused, err := tx.WriteBatch(pkts[i:end], dsts[i:end]); err != nil || refused != 0 {
						t.Fatalf("WriteBatch: refused %d, %v", refused, err)
					}
				}
				got := map[string]bool{}
				for _, rx := range []*Conn{rx1, rx2} {
					want := 0
					for _, d := range dsts {
						if d == rx.LocalAddr() {
							want++
						}
					}
					n := 0
					bufs := make([][]byte, 8) // fewer than a GRO train: leftovers must wait
					for i := range bufs {
						bufs[i] = make([]byte, engine.BufferSize)
					}
					sizes := make([]int, len(bufs))
					srcs := make([]netip.AddrPort, len(bufs))
					for n < want {
						rx.uc.SetReadDeadline(time.Now().Add(2 * time.Second))
						k, err := rx.ReadBatch(bufs, sizes, srcs, engine.Headroom)
						if err != nil {
							t.Fatalf("after %d of %d datagrams: %v", n, want, err)
						}
						for i := 0; i < k; i++ {
							if srcs[i] != tx.LocalAddr() {
								t.Fatalf("source %s, want %s", srcs[i], tx.LocalAddr())
							}
							p := bufs[i][engine.Headroom : engine.Headroom+sizes[i]]
							key := string(p)
							if got[key] {
								t.Fatalf("datagram of %d bytes delivered twice", len(p))
							}
							got[key] = true
							if len(bufs[i]) != engine.BufferSize {
								t.Fatalf("a buffer of %d bytes came back", len(bufs[i]))
							}
						}
						n += k
					}
				}
				for i, p := range pkts {
					if !got[string(p)] {
						t.Fatalf("packet %d (%d bytes) lost or altered", i, len(p))
					}
				}
				if s := tx.Stats(); !o.NoGSO && s.GSO && s.SendMessages >= s.SendSegments {
					t.Errorf("GSO on but %d messages for %d packets", s.SendMessages, s.SendSegments)
				}
				// Over loopback a GSO send reaches a GRO socket still coalesced,
				// so the split path (with fewer buffers than a train) has run.
				if s := rx1.Stats(); !o.NoGSO && !o.NoGRO && s.GRO && tx.Stats().GSO && s.RecvSegments <= s.RecvDatagrams {
					t.Errorf("GRO on but %d datagrams gave %d packets: nothing was split", s.RecvDatagrams, s.RecvSegments)
				}
			})
		}
	}
}

func TestBatchIOAllocatesNothing(t *testing.T) {
	tx := listen(t, Options{})
	rx := listen(t, Options{})
	pkts := make([][]byte, 64)
	dsts := make([]netip.AddrPort, 64)
	for i := range pkts {
		pkts[i] = packet(i, 1200)
		dsts[i] = rx.LocalAddr()
	}
	bufs := make([][]byte, 128)
	for i := range bufs {
		bufs[i] = make([]byte, engine.BufferSize)
	}
	sizes := make([]int, 128)
	srcs := make([]netip.AddrPort, 128)
	allocs := testing.AllocsPerRun(50, func() {
		if _, err := tx.WriteBatch(pkts, dsts); err != nil {
			t.Fatal(err)
		}
		for got := 0; got < len(pkts); {
			n, err := rx.ReadBatch(bufs, sizes, srcs, engine.Headroom)
			if err != nil {
				t.Fatal(err)
			}
			got += n
		}
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per batch sent and received, want 0", allocs)
	}
}

func BenchmarkLoopback(b *testing.B) {
	for _, size := range []int{64, 1400} {
		b.Run(fmt.Sprintf("size=%d", size), func(b *testing.B) {
			tx := listen(b, Options{})
			rx := listen(b, Options{})
			pkts := make([][]byte, 64)
			dsts := make([]netip.AddrPort, 64)
			for i := range pkts {
				pkts[i] = bytes.Repeat([]byte{1}, size)
				dsts[i] = rx.LocalAddr()
			}
			bufs := make([][]byte, 128)
			for i := range bufs {
				bufs[i] = make([]byte, engine.BufferSize)
			}
			sizes := make([]int, 128)
			srcs := make([]netip.AddrPort, 128)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				tx.WriteBatch(pkts, dsts)
				for got := 0; got < len(pkts); {
					n, _ := rx.ReadBatch(bufs, sizes, srcs, engine.Headroom)
					got += n
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(pkts)), "ns/packet")
		})
	}
}

// TestGatherDelivery sends datagrams cut into a head and a tail at varied
// places (as TSO segments come from the TUN: the headers in one buffer,
// the payload in another), in GSO runs with a short last one and mixed
// with whole ones, over both families: each must arrive as one datagram,
// the two pieces joined, none merged with another.
func TestGatherDelivery(t *testing.T) {
	for _, local := range []string{"127.0.0.1:0", "[::1]:0"} {
		for _, o := range []Options{{}, {NoGSO: true}} {
			o.Local = netip.MustParseAddrPort(local)
			t.Run(fmt.Sprintf("%s,gso=%v", o.Local.Addr(), !o.NoGSO), func(t *testing.T) {
				tx, rx := listen(t, o), listen(t, Options{Local: o.Local, NoGRO: true})
				pkts, heads, tails, dsts := gatherBatch(rx.LocalAddr())
				if refused, err := tx.WriteBatchGather(heads, tails, dsts); err != nil || refused != 0 {
					t.Fatalf("WriteBatchGather: refused %d, %v", refused, err)
				}
				checkReceived(t, rx, pkts)
				if s := tx.Stats(); !o.NoGSO && s.GSO && s.SendMessages >= s.SendSegments {
					t.Errorf("GSO on but %d messages for %d packets", s.SendMessages, s.SendSegments)
				}
			})
		}
	}
}

// gatherBatch: 60 datagrams to dst, most of 1400 bytes cut after 28 or 52
// bytes, a short one ending each run of 20, and some whole.
func gatherBatch(dst netip.AddrPort) (pkts, heads, tails [][]byte, dsts []netip.AddrPort) {
	for i := range 60 {
		size := 1400
		if i%20 == 19 {
			size = 777
		}
		p := packet(i, size)
		cut := []int{28, 52, size}[i%3]
		pkts = append(pkts, p)
		heads = append(heads, p[:cut])
		tails = append(tails, p[cut:])
		dsts = append(dsts, dst)
	}
	return pkts, heads, tails, dsts
}

func checkReceived(t *testing.T, rx *Conn, pkts [][]byte) {
	t.Helper()
	bufs := make([][]byte, 64)
	for i := range bufs {
		bufs[i] = make([]byte, engine.BufferSize)
	}
	sizes, srcs := make([]int, len(bufs)), make([]netip.AddrPort, len(bufs))
	got := 0
	for got < len(pkts) {
		rx.uc.SetReadDeadline(time.Now().Add(2 * time.Second))
		k, err := rx.ReadBatch(bufs, sizes, srcs, engine.Headroom)
		if err != nil {
			t.Fatalf("after %d of %d datagrams: %v", got, len(pkts), err)
		}
		for i := range k {
			p := bufs[i][engine.Headroom : engine.Headroom+sizes[i]]
			if !bytes.Equal(p, pkts[got]) {
				t.Fatalf("datagram %d: %d bytes, want %d, or altered", got, len(p), len(pkts[got]))
			}
			got++
		}
	}
}

// TestGatherGSOFallback: where the kernel refuses UDP_SEGMENT (here: a
// socket that sends without UDP checksums, which GSO cannot do), the
// first refused GSO send switches GSO off, is counted, and every datagram
// still goes out, one per message from its two pieces.
func TestGatherGSOFallback(t *testing.T) {
	for _, local := range []string{"127.0.0.1:0", "[::1]:0"} {
		t.Run(local, func(t *testing.T) {
			o := Options{Local: netip.MustParseAddrPort(local)}
			tx, rx := listen(t, o), listen(t, Options{Local: o.Local, NoGRO: true})
			if !tx.gso.Load() {
				t.Skip("kernel without UDP_SEGMENT")
			}
			var serr error
			tx.rc.Control(func(fd uintptr) {
				if o.Local.Addr().Is4() {
					serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_NO_CHECK, 1)
				} else {
					serr = unix.SetsockoptInt(int(fd), unix.SOL_UDP, unix.UDP_NO_CHECK6_TX, 1)
				}
			})
			if o.Local.Addr().Is6() {
				// IPv6 receivers drop datagrams without a checksum unless told.
				rx.rc.Control(func(fd uintptr) {
					if err := unix.SetsockoptInt(int(fd), unix.SOL_UDP, unix.UDP_NO_CHECK6_RX, 1); err != nil {
						serr = err
					}
				})
			}
			if serr != nil {
				t.Fatal(serr)
			}
			pkts, heads, tails, dsts := gatherBatch(rx.LocalAddr())
			if refused, err := tx.WriteBatchGather(heads, tails, dsts); err != nil || refused != 0 {
				t.Fatalf("WriteBatchGather: refused %d, %v", refused, err)
			}
			checkReceived(t, rx, pkts)
			s := tx.Stats()
			if s.GSO || s.GSOFallbacks != 1 || s.SendSegments != uint64(len(pkts)) || s.SendMessages != uint64(len(pkts)) {
				t.Fatalf("after the refusal: GSO %v, %d fallbacks, %d messages for %d packets; want off, 1, one each", s.GSO, s.GSOFallbacks, s.SendMessages, s.SendSegments)
			}
		})
	}
}

func TestGatherAllocatesNothing(t *testing.T) {
	tx := listen(t, Options{})
	rx := listen(t, Options{NoGRO: true})
	_, heads, tails, dsts := gatherBatch(rx.LocalAddr())
	bufs := make([][]byte, 128)
	for i := range bufs {
		bufs[i] = make([]byte, engine.BufferSize)
	}
	sizes, srcs := make([]int, 128), make([]netip.AddrPort, 128)
	allocs := testing.AllocsPerRun(50, func() {
		if _, err := tx.WriteBatchGather(heads, tails, dsts); err != nil {
			t.Fatal(err)
		}
		for got := 0; got < len(heads); {
			n, err := rx.ReadBatch(bufs, sizes, srcs, engine.Headroom)
			if err != nil {
				t.Fatal(err)
			}
			got += n
		}
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per batch sent and received, want 0", allocs)
	}
}

// TestReadTrains receives GSO batches on a GRO socket with ReadTrains,
// with room for every train and with less room than one (8 slots: the
// train waits, or is copied apart when it could never fit): every
// datagram arrives once, intact, in order, as a slice whose capacity ends
// with it, and every element of bufs stays BufferSize long.
func TestReadTrains(t *testing.T) {
	for _, slots := range []int{128, 8} {
		for _, local := range []string{"127.0.0.1:0", "[::1]:0"} {
			t.Run(fmt.Sprintf("%s,slots=%d", local, slots), func(t *testing.T) {
				o := Options{Local: netip.MustParseAddrPort(local)}
				tx, rx := listen(t, o), listen(t, o)
				var pkts [][]byte
				var dsts []netip.AddrPort
				sizes := []int{1400, 1400, 1400, 1400, 700, 0, 1400, 1400, 64, 64, 64, 1}
				for i := range 300 {
					pkts = append(pkts, packet(i, sizes[i%len(sizes)]))
					dsts = append(dsts, rx.LocalAddr())
				}
				for i := 0; i < len(pkts); i += tx.BatchSize() {
					end := min(i+tx.BatchSize(), len(pkts))
					if refused, err := tx.WriteBatch(pkts[i:end], dsts[i:end]); err != nil || refused != 0 {
						t.Fatalf("WriteBatch: refused %d, %v", refused, err)
					}
				}
				bufs := make([][]byte, slots)
				for i := range bufs {
					bufs[i] = make([]byte, engine.BufferSize)
				}
				got := make([][]byte, slots)
				srcs := make([]netip.AddrPort, slots)
				n := 0
				for n < len(pkts) {
					rx.uc.SetReadDeadline(time.Now().Add(2 * time.Second))
					k, err := rx.ReadTrains(bufs, got, srcs, engine.Headroom)
					if err != nil {
						t.Fatalf("after %d of %d datagrams: %v", n, len(pkts), err)
					}
					for i := range k {
						p := got[i][engine.Headroom:]
						if cap(got[i]) != len(got[i]) {
							t.Fatalf("datagram %d: capacity goes %d bytes past it", n, cap(got[i])-len(got[i]))
						}
						if srcs[i] != tx.LocalAddr() || !bytes.Equal(p, pkts[n]) {
							t.Fatalf("datagram %d: %d bytes from %s, want %d from %s", n, len(p), srcs[i], len(pkts[n]), tx.LocalAddr())
						}
						n++
					}
					for _, b := range bufs {
						if len(b) != engine.BufferSize {
							t.Fatalf("a buffer of %d bytes came back", len(b))
						}
					}
				}
				if s := rx.Stats(); s.GRO && tx.Stats().GSO && s.RecvSegments <= s.RecvDatagrams {
					t.Errorf("GRO on but %d datagrams gave %d packets: no train", s.RecvDatagrams, s.RecvSegments)
				}
			})
		}
	}
}

func TestReadTrainsAllocatesNothing(t *testing.T) {
	tx, rx := listen(t, Options{}), listen(t, Options{})
	pkts := make([][]byte, 64)
	dsts := make([]netip.AddrPort, 64)
	for i := range pkts {
		pkts[i], dsts[i] = packet(i, 1200), rx.LocalAddr()
	}
	bufs := make([][]byte, 128)
	for i := range bufs {
		bufs[i] = make([]byte, engine.BufferSize)
	}
	got, srcs := make([][]byte, 128), make([]netip.AddrPort, 128)
	if a := testing.AllocsPerRun(50, func() {
		if _, err := tx.WriteBatch(pkts, dsts); err != nil {
			t.Fatal(err)
		}
		for n := 0; n < len(pkts); {
			k, err := rx.ReadTrains(bufs, got, srcs, engine.Headroom)
			if err != nil {
				t.Fatal(err)
			}
			n += k
		}
	}); a != 0 {
		t.Fatalf("%v allocations per batch, want 0", a)
	}
}

// Datagrams the kernel drops at a full receive buffer, before the Conn
// reads them, show in Stats; a send-only socket reports none.
func TestReceiveDrops(t *testing.T) {
	lo := netip.MustParseAddr("127.0.0.1")
	c, err := Listen(Options{Local: netip.AddrPortFrom(lo, 0), SocketBuffer: 64 << 10, NoGRO: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if d := c.Stats().ReceiveDrops; d != 0 {
		t.Fatalf("a new socket has %d drops", d)
	}
	s, err := Listen(Options{Local: netip.AddrPortFrom(lo, 0), SendOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const sent = 4000 // far more than 64 KiB of buffer holds, at ~1 KiB of truesize each
	payload := make([]byte, 100)
	for range sent / 100 {
		pkts := make([][]byte, 100)
		dsts := make([]netip.AddrPort, 100)
		for i := range pkts {
			pkts[i], dsts[i] = payload, c.LocalAddr()
		}
		if _, err := s.WriteBatch(pkts, dsts); err != nil {
			t.Fatal(err)
		}
	}
	if d := c.Stats().ReceiveDrops; d < sent/2 || d > sent {
		t.Errorf("%d of %d datagrams counted as dropped at a 64 KiB buffer nobody read", d, sent)
	}
	if d := s.Stats().ReceiveDrops; d != 0 {
		t.Errorf("a send-only socket reports %d drops", d)
	}
	if sum := Sum(c.Stats(), s.Stats()); sum.ReceiveDrops != c.Stats().ReceiveDrops {
		t.Errorf("Sum lost the drops: %d", sum.ReceiveDrops)
	}
}
