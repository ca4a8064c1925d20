package vxlan

import (
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/weft-net/weft/encap/udp"
	"github.com/weft-net/weft/engine"
)

var (
	ownMAC6  = net.HardwareAddr{0x22, 0xa6, 0x83, 0x20, 0xec, 0x9a}
	peerMAC6 = [6]byte{0x16, 0x3a, 0x6e, 0x17, 0x9c, 0x3a}
)

func testPeer6() *engine.Peer {
	p := testPeer()
	p.Subnet6 = netip.MustParsePrefix("fd00:10:5:37::/64")
	p.Endpoint6 = netip.MustParseAddrPort("[2001:db8::2]:8472")
	p.HWAddr6 = peerMAC6
	return p
}

// ipv6Packet is a minimal IPv6/TCP packet of the given flow.
func ipv6Packet(sport uint16, size int) []byte {
	p := make([]byte, size)
	p[0] = 0x60
	binary.BigEndian.PutUint16(p[4:6], uint16(size-40))
	p[6], p[7] = 6, 64
	copy(p[8:24], netip.MustParseAddr("fd00:10:5:1::2").AsSlice())
	copy(p[24:40], netip.MustParseAddr("fd00:10:5:37::2").AsSlice())
	binary.BigEndian.PutUint16(p[40:42], sport)
	binary.BigEndian.PutUint16(p[42:44], 80)
	return p
}

// A dual-stack Encap frames IPv6 as flannel-v6.<VNI> does (the IPv6
// VtepMACs, EtherType 0x86DD) and IPv4 as flannel.<VNI>, and accepts each
// family only for its own device's MAC.
func TestEncapIPv6Frames(t *testing.T) {
	e, err := NewEncap(EncapOptions{VNI: 1, MAC: ownMAC, MAC6: ownMAC6})
	if err != nil {
		t.Fatal(err)
	}
	hdr := make([]byte, HeaderLen)
	e.Encapsulate(hdr, ipv6Packet(1, 60), testPeer6())
	if [6]byte(hdr[8:14]) != peerMAC6 || net.HardwareAddr(hdr[14:20]).String() != ownMAC6.String() || binary.BigEndian.Uint16(hdr[20:22]) != 0x86dd {
		t.Fatalf("IPv6 frame header % x", hdr)
	}
	if binary.BigEndian.Uint32(hdr[0:4]) != flagVNI || binary.BigEndian.Uint32(hdr[4:8]) != 1<<8 {
		t.Fatalf("VXLAN header % x", hdr[:8])
	}
	v4 := make([]byte, 20)
	v4[0] = 0x45
	e.Encapsulate(hdr, v4, testPeer6())
	if [6]byte(hdr[8:14]) != peerMAC || binary.BigEndian.Uint16(hdr[20:22]) != 0x0800 {
		t.Fatalf("IPv4 frame header % x", hdr)
	}

	frame := func(dst net.HardwareAddr, etherType uint16) []byte {
		f := make([]byte, HeaderLen)
		binary.BigEndian.PutUint32(f[0:4], flagVNI)
		binary.BigEndian.PutUint32(f[4:8], 1<<8)
		copy(f[8:14], dst)
		copy(f[14:20], net.HardwareAddr(peerMAC6[:]))
		binary.BigEndian.PutUint16(f[20:22], etherType)
		return f
	}
	v4only, _ := NewEncap(EncapOptions{VNI: 1, MAC: ownMAC})
	for _, c := range []struct {
		e         *Encap
		dst       net.HardwareAddr
		etherType uint16
		want      engine.DropReason
	}{
		{e, ownMAC6, 0x86dd, engine.DropNone},
		{e, ownMAC, 0x0800, engine.DropNone},
		{e, ownMAC, 0x86dd, engine.DropWrongMAC},  // IPv6 through the IPv4 device
		{e, ownMAC6, 0x0800, engine.DropWrongMAC}, // IPv4 through the IPv6 device
		{e, net.HardwareAddr(peerMAC[:]), 0x86dd, engine.DropWrongMAC},
		{e, ownMAC6, 0x0806, engine.DropNotIPv4Frame}, // ARP is IPv4's
		{v4only, ownMAC, 0x86dd, engine.DropNotIPv4Frame},
		{v4only, ownMAC6, 0x86dd, engine.DropWrongMAC},
	} {
		f := frame(c.dst, c.etherType)
		if got := c.e.Decapsulate(f[:HeaderLen:HeaderLen], testPeer6()); got != c.want {
			t.Errorf("dual %v, to %s, type %#04x: %v, want %v", c.e.has6, c.dst, c.etherType, got, c.want)
		}
	}
	if _, err := NewEncap(EncapOptions{VNI: 1, MAC: ownMAC, MAC6: net.HardwareAddr{1, 0, 0, 0, 0, 1}}); err == nil {
		t.Error("a multicast IPv6 VtepMAC accepted")
	}
}

