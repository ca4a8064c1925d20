package engine

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
)

// Peer is another host of the cluster: the subnets it leased (an IPv4
// subnet, an IPv6 subnet, or both) and where its engine listens. A Peer is
// immutable once published, except for its counters, written with atomic
// adds by the send loop (tx) and the receive loops (rx); they count the
// peer's IPv4 and IPv6 packets together.
type Peer struct {
	Subnet   netip.Prefix   // the IPv4 lease; invalid when the peer has none
	Subnet6  netip.Prefix   // the IPv6 lease; invalid when the peer has none
	Endpoint netip.AddrPort // the peer's public IP and UDP port
	HWAddr   [6]byte        // the peer's MAC for encapsulations that need one (VXLAN's VtepMAC)
	// Endpoint6 is where the peer's IPv6 subnet is reached over an IPv6
	// underlay (userspace VXLAN: the peer's PublicIPv6, as its
	// flannel-v6.<VNI> device), with HWAddr6 that device's MAC. Invalid:
	// IPv6 packets go to Endpoint too (flannel's UDP format).
	Endpoint6 netip.AddrPort
	HWAddr6   [6]byte

	publicIP uint32
	// A family the peer has no subnet of gets a mask of zero and a network
	// address with a host bit set, which no address matches: contains and
	// contains6 stay a mask and a compare, with no flag to test.
	subnet uint32 // network address of Subnet
	mask   uint32
	sub6   addr6 // network address of Subnet6
	mask6  addr6

	// tx is written by the TUN->underlay loop, rx by the other; separate
	// cache lines keep the two cores from sharing one.
	tx peerCounters
	rx peerCounters
}

type peerCounters struct {
	packets atomic.Uint64
	bytes   atomic.Uint64
	_       [48]byte
}

// PeerStats is a snapshot of one peer's counters.
type PeerStats struct {
	Subnet             netip.Prefix
	Subnet6            netip.Prefix
	Endpoint           netip.AddrPort
	Endpoint6          netip.AddrPort
	TxPackets, TxBytes uint64
	RxPackets, RxBytes uint64
}

func (p *Peer) contains(ip uint32) bool { return ip&p.mask == p.subnet }

func (p *Peer) contains6(a addr6) bool {
	return a.hi&p.mask6.hi == p.sub6.hi && a.lo&p.mask6.lo == p.sub6.lo
}

// PeerSpec describes a peer for NewTable and NewTableFor: at least one of
// Subnet and Subnet6, and the IPv4 endpoint the transport sends to; with a
// Subnet6, optionally the IPv6 endpoint its IPv6 packets go to (see Peer).
type PeerSpec struct {
	Subnet    netip.Prefix // IPv4 lease, or invalid
	Subnet6   netip.Prefix // IPv6 lease, or invalid
	Endpoint  netip.AddrPort
	HWAddr    [6]byte
	Endpoint6 netip.AddrPort // or invalid
	HWAddr6   [6]byte
}

// Networks is what a table covers: the cluster's IPv4 network, its IPv6
// network, or both (flannel's EnableIPv4 and EnableIPv6). A family's
// fields are all zero when the cluster does not use it.
type Networks struct {
	Network   netip.Prefix // the IPv4 cluster network, e.g. 10.5.0.0/16
	SubnetLen int          // the IPv4 lease length, e.g. 24
	Own       netip.Prefix // this host's IPv4 lease; may be invalid

	Network6   netip.Prefix // the IPv6 cluster network, e.g. fd00:10:5::/56
	SubnetLen6 int          // the IPv6 lease length, e.g. 64
	Own6       netip.Prefix // this host's IPv6 lease; may be invalid
}

// maxDirectSlots bounds the directly indexed part of a table: a /8 network
// of /24 subnets (65,536 slots) is indexed directly; wider spans (a /8 of
// /28s would be 8 MiB of slots) fall back to a map keyed by subnet number,
// built once per snapshot and only read afterwards, so lookups stay
// lock-free and allocate nothing, and its size follows the peers, not the
// span. IPv6 uses the same rule: a /48 of /64s (65,536 slots) is direct, a
// /32 of /64s falls back to the map.
const maxDirectSlots = 1 << 16

