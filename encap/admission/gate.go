package admission

import (
	"bytes"
	"cmp"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"sync"

	"github.com/weft-net/weft/internal/claim"
	"github.com/weft-net/weft/lease"
)

// Gate applies a Rule to a store's leases as they change, logs each
// refusal once (and again only when its reason changes), counts refusals
// by reason, and keeps the admitted peers and current refusals for
// status. Its decisions are always those of Admit over the whole set;
// but a change is decided only for the leases it can reach (the leases
// changed, and those that share a subnet or public IP with a lease whose
// standing changed), so a lease event costs the same at 5,000 leases as
// at 5. Update and Admit are called from one goroutine; the readers may
// be called from any.
type Gate struct {
	rule  Rule
	log   *slog.Logger
	ownID netip.Prefix

	// leases are every lease of the store but this host's, by the
	// store's ID, as admission sees them; set decides their collisions.
	leases map[netip.Prefix]*gated
	set    *claim.Set[netip.Prefix, claimKey, *gated]
	// admittedBy is the admitted lease of each store ID that has one
	// (the entry as it was admitted: a change replaces the entry).
	admittedBy map[netip.Prefix]*gated

	mu      sync.Mutex
	refused map[netip.Prefix]refusal // by the store's ID
	peers   map[netip.Prefix]*gated  // admitted, by ID (they do not overlap)
	counts  map[string]uint64
}

// gated is one lease at the gate.
type gated struct {
	id  netip.Prefix // the store's ID (the lease's before its absent family was dropped)
	l   lease.Lease  // as admission sees it
	ref *Refused     // the rule's refusal of the lease alone; nil: it may be admitted
}

// refusal is a lease's refusal and the ID it is shown under.
type refusal struct {
	as netip.Prefix
	*Refused
}

// claimKey is a subnet or a public IP (ip) a lease takes when admitted,
// or one of the backend's claims (Rule.Claims).
type claimKey struct {
	ip      bool
	is4     bool
	bits    uint8
	a       [16]byte // the address, as 16 bytes: no pointer for the GC to follow
	backend string
}

func prefixKey(p netip.Prefix) claimKey {
	return claimKey{is4: p.Addr().Is4(), bits: uint8(p.Bits()), a: p.Addr().As16()}
}

func ipKey(a netip.Addr) claimKey {
	k := prefixKey(netip.PrefixFrom(a, a.BitLen()))
	k.ip = true
	return k
}

// prefix is the subnet or address (as a full-length prefix) of k.
func (k claimKey) prefix() netip.Prefix {
	a := netip.AddrFrom16(k.a)
	if k.is4 {
		a = a.Unmap()
	}
	return netip.PrefixFrom(a, int(k.bits))
}

// NewGate returns a gate for rule.
func NewGate(rule Rule, log *slog.Logger) *Gate {
	if log == nil {
		log = slog.Default()
	}
	g := &Gate{rule: rule, log: log, refused: map[netip.Prefix]refusal{}, peers: map[netip.Prefix]*gated{}, counts: map[string]uint64{}}
	g.ownID = rule.Own.ID()
	g.admittedBy = map[netip.Prefix]*gated{}
	g.reset()
	return g
}

// reset forgets the leases (not what was admitted: an Update compares
// with it).
func (g *Gate) reset() {
	g.leases = map[netip.Prefix]*gated{}
	g.set = claim.New[netip.Prefix, claimKey](olderGated)
	for _, ip := range []netip.Addr{g.rule.Own.Attrs.PublicIP, g.rule.Own.Attrs.PublicIPv6} {
		if ip.IsValid() {
			g.set.Reserve(ipKey(ip))
		}
	}
	for _, c := range g.rule.claims(g.rule.Own.Attrs) {
		g.set.Reserve(claimKey{backend: c})
	}
}

