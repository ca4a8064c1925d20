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
}

// FuzzRxClassify feeds arbitrary datagrams from arbitrary senders to the
// receive path: it must never panic, and whatever it delivers must pass
// every check it promises (valid header, sender a peer, inner source in
// the sender's subnet, inner destination local, TTL patched correctly).
func FuzzRxClassify(f *testing.F) {
	fuzzSeeds(f)
	e := testEngine(f, 4)
	tab := e.Table()
	f.Fuzz(func(t *testing.T, data []byte, sender byte) {
		l := e.rx
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

// FuzzTxClassify feeds arbitrary packets to the send path: no panic, and
// every packet handed to the transport is valid and goes to its peer.
func FuzzTxClassify(f *testing.F) {
	fuzzSeeds(f)
	e := testEngine(f, 4)
	tab := e.Table()
	f.Fuzz(func(t *testing.T, data []byte, _ byte) {
		l := e.tx
		if len(data) > MaxPacket {
			data = data[:MaxPacket]
		}
		l.sizes[0] = copy(l.bufs[0][Headroom:], data)
		k := l.classify(tab, 1)
		l.bc = batchCounters{}
		for _, b := range l.icmp.out {
			if size, r := checkIPv4(b[Headroom:]); r != DropNone || checksum(b[Headroom:Headroom+20]) != 0 || size != len(b)-Headroom {
				t.Fatalf("queued a malformed ICMP error")
			}
		}
		l.icmp.out = l.icmp.out[:0]
		if k == 0 {
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
