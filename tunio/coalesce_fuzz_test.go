package tunio

import (
	"bytes"
	"encoding/binary"
	"testing"
)

// fuzzFlows builds an IPv4 or IPv6 packet from four fuzz bytes for flow
// f: mostly well-formed TCP or UDP with correct checksums (so that cutting
// a super-packet back must give the very bytes sent), sometimes bent in
// one of the ways the coalescer must notice. b3&0x10 picks IPv6.
type fuzzFlows struct{ seq [8]uint32 }

func (fl *fuzzFlows) packet(b0, b1, b2, b3 byte) []byte {
	flow := int(b0 & 3)
	udp := b0&4 != 0
	v6 := b3&0x10 != 0
	payload := int(b1) * 8
	if b0&0x80 != 0 {
		payload = int(b1)*40 + int(b3&7) // up to ~10 KiB: lone TSO packets
	}
	if b2&0xf0 == 0x10 {
		payload = int(b2 & 3) // tiny and empty payloads, often
	}
	bend := b2 & 0x0f
	iph := 20
	if v6 {
		iph = 40
		if bend == 5 {
			iph = 48 // a hop-by-hop options header before the transport
		}
	}
	l4h := 8
	if !udp {
		l4h = 20
		if b3&8 != 0 {
			l4h = 32
		}
	}
	n := iph + l4h + payload
	if n > maxSuperPacket {
		n, payload = maxSuperPacket, maxSuperPacket-iph-l4h
	}
	p := make([]byte, n)
	proto := byte(protoTCP)
	if udp {
		proto = protoUDP
	}
	if v6 {
		p[0] = 0x60
		binary.BigEndian.PutUint16(p[4:], uint16(n-40))
		p[6] = proto
		p[7] = 64
		copy(p[8:], []byte{0xfd, 0, 0, 5, 0, 1, 15: byte(2 + flow)})
		copy(p[24:], []byte{0xfd, 0, 0, 5, 0, 2, 15: 2})
		if iph == 48 {
			p[6] = 0                // hop-by-hop
			p[40], p[41] = proto, 0 // next header, 8 bytes
			p[42], p[43] = 1, 4     // PadN of 4
		}
	} else {
		p[0] = 0x45
		binary.BigEndian.PutUint16(p[2:], uint16(n))
		p[6] = 0x40 // DF
		p[8] = 64
		p[9] = proto
		p[12], p[13], p[14], p[15] = 10, 5, 1, byte(2+flow)
		p[16], p[17], p[18], p[19] = 10, 5, 2, 2
	}
	l4 := p[iph:]
	binary.BigEndian.PutUint16(l4[0:], uint16(1000+flow))
	binary.BigEndian.PutUint16(l4[2:], 80)
	for i := range payload {
		p[iph+l4h+i] = byte(i) ^ b1 ^ b2
	}
	if udp {
		binary.BigEndian.PutUint16(l4[4:], uint16(8+payload))
	} else {
		seq := &fl.seq[flow]
		if v6 {
			seq = &fl.seq[4+flow]
		}
		flags := [8]byte{tcpFlagACK, tcpFlagACK, tcpFlagACK, tcpFlagACK | tcpFlagPSH, tcpFlagACK | 0x01, 0x02, tcpFlagACK | 0x20, tcpFlagACK | 0x40}[b0>>3&7]
		if b0&0x40 != 0 {
			*seq += 1000 // a gap
		}
		binary.BigEndian.PutUint32(l4[4:], *seq)
		*seq += uint32(payload)
		if flags&0x03 != 0 { // FIN, SYN take a sequence number
			*seq++
		}
		binary.BigEndian.PutUint32(l4[8:], 77)
		l4[12] = byte(l4h/4) << 4
		l4[13] = flags
		binary.BigEndian.PutUint16(l4[14:], 500)
		if l4h == 32 {
			l4[20], l4[21], l4[22], l4[23] = 1, 1, 8, 10 // NOP NOP timestamps
			l4[27] = b3
		}
	}
	switch bend { // one bend, sometimes
	case 1:
		if !udp {
			binary.BigEndian.PutUint32(l4[8:], 78) // another ack
		}
	case 2:
		p[1] = 4 // TOS
		if v6 {
			p[1] = 0x40 // traffic class 4
		}
	case 3:
		if v6 {
			p[7] = 63 // hop limit
		} else {
			p[8] = 63 // TTL
		}
	case 4:
		if v6 {
			p[3] = 1 // another flow label
		} else {
			p[6] = 0 // no DF
		}
	case 5:
		if !v6 {
			p[6] |= 0x20 // MF: a first fragment
		} // IPv6: the hop-by-hop header above
	case 6:
		if udp {
			binary.BigEndian.PutUint16(l4[4:], uint16(payload)) // UDP length short by 8
		} else {
			binary.BigEndian.PutUint16(l4[14:], 9) // window
		}
	case 7:
		if v6 {
			binary.BigEndian.PutUint16(p[4:], uint16(n-40-1)) // payload length short by one
		} else {
			p[0] = 0x46 // claims IP options it does not have
		}
	}
	if !v6 {
		binary.BigEndian.PutUint16(p[10:], ^foldedSum(p[:20], 0))
	}
	csum := 16
	if udp {
		csum = 6
	}
	s := ^foldedSum(l4, pseudoSum(p, proto, len(l4)))
	if udp && s == 0 {
		s = 0xffff
	}
	if udp && v6 && bend == 8 {
		s = 0 // no checksum, which IPv6 forbids
	}
	binary.BigEndian.PutUint16(l4[csum:], s)
	return p
}

