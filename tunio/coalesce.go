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
// Both families are coalesced, by the same rules (those of Linux's GRO:
// inet_gro_receive / ipv6_gro_receive, tcp_gro_receive,
// udp_gro_receive_segment). Nothing is coalesced that the kernel would not
// have coalesced, and a flow's packets keep their order:
//
//   - A flow is its addresses, ports and transport (TCP or UDP), in one
//     family. Only the flow's latest run, among the last maxRunSearch runs,
//     may grow; a packet of the flow that cannot join it starts the flow's
//     next run, so nothing of a flow passes another packet of it.
//   - The transport header must follow the IP header directly: IPv4 without
//     options, unfragmented; IPv6 whose next header is TCP or UDP (no
//     extension headers) and whose payload length is the packet's (no
//     jumbogram, no trailing bytes). A TCP or UDP packet that fails this
//     (IPv4 options or fragments, IPv6 extension headers) might belong to
//     any flow of its address pair, so it ends every run of that pair.
//   - IP header fields the kernel copies from the head onto every segment
//     must be equal: IPv4 TOS, DF and TTL; IPv6 version, traffic class and
//     flow label (the whole first word) and hop limit.
//   - TCP: data with only ACK (and PSH) set; the next sequence number; the
//     head's ACK number, window and options; no segment larger than the
//     first; a short segment or a PSH ends the run (PSH carried on the
//     head, the kernel leaves it on the last segment).
//   - UDP (only when the device takes UDP super-packets, TUN_F_USO4/6):
//     a payload; a UDP length equal to the IP payload's; at most
//     maxUDPSegments; no segment larger than the first, a short one ends
//     the run. UDP over IPv6 also needs a checksum (zero is none, which
//     IPv6 forbids; udp_gro_receive_segment refuses it "for symmetry with
//     GSO", and GSO would write one).
//   - Size: a super-packet is at most maxSuperPacket bytes (IPv4's total
//     length; the same for IPv6), and no packet above the MTU joins or
//     heads one.
//
// Nothing is copied to build a super-packet: a run is the head packet,
// whose headers are patched in place, and the payloads of the packets
// that joined it where they lie, written with one writev(2).
//
// Every TCP and UDP packet goes in CHECKSUM_PARTIAL (see finish), except a
// UDP/IPv6 datagram without checksum, written as it came for the pod's
// stack to judge. A lone TCP packet above the MTU (a kernel vxlan peer's
// whole TSO packet) goes as a super-packet cut at the MTU, in either
// family. (Reads need nothing of weft's own for IPv6: the tun package
// splits TSO6 and USO-over-IPv6 super-packets,
// golang.zx2c4.com/wireguard/tun's gsoSplit.)

const (
	virtioNetHdrLen = 10

	// virtio_net_hdr flags and GSO types (include/uapi/linux/virtio_net.h).
	virtioFlagNeedsCsum = 1
	virtioGSONone       = 0
	virtioGSOTCPv4      = 1
	virtioGSOTCPv6      = 4
	virtioGSOUDPL4      = 5

	ipv4HeaderLen = 20
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
	// respect; IPv6 super-packets keep to it too (as the kernel's GRO does
	// without BIG TCP: gro_max_size 65536).
	maxSuperPacket = 65535
	// maxUDPSegments is the most datagrams one UDP super-packet carries:
	// virtio_net_hdr_to_skb refuses (EINVAL) a UDP_L4 write whose payload
	// exceeds gso_size * UDP_MAX_SEGMENTS, which is 64 before Linux 6.15
	// and 128 since.
	maxUDPSegments = 64
	// maxWritePieces bounds a run's packets so its writev(2) stays within
	// the kernel's UIO_MAXIOV (1024) iovecs: the virtio-net header, the
	// head, and a payload per packet that joined it. Only a flow of tiny
	// TCP segments in a batch of more than 1022 packets reaches it.
	maxWritePieces = 1023
)

// addr128 holds an IPv6 address, or an IPv4 one in lo.
type addr128 struct{ hi, lo uint64 }

type flowKey struct {
	src, dst     addr128
	sport, dport uint16
	proto        uint8
	v6           bool
}

// samePair reports whether k and o have the same family and addresses.
func (k flowKey) samePair(o flowKey) bool {
	return k.src == o.src && k.dst == o.dst && k.v6 == o.v6
}

