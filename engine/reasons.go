package engine

// DropReason says why a packet was not forwarded. Every packet the engine
// does not forward is counted under exactly one reason. IPv4 and IPv6
// packets share the reasons: a packet's version shows in captures.
type DropReason uint8

const (
	// DropNone: not dropped.
	DropNone DropReason = iota
	// DropNoRoute: the destination is in no peer's subnet (an ICMP network
	// unreachable, or an ICMPv6 destination unreachable "no route", goes
	// back into the TUN).
	DropNoRoute
	// DropShort: shorter than an IPv4 header (with version 6: shorter than
	// the 40-byte IPv6 header).
	DropShort
	// DropBadVersion: neither IPv4 nor IPv6.
	DropBadVersion
	// DropBadHeaderLen: IHL below 5 words or beyond the packet.
	DropBadHeaderLen
	// DropBadLength: the IPv4 total length is larger than the datagram, or
	// smaller than its own header; the IPv6 payload length runs past the
	// datagram, or is zero before a hop-by-hop header (a jumbogram).
	DropBadLength
	// DropTTLExpired: the TTL (IPv6: the hop limit) would reach zero.
	DropTTLExpired
	// DropUnknownPeer: a datagram from an address that holds no lease.
	DropUnknownPeer
	// DropSpoofedSource: the inner source is outside the sending peer's subnet.
	DropSpoofedSource
	// DropNotLocal: the inner destination is outside this host's subnet.
	DropNotLocal
	// DropOversize: the inner packet is longer than the TUN's MTU, or the
	// datagram was truncated by the socket; or an IPv6 packet read from the
	// TUN is longer than its MTU (answered with ICMPv6 Packet Too Big).
	DropOversize
	// DropSendError: the kernel refused to send the datagram.
	DropSendError
	// DropTUNWriteError: the kernel refused the packet on the TUN.
	DropTUNWriteError
	// DropBadEncap: the encapsulation header is truncated or malformed
	// (for VXLAN: flags, reserved bits).
	DropBadEncap
	// DropWrongVNI: a VXLAN frame for another network.
	DropWrongVNI
	// DropNotIPv4Frame: an encapsulated frame that carries neither IPv4
	// nor, on a dual-stack network, IPv6 (and is not something the
	// encapsulation answers itself, like ARP).
	DropNotIPv4Frame
	// DropWrongMAC: an encapsulated frame for another MAC address.
	DropWrongMAC
	// DropARPAnswered: an ARP request for this host's overlay gateway
	// address, answered by the Encap itself (kernel vxlan peers send one
	// only while their permanent neighbour entry is missing).
	DropARPAnswered
	// DropWrongSourcePort: a datagram from a peer's address but not from
	// the cluster's UDP port every flannel host sends from: another
	// process on that host (Config.CheckSourcePort).
	DropWrongSourcePort
	// NumDropReasons is the number of reasons; valid reasons are below it.
	NumDropReasons
)

var dropReasonNames = [NumDropReasons]string{
	DropNone:            "none",
	DropNoRoute:         "no-route",
	DropShort:           "short",
	DropBadVersion:      "bad-version",
	DropBadHeaderLen:    "bad-header-length",
	DropBadLength:       "bad-length",
	DropTTLExpired:      "ttl-expired",
	DropUnknownPeer:     "unknown-peer",
	DropSpoofedSource:   "spoofed-source",
	DropNotLocal:        "not-local",
	DropOversize:        "oversize",
	DropSendError:       "send-error",
	DropTUNWriteError:   "tun-write-error",
	DropBadEncap:        "bad-encap-header",
	DropWrongVNI:        "wrong-vni",
	DropNotIPv4Frame:    "not-ipv4-frame",
	DropWrongMAC:        "wrong-mac",
	DropARPAnswered:     "arp-answered",
	DropWrongSourcePort: "wrong-source-port",
}

// String returns the reason's stable name, as used in stats and captures.
func (r DropReason) String() string {
	if r < NumDropReasons {
		return dropReasonNames[r]
	}
	return "unknown"
}
