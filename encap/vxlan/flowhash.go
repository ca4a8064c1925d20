package vxlan

import "encoding/binary"

// flowHash hashes an inner IPv4 packet's flow the way the kernel's flow
// dissector keys skb_get_hash (which udp_flow_src_port turns into the
// vxlan source port): addresses and protocol, plus the ports for TCP, UDP,
// UDP-Lite and SCTP unless the packet is a fragment (fragments carry no
// ports after the first, so all of a datagram's fragments must hash
// alike). The seed plays the kernel's random hashrnd. Packets the engine
// accepted from the TUN are valid IPv4; anything shorter hashes on what
// there is.
func flowHash(pkt []byte, seed uint64) uint32 {
	if len(pkt) > 0 && pkt[0]>>4 == 6 {
		return flowHash6(pkt, seed)
	}
	if len(pkt) < 20 {
		return uint32(mix(seed))
	}
	addrs := binary.BigEndian.Uint64(pkt[12:20])
	proto := uint64(pkt[9])
	var ports uint64
	ihl := int(pkt[0]&0x0f) * 4
	frag := binary.BigEndian.Uint16(pkt[6:8]) & 0x3fff // MF and offset
	if frag == 0 && ihl >= 20 && len(pkt) >= ihl+4 {
		switch proto {
		case 6, 17, 132, 136: // TCP, UDP, SCTP, UDP-Lite
			ports = uint64(binary.BigEndian.Uint32(pkt[ihl : ihl+4]))
		}
	}
	h := mix(addrs^seed) ^ mix(ports<<8|proto^seed>>7)
	return uint32(h >> 32)
}

// mix is the splitmix64 finaliser: every input bit flips about half of
// the output bits, so a few buckets taken from the top bits spread well.
func mix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	return x ^ x>>31
}

// bucket scales a hash onto n buckets as udp_flow_src_port scales it onto
// the port range: ((u64)hash * range) >> 32, which uses the high bits.
func bucket(h uint32, n int) int { return int(uint64(h) * uint64(n) >> 32) }

// flowHash6 is flowHash for an inner IPv6 packet: addresses and next
// header, plus the ports when the transport header follows the fixed
// header directly (an extension header in between, a fragment header
// included, leaves the ports out, so a datagram's fragments hash alike).
func flowHash6(pkt []byte, seed uint64) uint32 {
	if len(pkt) < 40 {
		return uint32(mix(seed))
	}
	a := binary.BigEndian.Uint64(pkt[8:16]) ^ mix(binary.BigEndian.Uint64(pkt[16:24]))
	b := binary.BigEndian.Uint64(pkt[24:32]) ^ mix(binary.BigEndian.Uint64(pkt[32:40]))
	proto := uint64(pkt[6])
	var ports uint64
	if len(pkt) >= 44 {
		switch proto {
		case 6, 17, 132, 136: // TCP, UDP, SCTP, UDP-Lite
			ports = uint64(binary.BigEndian.Uint32(pkt[40:44]))
		}
	}
	h := mix(a^seed) ^ mix(b^seed>>3) ^ mix(ports<<8|proto^seed>>7)
	return uint32(h >> 32)
}
