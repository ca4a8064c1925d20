package engine

import "encoding/binary"

// flowQueue picks the queue (0..n-1) of a packet's flow: a hash of its
// protocol, addresses and, for unfragmented TCP and UDP, ports, the same
// for both directions of a flow. The rx loops write a peer's packets into
// the TUN queue their flow hashes to; the kernel records the queue a flow
// was written on (tun_flow_update) and sends the flow's packets the other
// way out of that same queue (tun_automq_select_queue), so one flow's
// packets are read by one tx loop, in order, whichever socket its peer's
// datagrams arrive on. pkt has passed checkIPv4 or checkIPv6.
func flowQueue(pkt []byte, n int) int {
	var h uint32
	var proto byte
	ports := -1 // offset of the transport header's ports, -1: none
	if isIPv6(pkt) {
		for i := 8; i < 40; i += 4 {
			h ^= binary.BigEndian.Uint32(pkt[i:])
		}
		proto = pkt[6]
		ports = 40
	} else {
		h = binary.BigEndian.Uint32(pkt[12:]) ^ binary.BigEndian.Uint32(pkt[16:])
		proto = pkt[9]
		// Fragments (MF set or an offset) carry no ports past the first:
		// all of a datagram's fragments hash alike by addresses alone.
		if binary.BigEndian.Uint16(pkt[6:])&0x3fff == 0 {
			ports = int(pkt[0]&0x0f) * 4
		}
	}
	if (proto == protoTCP || proto == protoUDP) && ports >= 0 && len(pkt) >= ports+4 {
		h ^= uint32(binary.BigEndian.Uint16(pkt[ports:]) ^ binary.BigEndian.Uint16(pkt[ports+2:]))
	}
	h ^= uint32(proto) << 24
	h *= 0x9e3779b1 // spread every input bit into the high bits
	return int(uint64(h) * uint64(n) >> 32)
}
