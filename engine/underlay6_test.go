package engine

import (
	"context"
	"net/netip"
	"os"
	"sync/atomic"
	"testing"
)

// testTableUnderlay6 is testTable with every peer reachable over an IPv6
// underlay too (userspace VXLAN's flannel-v6.<VNI>): 2001:db8::i, with
// MAC ...:06:i for IPv6 and ...:04:i for IPv4.
func testTableUnderlay6(t testing.TB) *Table {
	var peers []PeerSpec
	for i := 2; i <= 4; i++ {
		peers = append(peers, PeerSpec{
			Subnet:    netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 5, byte(i), 0}), 24),
			Subnet6:   testSubnet6(i),
			Endpoint:  netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}), 8472),
			HWAddr:    [6]byte{2, 0, 0, 0, 4, byte(i)},
			Endpoint6: netip.AddrPortFrom(underlay6(i), 8472),
			HWAddr6:   [6]byte{2, 0, 0, 0, 6, byte(i)},
		})
	}
	tab, err := NewTableFor(Networks{Network: testNetwork, SubnetLen: 24, Own: testOwn, Network6: testNetwork6, SubnetLen6: 64, Own6: testOwn6}, peers, nil)
	if err != nil {
		t.Fatal(err)
	}
	return tab
}

func underlay6(i int) netip.Addr {
	return netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: byte(i)})
}

// A peer with an IPv6 endpoint gets its IPv6 packets there and its IPv4
// packets at its IPv4 endpoint, each family a run of its own so the
// transport can send each run as one GSO message.
func TestTxUnderlay6SplitsFamilies(t *testing.T) {
	e := testEngine(t, 128)
	e.SetTable(testTableUnderlay6(t))
	l := e.tx[0]
	fillTx6(t, l, 128, true)
	k := l.classify(e.Table(), 128)
	if k != 124 {
		t.Fatalf("kept %d, want 124", k)
	}
	runs := map[netip.AddrPort]bool{}
	for i := 0; i < k; i++ {
		dst := l.outDst[i]
		if i > 0 && dst != l.outDst[i-1] {
			if runs[dst] {
				t.Fatalf("%s appears in two runs", dst)
			}
		}
		runs[dst] = true
		pkt := l.out[i]
		var p *Peer
		if isIPv6(pkt) {
			p = e.Table().lookup6(dst6(pkt))
			if p == nil || dst != p.Endpoint6 {
				t.Fatalf("IPv6 packet %d to %s, peer %v", i, dst, p)
			}
		} else {
			p = e.Table().lookup(dstIP(pkt))
			if p == nil || dst != p.Endpoint {
				t.Fatalf("IPv4 packet %d to %s, peer %v", i, dst, p)
			}
		}
	}
	if len(runs) != 6 {
		t.Errorf("%d runs, want 6 (3 peers x 2 families)", len(runs))
	}
	allocs := testing.AllocsPerRun(100, func() {
		resetHops(l.bufs, 128)
		l.classify(e.Table(), 128)
		l.bc.flush(&l.c)
		l.icmp.flush(&l.c)
	})
	if allocs != 0 {
		t.Errorf("%v allocations per batch", allocs)
	}
}