// olderGated is Admit's order: creation, then ID, then the store's ID
// (Admit's input position, for a snapshot sorted by ID as stores send
// them).
func olderGated(a, b *gated) int {
	if c := cmp.Compare(created(a.l), created(b.l)); c != 0 {
		return c
	}
	if c := lease.CompareID(a.l, b.l); c != 0 {
		return c
	}
	return comparePrefix(a.id, b.id)
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

// claims are what an admitted l takes, in the order Admit checks them.
func (g *Gate) claims(l *lease.Lease) []claimKey {
	backend := g.rule.claims(l.Attrs)
	n := len(backend)
	for _, ok := range []bool{l.Subnet.IsValid(), l.IPv6Subnet.IsValid()} {
		if ok {
			n += 2 // the subnet and its public IP
		}
	}
	// Exactly n: the set keeps the slice for as long as the lease stands.
	k := make([]claimKey, 0, n)
	if l.Subnet.IsValid() {
		k = append(k, prefixKey(l.Subnet))
	}
	if l.IPv6Subnet.IsValid() {
		k = append(k, prefixKey(l.IPv6Subnet))
	}
	if l.Subnet.IsValid() {
		k = append(k, ipKey(l.Attrs.PublicIP))
	}
	if l.IPv6Subnet.IsValid() {
		k = append(k, ipKey(l.Attrs.PublicIPv6))
	}
	for _, c := range backend {
		k = append(k, claimKey{backend: c})
	}
	return k
}

// Admit decides a whole snapshot (a Full change) and returns the admitted
// peers (this host's lease left out), sorted by ID (lease.CompareID).
func (g *Gate) Admit(snap []lease.Lease) []lease.Lease {
	g.Update(lease.Changes{Full: true, Put: snap})
	return g.Peers()
}

// Update applies a change of the store's leases and returns the change of
// the admitted peers: put are peers new or changed (as admission sees
// them: without the family the network does not have), removed the IDs of
// peers no longer admitted. A backend applies removed, then put. A
// lease renewed with nothing a backend uses changed is not put again.
func (g *Gate) Update(c lease.Changes) (put []lease.Lease, removed []netip.Prefix) {
	var affected []netip.Prefix
	if c.Full {
		g.mu.Lock()
		for id := range g.refused {
			affected = append(affected, id)
		}
		g.mu.Unlock()
		for id := range g.admittedBy {
			affected = append(affected, id)
		}
		g.reset()
	}
	for _, id := range c.Deleted {
		if g.leases[id] != nil {
			delete(g.leases, id)
			g.set.Delete(id)
		}
		affected = append(affected, id)
	}
	for _, l := range c.Put {
		id := l.ID()
		affected = append(affected, id)
		e := &gated{id: id, l: g.strip(l)}
		if e.l.ID() == g.ownID {
			// This host's own lease: not a peer, takes nothing.
			if g.leases[id] != nil {
				delete(g.leases, id)
				g.set.Delete(id)
			}
			continue
		}
		e.ref = check(g.rule, e.l)
		g.leases[id] = e
		var keys []claimKey
		if e.ref == nil {
			keys = g.claims(&e.l)
		}
		g.set.Put(id, e, keys, e.ref == nil)
	}
	affected = append(affected, g.set.Settle()...)

	g.mu.Lock()
	defer g.mu.Unlock()
	// Each affected ID once; removals first, so that a subnet passing from
	// one lease to another under one ID ends up admitted.
	slices.SortFunc(affected, comparePrefix)
	affected = slices.Compact(affected)
	for _, id := range affected {
		e := g.leases[id]
		old, was := g.admittedBy[id]
		if was && (e == nil || !g.set.Holds(id) || old.l.ID() != e.l.ID()) {
			delete(g.admittedBy, id)
			delete(g.peers, old.l.ID())
			removed = append(removed, old.l.ID())
			g.log.Info("subnet removed", logAttrs(old.l)...)
		}
	}
	for _, id := range affected {
		e := g.leases[id]
		if e == nil {
			delete(g.refused, id)
			continue
		}
		if g.set.Holds(id) {
			old, was := g.admittedBy[id]
			if !was || !sameForBackends(old.l, e.l) {
				put = append(put, e.l)
			}
			if !was || old.l.Attrs.PublicIP != e.l.Attrs.PublicIP || old.l.Attrs.PublicIPv6 != e.l.Attrs.PublicIPv6 {
				g.log.Info("subnet added", append(logAttrs(e.l), "backend", e.l.Attrs.BackendName())...)
			}
			g.admittedBy[id] = e
			g.peers[e.l.ID()] = e
			delete(g.refused, id)
			continue
		}
		ref := e.ref
		if ref == nil {
			ref = g.collision(e)
		}
		if old, ok := g.refused[id]; !ok || old.Reason != ref.Reason {
			g.counts[ref.Reason]++
			g.log.Warn("peer lease refused", append(logAttrs(e.l), "reason", ref.Reason, "why", ref.Detail)...)
		}
		g.refused[id] = refusal{e.l.ID(), ref}
	}
	// A peer replaced under its ID (another lease now holds its subnet)
	// is put, not removed.
	if len(removed) > 0 && len(put) > 0 {
		removed = slices.DeleteFunc(removed, func(id netip.Prefix) bool {
			_, ok := g.peers[id]
			return ok
		})
	}
	return put, removed
}

// collision is the refusal of an eligible lease that an older one (or this
// host) stands in the way of, worded as Admit's.
func (g *Gate) collision(e *gated) *Refused {
	i, _, _ := g.set.Blocker(e.id)
	if i < 0 {
		// Cannot happen: an eligible lease not admitted is blocked.
		return &Refused{Overlap, "held by an older lease"}
	}
	k := g.claims(&e.l)[i]
	switch {
	case k.backend != "":
		return claimTaken(k.backend)
	case !k.ip:
		return &Refused{Overlap, fmt.Sprintf("%s is already held by an older lease", k.prefix())}
	case k.is4:
		return &Refused{PublicIPTaken, fmt.Sprintf("public IP %s is already held by this host or an older lease", k.prefix().Addr())}
	}
	return &Refused{PublicIPTaken, fmt.Sprintf("public IPv6 %s is already held by this host or an older lease", k.prefix().Addr())}
}

// strip drops the family the network does not have (see Admit).
func (g *Gate) strip(l lease.Lease) lease.Lease {
	switch {
	case !g.rule.IPv6Network.IsValid():
		l.IPv6Subnet, l.Attrs.PublicIPv6, l.Attrs.BackendV6Data = netip.Prefix{}, netip.Addr{}, nil
	case !g.rule.Network.IsValid():
		l.Subnet, l.Attrs.PublicIP, l.Attrs.BackendData = netip.Prefix{}, netip.Addr{}, nil
	}
	return l
}

// sameForBackends reports whether a and b program the same state: a
// renewal changes only revisions and expiry.
func sameForBackends(a, b lease.Lease) bool {
	return a.Subnet == b.Subnet && a.IPv6Subnet == b.IPv6Subnet && a.Attrs.PublicIP == b.Attrs.PublicIP &&
		a.Attrs.PublicIPv6 == b.Attrs.PublicIPv6 && a.Attrs.BackendType == b.Attrs.BackendType &&
		bytes.Equal(a.Attrs.BackendData, b.Attrs.BackendData) && bytes.Equal(a.Attrs.BackendV6Data, b.Attrs.BackendV6Data)
}

// Peers returns the admitted peers, sorted by ID (lease.CompareID).
func (g *Gate) Peers() []lease.Lease {
	g.mu.Lock()
	var out []lease.Lease
	if len(g.peers) > 0 {
		out = make([]lease.Lease, 0, len(g.peers))
	}
	for _, e := range g.peers {
		out = append(out, e.l)
	}
	g.mu.Unlock()
	slices.SortFunc(out, lease.CompareID)
	return out
}

// NumPeers is how many peers are admitted.
func (g *Gate) NumPeers() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.peers)
}

// logAttrs names a lease in logs: its ID and the public address of that
// family.
func logAttrs(l lease.Lease) []any {
	if l.Subnet.IsValid() {
		return []any{"subnet", l.Subnet, "public-ip", l.Attrs.PublicIP}
	}
	return []any{"subnet", l.IPv6Subnet, "public-ipv6", l.Attrs.PublicIPv6}
}

// Refused returns the leases refused now, by ID (as admission sees it),
// as "reason: detail".
func (g *Gate) Refused() map[string]string {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := make(map[string]string, len(g.refused))
	for _, r := range g.refused {
		out[r.as.String()] = r.Error()
	}
	return out
}

// Counts returns how many refusals each reason has seen since start (a
// lease refused in many snapshots for one reason counts once).
func (g *Gate) Counts() map[string]uint64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return maps.Clone(g.counts)
}