// maxSubnetBits6 is the most subnet-number bits an IPv6 split may have:
// the map fallback is keyed by a uint64. A cluster network of /64 leases
// inside ::/0 is the widest such split; wider ones (a /48 of /120s) are
// refused, not truncated.
const maxSubnetBits6 = 64

// The direct slots come in chunks of chunkSize, and a snapshot shares
// with the one before every chunk whose peers did not change: one lease
// event on a /8 of /24s copies a 2 KiB chunk and a 2 KiB index, where
// 512 KiB of slots were allocated and zeroed per snapshot (at 50 events/s,
// 25 MB/s of garbage).
const (
	chunkBits = 8
	chunkSize = 1 << chunkBits
)

type chunk [chunkSize]*Peer

// subnetIndex maps the subnet numbers of one address family to peers:
// direct chunks when the span fits maxDirectSlots, else a map.
type subnetIndex struct {
	chunks []*chunk         // the direct slots; a nil chunk holds no peer
	counts []uint16         // peers per chunk, to share unchanged chunks
	byNum  map[uint64]*Peer // used instead of chunks when the span is huge
}

// addr6 is an IPv6 address as two big-endian halves: masks and compares
// on it are two word operations, and a packet's address loads with two
// reads.
type addr6 struct{ hi, lo uint64 }

func addr6Of(a netip.Addr) addr6 {
	b := a.As16()
	return addr6{binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])}
}

func (a addr6) addr() netip.Addr {
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], a.hi)
	binary.BigEndian.PutUint64(b[8:], a.lo)
	return netip.AddrFrom16(b)
}

func prefixMask6(bits int) addr6 {
	switch {
	case bits <= 0:
		return addr6{}
	case bits <= 64:
		return addr6{^uint64(0) << (64 - bits), 0}
	default:
		return addr6{^uint64(0), ^uint64(0) << (128 - bits)}
	}
}

// Table is an immutable snapshot of the forwarding state: this host's
// subnets and every peer's. Readers on the packet path never lock; a
// change builds a new Table and publishes it (see TableRef).
//
// Every lease in a flannel network has the same prefix length (SubnetLen,
// SubnetLen6), so a destination's subnet number (its bits between the
// network prefix and the lease length) indexes the peer directly: O(1),
// no search, for either family.
type Table struct {
	// Without an IPv4 network, network has a host bit set and netMask is
	// zero, so lookup matches nothing without testing has4; likewise for
	// IPv6 with net6 and netMask6.
	network uint32
	netMask uint32
	shift   uint8  // 32 - SubnetLen
	span4   uint64 // how many IPv4 subnets the network holds
	has4    bool
	v4      subnetIndex

	net6     addr6
	netMask6 addr6
	shift6   uint   // 128 - SubnetLen6
	numMask6 uint64 // the subnet number's bits
	has6     bool
	v6       subnetIndex

	own   *Peer           // this host's subnets; Endpoint unset
	byIP  ipIndex[uint32] // public IPv4 -> peer
	byIP6 ipIndex[addr6]  // Endpoint6's address -> peer
	// peers are the IPv4 peers by subnet, then IPv6-only peers by subnet;
	// a table made by Update lists them on the first call of Peers.
	peers     []*Peer
	peersOnce sync.Once
	lazyPeers bool
	nets      Networks // masked
}

// NewTable builds an IPv4 table for network, split into subnets of
// subnetLen bits, where own is this host's lease. Peers whose subnets and
// endpoint are unchanged from prev keep their Peer (and counters).
func NewTable(network netip.Prefix, subnetLen int, own netip.Prefix, peers []PeerSpec, prev *Table) (*Table, error) {
	if !network.IsValid() {
		return nil, fmt.Errorf("engine: network %s with subnet length %d is not a valid IPv4 split", network, subnetLen)
	}
	return NewTableFor(Networks{Network: network, SubnetLen: subnetLen, Own: own}, peers, prev)
}