// On receive, a datagram from a peer's IPv6 endpoint is that peer's; its
// IPv6 packets must come from there and its IPv4 packets from its IPv4
// endpoint (anti-spoofing per underlay family), and an IPv6 address that
// is no peer's endpoint is an unknown peer.
func TestRxUnderlay6Sources(t *testing.T) {
	e := testEngine(t, 8)
	tab := testTableUnderlay6(t)
	e.SetTable(tab)
	l := e.rx[0]
	v4src := netip.MustParseAddrPort("192.0.2.2:40000")
	v6src := netip.AddrPortFrom(underlay6(2), 40000)
	cases := []struct {
		pkt  []byte
		src  netip.AddrPort
		want DropReason
	}{
		{udp6Packet(t, testAddr6(2, 9), testAddr6(1, 2), 64, []byte("a")), v6src, DropNone},
		{udpPacket(t, "10.5.2.9", "10.5.1.2", 64, []byte("b")), v4src, DropNone},
		{udp6Packet(t, testAddr6(2, 9), testAddr6(1, 2), 64, []byte("c")), v4src, DropSpoofedSource},
		{udpPacket(t, "10.5.2.9", "10.5.1.2", 64, []byte("d")), v6src, DropSpoofedSource},
		{udp6Packet(t, testAddr6(3, 9), testAddr6(1, 2), 64, []byte("e")), v6src, DropSpoofedSource},
		{udp6Packet(t, testAddr6(2, 9), testAddr6(1, 2), 64, []byte("f")), netip.AddrPortFrom(underlay6(9), 1), DropUnknownPeer},
		{udp6Packet(t, testAddr6(3, 9), testAddr6(1, 2), 64, []byte("g")), netip.AddrPortFrom(underlay6(3), 1), DropNone},
	}
	for i, c := range cases {
		l.sizes[i] = copy(l.bufs[i][Headroom:], c.pkt)
		l.srcs[i] = c.src
	}
	k := l.classify(tab, len(cases))
	want := map[DropReason]uint32{}
	good := 0
	for _, c := range cases {
		if c.want == DropNone {
			good++
		} else {
			want[c.want]++
		}
	}
	if k != good {
		t.Errorf("delivered %d, want %d", k, good)
	}
	for r, n := range want {
		if l.bc.drops[r] != n {
			t.Errorf("%v: %d drops, want %d", r, l.bc.drops[r], n)
		}
	}
	if p := tab.peerBySource(netip.MustParseAddr("::ffff:192.0.2.3")); p == nil || p.Subnet.Addr() != netip.MustParseAddr("10.5.3.0") {
		t.Errorf("a v4-mapped source finds %v", p)
	}
}

// An IPv6 endpoint needs an IPv6 subnet and an IPv6 address.
func TestTableRefusesBadEndpoint6(t *testing.T) {
	n := Networks{Network: testNetwork, SubnetLen: 24, Own: testOwn, Network6: testNetwork6, SubnetLen6: 64, Own6: testOwn6}
	base := PeerSpec{Subnet: netip.MustParsePrefix("10.5.2.0/24"), Endpoint: netip.MustParseAddrPort("192.0.2.2:8472")}
	for _, ep := range []string{"192.0.2.2:8472", "[::ffff:192.0.2.2]:8472", "[2001:db8::2]:8472"} {
		s := base
		s.Endpoint6 = netip.MustParseAddrPort(ep)
		if _, err := NewTableFor(n, []PeerSpec{s}, nil); err == nil {
			t.Errorf("endpoint6 %s without an IPv6 subnet accepted", ep)
		}
	}
}

// countingReceiver returns one datagram per call until left runs out,
// then reports closed.
type countingReceiver struct {
	pkt  []byte
	src  netip.AddrPort
	left atomic.Int64
}

func (r *countingReceiver) ReadBatch(bufs [][]byte, sizes []int, srcs []netip.AddrPort, offset int) (int, error) {
	if r.left.Add(-1) < 0 {
		return 0, os.ErrClosed
	}
	sizes[0] = copy(bufs[0][offset:], r.pkt)
	srcs[0] = r.src
	return 1, nil
}

type multiTransport struct {
	nopTransport
	rs []Receiver
}

func (m multiTransport) Receivers() []Receiver { return m.rs }

// A MultiReceiver transport gets one receive loop per receiver, and the
// engine's counters sum them.
func TestMultiReceiver(t *testing.T) {
	r4 := &countingReceiver{pkt: udpPacket(t, "10.5.2.9", "10.5.1.2", 64, []byte("v4")), src: netip.MustParseAddrPort("192.0.2.2:1")}
	r6 := &countingReceiver{pkt: udp6Packet(t, testAddr6(2, 9), testAddr6(1, 2), 64, []byte("v6")), src: netip.AddrPortFrom(underlay6(2), 1)}
	r4.left.Store(3)
	r6.left.Store(5)
	e, err := New(nopDevice{}, multiTransport{rs: []Receiver{r4, r6}}, Config{BatchSize: 8, MTU: 1472, AntiSpoof: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(e.rx) != 2 {
		t.Fatalf("%d receive loops, want 2", len(e.rx))
	}
	e.SetTable(testTableUnderlay6(t))
	// Each loop ends when its receiver reports closed; Run waits for all.
	if err := e.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if s := e.Stats(); s.RxPackets != 8 || s.RxBatches != 8 {
		t.Errorf("rx packets %d, batches %d; want 8 and 8 summed over both loops", s.RxPackets, s.RxBatches)
	}
}
