// Package udp is flannel's UDP backend on the wire: each inner packet
// (IPv4, or IPv6 on a network with IPv6) travels as the whole payload of
// one UDP datagram between the hosts' public addresses, port 8285 by
// default, with no header of its own.
//
// Conn is the batched socket the engine uses for it: recvmmsg/sendmmsg with
// UDP GRO and GSO where the kernel has them, preallocated message headers,
// and no allocation per packet. GSO only changes how datagrams are handed
// to the kernel: on the wire every datagram still carries exactly one inner
// packet, as flanneld expects. Dual is two of them, one per underlay
// family, as one Transport: between weft hosts IPv6 packets ride the IPv6
// underlay.
package udp
