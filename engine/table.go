package engine

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"sync/atomic"
)

// Peer is another host of the cluster: the subnet it leased and where its
// engine listens. A Peer is immutable once published, except for its
// counters, each written by one loop only.
type Peer struct {
	Subnet   netip.Prefix
	Endpoint netip.AddrPort // the peer's public IP and UDP port
	HWAddr   [6]byte        // the peer's MAC for encapsulations that need one (VXLAN's VtepMAC)

	publicIP uint32
	subnet   uint32 // network address of Subnet
	mask     uint32

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
	Endpoint           netip.AddrPort
	TxPackets, TxBytes uint64
	RxPackets, RxBytes uint64
}

func (p *Peer) contains(ip uint32) bool { return ip&p.mask == p.subnet }

// PeerSpec describes a peer for NewTable.
type PeerSpec struct {
	Subnet   netip.Prefix
	Endpoint netip.AddrPort
	HWAddr   [6]byte
}

// maxDirectSlots bounds the directly indexed part of a table: a /8 network
// of /24 subnets (65,536 slots) is indexed directly; wider spans (a /8 of
// /28s would be 8 MiB of slots) fall back to a map keyed by subnet number,
// built once per snapshot and only read afterwards, so lookups stay
// lock-free and allocate nothing, and its size follows the peers, not the
// span.
const maxDirectSlots = 1 << 16

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

// Table is an immutable snapshot of the forwarding state: this host's
// subnet and every peer's. Readers on the packet path never lock; a change
// builds a new Table and publishes it (see TableRef).
//
// Every lease in a flannel network has the same prefix length (SubnetLen),
// so a destination's subnet number (its bits between the network prefix
// and SubnetLen) indexes the peer directly: O(1), no search.
type Table struct {
	network  uint32
	netMask  uint32
	shift    uint8            // 32 - SubnetLen
	own      *Peer            // this host's subnet; Endpoint unset
	chunks   []*chunk         // the direct slots; a nil chunk holds no peer
	counts   []uint16         // peers per chunk, to share unchanged chunks
	bySubnet map[uint32]*Peer // used instead of chunks when the span is huge
	byIP     map[uint32]*Peer // public IPv4 -> peer
	peers    []*Peer          // sorted by subnet
}

// NewTable builds a table for network, split into subnets of subnetLen
// bits, where own is this host's lease. Peers whose subnet and endpoint are
// unchanged from prev keep their Peer (and counters).
func NewTable(network netip.Prefix, subnetLen int, own netip.Prefix, peers []PeerSpec, prev *Table) (*Table, error) {
	if !network.Addr().Is4() || network.Bits() < 0 || subnetLen <= network.Bits() || subnetLen > 32 {
		return nil, fmt.Errorf("engine: network %s with subnet length %d is not a valid IPv4 split", network, subnetLen)
	}
	network = network.Masked()
	t := &Table{
		network: u32(network.Addr()),
		netMask: prefixMask(network.Bits()),
		shift:   uint8(32 - subnetLen),
		byIP:    make(map[uint32]*Peer, len(peers)),
	}
	check := func(p netip.Prefix) error {
		if !p.Addr().Is4() || p.Bits() != subnetLen || p.Masked() != p || !network.Contains(p.Addr()) {
			return fmt.Errorf("engine: subnet %s is not a /%d inside %s", p, subnetLen, network)
		}
		return nil
	}
	if own.IsValid() {
		if err := check(own); err != nil {
			return nil, err
		}
		t.own = newPeer(PeerSpec{Subnet: own})
	}
	span := 1 << (subnetLen - network.Bits())
	direct := span <= maxDirectSlots
	var dirty []bool
	if direct {
		n := (span + chunkSize - 1) / chunkSize
		t.chunks, t.counts, dirty = make([]*chunk, n), make([]uint16, n), make([]bool, n)
	} else {
		t.bySubnet = make(map[uint32]*Peer, len(peers))
	}
	t.peers = make([]*Peer, 0, len(peers))
	for _, spec := range peers {
		if err := check(spec.Subnet); err != nil {
			return nil, err
		}
		if !spec.Endpoint.Addr().Is4() {
			return nil, fmt.Errorf("engine: peer %s has no IPv4 endpoint", spec.Subnet)
		}
		if own.IsValid() && spec.Subnet == own {
			continue // this host's own lease, as it appears in snapshots
		}
		p := prev.reuse(spec) // prev's peer in the same slot, or nil
		reused := p != nil
		if !reused {
			p = newPeer(spec)
		} else if t.byIP[p.publicIP] == p {
			return nil, fmt.Errorf("engine: subnet %s listed twice", spec.Subnet)
		}
		idx := t.index(p.subnet)
		if direct {
			c := idx >> chunkBits
			t.counts[c]++
			dirty[c] = dirty[c] || !reused
		} else {
			if t.bySubnet[idx] != nil {
				return nil, fmt.Errorf("engine: subnet %s listed twice", spec.Subnet)
			}
			t.bySubnet[idx] = p
		}
		t.byIP[p.publicIP] = p
		t.peers = append(t.peers, p)
	}
	if direct {
		// A chunk whose peers are all the previous snapshot's, in the same
		// slots and as many, holds exactly what the previous chunk holds.
		share := prev != nil && len(prev.chunks) == len(t.chunks) && prev.network == t.network && prev.shift == t.shift
		for c := range t.chunks {
			if share && !dirty[c] && t.counts[c] == prev.counts[c] {
				t.chunks[c] = prev.chunks[c]
				dirty[c] = false
			} else {
				dirty[c] = t.counts[c] > 0 // to fill
			}
		}
		for _, p := range t.peers {
			idx := t.index(p.subnet)
			c := idx >> chunkBits
			if !dirty[c] {
				continue
			}
			if t.chunks[c] == nil {
				t.chunks[c] = new(chunk)
			}
			if t.chunks[c][idx&(chunkSize-1)] != nil {
				return nil, fmt.Errorf("engine: subnet %s listed twice", p.Subnet)
			}
			t.chunks[c][idx&(chunkSize-1)] = p
		}
	}
	slices.SortFunc(t.peers, func(a, b *Peer) int { return cmp.Compare(a.subnet, b.subnet) })
	return t, nil
}