// pseudoSum is the transport pseudo-header sum of packet p (either
// family), not folded.
func pseudoSum(p []byte, proto byte, l4len int) uint64 {
	addrs := p[12:20]
	if p[0]>>4 == 6 {
		addrs = p[8:40]
	}
	return uint64(foldedSum(addrs, 0)) + uint64(proto) + uint64(l4len)
}

// fuzzFlow names the flow a packet belongs to for ordering: TCP and UDP
// of either family, also when the coalescer cannot tell (an IPv4
// fragment, an IPv6 hop-by-hop header), since their order must hold;
// anything else is "other", whose order must hold as well. l4 is where
// the transport header starts.
func fuzzFlow(p []byte) (key flowKey, tcp bool, l4 int) {
	var proto byte
	switch {
	case len(p) >= 48 && p[0] == 0x60 && int(binary.BigEndian.Uint16(p[4:]))+40 == len(p):
		key.src = addr128{binary.BigEndian.Uint64(p[8:]), binary.BigEndian.Uint64(p[16:])}
		key.dst = addr128{binary.BigEndian.Uint64(p[24:]), binary.BigEndian.Uint64(p[32:])}
		key.v6 = true
		proto, l4 = p[6], 40
		if proto == 0 && len(p) >= 56 {
			proto, l4 = p[40], 48
		}
	case len(p) >= 28 && p[0] == 0x45:
		key.src = addr128{lo: uint64(binary.BigEndian.Uint32(p[12:]))}
		key.dst = addr128{lo: uint64(binary.BigEndian.Uint32(p[16:]))}
		proto, l4 = p[9], 20
	}
	// A UDP header is 8 bytes: a short datagram is still its flow's (the
	// coalescer keys it so), and a packet the test cannot key lands in
	// flow zero, whose packets must keep their order across flows.
	if proto != protoTCP && proto != protoUDP || proto == protoTCP && len(p) < l4+20 || len(p) < l4+8 {
		return flowKey{}, false, 0
	}
	key.proto = proto
	key.sport, key.dport = binary.BigEndian.Uint16(p[l4:]), binary.BigEndian.Uint16(p[l4+2:])
	return key, proto == protoTCP, l4
}

func tcpPayload(p []byte, l4 int) []byte { return p[l4+int(p[l4+12]>>4)*4:] }