// packetInfo is what the coalescer reads from a packet's headers.
type packetInfo struct {
	key    flowKey
	iphLen int
	l4hLen int
	// hasKey: TCP or UDP right after the IP header; key is its flow and
	// iphLen, l4hLen are valid. A packet that cannot join a run may still
	// be written CHECKSUM_PARTIAL, and it ends its flow's run.
	hasKey bool
	ok     bool // may join or head a super-packet
	asIs   bool // written without CHECKSUM_PARTIAL (UDP/IPv6 without checksum)
	// barrier: TCP or UDP the coalescer cannot place in a flow (IPv4
	// options or fragments, IPv6 extension headers); key holds only its
	// addresses.
	barrier bool
}

// run is a super-packet being built: the head packet with later packets'
// payloads appended.
type run struct {
	idx       int // bufs index of the head packet
	last      int // bufs index of the last packet appended (idx: none)
	total     int // bytes: the head packet and the payloads appended
	key       flowKey
	hasKey    bool // key is the packet's flow (TCP or UDP)
	asIs      bool // written as it came, whatever its protocol
	mergeable bool
	closed    bool // a PSH, a short segment or a barrier ended it
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
	// next[i] is the bufs index of the packet appended after packet i to
	// the same run (-1: none): a run's payloads, in order.
	next   []int
	pieces [][]byte // what finish returns, reused
	// vhdr is the virtio-net header of the run being written: the
	// coalescer's own, so nothing outside the packets is written and
	// packets may lie back to back in one buffer (engine.InPlaceWriter).
	vhdr [virtioNetHdrLen]byte
	uso  bool // the kernel accepts UDP super-packets (TUN_F_USO4 and USO6)
	mtu  int  // the device's MTU: a lone TCP packet above it goes out as a super-packet
}

