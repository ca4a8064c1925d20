package engine

import "encoding/binary"

const (
	ipv4MinHeaderLen = 20
	protoICMP        = 1
	protoTCP         = 6
	protoUDP         = 17
)

// checkIPv4 validates the IPv4 header at the start of pkt and returns the
// packet's length according to its header (the datagram may carry trailing
// bytes, which are not part of the packet).
func checkIPv4(pkt []byte) (int, DropReason) { return checkIPv4Len(pkt, len(pkt)) }

// checkIPv4Len is checkIPv4 for a packet of avail bytes whose first
// len(pkt) are in pkt (the rest in a tail): the header must be in pkt.
func checkIPv4Len(pkt []byte, avail int) (int, DropReason) {
	if len(pkt) < ipv4MinHeaderLen {
		return 0, DropShort
	}
	if pkt[0]>>4 != 4 {
		return 0, DropBadVersion
	}
	ihl := int(pkt[0]&0x0f) * 4
	if ihl < ipv4MinHeaderLen || ihl > len(pkt) {
		return 0, DropBadHeaderLen
	}
	total := int(binary.BigEndian.Uint16(pkt[2:4]))
	if total > avail || total < ihl {
		return 0, DropBadLength
	}
	return total, DropNone
}

func srcIP(pkt []byte) uint32 { return binary.BigEndian.Uint32(pkt[12:16]) }
func dstIP(pkt []byte) uint32 { return binary.BigEndian.Uint32(pkt[16:20]) }

// decrementTTL lowers the TTL by one and patches the header checksum
// incrementally (RFC 1624, eqn. 3), as flannel's UDP proxy does on each side:
// the rest of the packet, its L4 checksum included, is left as it was.
// It reports false, changing nothing, when the TTL would reach zero.
func decrementTTL(pkt []byte) bool {
	if pkt[8] <= 1 {
		return false
	}
	old := uint32(pkt[8])<<8 | uint32(pkt[9])
	pkt[8]--
	sum := uint32(^binary.BigEndian.Uint16(pkt[10:12])) + (^old & 0xffff) + (old - 0x100)
	sum = (sum & 0xffff) + sum>>16
	sum = (sum & 0xffff) + sum>>16
	binary.BigEndian.PutUint16(pkt[10:12], ^uint16(sum))
	return true
}

// checksum is the Internet checksum (RFC 1071) of b.
func checksum(b []byte) uint16 {
	var sum uint32
	for len(b) >= 2 {
		sum += uint32(b[0])<<8 | uint32(b[1])
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint32(b[0]) << 8
	}
	for sum>>16 != 0 {
		sum = (sum & 0xffff) + sum>>16
	}
	return ^uint16(sum)
}

const (
	icmpDestUnreachable = 3
	icmpTimeExceeded    = 11
	icmpCodeNetUnreach  = 0
	icmpCodeTTLExceeded = 0
)

// icmpErrorAllowed applies RFC 1122 3.2.2: never answer an ICMP error, a
// non-initial fragment, a packet to a broadcast or multicast address, or
// one whose source does not name a single host ("a zero address, a
// loopback address, a broadcast address, a multicast address, or a Class E
// address"), with an ICMP error. Such a source is forged or misrouted, and
// an error sent to it goes nowhere useful or is a reflection.
func icmpErrorAllowed(pkt []byte) bool {
	ihl := int(pkt[0]&0x0f) * 4
	if binary.BigEndian.Uint16(pkt[6:8])&0x1fff != 0 {
		return false
	}
	if !singleHost(srcIP(pkt)) || !singleHost(dstIP(pkt)) {
		return false
	}
	if pkt[9] == protoICMP {
		if len(pkt) < ihl+1 {
			return false
		}
		switch pkt[ihl] {
		case 0, 8, 13, 14, 15, 16, 17, 18: // echo and other queries
		default:
			return false
		}
	}
	return true
}

// singleHost reports whether a names one host: not in 0/8 (this network),
// 127/8 (loopback), 224/4 (multicast) or 240/4 (class E, which holds the
// limited broadcast 255.255.255.255).
func singleHost(a uint32) bool {
	switch a >> 24 {
	case 0, 127:
		return false
	}
	return a>>28 < 0xe
}

// icmpErrorLen is the largest ICMP error buildICMPError writes: IP header,
// ICMP header, and the offender's header plus 8 bytes (RFC 792), which
// is all a host needs to match it to a socket.
const icmpErrorLen = ipv4MinHeaderLen + 8 + 60 + 8

// buildICMPError writes into out (at least icmpErrorLen bytes) an ICMP error
// of the given type and code about offender, sent from src to the
// offender's source, and returns its length.
func buildICMPError(out []byte, typ, code uint8, src uint32, offender []byte) int {
	ihl := int(offender[0]&0x0f) * 4
	quote := min(len(offender), ihl+8)
	n := ipv4MinHeaderLen + 8 + quote
	ip := out[:ipv4MinHeaderLen]
	clear(out[:n])
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:4], uint16(n))
	ip[8] = 64
	ip[9] = protoICMP
	binary.BigEndian.PutUint32(ip[12:16], src)
	copy(ip[16:20], offender[12:16])
	binary.BigEndian.PutUint16(ip[10:12], checksum(ip))
	icmp := out[ipv4MinHeaderLen:n]
	icmp[0], icmp[1] = typ, code
	copy(icmp[8:], offender[:quote])
	binary.BigEndian.PutUint16(icmp[2:4], checksum(icmp))
	return n
}
