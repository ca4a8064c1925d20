package engine

import "encoding/binary"

const (
	ipv6HeaderLen = 40
	// ipv6MinMTU is the least MTU every IPv6 link has (RFC 8200 5): an
	// ICMPv6 error must fit in it (RFC 4443 2.4 (c)).
	ipv6MinMTU = 1280

	protoHopByHop = 0
	protoRouting  = 43
	protoFragment = 44
	protoAH       = 51
	protoICMPv6   = 58
	protoDestOpts = 60

	icmp6DestUnreachable      = 1
	icmp6PacketTooBig         = 2
	icmp6TimeExceeded         = 3
	icmp6CodeNoRoute          = 0
	icmp6CodeHopLimitExceeded = 0
	// ICMPv6 types below this are errors, the others informational
	// (RFC 4443 2.1).
	icmp6FirstInformational = 128

	// maxExtHeaders bounds the walk over an offender's extension headers
	// when deciding whether it is an ICMPv6 error: a chain longer than this
	// is not answered at all.
	maxExtHeaders = 8
)

// isIPv6 classifies a packet by its version nibble: 6 takes the IPv6
// path, anything else the IPv4 one (which refuses what is not 4).
func isIPv6(pkt []byte) bool { return len(pkt) > 0 && pkt[0]>>4 == 6 }

// checkIPv6 validates the IPv6 header at the start of pkt and returns the
// packet's length according to its header (the datagram may carry
// trailing bytes, which are not part of the packet). Extension headers
// are not parsed: forwarding needs only the fixed header, and the payload
// length covers them.
func checkIPv6(pkt []byte) (int, DropReason) { return checkIPv6Len(pkt, len(pkt)) }

// checkIPv6Len is checkIPv6 for a packet of avail bytes whose first
// len(pkt) are in pkt (the rest in a tail): the fixed header must be in
// pkt.
func checkIPv6Len(pkt []byte, avail int) (int, DropReason) {
	if len(pkt) < ipv6HeaderLen {
		return 0, DropShort
	}
	if pkt[0]>>4 != 6 {
		return 0, DropBadVersion
	}
	plen := int(binary.BigEndian.Uint16(pkt[4:6]))
	// A payload length of zero before a hop-by-hop header is a jumbogram
	// (RFC 2675), which no buffer here holds; read as a 40-byte packet it
	// would be cut short, so it is refused.
	if plen == 0 && pkt[6] == protoHopByHop {
		return 0, DropBadLength
	}
	total := ipv6HeaderLen + plen
	if total > avail {
		return 0, DropBadLength
	}
	return total, DropNone
}

func src6(pkt []byte) addr6 {
	return addr6{binary.BigEndian.Uint64(pkt[8:16]), binary.BigEndian.Uint64(pkt[16:24])}
}

func dst6(pkt []byte) addr6 {
	return addr6{binary.BigEndian.Uint64(pkt[24:32]), binary.BigEndian.Uint64(pkt[32:40])}
}

// hopLimitExpired reports whether forwarding would take the hop limit to
// zero (RFC 8200 3: a router discards the packet and answers Time
// Exceeded).
func hopLimitExpired(pkt []byte) bool { return pkt[7] <= 1 }

// decrementHopLimit lowers the hop limit by one, like decrementTTL for
// IPv4 but with no header checksum to patch. It reports false, changing
// nothing, when the hop limit would reach zero.
func decrementHopLimit(pkt []byte) bool {
	if hopLimitExpired(pkt) {
		return false
	}
	pkt[7]--
	return true
}

// singleHost6 reports whether a can be the source of a packet an error is
// sent back to: not unspecified (::), not loopback (::1), not multicast
// (ff00::/8). RFC 4443 2.4 (e) forbids an error about a packet whose
// source does not identify a single node.
func singleHost6(a addr6) bool {
	if a.hi == 0 && a.lo <= 1 {
		return false
	}
	return a.hi>>56 != 0xff
}

