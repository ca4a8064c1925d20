package kernel

import (
	"fmt"
	"hash/maphash"
	"net"
	"net/netip"
)

// kind is what an entry is.
type kind uint8

const (
	kindRoute kind = iota + 1
	kindNeigh
	kindFDB
)

// mac is a hardware address as a comparable value (net.HardwareAddr is a
// slice): up to 20 bytes, the longest net.ParseMAC reads.
type mac struct {
	b [20]byte
	n uint8
}

func macOf(hw net.HardwareAddr) mac {
	var m mac
	m.n = uint8(copy(m.b[:], hw))
	return m
}

func (m mac) hw() net.HardwareAddr { return net.HardwareAddr(m.b[:m.n:m.n]) }

// entry is one kernel entry of a State with its full content, comparable,
// so a pass keys its maps by value and formats a string only for what it
// changed or logs. Routes use dst, ip (the gateway), link and onlink;
// neighbours ip, mac and link (the device); FDB entries mac, ip (the
// remote) and link.
type entry struct {
	kind   kind
	dst    netip.Prefix
	ip     netip.Addr
	mac    mac
	link   int
	onlink bool
}

func routeEntry(r Route) entry {
	return entry{kind: kindRoute, dst: r.Dst, ip: r.Gw, link: r.LinkIndex, onlink: r.Onlink}
}

func neighEntry(n Neigh, dev int) entry {
	return entry{kind: kindNeigh, ip: n.IP, mac: macOf(n.MAC), link: dev}
}

func fdbEntry(f FDB, dev int) entry {
	return entry{kind: kindFDB, ip: f.Dst, mac: macOf(f.MAC), link: dev}
}

func (e entry) route() Route { return Route{Dst: e.dst, Gw: e.ip, LinkIndex: e.link, Onlink: e.onlink} }

// String is the entry's State key (see State.Keys).
func (e entry) String() string {
	switch e.kind {
	case kindRoute:
		return "route " + e.route().String()
	case kindNeigh:
		return fmt.Sprintf("neigh %s lladdr %s dev #%d", e.ip, e.mac.hw(), e.link)
	case kindFDB:
		return fmt.Sprintf("fdb %s dst %s dev #%d", e.mac.hw(), e.ip, e.link)
	}
	return "?"
}

func (s State) len() int {
	return len(s.Routes) + len(s.Neighs) + len(s.FDB) + len(s.Neighs6) + len(s.FDB6)
}

// entrySet is a set of entries held as 64-bit hashes: an entry is over
// 100 bytes, and the reconciler keeps one set of every installed entry
// (three per peer for vxlan) and builds another per pass, 4.6 MB each at
// 5,000 peers as maps of entries. The sets only tell a repair from a first
// programming and a stale entry from a wanted one (what is counted and
// logged, never what is programmed), so a collision, at odds of 2^-64
// per pair, would at worst miscount one entry.
type entrySet map[uint64]struct{}

var entrySeed = maphash.MakeSeed()

func hashOf(e entry) uint64 { return maphash.Comparable(entrySeed, e) }

func (s entrySet) add(e entry)      { s[hashOf(e)] = struct{}{} }
func (s entrySet) remove(e entry)   { delete(s, hashOf(e)) }
func (s entrySet) has(e entry) bool { _, ok := s[hashOf(e)]; return ok }

// set is the entries of s as a set.
func (s State) set() entrySet {
	m := make(entrySet, s.len())
	s.each(m.add)
	return m
}

// change is what one pass did, by entry; Change is its string form.
type change struct {
	added, removed []entry
	conflicts      map[entry]string
}

func (c change) exported() Change {
	var out Change
	for _, e := range c.added {
		out.Added = append(out.Added, e.String())
	}
	for _, e := range c.removed {
		out.Removed = append(out.Removed, e.String())
	}
	if len(c.conflicts) > 0 {
		out.Conflicts = make(map[string]string, len(c.conflicts))
		for e, other := range c.conflicts {
			out.Conflicts[e.String()] = other
		}
	}
	return out
}
