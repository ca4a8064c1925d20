package tunio

import (
	"bytes"
	"encoding/binary"
)

// The write side of the TUN: packets from peers are coalesced into TCP and
// UDP super-packets described by a virtio-net header, so the kernel takes
// a whole train per write(2) and runs its stack once per train, as its own
// GRO would have. It is the tun package's idea, done without what it costs
// there: no per-packet checksum verification (each datagram's payload was
// already covered by the outer UDP checksum the kernel checked), no map,
// no zeroing of the space a packet is appended into.
//
// Only IPv4 is coalesced: an IPv6 packet is written alone. An IPv6 TCP or
// UDP packet (its transport header right after the fixed header) still
// goes in CHECKSUM_PARTIAL, as IPv4 ones do, and a lone IPv6 TCP packet
// above the MTU as a TCPv6 super-packet cut at it: a kernel vxlan peer
// over veth hands over exactly such packets, with the inner checksum
// left to hardware that never ran. (Reads need nothing of weft's own for
// IPv6: the tun package splits TSO6 and USO-over-IPv6 super-packets,
// golang.zx2c4.com/wireguard/tun's gsoSplit.)

const (
	virtioNetHdrLen = 10

	// virtio_net_hdr flags and GSO types (include/uapi/linux/virtio_net.h).
	virtioFlagNeedsCsum = 1
	virtioGSONone       = 0
	virtioGSOTCPv4      = 1
	virtioGSOTCPv6      = 4
	virtioGSOUDPL4      = 5

	ipv6HeaderLen = 40

	tcpFlagACK = 0x10
	tcpFlagPSH = 0x08

	protoTCP = 6
	protoUDP = 17

	// maxRunSearch bounds how far back a packet looks for its flow's run:
	// a batch rarely interleaves more flows than this, and the scan stays
	// cheap when it does.
	maxRunSearch = 8
	// maxSuperPacket is the IPv4 total-length limit a super-packet must
	// respect.
	maxSuperPacket = 65535
	// maxUDPSegments is the most datagrams one UDP super-packet carries:
	// virtio_net_hdr_to_skb refuses (EINVAL) a UDP_L4 write whose payload
	// exceeds gso_size * UDP_MAX_SEGMENTS, which is 64 before Linux 6.15
	// and 128 since.
	maxUDPSegments = 64
)

type flowKey struct {
	src, dst     uint32
	sport, dport uint16
	proto        uint8
}

// run is a super-packet being built: the head packet with later packets'
// payloads appended.
type run struct {
	idx       int // bufs index of the head packet
	key       flowKey
	hasKey    bool // key is the packet's flow (TCP or UDP over IPv4)
	v6        bool // a lone IPv6 TCP or UDP packet (key.proto, l4hLen set)
	mergeable bool
	closed    bool // a PSH or a short segment ended it
	n         int  // packets in it
	iphLen    int
	l4hLen    int
	gsoSize   int    // payload length of each segment but the last
	nextSeq   uint32 // TCP: sequence number the next segment must have
}

// coalescer is the per-device state of the write path; Write is called
// by one goroutine at a time (the engine's receive loop; ICMP errors from
// the other loop are serialised by the device's write lock).
type coalescer struct {
	runs []run
	uso  bool // the kernel accepts UDP super-packets (TUN_F_USO4)
	mtu  int  // the device's MTU: a lone TCP packet above it goes out as a super-packet
}