// icmp6ErrorAllowed applies RFC 4443 2.4 (e): never answer an ICMPv6
// error, a packet from a source that names no single node, a packet to a
// multicast address (except with Packet Too Big, which path MTU discovery
// for multicast needs), or a non-initial fragment, whose upper-layer
// header is not there to tell. It walks the extension headers to find
// the upper-layer protocol; a chain it cannot follow inside the packet
// is not answered.
func icmp6ErrorAllowed(pkt []byte, typ uint8) bool {
	if !singleHost6(src6(pkt)) {
		return false
	}
	dst := dst6(pkt)
	if dst.hi == 0 && dst.lo <= 1 {
		return false
	}
	if dst.hi>>56 == 0xff && typ != icmp6PacketTooBig {
		return false
	}
	nh, off := pkt[6], ipv6HeaderLen
	for range maxExtHeaders {
		switch nh {
		case protoHopByHop, protoRouting, protoDestOpts:
			if off+2 > len(pkt) {
				return false
			}
			nh, off = pkt[off], off+(int(pkt[off+1])+1)*8
		case protoFragment:
			if off+8 > len(pkt) {
				return false
			}
			if binary.BigEndian.Uint16(pkt[off+2:off+4])>>3 != 0 {
				return false
			}
			nh, off = pkt[off], off+8
		case protoAH:
			if off+2 > len(pkt) {
				return false
			}
			nh, off = pkt[off], off+(int(pkt[off+1])+2)*4
		case protoICMPv6:
			return off < len(pkt) && pkt[off] >= icmp6FirstInformational
		default:
			return true // TCP, UDP, ESP, no next header, ...
		}
	}
	return false
}

// icmp6ErrorLen is the longest ICMPv6 error buildICMPv6Error writes: the
// minimum IPv6 MTU.
const icmp6ErrorLen = ipv6MinMTU

// buildICMPv6Error writes into out (at least icmp6ErrorLen bytes) an
// ICMPv6 error of the given type and code about offender, sent from src
// to the offender's source, and returns its length. It quotes as much of
// the offender as fits in the minimum IPv6 MTU (RFC 4443 2.4 (c)). param
// is the message's 32-bit field: the MTU for Packet Too Big, else zero.
func buildICMPv6Error(out []byte, typ, code uint8, param uint32, src addr6, offender []byte) int {
	quote := min(len(offender), icmp6ErrorLen-ipv6HeaderLen-8)
	n := ipv6HeaderLen + 8 + quote
	ip := out[:ipv6HeaderLen]
	clear(ip)
	ip[0] = 0x60
	binary.BigEndian.PutUint16(ip[4:6], uint16(n-ipv6HeaderLen))
	ip[6] = protoICMPv6
	ip[7] = 64
	binary.BigEndian.PutUint64(ip[8:16], src.hi)
	binary.BigEndian.PutUint64(ip[16:24], src.lo)
	copy(ip[24:40], offender[8:24])
	icmp := out[ipv6HeaderLen:n]
	icmp[0], icmp[1], icmp[2], icmp[3] = typ, code, 0, 0
	binary.BigEndian.PutUint32(icmp[4:8], param)
	copy(icmp[8:], offender[:quote])
	binary.BigEndian.PutUint16(icmp[2:4], checksum6(ip, protoICMPv6, icmp))
	return n
}

// checksum6 is the upper-layer checksum of l4 carried in the IPv6 packet
// whose fixed header is ip: the Internet checksum over the pseudo-header
// (RFC 8200 8.1: source, destination, upper-layer length, next header)
// and l4.
func checksum6(ip []byte, proto uint8, l4 []byte) uint16 {
	sum := uint64(len(l4)) + uint64(proto)
	for i := 8; i < ipv6HeaderLen; i += 4 {
		sum += uint64(binary.BigEndian.Uint32(ip[i:]))
	}
	b := l4
	for len(b) >= 4 {
		sum += uint64(binary.BigEndian.Uint32(b))
		b = b[4:]
	}
	if len(b) >= 2 {
		sum += uint64(binary.BigEndian.Uint16(b)) << 16
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint64(b[0]) << 8
	}
	// Fold the 32-bit word sums down to 16 bits.
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}
