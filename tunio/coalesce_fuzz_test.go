package tunio

import (
	"bytes"
	"encoding/binary"
	"testing"
)

// fuzzPacket builds an IPv4 packet from four fuzz bytes for flow f: mostly
// well-formed TCP or UDP with correct checksums (so that cutting a
// super-packet back must give the very bytes sent), sometimes bent in one
// of the ways the coalescer must notice.
type fuzzFlows struct{ seq [4]uint32 }

func (fl *fuzzFlows) packet(b0, b1, b2, b3 byte) []byte {
	flow := int(b0 & 3)
	udp := b0&4 != 0
	payload := int(b1) * 8
	if b0&0x80 != 0 {
		payload = int(b1)*40 + int(b3&7) // up to ~10 KiB: lone TSO packets
	}
	if b2&0xf0 == 0x10 {
		payload = int(b2 & 3) // tiny and empty payloads, often
	}
	l4h := 8
	if !udp {
		l4h = 20
		if b3&8 != 0 {
			l4h = 32
		}
	}
	n := 20 + l4h + payload
	if n > 65535 {
		n, payload = 65535, 65535-20-l4h
	}
	p := make([]byte, n)
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:], uint16(n))
	p[6] = 0x40 // DF
	p[8] = 64
	p[12], p[13], p[14], p[15] = 10, 5, 1, byte(2+flow)
	p[16], p[17], p[18], p[19] = 10, 5, 2, 2
	l4 := p[20:]
	binary.BigEndian.PutUint16(l4[0:], uint16(1000+flow))
	binary.BigEndian.PutUint16(l4[2:], 80)
	for i := range payload {
		p[20+l4h+i] = byte(i) ^ b1 ^ b2
	}
	if udp {
		p[9] = protoUDP
		binary.BigEndian.PutUint16(l4[4:], uint16(8+payload))
	} else {
		p[9] = protoTCP
		flags := [8]byte{tcpFlagACK, tcpFlagACK, tcpFlagACK, tcpFlagACK | tcpFlagPSH, tcpFlagACK | 0x01, 0x02, tcpFlagACK | 0x20, tcpFlagACK | 0x40}[b0>>3&7]
		if b0&0x40 != 0 {
			fl.seq[flow] += 1000 // a gap
		}
		binary.BigEndian.PutUint32(l4[4:], fl.seq[flow])
		fl.seq[flow] += uint32(payload)
		if flags&0x03 != 0 { // FIN, SYN take a sequence number
			fl.seq[flow]++
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
	switch b2 & 0x0f { // one bend, sometimes
	case 1:
		if !udp {
			binary.BigEndian.PutUint32(l4[8:], 78) // another ack
		}
	case 2:
		p[1] = 4 // TOS
	case 3:
		p[8] = 63 // TTL
	case 4:
		p[6] = 0 // no DF
	case 5:
		p[6] |= 0x20 // MF: a first fragment
	case 6:
		if udp {
			binary.BigEndian.PutUint16(l4[4:], uint16(payload)) // UDP length short by 8
		} else {
			binary.BigEndian.PutUint16(l4[14:], 9) // window
		}
	case 7:
		p[0] = 0x46 // claims IP options it does not have
	}
	binary.BigEndian.PutUint16(p[10:], ^foldedSum(p[:20], 0))
	csum := 16
	if udp {
		csum = 6
	}
	ps := uint64(binary.BigEndian.Uint16(p[12:])) + uint64(binary.BigEndian.Uint16(p[14:])) +
		uint64(binary.BigEndian.Uint16(p[16:])) + uint64(binary.BigEndian.Uint16(p[18:])) + uint64(p[9]) + uint64(len(l4))
	s := ^foldedSum(l4, ps)
	if udp && s == 0 {
		s = 0xffff
	}
	binary.BigEndian.PutUint16(l4[csum:], s)
	return p
}

// fuzzFlow names the flow a packet belongs to for ordering: TCP and UDP
// over plain IPv4, unfragmented; anything else is "other", whose order
// must hold as well.
func fuzzFlow(p []byte) (key flowKey, tcp bool) {
	if len(p) < 28 || p[0] != 0x45 || binary.BigEndian.Uint16(p[6:])&0x3fff != 0 || (p[9] != protoTCP && p[9] != protoUDP) {
		return flowKey{}, false
	}
	return flowKey{src: binary.BigEndian.Uint32(p[12:]), dst: binary.BigEndian.Uint32(p[16:]),
		sport: binary.BigEndian.Uint16(p[20:]), dport: binary.BigEndian.Uint16(p[22:]), proto: p[9]}, p[9] == protoTCP
}

func tcpPayload(p []byte) []byte { return p[20+int(p[32]>>4)*4:] }

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
	proto := pkt[9]
	wantOff := map[byte]int{protoTCP: 16, protoUDP: 6}[proto]
	if wantOff == 0 || cstart != 20 || coff != wantOff || cstart+coff+2 > len(pkt) {
		t.Fatalf("csum_start %d, csum_offset %d for protocol %d in %d bytes", cstart, coff, proto, len(pkt))
	}
	l4h := 8
	if proto == protoTCP {
		l4h = int(pkt[32]>>4) * 4
	}
	if hdrLen != cstart+l4h || hdrLen > len(pkt) {
		t.Fatalf("hdr_len %d, headers %d, packet %d", hdrLen, cstart+l4h, len(pkt))
	}
	if foldedSum(pkt[:20], 0) != 0xffff || int(binary.BigEndian.Uint16(pkt[2:])) != len(pkt) {
		t.Fatal("IP header checksum or total length wrong")
	}
	switch gsoType {
	case virtioGSONone:
		if gsoSize != 0 {
			t.Fatalf("gso_size %d without a GSO type", gsoSize)
		}
		return
	case virtioGSOTCPv4:
		if proto != protoTCP {
			t.Fatal("TCPv4 GSO on a non-TCP packet")
		}
	case virtioGSOUDPL4:
		if proto != protoUDP || !uso {
			t.Fatalf("UDP_L4 GSO (device USO %v)", uso)
		}
		if int(binary.BigEndian.Uint16(pkt[24:])) != len(pkt)-20 {
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
			w := co.finish(bufs, off, &co.runs[i])
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
				k, tcp := fuzzFlow(p)
				s := m[k]
				if s == nil {
					s = &stream{tcp: tcp}
					m[k] = s
				}
				s.pkts = append(s.pkts, p)
				if tcp {
					s.bytes = append(s.bytes, tcpPayload(p)...)
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
