package engine

import (
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"slices"
)

// Update returns a table with the peers named in remove taken out and
// those of put added, each replacing the peer of the same ID (its IPv4
// subnet, or its IPv6 subnet when it has none: lease.Lease.ID); t is left
// as it is, for the readers that hold it. A peer whose spec is unchanged
// keeps its Peer (and counters). The new table shares t's direct-slot
// chunks except the few the change touches, which are copied: one lease
// event copies a 2 KiB chunk and the chunk index, not a 65,536-slot table.
// Lookups stay lock-free and allocation-free. A peer spec this host's own
// lease is left out; an invalid spec, or one whose subnet another peer
// holds, is an error, and nothing changes.
func (t *Table) Update(put []PeerSpec, remove []netip.Prefix) (*Table, error) {
	nt := &Table{
		network: t.network, netMask: t.netMask, shift: t.shift, span4: t.span4, has4: t.has4,
		net6: t.net6, netMask6: t.netMask6, shift6: t.shift6, numMask6: t.numMask6, has6: t.has6,
		own: t.own, nets: t.nets, lazyPeers: true,
	}
	ip4 := &ipWriter[uint32]{x: &nt.byIP}
	ip6 := &ipWriter[addr6]{x: &nt.byIP6}
	ip4.start(t.byIP)
	ip6.start(t.byIP6)
	w4 := indexWriter{x: &nt.v4, copied: map[uint64]bool{}}
	w6 := indexWriter{x: &nt.v6, copied: map[uint64]bool{}}
	w4.start(&t.v4)
	w6.start(&t.v6)
	for _, id := range remove {
		if p := nt.byID(id); p != nil {
			nt.drop(p, &w4, &w6, ip4, ip6)
		}
	}
	for _, spec := range put {
		if err := nt.checkSpec(spec); err != nil {
			return nil, err
		}
		if nt.isOwn(spec) {
			continue
		}
		id := spec.Subnet
		if !id.IsValid() {
			id = spec.Subnet6
		}
		old := nt.byID(id)
		if old != nil && old.Subnet == spec.Subnet && old.Subnet6 == spec.Subnet6 && old.Endpoint == spec.Endpoint &&
			old.HWAddr == spec.HWAddr && old.Endpoint6 == spec.Endpoint6 && old.HWAddr6 == spec.HWAddr6 {
			continue // unchanged: keeps its counters
		}
		if old != nil {
			nt.drop(old, &w4, &w6, ip4, ip6)
		}
		p := newPeer(spec)
		if spec.Subnet.IsValid() {
			if w4.set(uint64(nt.index(p.subnet)), p) != nil {
				return nil, fmt.Errorf("engine: subnet %s listed twice", spec.name())
			}
		}
		if spec.Subnet6.IsValid() {
			if w6.set(nt.num6(p.sub6), p) != nil {
				return nil, fmt.Errorf("engine: IPv6 subnet %s listed twice", spec.Subnet6)
			}
		}
		ip4.set(p.publicIP, p)
		if spec.Endpoint6.IsValid() {
			ip6.set(addr6Of(spec.Endpoint6.Addr()), p)
		}
	}
	return nt, nil
}

// byID is the peer whose ID is id, or nil.
func (t *Table) byID(id netip.Prefix) *Peer {
	if !id.IsValid() {
		return nil
	}
	p := t.Lookup(id.Addr())
	if p == nil || (p.Subnet != id && (p.Subnet.IsValid() || p.Subnet6 != id)) {
		return nil
	}
	return p
}

// drop takes p out of t's indexes.
func (t *Table) drop(p *Peer, w4, w6 *indexWriter, ip4 *ipWriter[uint32], ip6 *ipWriter[addr6]) {
	if p.Subnet.IsValid() {
		idx := uint64(t.index(p.subnet))
		if w4.x.get(idx) == p {
			w4.set(idx, nil)
		}
	}
	if p.Subnet6.IsValid() {
		idx := t.num6(p.sub6)
		if w6.x.get(idx) == p {
			w6.set(idx, nil)
		}
	}
	if t.byIP.get(p.publicIP) == p {
		ip4.set(p.publicIP, nil)
	}
	if p.Endpoint6.IsValid() {
		if k := addr6Of(p.Endpoint6.Addr()); t.byIP6.get(k) == p {
			ip6.set(k, nil)
		}
	}
}

// indexWriter changes a copy of a subnetIndex, copying each chunk the
// first time it writes to it.
type indexWriter struct {
	x      *subnetIndex
	copied map[uint64]bool
}

func (w *indexWriter) start(from *subnetIndex) {
	w.x.chunks = slices.Clone(from.chunks)
	w.x.counts = slices.Clone(from.counts)
	w.x.byNum = maps.Clone(from.byNum)
}

// set puts p (nil: nothing) at idx and returns what was there.
func (w *indexWriter) set(idx uint64, p *Peer) *Peer {
	x := w.x
	if x.chunks == nil {
		prev := x.byNum[idx]
		if p == nil {
			delete(x.byNum, idx)
		} else if prev == nil {
			if x.byNum == nil {
				x.byNum = map[uint64]*Peer{}
			}
			x.byNum[idx] = p
		}
		return prev
	}
	c := idx >> chunkBits
	ch := x.chunks[c]
	if !w.copied[c] || ch == nil {
		nc := new(chunk)
		if ch != nil {
			*nc = *ch
		}
		x.chunks[c], ch = nc, nc
		w.copied[c] = true
	}
	prev := ch[idx&(chunkSize-1)]
	if p != nil && prev != nil {
		return prev // occupied: the caller refuses the change
	}
	ch[idx&(chunkSize-1)] = p
	switch {
	case prev == nil && p != nil:
		x.counts[c]++
	case prev != nil && p == nil:
		if x.counts[c]--; x.counts[c] == 0 {
			x.chunks[c] = nil
		}
	}
	return prev
}

// listPeers lists an updated table's peers, in NewTableFor's order.
func (t *Table) listPeers() {
	var out []*Peer
	each := func(x *subnetIndex, only6 bool) {
		for _, ch := range x.chunks {
			if ch == nil {
				continue
			}
			for _, p := range ch {
				if p != nil && (!only6 || !p.Subnet.IsValid()) {
					out = append(out, p)
				}
			}
		}
		for _, p := range x.byNum {
			if !only6 || !p.Subnet.IsValid() {
				out = append(out, p)
			}
		}
	}
	each(&t.v4, false)
	each(&t.v6, true)
	slices.SortFunc(out, comparePeers)
	t.peers = out
}

// comparePeers is the order of Peers: IPv4 peers by subnet, then
// IPv6-only peers by subnet.
func comparePeers(a, b *Peer) int {
	a4, b4 := a.Subnet.IsValid(), b.Subnet.IsValid()
	if a4 != b4 {
		if a4 {
			return -1
		}
		return 1
	}
	return cmp.Or(cmp.Compare(a.subnet, b.subnet), cmp.Compare(a.sub6.hi, b.sub6.hi), cmp.Compare(a.sub6.lo, b.sub6.lo))
}