// plan groups bufs[i][offset:] into runs, appending payloads into each
// run's head buffer.
func (c *coalescer) plan(bufs [][]byte, offset int) {
	c.runs = c.runs[:0]
	for i := range bufs {
		pkt := bufs[i][offset:]
		if len(pkt) > 0 && pkt[0]>>4 == 6 {
			c.runs = append(c.runs, candidate6(pkt, i))
			continue
		}
		key, iph, l4h, hasKey, ok := candidate(pkt, c.uso)
		if ok && c.tryAppend(bufs, offset, i, key, iph, l4h) {
			continue
		}
		r := run{idx: i, key: key, hasKey: hasKey, mergeable: ok, n: 1, iphLen: iph, l4hLen: l4h}
		if ok {
			r.gsoSize = len(pkt) - iph - l4h
			if key.proto == protoTCP {
				r.nextSeq = binary.BigEndian.Uint32(pkt[iph+4:]) + uint32(r.gsoSize)
				r.closed = pkt[iph+13]&tcpFlagPSH != 0
			}
			// A packet above the MTU (a peer's whole TSO packet) stays
			// alone: as a run's head it would set gso_size to its own
			// length, and the kernel would cut the train at that, not at
			// the MTU. Alone, finish cuts it at the MTU.
			if c.mtu > 0 && len(pkt) > c.mtu {
				r.closed = true
			}
		}
		c.runs = append(c.runs, r)
	}
}

// candidate returns pkt's flow and header lengths, and whether it may
// join a super-packet: IPv4 without options or fragmentation, TCP carrying
// data with only ACK (and PSH) set, or UDP when the device takes UDP
// super-packets. A packet that may not join still has its flow (hasKey),
// so it ends that flow's run: nothing of the flow may then pass it.
func candidate(pkt []byte, uso bool) (k flowKey, iph, l4h int, hasKey, ok bool) {
	if len(pkt) < 28 || pkt[0] != 0x45 || int(binary.BigEndian.Uint16(pkt[2:])) != len(pkt) {
		return k, 0, 0, false, false
	}
	// From here on iph and l4h are valid whenever hasKey is: a packet
	// that cannot join a run may still be written CHECKSUM_PARTIAL.
	iph = 20
	proto := pkt[9]
	if proto != protoTCP && proto != protoUDP {
		return k, 0, 0, false, false
	}
	k = flowKey{
		src: binary.BigEndian.Uint32(pkt[12:]), dst: binary.BigEndian.Uint32(pkt[16:]),
		sport: binary.BigEndian.Uint16(pkt[iph:]), dport: binary.BigEndian.Uint16(pkt[iph+2:]),
		proto: proto,
	}
	if binary.BigEndian.Uint16(pkt[6:])&0x3fff != 0 { // MF or a fragment offset
		return k, 0, 0, false, false // its L4 checksum covers other fragments
	}
	if proto == protoUDP {
		// A datagram with no payload cannot be a segment: the kernel
		// refuses gso_size 0 (virtio_net_hdr_to_skb: EINVAL), and appended
		// to a run it would add no bytes and vanish.
		// A UDP length that disagrees with the IP length (padding, or a
		// forgery) would be rewritten to cover the appended segments,
		// turning the padding into payload; udp_gro_receive_segment refuses
		// such packets too.
		ulen := int(binary.BigEndian.Uint16(pkt[iph+4:]))
		return k, iph, 8, true, uso && len(pkt) > iph+8 && ulen == len(pkt)-iph
	}
	if len(pkt) < iph+20 {
		return k, 0, 0, false, false
	}
	l4h = int(pkt[iph+12]>>4) * 4
	if l4h < 20 || len(pkt) < iph+l4h {
		return k, 0, 0, false, false
	}
	flags := pkt[iph+13]
	ok = len(pkt) > iph+l4h && (flags == tcpFlagACK || flags == tcpFlagACK|tcpFlagPSH)
	return k, iph, l4h, true, ok
}

// candidate6 is the run of an IPv6 packet, which stays alone: with v6 set
// when its transport header (TCP or UDP) follows the fixed header and its
// payload length is the packet's.
func candidate6(pkt []byte, i int) run {
	r := run{idx: i, n: 1}
	if len(pkt) < ipv6HeaderLen || int(binary.BigEndian.Uint16(pkt[4:]))+ipv6HeaderLen != len(pkt) {
		return r
	}
	switch pkt[6] {
	case protoTCP:
		if len(pkt) < ipv6HeaderLen+20 {
			return r
		}
		l4h := int(pkt[ipv6HeaderLen+12]>>4) * 4
		if l4h < 20 || len(pkt) < ipv6HeaderLen+l4h {
			return r
		}
		r.l4hLen = l4h
	case protoUDP:
		if len(pkt) < ipv6HeaderLen+8 {
			return r
		}
		r.l4hLen = 8
	default:
		return r
	}
	r.v6, r.iphLen, r.key.proto = true, ipv6HeaderLen, pkt[6]
	return r
}