// plan groups bufs[i][offset:] into runs, appending payloads into each
// run's head buffer.
func (c *coalescer) plan(bufs [][]byte, offset int) {
	c.runs = c.runs[:0]
	if cap(c.next) < len(bufs) {
		c.next = make([]int, len(bufs))
	}
	c.next = c.next[:len(bufs)]
	for i := range bufs {
		c.next[i] = -1
		pkt := bufs[i][offset:]
		p := classify(pkt, c.uso)
		if p.barrier {
			c.closePair(p.key)
		}
		if p.ok && c.tryAppend(bufs, offset, i, &p) {
			continue
		}
		r := run{idx: i, last: i, total: len(pkt), key: p.key, hasKey: p.hasKey, asIs: !p.hasKey || p.asIs, mergeable: p.ok,
			n: 1, iphLen: p.iphLen, l4hLen: p.l4hLen}
		if p.ok {
			r.gsoSize = len(pkt) - p.iphLen - p.l4hLen
			if p.key.proto == protoTCP {
				r.nextSeq = binary.BigEndian.Uint32(pkt[p.iphLen+4:]) + uint32(r.gsoSize)
				r.closed = pkt[p.iphLen+13]&tcpFlagPSH != 0
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

// closePair ends every run that may still grow with the address pair of
// k: a packet that might belong to any of them is being written after
// them.
func (c *coalescer) closePair(k flowKey) {
	for j := len(c.runs) - 1; j >= 0 && j >= len(c.runs)-maxRunSearch; j-- {
		if r := &c.runs[j]; r.hasKey && r.key.samePair(k) {
			r.closed = true
		}
	}
}

// classify reads pkt's headers: its flow and header lengths, and whether
// it may join a super-packet.
func classify(pkt []byte, uso bool) packetInfo {
	if len(pkt) > 0 && pkt[0]>>4 == 6 {
		return classify6(pkt, uso)
	}
	return classify4(pkt, uso)
}

// classify4: IPv4 without options or fragmentation, TCP carrying data
// with only ACK (and PSH) set, or UDP when the device takes UDP
// super-packets.
func classify4(pkt []byte, uso bool) (p packetInfo) {
	if len(pkt) < 28 || pkt[0]>>4 != 4 || int(binary.BigEndian.Uint16(pkt[2:])) != len(pkt) {
		return p
	}
	proto := pkt[9]
	if proto != protoTCP && proto != protoUDP {
		return p
	}
	p.key = flowKey{
		src:   addr128{lo: uint64(binary.BigEndian.Uint32(pkt[12:]))},
		dst:   addr128{lo: uint64(binary.BigEndian.Uint32(pkt[16:]))},
		proto: proto,
	}
	// Options, MF or a fragment offset: the ports are elsewhere or absent,
	// and a fragment's L4 checksum covers other fragments.
	if pkt[0] != 0x45 || binary.BigEndian.Uint16(pkt[6:])&0x3fff != 0 {
		p.barrier = true
		return p
	}
	return transport(pkt, ipv4HeaderLen, p.key, uso)
}

// classify6: IPv6 with TCP or UDP right after the fixed header, by the
// rules of classify4.
func classify6(pkt []byte, uso bool) (p packetInfo) {
	if len(pkt) < ipv6HeaderLen+8 || int(binary.BigEndian.Uint16(pkt[4:]))+ipv6HeaderLen != len(pkt) {
		return p
	}
	p.key = flowKey{
		src:   addr128{hi: binary.BigEndian.Uint64(pkt[8:]), lo: binary.BigEndian.Uint64(pkt[16:])},
		dst:   addr128{hi: binary.BigEndian.Uint64(pkt[24:]), lo: binary.BigEndian.Uint64(pkt[32:])},
		proto: pkt[6],
		v6:    true,
	}
	switch pkt[6] {
	case protoTCP, protoUDP:
		return transport(pkt, ipv6HeaderLen, p.key, uso)
	case 58, 59: // ICMPv6, no next header: no transport flow to keep in order
		return packetInfo{}
	}
	// An extension header (hop-by-hop, routing, fragment, destination
	// options, AH, ESP, ...) may hide TCP or UDP of a flow.
	p.barrier = true
	return p
}

// transport completes k with pkt's ports and reads its TCP or UDP header,
// which starts at iph.
func transport(pkt []byte, iph int, k flowKey, uso bool) (p packetInfo) {
	k.sport = binary.BigEndian.Uint16(pkt[iph:])
	k.dport = binary.BigEndian.Uint16(pkt[iph+2:])
	p.key, p.iphLen = k, iph
	if k.proto == protoUDP {
		p.hasKey, p.l4hLen = true, 8
		// A datagram with no payload cannot be a segment: the kernel
		// refuses gso_size 0 (virtio_net_hdr_to_skb: EINVAL), and appended
		// to a run it would add no bytes and vanish.
		// A UDP length that disagrees with the IP length (padding, or a
		// forgery) would be rewritten to cover the appended segments,
		// turning the padding into payload; udp_gro_receive_segment refuses
		// such packets too.
		ulen := int(binary.BigEndian.Uint16(pkt[iph+4:]))
		p.ok = uso && len(pkt) > iph+8 && ulen == len(pkt)-iph
		if k.v6 && binary.BigEndian.Uint16(pkt[iph+6:]) == 0 {
			p.ok, p.asIs = false, true
		}
		return p
	}
	if len(pkt) < iph+20 {
		return packetInfo{}
	}
	l4h := int(pkt[iph+12]>>4) * 4
	if l4h < 20 || len(pkt) < iph+l4h {
		return packetInfo{}
	}
	flags := pkt[iph+13]
	p.hasKey, p.l4hLen = true, l4h
	p.ok = len(pkt) > iph+l4h && (flags == tcpFlagACK || flags == tcpFlagACK|tcpFlagPSH)
	return p
}

// tryAppend appends packet i's payload to the latest run of its flow if
// the kernel could have coalesced them itself (the conditions of Linux's
// tcp_gro_receive and udp_gro_receive_segment).
func (c *coalescer) tryAppend(bufs [][]byte, offset, i int, p *packetInfo) bool {
	pkt := bufs[i][offset:]
	iph, l4h := p.iphLen, p.l4hLen
	for j := len(c.runs) - 1; j >= 0 && j >= len(c.runs)-maxRunSearch; j-- {
		r := &c.runs[j]
		if !r.hasKey || r.key != p.key {
			continue
		}
		// Only the flow's latest run may grow; otherwise order would break.
		if !r.mergeable {
			return false
		}
		head := bufs[r.idx][offset:]
		payload := len(pkt) - iph - l4h
		if (p.key.proto == protoUDP && r.n >= maxUDPSegments) || r.n >= maxWritePieces {
			return false // the next run of the flow starts with this packet
		}
		if r.closed || payload == 0 || payload > r.gsoSize || iph != r.iphLen || l4h != r.l4hLen ||
			(c.mtu > 0 && len(pkt) > c.mtu) || r.total+payload > maxSuperPacket {
			return false
		}
		// The IP fields the kernel copies from the head onto every segment
		// it cuts must be equal.
		if p.key.v6 {
			// Version, traffic class, flow label; hop limit.
			if binary.BigEndian.Uint32(pkt) != binary.BigEndian.Uint32(head) || pkt[7] != head[7] {
				return false
			}
		} else if pkt[1] != head[1] || pkt[6]&0x40 != head[6]&0x40 || pkt[8] != head[8] { // TOS, DF, TTL
			return false
		}
		if p.key.proto == protoTCP {
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
		c.next[r.last] = i
		r.last = i
		r.total += payload
		r.n++
		if payload < r.gsoSize {
			r.closed = true // only the last segment may be short
		}
		return true
	}
	return false
}

// finish makes run r's virtio-net header and fixes the head's lengths and
// checksums, returning what to write, in pieces: the header, the head
// packet, then each appended payload. The slice and the header are the
// coalescer's, valid until the next call. Nothing outside the packets is
// written.
func (c *coalescer) finish(bufs [][]byte, offset int, r *run) [][]byte {
	b := bufs[r.idx]
	pkt := b[offset:]
	hdr := c.vhdr[:]
	clear(hdr)
	c.pieces = append(c.pieces[:0], hdr, pkt)
	if r.asIs {
		return c.pieces // GSO_NONE; the stack checks what it needs
	}
	// Every TCP and UDP packet goes in CHECKSUM_PARTIAL, alone or
	// coalesced: the kernel does not verify the inner checksum (the bytes
	// came under an outer UDP checksum the kernel checked, which is why its
	// own vxlan marks decapsulated packets checked too) and completes it
	// only if the packet leaves through a device that needs it. Senders
	// whose inner checksum was left to hardware that never ran (the
	// kernel's vxlan over veth) are then received like any other.
	v6 := r.key.v6
	l4len := r.total - r.iphLen
	csumOff := 16
	tcpGSO := uint8(virtioGSOTCPv4)
	if v6 {
		tcpGSO = virtioGSOTCPv6
	}
	gso := tcpGSO
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
		if mss := c.mtu - r.iphLen - r.l4hLen; r.key.proto == protoTCP && c.mtu > 0 && r.total > c.mtu && mss > 0 {
			gso, super, gsoSize = tcpGSO, true, mss
		}
	}
	if super {
		if v6 {
			binary.BigEndian.PutUint16(pkt[4:], uint16(l4len)) // payload length
		} else {
			binary.BigEndian.PutUint16(pkt[2:], uint16(r.total))
			pkt[10], pkt[11] = 0, 0
			binary.BigEndian.PutUint16(pkt[10:], ^foldedSum(pkt[:r.iphLen], 0))
		}
		if r.key.proto == protoUDP {
			binary.BigEndian.PutUint16(pkt[r.iphLen+4:], uint16(l4len))
		}
	}
	// CHECKSUM_PARTIAL: the transport checksum field holds the folded
	// pseudo-header sum (addresses, protocol, transport length; for IPv6,
	// RFC 8200 8.1); the kernel sums the rest when it needs to, and
	// for each segment it cuts.
	var pseudo uint64
	if v6 {
		pseudo = uint64(foldedSum(pkt[8:ipv6HeaderLen], 0))
	} else {
		pseudo = uint64(foldedSum(pkt[12:20], 0))
	}
	pseudo += uint64(r.key.proto) + uint64(l4len)
	binary.BigEndian.PutUint16(pkt[r.iphLen+csumOff:], foldedSum(nil, pseudo))
	hdr[0] = virtioFlagNeedsCsum
	hdr[1] = gso
	binary.NativeEndian.PutUint16(hdr[2:], uint16(r.iphLen+r.l4hLen))
	if super {
		binary.NativeEndian.PutUint16(hdr[4:], uint16(gsoSize))
	}
	binary.NativeEndian.PutUint16(hdr[6:], uint16(r.iphLen))
	binary.NativeEndian.PutUint16(hdr[8:], uint16(csumOff))
	for j := c.next[r.idx]; j >= 0; j = c.next[j] {
		c.pieces = append(c.pieces, bufs[j][offset+r.iphLen+r.l4hLen:])
	}
	return c.pieces
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