// checkVirtioWrite applies the kernel's rules for a TUN write with a
// virtio-net header (virtio_net_hdr_to_skb, tun_get_user) to w.
func checkVirtioWrite(t *testing.T, w []byte, uso bool, mtu int) {
	t.Helper()
	if len(w) < virtioNetHdrLen+20 {
		t.Fatalf("a %d-byte write", len(w))
	}
	hdr, pkt := w[:virtioNetHdrLen], w[virtioNetHdrLen:]
	flags, gsoType := hdr[0], hdr[1]
	hdrLen := int(binary.NativeEndian.Uint16(hdr[2:]))
	gsoSize := int(binary.NativeEndian.Uint16(hdr[4:]))
	cstart := int(binary.NativeEndian.Uint16(hdr[6:]))
	coff := int(binary.NativeEndian.Uint16(hdr[8:]))
	if len(pkt) > maxSuperPacket {
		t.Fatalf("a %d-byte packet", len(pkt))
	}
	if flags&^virtioFlagNeedsCsum != 0 {
		t.Fatalf("flags %#x", flags)
	}
	if flags == 0 {
		if gsoType != virtioGSONone || hdrLen|gsoSize|cstart|coff != 0 {
			t.Fatalf("virtio header % x without NEEDS_CSUM", hdr)
		}
		return
	}
	v6 := pkt[0]>>4 == 6
	iph, proto := 20, pkt[9]
	if v6 {
		iph, proto = 40, pkt[6]
	}
	wantOff := map[byte]int{protoTCP: 16, protoUDP: 6}[proto]
	if wantOff == 0 || cstart != iph || coff != wantOff || cstart+coff+2 > len(pkt) {
		t.Fatalf("csum_start %d, csum_offset %d for protocol %d in %d bytes", cstart, coff, proto, len(pkt))
	}
	l4h := 8
	if proto == protoTCP {
		l4h = int(pkt[iph+12]>>4) * 4
	}
	if hdrLen != cstart+l4h || hdrLen > len(pkt) {
		t.Fatalf("hdr_len %d, headers %d, packet %d", hdrLen, cstart+l4h, len(pkt))
	}
	if v6 {
		if int(binary.BigEndian.Uint16(pkt[4:]))+40 != len(pkt) {
			t.Fatal("IPv6 payload length wrong")
		}
	} else if foldedSum(pkt[:20], 0) != 0xffff || int(binary.BigEndian.Uint16(pkt[2:])) != len(pkt) {
		t.Fatal("IP header checksum or total length wrong")
	}
	if proto == protoUDP && v6 && binary.BigEndian.Uint16(pkt[iph+6:]) == 0 {
		t.Fatal("a UDP/IPv6 datagram without checksum written CHECKSUM_PARTIAL")
	}
	switch gsoType {
	case virtioGSONone:
		if gsoSize != 0 {
			t.Fatalf("gso_size %d without a GSO type", gsoSize)
		}
		return
	case virtioGSOTCPv4, virtioGSOTCPv6:
		if proto != protoTCP || v6 != (gsoType == virtioGSOTCPv6) {
			t.Fatalf("GSO type %d on protocol %d, IPv6 %v", gsoType, proto, v6)
		}
	case virtioGSOUDPL4:
		if proto != protoUDP || !uso {
			t.Fatalf("UDP_L4 GSO (device USO %v)", uso)
		}
		if int(binary.BigEndian.Uint16(pkt[iph+4:])) != len(pkt)-iph {
			t.Fatal("UDP length does not cover the super-packet")
		}
	default:
		t.Fatalf("GSO type %d", gsoType)
	}
	payload := len(pkt) - hdrLen
	if gsoSize == 0 || payload <= gsoSize {
		t.Fatalf("gso_size %d for %d payload bytes: not a super-packet", gsoSize, payload)
	}
	// Segments of a train are MTU-sized at most: the kernel cuts TCP at
	// gso_size, and a longer cut would not fit the pods' links.
	if mtu > 0 && hdrLen+gsoSize > mtu {
		t.Fatalf("segments of %d bytes for a %d-byte MTU", hdrLen+gsoSize, mtu)
	}
	if gsoType == virtioGSOUDPL4 && payload > gsoSize*maxUDPSegments {
		t.Fatalf("%d payload bytes in segments of %d: more than %d segments", payload, gsoSize, maxUDPSegments)
	}
}

// arena hands out buffers from one block reused across fuzz inputs, so an
// input costs no fresh megabytes (minimizing runs thousands of them).
type arena struct {
	buf  []byte
	used int
}

var fuzzArena = arena{buf: make([]byte, 4<<20)}

func (a *arena) reset() { a.used = 0 }

func (a *arena) take(n int) []byte {
	if a.used+n > len(a.buf) {
		return make([]byte, n)
	}
	b := a.buf[a.used : a.used+n : a.used+n]
	a.used += n
	return b
}