// NewTableFor builds a table for an IPv4, IPv6 or dual-stack cluster. A
// peer's Subnet must be a lease of n.Network and its Subnet6 one of
// n.Network6; a peer may have either or both. Peers whose subnets and
// endpoint are unchanged from prev keep their Peer (and counters). The
// entry for this host's own lease (a peer spec holding n.Own or n.Own6,
// as lease snapshots list it) is left out.
func NewTableFor(n Networks, peers []PeerSpec, prev *Table) (*Table, error) {
	t := &Table{byIP: ipIndex[uint32]{flat: make(map[uint32]*Peer, len(peers)), hash: hash4}, byIP6: ipIndex[addr6]{hash: hash6}}
	t.network = 1 // matches nothing (see Table)
	if n.Network.IsValid() || n.SubnetLen != 0 || n.Own.IsValid() {
		if err := t.init4(n.Network, n.SubnetLen); err != nil {
			return nil, err
		}
	}
	t.net6 = addr6{0, 1} // matches nothing (see Table)
	if n.Network6.IsValid() || n.SubnetLen6 != 0 || n.Own6.IsValid() {
		if err := t.init6(n.Network6, n.SubnetLen6); err != nil {
			return nil, err
		}
	}
	if !t.has4 && !t.has6 {
		return nil, fmt.Errorf("engine: a table needs an IPv4 or an IPv6 network")
	}
	n.Network, n.Network6 = n.Network.Masked(), n.Network6.Masked()
	t.nets = n
	check4, check6 := t.check4, t.check6
	if n.Own.IsValid() {
		if err := check4(n.Own); err != nil {
			return nil, err
		}
	}
	if n.Own6.IsValid() {
		if err := check6(n.Own6); err != nil {
			return nil, err
		}
	}
	if n.Own.IsValid() || n.Own6.IsValid() {
		t.own = newPeer(PeerSpec{Subnet: n.Own, Subnet6: n.Own6})
	}
	var idx4, idx6 []slotEntry
	t.peers = make([]*Peer, 0, len(peers))
	for _, spec := range peers {
		if err := t.checkSpec(spec); err != nil {
			return nil, err
		}
		if t.isOwn(spec) {
			continue // this host's own lease, as it appears in snapshots
		}
		p := prev.reuse(spec) // prev's peer with the same subnets, or nil
		reused := p != nil
		if !reused {
			p = newPeer(spec)
		} else if t.byIP.get(p.publicIP) == p {
			return nil, fmt.Errorf("engine: subnet %s listed twice", spec.name())
		}
		if spec.Subnet.IsValid() {
			idx4 = append(idx4, slotEntry{uint64(t.index(p.subnet)), p, reused})
		}
		if spec.Subnet6.IsValid() {
			idx6 = append(idx6, slotEntry{t.num6(p.sub6), p, reused})
		}
		t.byIP.add(p.publicIP, p)
		if spec.Endpoint6.IsValid() {
			t.byIP6.add(addr6Of(spec.Endpoint6.Addr()), p)
		}
		t.peers = append(t.peers, p)
	}
	// A previous snapshot's chunks are only worth comparing with when its
	// split was the same.
	var prev4, prev6 *subnetIndex
	if prev != nil && prev.has4 && t.has4 && prev.network == t.network && prev.shift == t.shift {
		prev4 = &prev.v4
	}
	if prev != nil && prev.has6 && t.has6 && prev.net6 == t.net6 && prev.shift6 == t.shift6 && prev.numMask6 == t.numMask6 {
		prev6 = &prev.v6
	}
	if t.has4 {
		if dup := t.v4.build(t.span4, idx4, prev4); dup != nil {
			return nil, fmt.Errorf("engine: subnet %s listed twice", dup.Subnet)
		}
	}
	if t.has6 {
		span := uint64(maxDirectSlots + 1) // anything above the direct limit
		if t.numMask6 < maxDirectSlots {
			span = t.numMask6 + 1
		}
		if dup := t.v6.build(span, idx6, prev6); dup != nil {
			return nil, fmt.Errorf("engine: IPv6 subnet %s listed twice", dup.Subnet6)
		}
	}
	slices.SortFunc(t.peers, comparePeers)
	return t, nil
}