func newPeer(s PeerSpec) *Peer {
	p := &Peer{Subnet: s.Subnet, Endpoint: s.Endpoint, HWAddr: s.HWAddr, subnet: u32(s.Subnet.Addr()), mask: prefixMask(s.Subnet.Bits())}
	if s.Endpoint.Addr().Is4() {
		p.publicIP = u32(s.Endpoint.Addr())
	}
	return p
}

func (t *Table) reuse(s PeerSpec) *Peer {
	if t == nil {
		return nil
	}
	if p := t.lookup(u32(s.Subnet.Addr())); p != nil && p.Subnet == s.Subnet && p.Endpoint == s.Endpoint && p.HWAddr == s.HWAddr {
		return p
	}
	return nil
}

func (t *Table) index(ip uint32) uint32 { return (ip &^ t.netMask) >> t.shift }

func (t *Table) get(idx uint32) *Peer {
	if t.chunks != nil {
		if c := t.chunks[idx>>chunkBits]; c != nil {
			return c[idx&(chunkSize-1)]
		}
		return nil
	}
	return t.bySubnet[idx]
}

// lookup returns the peer whose subnet holds ip, or nil.
func (t *Table) lookup(ip uint32) *Peer {
	if ip&t.netMask != t.network {
		return nil
	}
	return t.get(t.index(ip))
}

// Lookup returns the peer whose subnet holds addr, or nil.
func (t *Table) Lookup(addr netip.Addr) *Peer {
	if !addr.Is4() {
		return nil
	}
	return t.lookup(u32(addr))
}

// subnetBroadcast reports whether ip is the directed broadcast address of
// a subnet of the network (all host bits set): RFC 1122 3.2.2 forbids an
// ICMP error about a datagram sent to a broadcast address. /31 and /32
// subnets have none (RFC 3021). A nil table knows no subnets.
func (t *Table) subnetBroadcast(ip uint32) bool {
	if t == nil || t.shift < 2 || ip&t.netMask != t.network {
		return false
	}
	host := uint32(1)<<t.shift - 1
	return ip&host == host
}

// peerByIP returns the peer with this public IPv4 address, or nil.
func (t *Table) peerByIP(ip uint32) *Peer { return t.byIP[ip] }

// isLocal reports whether ip is in this host's own subnet.
func (t *Table) isLocal(ip uint32) bool { return t.own != nil && t.own.contains(ip) }

// Own returns this host's subnet.
func (t *Table) Own() netip.Prefix {
	if t.own == nil {
		return netip.Prefix{}
	}
	return t.own.Subnet
}

// Peers returns the table's peers, sorted by subnet. The slice is shared:
// do not modify it.
func (t *Table) Peers() []*Peer { return t.peers }

// Stats returns the peer's counters.
func (p *Peer) Stats() PeerStats {
	return PeerStats{
		Subnet: p.Subnet, Endpoint: p.Endpoint,
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
