package engine

import (
	"net/netip"
	"testing"
)

func fuzzSeeds(f *testing.F) {
	t := &testing.T{}
	f.Add(udpPacket(t, "10.5.2.7", "10.5.1.2", 64, []byte("payload")), byte(2))
	f.Add(udpPacket(t, "10.5.1.2", "10.5.2.9", 1, nil), byte(2))
	f.Add(udpPacket(t, "10.5.3.7", "10.5.1.2", 64, nil), byte(2))
	f.Add([]byte{0x45, 0, 0, 20}, byte(3))
	f.Add([]byte{0x4f, 0, 0xff, 0xff, 0, 0, 0, 0, 64, 1}, byte(9))
	f.Add([]byte{}, byte(0))
	// IPv6: from peer 2 to this host, its hop limit running out, to no
	// peer, an ICMPv6 error and an echo behind extension headers, a
	// jumbogram, a header cut short, a payload length past the end.
	f.Add(udp6Packet(t, "fd00:10:5:2::7", "fd00:10:5:1::2", 64, []byte("payload")), byte(2))
	f.Add(udp6Packet(t, "fd00:10:5:1::2", "fd00:10:5:2::9", 1, nil), byte(2))
	f.Add(udp6Packet(t, "fd00:10:5:1::2", "fd00:10:5:99::9", 64, nil), byte(2))
	f.Add(icmp6Packet(t, "fd00:10:5:1::2", "fd00:10:5:99::9", 1, extHdr(protoHopByHop, 0)), byte(2))
	f.Add(icmp6Packet(t, "fd00:10:5:2::7", "fd00:10:5:1::2", 128, extHdr(protoDestOpts, 1), fragHdr(0)), byte(2))
	f.Add(rawIPv6("fd00:10:5:1::2", "fd00:10:5:99::9", 17, make([]byte, 8), fragHdr(3)), byte(2))
	f.Add([]byte{0x60, 0, 0, 0, 0, 0, protoHopByHop, 64}, byte(2))
	f.Add(udp6Packet(t, "fd00:10:5:2::7", "fd00:10:5:1::2", 64, nil)[:39], byte(2))
	f.Add([]byte{0x60, 0, 0, 0, 0xff, 0xff, 17, 64, 0xfd, 0, 0, 0x10, 0, 5, 0, 2, 0, 0, 0, 0, 0, 0, 0, 7, 0xfd, 0, 0, 0x10, 0, 5, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2}, byte(2))
}

// checkDelivered6 checks an IPv6 packet the receive path delivered from
// the datagram data sent by peer p: what FuzzRxClassify checks for IPv4.
func checkDelivered6(t *testing.T, tab *Table, p *Peer, pkt, data []byte, mtu int) {
	size, r := checkIPv6(pkt)
	if r != DropNone || size != len(pkt) {
		t.Fatalf("delivered an invalid IPv6 packet: %v", r)
	}
	if p == nil || !p.contains6(src6(pkt)) || !tab.isLocal6(dst6(pkt)) || size > mtu {
		t.Fatalf("delivered an IPv6 packet the anti-spoofing checks should drop")
	}
	if pkt[7] != data[7]-1 {
		t.Fatalf("hop limit %d, sent %d", pkt[7], data[7])
	}
}

// checkICMPError checks an ICMP or ICMPv6 error the send path queued.
func checkICMPError(t *testing.T, b []byte) {
	if isIPv6(b) {
		size, r := checkIPv6(b)
		if r != DropNone || size != len(b) || len(b) > ipv6MinMTU || b[6] != protoICMPv6 || checksum6(b, protoICMPv6, b[ipv6HeaderLen:]) != 0 {
			t.Fatalf("queued a malformed ICMPv6 error")
		}
		return
	}
	if size, r := checkIPv4(b); r != DropNone || checksum(b[:20]) != 0 || size != len(b) {
		t.Fatalf("queued a malformed ICMP error")
	}
}

// FuzzRxClassify feeds arbitrary datagrams from arbitrary senders to the
// receive path: it must never panic, and whatever it delivers must pass
// every check it promises (valid header, sender a peer, inner source in
// the sender's subnet, inner destination local, TTL patched correctly),
// IPv4 and IPv6 alike (the test table is dual-stack).
func FuzzRxClassify(f *testing.F) {
	fuzzSeeds(f)
	e := testEngine(f, 4)
	tab := e.Table()
	f.Fuzz(func(t *testing.T, data []byte, sender byte) {
		l := e.rx[0]
		if len(data) > MaxPacket {
			data = data[:MaxPacket]
		}
		l.sizes[0] = copy(l.bufs[0][Headroom:], data)
		l.srcs[0] = netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, sender}), 8285)
		k := l.classify(tab, 1)
		l.bc = batchCounters{}
		if k == 0 {
			return
		}
		pkt := l.out[0][Headroom:]
		if isIPv6(pkt) {
			checkDelivered6(t, tab, tab.peerByIP(u32(l.srcs[0].Addr())), pkt, data, e.cfg.MTU)
			return
		}
		size, r := checkIPv4(pkt)
		if r != DropNone || size != len(pkt) {
			t.Fatalf("delivered an invalid packet: %v", r)
		}
		p := tab.peerByIP(u32(l.srcs[0].Addr()))
		if p == nil || !p.contains(srcIP(pkt)) || !tab.isLocal(dstIP(pkt)) || size > e.cfg.MTU {
			t.Fatalf("delivered a packet the anti-spoofing checks should drop")
		}
		if pkt[8] != data[8]-1 {
			t.Fatalf("TTL %d, sent %d", pkt[8], data[8])
		}
	})
}

// FuzzTxClassify feeds arbitrary packets to the send path: no panic,
// every packet handed to the transport is valid and goes to its peer, and
// every ICMP or ICMPv6 error queued is well formed (checksums included).
func FuzzTxClassify(f *testing.F) {
	fuzzSeeds(f)
	e := testEngine(f, 4)
	tab := e.Table()
	f.Fuzz(func(t *testing.T, data []byte, _ byte) {
		l := e.tx[0]
		if len(data) > MaxPacket {
			data = data[:MaxPacket]
		}
		l.sizes[0] = copy(l.bufs[0][Headroom:], data)
		k := l.classify(tab, 1)
		l.bc = batchCounters{}
		for _, b := range l.icmp.out {
			checkICMPError(t, b[Headroom:])
		}
		l.icmp.out = l.icmp.out[:0]
		if k == 0 {
			return
		}
		if isIPv6(l.out[0]) {
			if _, r := checkIPv6(l.out[0]); r != DropNone {
				t.Fatalf("sent an invalid IPv6 packet: %v", r)
			}
			if p := tab.lookup6(dst6(l.out[0])); p == nil || p.Endpoint != l.outDst[0] || len(l.out[0]) > e.cfg.MTU || l.out[0][7] == 0 {
				t.Fatalf("sent an IPv6 packet to the wrong peer, too long, or with hop limit 0")
			}
			return
		}
		if _, r := checkIPv4(l.out[0]); r != DropNone {
			t.Fatalf("sent an invalid packet: %v", r)
		}
		if p := tab.lookup(dstIP(l.out[0])); p == nil || p.Endpoint != l.outDst[0] {
			t.Fatalf("sent to the wrong peer")
		}
	})
}
