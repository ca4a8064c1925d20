package udp

import (
	"net/netip"
	"testing"
	"time"

	"github.com/weft-net/weft/engine"
)

func listenDual(t testing.TB, o Options) *Dual {
	t.Helper()
	d, err := ListenDual(o, netip.MustParseAddrPort("127.0.0.1:0"), netip.MustParseAddrPort("[::1]:0"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// readAll reads want datagrams from r and returns them by content, with
// their sources.
func readAll(t *testing.T, c *Conn, want int) map[string]netip.AddrPort {
	t.Helper()
	got := map[string]netip.AddrPort{}
	bufs := make([][]byte, 16)
	for i := range bufs {
		bufs[i] = make([]byte, engine.BufferSize)
	}
	sizes, srcs := make([]int, len(bufs)), make([]netip.AddrPort, len(bufs))
	for len(got) < want {
		c.uc.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, err := c.ReadBatch(bufs, sizes, srcs, engine.Headroom)
		if err != nil {
			t.Fatalf("after %d of %d datagrams: %v", len(got), want, err)
		}
		for i := range n {
			got[string(bufs[i][engine.Headroom:engine.Headroom+sizes[i]])] = srcs[i]
		}
	}
	return got
}

// TestDualSendsEachFamilyFromItsSocket: a batch mixing IPv4 and IPv6
// destinations leaves from the socket of each destination's family, in
// order, every datagram once; both sockets receive.
func TestDualSendsEachFamilyFromItsSocket(t *testing.T) {
	for _, o := range []Options{{}, {NoGSO: true, NoGRO: true}} {
		tx := listenDual(t, o)
		rx := listenDual(t, o)
		if got := len(tx.Receivers()); got != 2 {
			t.Fatalf("%d receivers, want 2", got)
		}
		var pkts [][]byte
		var dsts []netip.AddrPort
		for i := range 100 {
			dst := rx.V4().LocalAddr()
			if i%10 >= 4 { // runs of each family, as the engine groups a peer's
				dst = rx.V6().LocalAddr()
			}
			pkts = append(pkts, packet(i, 1200))
			dsts = append(dsts, dst)
		}
		if refused, err := tx.WriteBatch(pkts, dsts); err != nil || refused != 0 {
			t.Fatalf("WriteBatch: refused %d, %v", refused, err)
		}
		got4 := readAll(t, rx.V4(), 40)
		got6 := readAll(t, rx.V6(), 60)
		for i, p := range pkts {
			src, want := got4[string(p)], tx.V4().LocalAddr()
			if dsts[i].Addr().Is6() {
				src, want = got6[string(p)], tx.V6().LocalAddr()
			}
			if src != want {
				t.Fatalf("packet %d to %s: from %s, want %s", i, dsts[i], src, want)
			}
		}
		for _, p := range tx.pkts4[:cap(tx.pkts4)] {
			if p != nil {
				t.Fatal("Dual kept a reference to a packet after WriteBatch")
			}
		}
		s := tx.Stats()
		if s.SendSegments != 100 || tx.V6().Stats().SendSegments != 60 {
			t.Errorf("sent %d packets, %d over IPv6; want 100, 60", s.SendSegments, tx.V6().Stats().SendSegments)
		}
	}
}

func TestListenDualRefusesWrongFamilies(t *testing.T) {
	v4, v6 := netip.MustParseAddrPort("127.0.0.1:0"), netip.MustParseAddrPort("[::1]:0")
	for _, c := range [][2]netip.AddrPort{{v6, v6}, {v4, v4}, {v4, netip.MustParseAddrPort("[::ffff:127.0.0.1]:0")}} {
		if d, err := ListenDual(Options{}, c[0], c[1]); err == nil {
			d.Close()
			t.Errorf("ListenDual(%s, %s) succeeded", c[0], c[1])
		}
	}
}

func TestDualWriteBatchAllocatesNothing(t *testing.T) {
	tx := listenDual(t, Options{})
	rx := listenDual(t, Options{})
	pkts := make([][]byte, 64)
	dsts := make([]netip.AddrPort, 64)
	for i := range pkts {
		pkts[i] = packet(i, 1200)
		dsts[i] = rx.V4().LocalAddr()
		if i >= 32 {
			dsts[i] = rx.V6().LocalAddr()
		}
	}
	bufs := make([][]byte, 128)
	for i := range bufs {
		bufs[i] = make([]byte, engine.BufferSize)
	}
	sizes, srcs := make([]int, 128), make([]netip.AddrPort, 128)
	allocs := testing.AllocsPerRun(50, func() {
		if _, err := tx.WriteBatch(pkts, dsts); err != nil {
			t.Fatal(err)
		}
		for _, c := range []*Conn{rx.V4(), rx.V6()} {
			for got := 0; got < 32; {
				n, err := c.ReadBatch(bufs, sizes, srcs, engine.Headroom)
				if err != nil {
					t.Fatal(err)
				}
				got += n
			}
		}
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per batch, want 0", allocs)
	}
}
