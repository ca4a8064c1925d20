// Package udp is flannel's UDP backend on the wire: each inner IPv4 packet
// travels as the whole payload of one UDP datagram between the hosts'
// public addresses, port 8285 by default, with no header of its own.
//
// Conn is the batched socket the engine uses for it: recvmmsg/sendmmsg with
// UDP GRO and GSO where the kernel has them, preallocated message headers,
// and no allocation per packet. GSO only changes how datagrams are handed
// to the kernel: on the wire every datagram still carries exactly one inner
// packet, as flanneld expects.
package udp