func (t *Table) check4(p netip.Prefix) error {
	n := &t.nets
	if !t.has4 || !p.Addr().Is4() || p.Bits() != n.SubnetLen || p.Masked() != p || !n.Network.Contains(p.Addr()) {
		return fmt.Errorf("engine: subnet %s is not a /%d inside %s", p, n.SubnetLen, n.Network)
	}
	return nil
}

func (t *Table) check6(p netip.Prefix) error {
	n := &t.nets
	if !t.has6 || !p.Addr().Is6() || p.Addr().Is4In6() || p.Addr().Zone() != "" || p.Bits() != n.SubnetLen6 || p.Masked() != p || !n.Network6.Contains(p.Addr()) {
		return fmt.Errorf("engine: IPv6 subnet %s is not a /%d inside %s", p, n.SubnetLen6, n.Network6)
	}
	return nil
}

// checkSpec refuses a peer spec the table cannot hold.
func (t *Table) checkSpec(spec PeerSpec) error {
	if !spec.Subnet.IsValid() && !spec.Subnet6.IsValid() {
		return fmt.Errorf("engine: peer %s has no subnet", spec.Endpoint)
	}
	if spec.Subnet.IsValid() {
		if err := t.check4(spec.Subnet); err != nil {
			return err
		}
	}
	if spec.Subnet6.IsValid() {
		if err := t.check6(spec.Subnet6); err != nil {
			return err
		}
	}
	if !spec.Endpoint.Addr().Is4() {
		return fmt.Errorf("engine: peer %s has no IPv4 endpoint", spec.name())
	}
	if spec.Endpoint6.IsValid() {
		if a := spec.Endpoint6.Addr(); !a.Is6() || a.Is4In6() || a.Zone() != "" || !spec.Subnet6.IsValid() {
			return fmt.Errorf("engine: peer %s: IPv6 endpoint %s is not an IPv6 address of a peer with an IPv6 subnet", spec.name(), spec.Endpoint6)
		}
	}
	return nil
}

// isOwn reports whether spec is this host's own lease.
func (t *Table) isOwn(spec PeerSpec) bool {
	n := &t.nets
	return (n.Own.IsValid() && spec.Subnet == n.Own) || (n.Own6.IsValid() && spec.Subnet6 == n.Own6)
}

func (t *Table) init4(network netip.Prefix, subnetLen int) error {
	if !network.Addr().Is4() || network.Bits() < 0 || subnetLen <= network.Bits() || subnetLen > 32 {
		return fmt.Errorf("engine: network %s with subnet length %d is not a valid IPv4 split", network, subnetLen)
	}
	network = network.Masked()
	t.has4 = true
	t.network = u32(network.Addr())
	t.netMask = prefixMask(network.Bits())
	t.shift = uint8(32 - subnetLen)
	t.span4 = uint64(1) << (subnetLen - network.Bits())
	return nil
}

func (t *Table) init6(network netip.Prefix, subnetLen int) error {
	if !network.Addr().Is6() || network.Addr().Is4In6() || network.Addr().Zone() != "" || network.Bits() < 0 ||
		subnetLen <= network.Bits() || subnetLen > 128 {
		return fmt.Errorf("engine: network %s with subnet length %d is not a valid IPv6 split", network, subnetLen)
	}
	if bits := subnetLen - network.Bits(); bits > maxSubnetBits6 {
		return fmt.Errorf("engine: IPv6 network %s split into /%d has 2^%d subnets; at most 2^%d are supported", network, subnetLen, bits, maxSubnetBits6)
	}
	network = network.Masked()
	t.has6 = true
	t.net6 = addr6Of(network.Addr())
	t.netMask6 = prefixMask6(network.Bits())
	t.shift6 = uint(128 - subnetLen)
	t.numMask6 = ^uint64(0) >> (64 - (subnetLen - network.Bits()))
	return nil
}

func (s PeerSpec) name() string {
	if s.Subnet.IsValid() {
		return s.Subnet.String()
	}
	return s.Subnet6.String()
}