// With an IPv6 underlay the Transport sends frames to IPv6 destinations
// from IPv6 sockets (a flow keeps its port), receives on both families
// (two receivers), and hashes IPv6 flows by their ports.
func TestTransportIPv6Underlay(t *testing.T) {
	lo4, lo6 := netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("::1")
	tr, err := ListenTransport(TransportOptions{Local: netip.AddrPortFrom(lo4, 0), Local6: netip.AddrPortFrom(lo6, 0)})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if len(tr.Receivers()) != 2 || len(tr.SourcePorts6()) != DefaultSourcePorts {
		t.Fatalf("%d receivers, IPv6 source ports %v", len(tr.Receivers()), tr.SourcePorts6())
	}
	recv6, err := udp.Listen(udp.Options{Local: netip.AddrPortFrom(lo6, 0), NoGRO: true})
	if err != nil {
		t.Fatal(err)
	}
	defer recv6.Close()
	recv4, err := udp.Listen(udp.Options{Local: netip.AddrPortFrom(lo4, 0), NoGRO: true})
	if err != nil {
		t.Fatal(err)
	}
	defer recv4.Close()
	e, _ := NewEncap(EncapOptions{VNI: 1, MAC: ownMAC, MAC6: ownMAC6})
	var pkts [][]byte
	var dsts []netip.AddrPort
	const flows, perFlow = 16, 3
	for range perFlow {
		for f := range flows {
			b := make([]byte, HeaderLen+80)
			copy(b[HeaderLen:], ipv6Packet(uint16(2000+f), 80))
			e.Encapsulate(b[:HeaderLen], b[HeaderLen:], testPeer6())
			pkts = append(pkts, b)
			dsts = append(dsts, recv6.LocalAddr())
		}
		pkts = append(pkts, flowFrame(999, 100))
		dsts = append(dsts, recv4.LocalAddr())
	}
	if refused, err := tr.WriteBatch(pkts, dsts); err != nil || refused != 0 {
		t.Fatalf("refused %d: %v", refused, err)
	}
	bufs, sizes, srcs := make([][]byte, 64), make([]int, 64), make([]netip.AddrPort, 64)
	for i := range bufs {
		bufs[i] = make([]byte, engine.BufferSize)
	}
	portOf, seen := map[uint16]uint16{}, map[uint16]bool{}
	got := 0
	deadline := time.Now().Add(5 * time.Second)
	for got < flows*perFlow && time.Now().Before(deadline) {
		n, err := recv6.ReadBatch(bufs, sizes, srcs, engine.Headroom)
		if err != nil {
			t.Fatal(err)
		}
		for i := range n {
			if !srcs[i].Addr().Is6() {
				t.Fatalf("an IPv6-underlay frame from %s", srcs[i])
			}
			f := bufs[i][engine.Headroom:]
			if binary.BigEndian.Uint16(f[20:22]) != 0x86dd {
				t.Fatalf("not an IPv6 frame: % x", f[:HeaderLen])
			}
			sp := binary.BigEndian.Uint16(f[HeaderLen+40:])
			if p, ok := portOf[sp]; ok && p != srcs[i].Port() {
				t.Fatalf("flow %d left from ports %d and %d", sp, p, srcs[i].Port())
			}
			portOf[sp] = srcs[i].Port()
			seen[srcs[i].Port()] = true
		}
		got += n
	}
	if got != flows*perFlow || len(seen) < 2 {
		t.Fatalf("received %d of %d IPv6 frames, from %d source ports", got, flows*perFlow, len(seen))
	}
	if n, err := recv4.ReadBatch(bufs, sizes, srcs, engine.Headroom); err != nil || n == 0 || !srcs[0].Addr().Is4() {
		t.Fatalf("IPv4 frames: %d, %v", n, err)
	}
	// The IPv6 receiving socket is a receiver of its own.
	if _, err := recv6.WriteBatch([][]byte{flowFrame(1, 60)}, []netip.AddrPort{netip.AddrPortFrom(lo6, tr.rx6.LocalAddr().Port())}); err != nil {
		t.Fatal(err)
	}
	if n, err := tr.Receivers()[1].ReadBatch(bufs, sizes, srcs, engine.Headroom); err != nil || n != 1 || srcs[0] != recv6.LocalAddr() {
		t.Fatalf("IPv6 receiver: %d from %v, %v", n, srcs[0], err)
	}
}