// tryAppend appends packet i's payload to the latest run of its flow if
// the kernel could have coalesced them itself (the conditions of Linux's
// tcp_gro_receive and udp_gro_receive_segment).
func (c *coalescer) tryAppend(bufs [][]byte, offset, i int, key flowKey, iph, l4h int) bool {
	pkt := bufs[i][offset:]
	for j := len(c.runs) - 1; j >= 0 && j >= len(c.runs)-maxRunSearch; j-- {
		r := &c.runs[j]
		if !r.hasKey || r.key != key {
			continue
		}
		// Only the flow's latest run may grow; otherwise order would break.
		if !r.mergeable {
			return false
		}
		head := bufs[r.idx][offset:]
		payload := len(pkt) - iph - l4h
		if key.proto == protoUDP && r.n >= maxUDPSegments {
			return false // the next run of the flow starts with this packet
		}
		if r.closed || payload == 0 || payload > r.gsoSize || iph != r.iphLen || l4h != r.l4hLen ||
			(c.mtu > 0 && len(pkt) > c.mtu) ||
			len(head)+payload > maxSuperPacket || cap(bufs[r.idx])-len(bufs[r.idx]) < payload {
			return false
		}
		// Same TOS, DF and TTL: the kernel copies the head's IP header onto
		// every segment it cuts.
		if pkt[1] != head[1] || pkt[6]&0x40 != head[6]&0x40 || pkt[8] != head[8] {
			return false
		}
		if key.proto == protoTCP {
			if binary.BigEndian.Uint32(pkt[iph+4:]) != r.nextSeq ||
				binary.BigEndian.Uint32(pkt[iph+8:]) != binary.BigEndian.Uint32(head[iph+8:]) || // ack
				binary.BigEndian.Uint16(pkt[iph+14:]) != binary.BigEndian.Uint16(head[iph+14:]) || // window
				!bytes.Equal(pkt[iph+20:iph+l4h], head[iph+20:iph+l4h]) { // options
				return false
			}
			r.nextSeq += uint32(payload)
			if pkt[iph+13]&tcpFlagPSH != 0 {
				head[iph+13] |= tcpFlagPSH
				r.closed = true
			}
		}
		bufs[r.idx] = append(bufs[r.idx], pkt[iph+l4h:]...)
		r.n++
		if payload < r.gsoSize {
			r.closed = true // only the last segment may be short
		}
		return true
	}
	return false
}

