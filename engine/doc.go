// Package engine is weft's userspace data path: forwarding loops (one from
// the TUN to the underlay, one from each underlay socket to the TUN) that
// move packets in batches, the lock-free subnet lookup table they consult,
// the buffers they own and the counters they keep. It knows nothing of etcd or of sockets: a Device (the TUN) and
// a Transport (the encapsulating socket) are given to it, and the caller
// publishes a new Table whenever the set of peers changes.
//
// Inner packets are IPv4 or IPv6, told apart by the version nibble, and
// may be mixed in one batch. A Table built by NewTableFor holds a
// cluster's IPv4 network, its IPv6 network, or both; each Peer has the
// subnets it leased in either family, an IPv4 underlay endpoint and,
// where its IPv6 subnet is reached over an IPv6 underlay, an IPv6 one. IPv6
// gets what IPv4 gets: O(1) lookup by subnet number, anti-spoofing
// against the peer's and this host's IPv6 subnets, the hop limit lowered
// where the encapsulation lowers the TTL, and ICMPv6 errors (no route,
// time exceeded, packet too big) under the same rate and batch bound as
// ICMP, from Config.ICMPSource6.
package engine
