package kernel

import (
	"fmt"
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

// entries are the entries of s, by value.
func (s State) entries() map[entry]struct{} {
	m := make(map[entry]struct{}, len(s.Routes)+len(s.Neighs)+len(s.FDB)+len(s.Neighs6)+len(s.FDB6))
	for _, r := range s.Routes {
		m[routeEntry(r)] = struct{}{}
	}
	for _, n := range s.Neighs {
		m[neighEntry(n, s.Dev)] = struct{}{}
	}
	for _, f := range s.FDB {
		m[fdbEntry(f, s.Dev)] = struct{}{}
	}
	for _, n := range s.Neighs6 {
		m[neighEntry(n, s.Dev6)] = struct{}{}
	}
	for _, f := range s.FDB6 {
		m[fdbEntry(f, s.Dev6)] = struct{}{}
	}
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