// finish writes the virtio-net header in front of run r's head packet and
// fixes the head's lengths and checksums, returning what to write.
func (c *coalescer) finish(bufs [][]byte, offset int, r *run) []byte {
	b := bufs[r.idx]
	pkt := b[offset:]
	hdr := b[offset-virtioNetHdrLen : offset]
	clear(hdr)
	if r.v6 {
		c.finish6(pkt, hdr, r)
		return b[offset-virtioNetHdrLen:]
	}
	if !r.hasKey {
		return b[offset-virtioNetHdrLen:] // GSO_NONE; the stack checks what it needs
	}
	// Every TCP and UDP packet goes in CHECKSUM_PARTIAL, alone or
	// coalesced: the kernel does not verify the inner checksum (the bytes
	// came under an outer UDP checksum the kernel checked, which is why its
	// own vxlan marks decapsulated packets checked too) and completes it
	// only if the packet leaves through a device that needs it. Senders
	// whose inner checksum was left to hardware that never ran (the
	// kernel's vxlan over veth) are then received like any other.
	l4len := len(pkt) - r.iphLen
	csumOff := 16
	gso := uint8(virtioGSOTCPv4)
	if r.key.proto == protoUDP {
		csumOff, gso = 6, virtioGSOUDPL4
	}
	super, gsoSize := r.n > 1, r.gsoSize
	if !super {
		gso = virtioGSONone
		// A lone TCP packet longer than the MTU is a sender's unsegmented
		// TSO packet: a kernel vxlan peer over veth hands its socket the
		// whole tunnel-GSO skb (udp_unexpected_gso lets SKB_GSO_UDP_TUNNEL
		// through), so one datagram carries it. Let the kernel cut it at
		// this device's MTU instead of forwarding what no pod link takes.
		if mss := c.mtu - r.iphLen - r.l4hLen; r.key.proto == protoTCP && c.mtu > 0 && len(pkt) > c.mtu && mss > 0 {
			gso, super, gsoSize = virtioGSOTCPv4, true, mss
		}
	}
	if super {
		binary.BigEndian.PutUint16(pkt[2:], uint16(len(pkt)))
		pkt[10], pkt[11] = 0, 0
		binary.BigEndian.PutUint16(pkt[10:], ^foldedSum(pkt[:r.iphLen], 0))
		if r.key.proto == protoUDP {
			binary.BigEndian.PutUint16(pkt[r.iphLen+4:], uint16(l4len))
		}
	}
	// CHECKSUM_PARTIAL: the transport checksum field holds the folded
	// pseudo-header sum; the kernel sums the rest when it needs to.
	pseudo := uint64(binary.BigEndian.Uint32(pkt[12:])>>16) + uint64(binary.BigEndian.Uint32(pkt[12:])&0xffff) +
		uint64(binary.BigEndian.Uint32(pkt[16:])>>16) + uint64(binary.BigEndian.Uint32(pkt[16:])&0xffff) +
		uint64(r.key.proto) + uint64(l4len)
	binary.BigEndian.PutUint16(pkt[r.iphLen+csumOff:], foldedSum(nil, pseudo))
	hdr[0] = virtioFlagNeedsCsum
	hdr[1] = gso
	binary.NativeEndian.PutUint16(hdr[2:], uint16(r.iphLen+r.l4hLen))
	if super {
		binary.NativeEndian.PutUint16(hdr[4:], uint16(gsoSize))
	}
	binary.NativeEndian.PutUint16(hdr[6:], uint16(r.iphLen))
	binary.NativeEndian.PutUint16(hdr[8:], uint16(csumOff))
	return b[offset-virtioNetHdrLen:]
}

// finish6 is finish for a lone IPv6 TCP or UDP packet: CHECKSUM_PARTIAL,
// and a TCP packet above the MTU cut at it by the kernel (TCPv6 GSO).
func (c *coalescer) finish6(pkt, hdr []byte, r *run) {
	l4len := len(pkt) - ipv6HeaderLen
	csumOff := 16
	if r.key.proto == protoUDP {
		csumOff = 6
	}
	gso, gsoSize := uint8(virtioGSONone), 0
	if mss := c.mtu - ipv6HeaderLen - r.l4hLen; r.key.proto == protoTCP && c.mtu > 0 && len(pkt) > c.mtu && mss > 0 {
		gso, gsoSize = virtioGSOTCPv6, mss
	}
	// The pseudo-header (RFC 8200 8.1): addresses, upper-layer length,
	// next header.
	pseudo := uint64(foldedSum(pkt[8:ipv6HeaderLen], 0)) + uint64(r.key.proto) + uint64(l4len)
	binary.BigEndian.PutUint16(pkt[ipv6HeaderLen+csumOff:], foldedSum(nil, pseudo))
	hdr[0] = virtioFlagNeedsCsum
	hdr[1] = gso
	binary.NativeEndian.PutUint16(hdr[2:], uint16(ipv6HeaderLen+r.l4hLen))
	binary.NativeEndian.PutUint16(hdr[4:], uint16(gsoSize))
	binary.NativeEndian.PutUint16(hdr[6:], ipv6HeaderLen)
	binary.NativeEndian.PutUint16(hdr[8:], uint16(csumOff))
}

// foldedSum is the 16-bit one's complement sum of b plus initial, not
// complemented.
func foldedSum(b []byte, initial uint64) uint16 {
	s := initial
	for len(b) >= 2 {
		s += uint64(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		s += uint64(b[0]) << 8
	}
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return uint16(s)
}