// FuzzCoalesce pushes packet sequences through the write coalescer and
// checks every write against the kernel's virtio-net rules, then cuts the
// writes back into packets as the kernel would: each flow's datagrams
// come out unchanged and in order, and each TCP flow's bytes in order.
func FuzzCoalesce(f *testing.F) {
	f.Add([]byte{0x01, 4, 0, 0, 0, 4, 0, 0, 0})                             // two empty UDP datagrams
	f.Add([]byte{0x01, 0, 100, 0, 0, 0, 100, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}) // a TCP train, then pure ACKs
	f.Add([]byte{0x03, 0x80, 200, 0, 0, 0, 50, 0, 0})                       // a lone TSO packet over the MTU
	f.Add(append([]byte{0x01}, bytes.Repeat([]byte{4, 8, 0, 0}, 80)...))    // 80 small UDP datagrams of one flow
	f.Add([]byte{0x01, 4, 10, 0, 0, 4, 10, 6, 0, 4, 10, 0, 0})              // a short UDP length field
	// IPv6 (b3&0x10): a TCP train with a v4 one interleaved, then pure ACKs.
	f.Add([]byte{0x03, 0, 100, 0, 0x10, 0, 100, 0, 0, 0, 100, 0, 0x10, 1, 100, 0, 0x10, 0, 0, 0, 0x10, 0, 0, 0, 0x10})
	f.Add([]byte{0x03, 0x80, 200, 0, 0x10, 0, 50, 0, 0x10})                                 // an IPv6 TSO packet over the MTU, then a segment
	f.Add(append([]byte{0x01}, bytes.Repeat([]byte{4, 8, 0, 0x10}, 80)...))                 // 80 small UDP/IPv6 datagrams
	f.Add([]byte{0x03, 0, 100, 0, 0x10, 0, 100, 2, 0x10, 0, 100, 3, 0x10, 0, 100, 4, 0x10}) // traffic class, hop limit, flow label bent
	f.Add([]byte{0x03, 0, 100, 0, 0x10, 0, 100, 5, 0x10, 0, 100, 0, 0x10, 4, 8, 8, 0x10})   // a hop-by-hop header mid-train; UDP/IPv6 without checksum
	f.Add([]byte{0x03, 4, 8, 0, 0x10, 4, 8, 8, 0x10, 4, 8, 0, 0x10, 4, 8, 6, 0x10, 4, 8, 7, 0x10})
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) < 1 {
			return
		}
		fuzzArena.reset()
		co := coalescer{uso: in[0]&1 != 0, mtu: [4]int{0, 1500, 576, 9000}[in[0]>>1&3]}
		in = in[1:]
		var fl fuzzFlows
		var bufs, orig [][]byte
		// At most 130 packets (two UDP super-packets' worth of segments and
		// more) and 256 KiB, so an input stays cheap to run and minimize.
		bytesIn := 0
		for len(in) >= 4 && len(bufs) < 130 && bytesIn < 256<<10 {
			p := fl.packet(in[0], in[1], in[2], in[3])
			// Room to append into: mostly some, sometimes tight, sometimes
			// enough for a 64 KiB super-packet.
			slack := 4 << 10
			switch in[3] & 0xc0 {
			case 0x40:
				slack = int(in[3]&0x3f) * 64
			case 0x80:
				slack = 64 << 10
			}
			b := fuzzArena.take(off + len(p) + slack)
			bufs = append(bufs, append(b[:off], p...))
			orig = append(orig, p)
			bytesIn += len(p)
			in = in[4:]
		}
		co.plan(bufs, off)
		var cut [][]byte
		total := 0
		for i := range co.runs {
			w := joined(co.finish(bufs, off, &co.runs[i]))
			checkVirtioWrite(t, w, co.uso, co.mtu)
			cut = append(cut, segment(t, w)...)
			total += co.runs[i].n
		}
		if total != len(orig) {
			t.Fatalf("runs hold %d packets, %d went in", total, len(orig))
		}
		// Per flow: the datagrams (UDP, other) or the byte stream (TCP).
		type stream struct {
			pkts  [][]byte
			bytes []byte
			tcp   bool
			big   bool // a packet over the MTU: the kernel cuts it, compare bytes only
		}
		group := func(ps [][]byte) map[flowKey]*stream {
			m := map[flowKey]*stream{}
			for _, p := range ps {
				k, tcp, l4 := fuzzFlow(p)
				s := m[k]
				if s == nil {
					s = &stream{tcp: tcp}
					m[k] = s
				}
				s.pkts = append(s.pkts, p)
				if tcp {
					s.bytes = append(s.bytes, tcpPayload(p, l4)...)
					s.big = s.big || (co.mtu > 0 && len(p) > co.mtu)
				}
			}
			return m
		}
		want, got := group(orig), group(cut)
		for k, w := range want {
			g := got[k]
			if g == nil {
				t.Fatalf("flow %+v: nothing came out", k)
			}
			if w.tcp && !bytes.Equal(g.bytes, w.bytes) {
				t.Fatalf("flow %+v: the byte stream changed", k)
			}
			if w.tcp && w.big {
				continue
			}
			if len(g.pkts) != len(w.pkts) {
				t.Fatalf("flow %+v: %d packets came out, %d went in", k, len(g.pkts), len(w.pkts))
			}
			for i := range w.pkts {
				if !bytes.Equal(g.pkts[i], w.pkts[i]) {
					t.Fatalf("flow %+v: packet %d changed\n got % x\nwant % x", k, i, g.pkts[i], w.pkts[i])
				}
			}
		}
		if len(got) != len(want) {
			t.Fatalf("%d flows came out, %d went in", len(got), len(want))
		}
	})
}