func newPeer(s PeerSpec) *Peer {
	p := &Peer{Subnet: s.Subnet, Subnet6: s.Subnet6, Endpoint: s.Endpoint, HWAddr: s.HWAddr, Endpoint6: s.Endpoint6, HWAddr6: s.HWAddr6}
	p.subnet, p.mask = 1, 0 // matches no address
	if s.Subnet.IsValid() {
		p.subnet, p.mask = u32(s.Subnet.Addr()), prefixMask(s.Subnet.Bits())
	}
	p.sub6, p.mask6 = addr6{0, 1}, addr6{} // matches no address
	if s.Subnet6.IsValid() {
		p.sub6, p.mask6 = addr6Of(s.Subnet6.Addr()), prefixMask6(s.Subnet6.Bits())
	}
	if s.Endpoint.Addr().Is4() {
		p.publicIP = u32(s.Endpoint.Addr())
	}
	return p
}

func (t *Table) reuse(s PeerSpec) *Peer {
	if t == nil {
		return nil
	}
	var p *Peer
	if s.Subnet.IsValid() {
		p = t.Lookup(s.Subnet.Addr())
	} else {
		p = t.Lookup(s.Subnet6.Addr())
	}
	if p != nil && p.Subnet == s.Subnet && p.Subnet6 == s.Subnet6 && p.Endpoint == s.Endpoint && p.HWAddr == s.HWAddr &&
		p.Endpoint6 == s.Endpoint6 && p.HWAddr6 == s.HWAddr6 {
		return p
	}
	return nil
}

// slotEntry is a peer to place at subnet number idx.
type slotEntry struct {
	idx    uint64
	p      *Peer
	reused bool // the peer is prev's, in the same slot
}

// build fills x with entries over a span of subnet numbers, sharing
// prev's chunks (prev: the previous snapshot's index of the same split,
// or nil) where their peers did not change. It returns a peer listed
// twice, or nil.
func (x *subnetIndex) build(span uint64, entries []slotEntry, prev *subnetIndex) *Peer {
	if span > maxDirectSlots {
		x.byNum = make(map[uint64]*Peer, len(entries))
		for _, e := range entries {
			if x.byNum[e.idx] != nil {
				return e.p
			}
			x.byNum[e.idx] = e.p
		}
		return nil
	}
	n := int((span + chunkSize - 1) / chunkSize)
	x.chunks, x.counts = make([]*chunk, n), make([]uint16, n)
	dirty := make([]bool, n)
	for _, e := range entries {
		c := e.idx >> chunkBits
		x.counts[c]++
		dirty[c] = dirty[c] || !e.reused
	}
	// A chunk whose peers are all the previous snapshot's, in the same
	// slots and as many, holds exactly what the previous chunk holds.
	share := prev != nil && len(prev.chunks) == n
	for c := range x.chunks {
		if share && !dirty[c] && x.counts[c] == prev.counts[c] {
			x.chunks[c] = prev.chunks[c]
			dirty[c] = false
		} else {
			dirty[c] = x.counts[c] > 0 // to fill
		}
	}
	for _, e := range entries {
		c := e.idx >> chunkBits
		if !dirty[c] {
			continue
		}
		if x.chunks[c] == nil {
			x.chunks[c] = new(chunk)
		}
		if x.chunks[c][e.idx&(chunkSize-1)] != nil {
			return e.p
		}
		x.chunks[c][e.idx&(chunkSize-1)] = e.p
	}
	return nil
}

func (x *subnetIndex) get(idx uint64) *Peer {
	if x.chunks != nil {
		if c := x.chunks[idx>>chunkBits]; c != nil {
			return c[idx&(chunkSize-1)]
		}
		return nil
	}
	return x.byNum[idx]
}

func (t *Table) index(ip uint32) uint32 { return (ip &^ t.netMask) >> t.shift }

// num6 is a's subnet number: its bits between the network prefix and the
// lease length, shifted down. The 128-bit shift is branch-free: Go's
// shifts by a count at or above the width give zero, so of the three
// terms only the ones that apply contribute.
func (t *Table) num6(a addr6) uint64 {
	s := t.shift6
	return (a.lo>>s | a.hi<<(64-s) | a.hi>>(s-64)) & t.numMask6
}

