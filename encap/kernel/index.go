package kernel

import "net/netip"

// index is a State keyed for diffing: IPv4 addresses as integers, IPv6
// ones as 16-byte arrays and MACs as six bytes, so an update compares
// 5,000 peers' entries in small hashes (a map of entry values took 9 ms
// per diff at 5,000 peers). Each family has its maps: Dev holds IPv4
// neighbours and remotes, Dev6 IPv6 ones. Two indexes are reused in turn,
// so a diff allocates nothing once they are grown.
type index struct {
	dev, dev6 int
	routes    map[uint64]Route    // key: destination address << 8 | prefix length
	neighs    map[uint32][6]byte  // on dev: address -> MAC
	fdb       map[fdbKey]struct{} // on dev: MAC and remote
	routes6   map[prefix6]Route
	neighs6   map[[16]byte][6]byte // on dev6
	fdb6      map[fdbKey6]struct{} // on dev6
}

type fdbKey struct {
	mac [6]byte
	dst uint32
}

type prefix6 struct {
	a    [16]byte
	bits uint8
}

type fdbKey6 struct {
	mac [6]byte
	dst [16]byte
}

func v4(a netip.Addr) (uint32, bool) {
	if !a.Is4() {
		return 0, false
	}
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]), true
}

func fromV4(u uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(u >> 24), byte(u >> 16), byte(u >> 8), byte(u)})
}

// v6 is a's 16 bytes; false for IPv4 (also mapped) and zoned addresses,
// which State never holds.
func v6(a netip.Addr) ([16]byte, bool) {
	if !a.Is6() || a.Is4In6() || a.Zone() != "" {
		return [16]byte{}, false
	}
	return a.As16(), true
}

// fill makes x index s. It reports false when s holds what an index cannot
// key (an IPv6 neighbour or remote on Dev, an IPv4 one on Dev6, a MAC not
// of six bytes): such a state is left to full passes.
func (x *index) fill(s State) bool {
	if x.routes == nil {
		x.routes, x.neighs, x.fdb = map[uint64]Route{}, map[uint32][6]byte{}, map[fdbKey]struct{}{}
		x.routes6, x.neighs6, x.fdb6 = map[prefix6]Route{}, map[[16]byte][6]byte{}, map[fdbKey6]struct{}{}
	}
	clear(x.routes)
	clear(x.neighs)
	clear(x.fdb)
	clear(x.routes6)
	clear(x.neighs6)
	clear(x.fdb6)
	x.dev, x.dev6 = s.Dev, s.Dev6
	for _, r := range s.Routes {
		if a, ok := v4(r.Dst.Addr()); ok {
			x.routes[uint64(a)<<8|uint64(r.Dst.Bits())] = r
			continue
		}
		a, ok := v6(r.Dst.Addr())
		if !ok {
			return false
		}
		x.routes6[prefix6{a, uint8(r.Dst.Bits())}] = r
	}
	for _, n := range s.Neighs {
		a, ok := v4(n.IP)
		if !ok || len(n.MAC) != 6 {
			return false
		}
		x.neighs[a] = [6]byte(n.MAC)
	}
	for _, f := range s.FDB {
		a, ok := v4(f.Dst)
		if !ok || len(f.MAC) != 6 {
			return false
		}
		x.fdb[fdbKey{[6]byte(f.MAC), a}] = struct{}{}
	}
	for _, n := range s.Neighs6 {
		a, ok := v6(n.IP)
		if !ok || len(n.MAC) != 6 {
			return false
		}
		x.neighs6[a] = [6]byte(n.MAC)
	}
	for _, f := range s.FDB6 {
		a, ok := v6(f.Dst)
		if !ok || len(f.MAC) != 6 {
			return false
		}
		x.fdb6[fdbKey6{[6]byte(f.MAC), a}] = struct{}{}
	}
	return true
}

// diff calls gone for every entry of old that x lacks (or holds with other
// content), then added for every entry of x that old lacks.
func (x *index) diff(old *index, gone, added func(entry)) {
	old.notIn(x, gone)
	x.notIn(old, added)
}

// notIn calls fn for every entry of x that y lacks or holds with other
// content.
func (x *index) notIn(y *index, fn func(entry)) {
	for k, r := range x.routes {
		if w, ok := y.routes[k]; !ok || w != r {
			fn(routeEntry(r))
		}
	}
	for k, r := range x.routes6 {
		if w, ok := y.routes6[k]; !ok || w != r {
			fn(routeEntry(r))
		}
	}
	for ip, m := range x.neighs {
		if w, ok := y.neighs[ip]; !ok || w != m {
			fn(entry{kind: kindNeigh, ip: fromV4(ip), mac: macOf(m[:]), link: x.dev})
		}
	}
	for ip, m := range x.neighs6 {
		if w, ok := y.neighs6[ip]; !ok || w != m {
			fn(entry{kind: kindNeigh, ip: netip.AddrFrom16(ip), mac: macOf(m[:]), link: x.dev6})
		}
	}
	for k := range x.fdb {
		if _, ok := y.fdb[k]; !ok {
			fn(entry{kind: kindFDB, ip: fromV4(k.dst), mac: macOf(k.mac[:]), link: x.dev})
		}
	}
	for k := range x.fdb6 {
		if _, ok := y.fdb6[k]; !ok {
			fn(entry{kind: kindFDB, ip: netip.AddrFrom16(k.dst), mac: macOf(k.mac[:]), link: x.dev6})
		}
	}
}