// lookup returns the peer whose IPv4 subnet holds ip, or nil.
func (t *Table) lookup(ip uint32) *Peer {
	if ip&t.netMask != t.network {
		return nil
	}
	return t.v4.get(uint64(t.index(ip)))
}

// lookup6 returns the peer whose IPv6 subnet holds a, or nil.
func (t *Table) lookup6(a addr6) *Peer {
	if a.hi&t.netMask6.hi != t.net6.hi || a.lo&t.netMask6.lo != t.net6.lo {
		return nil
	}
	return t.v6.get(t.num6(a))
}

// Lookup returns the peer whose subnet (of addr's family) holds addr, or
// nil.
func (t *Table) Lookup(addr netip.Addr) *Peer {
	switch {
	case addr.Is4():
		return t.lookup(u32(addr))
	case addr.Is6() && !addr.Is4In6():
		return t.lookup6(addr6Of(addr))
	}
	return nil
}

// subnetBroadcast reports whether ip is the directed broadcast address of
// a subnet of the network (all host bits set): RFC 1122 3.2.2 forbids an
// ICMP error about a datagram sent to a broadcast address. /31 and /32
// subnets have none (RFC 3021). A nil table knows no subnets. (IPv6 has
// no broadcast; its multicast is refused by icmp6ErrorAllowed.)
func (t *Table) subnetBroadcast(ip uint32) bool {
	if t == nil || !t.has4 || t.shift < 2 || ip&t.netMask != t.network {
		return false
	}
	host := uint32(1)<<t.shift - 1
	return ip&host == host
}

// peerByIP returns the peer with this public IPv4 address, or nil.
func (t *Table) peerByIP(ip uint32) *Peer { return t.byIP.get(ip) }

// peerBySource returns the peer a datagram from a came from: the peer
// with this public IPv4 address, or with this IPv6 endpoint address.
func (t *Table) peerBySource(a netip.Addr) *Peer {
	if a.Is4() || a.Is4In6() {
		return t.byIP.get(u32(a.Unmap()))
	}
	return t.byIP6.get(addr6Of(a))
}

// isLocal reports whether ip is in this host's own IPv4 subnet.
func (t *Table) isLocal(ip uint32) bool { return t.own != nil && t.own.contains(ip) }

// isLocal6 reports whether a is in this host's own IPv6 subnet.
func (t *Table) isLocal6(a addr6) bool { return t.own != nil && t.own.contains6(a) }

// Own returns this host's IPv4 subnet (invalid if it has none).
func (t *Table) Own() netip.Prefix {
	if t.own == nil {
		return netip.Prefix{}
	}
	return t.own.Subnet
}

// Own6 returns this host's IPv6 subnet (invalid if it has none).
func (t *Table) Own6() netip.Prefix {
	if t.own == nil {
		return netip.Prefix{}
	}
	return t.own.Subnet6
}

// Peers returns the table's peers: those with an IPv4 subnet sorted by it,
// then those with only an IPv6 subnet sorted by that. The slice is shared:
// do not modify it.
func (t *Table) Peers() []*Peer {
	if t.lazyPeers {
		t.peersOnce.Do(t.listPeers)
	}
	return t.peers
}

// Stats returns the peer's counters.
func (p *Peer) Stats() PeerStats {
	return PeerStats{
		Subnet: p.Subnet, Subnet6: p.Subnet6, Endpoint: p.Endpoint, Endpoint6: p.Endpoint6,
		TxPackets: p.tx.packets.Load(), TxBytes: p.tx.bytes.Load(),
		RxPackets: p.rx.packets.Load(), RxBytes: p.rx.bytes.Load(),
	}
}

// TableRef publishes tables to the loops: one atomic pointer, swapped whole.
type TableRef struct{ p atomic.Pointer[Table] }

func (r *TableRef) Load() *Table   { return r.p.Load() }
func (r *TableRef) Store(t *Table) { r.p.Store(t) }

func u32(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func prefixMask(bits int) uint32 {
	if bits == 0 {
		return 0
	}
	return ^uint32(0) << (32 - bits)
}
