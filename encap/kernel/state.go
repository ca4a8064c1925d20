package kernel

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Route is a route weft wants in the main table, tagged RouteProtocol.
type Route struct {
	Dst       netip.Prefix
	Gw        netip.Addr
	LinkIndex int
	// Onlink lets the gateway lie outside every prefix of the link (RTNH_F_ONLINK):
	// the vxlan route's gateway is the peer subnet's network address, which
	// only the permanent neighbour entry resolves.
	Onlink bool
}

func (r Route) String() string {
	s := fmt.Sprintf("%s via %s dev #%d", r.Dst, r.Gw, r.LinkIndex)
	if r.Onlink {
		s += " onlink"
	}
	return s
}

func (r Route) netlink() *netlink.Route {
	nr := &netlink.Route{
		Dst: ipnet(r.Dst), Gw: r.Gw.AsSlice(), LinkIndex: r.LinkIndex,
		Table: unix.RT_TABLE_MAIN, Protocol: RouteProtocol, Scope: netlink.SCOPE_UNIVERSE,
	}
	if r.Onlink {
		nr.Flags = int(netlink.FLAG_ONLINK)
	}
	return nr
}

// Neigh is a permanent neighbour entry on one of the state's devices: IPv4
// (ARP) on Dev, IPv6 (NDP) on Dev6.
type Neigh struct {
	IP  netip.Addr
	MAC net.HardwareAddr
}

// FDB is a permanent forwarding entry on one of the state's vxlan devices:
// frames to MAC are encapsulated to Dst (`bridge fdb ... dst Dst self
// permanent`), an IPv4 address on Dev, an IPv6 one on Dev6.
type FDB struct {
	MAC net.HardwareAddr
	Dst netip.Addr
}

// State is the kernel state a backend wants. Routes are all the tagged
// routes weft should have, IPv4 and IPv6; Neighs and FDB all the permanent
// entries of device Dev (0 when the backend has no device): IPv4
// neighbours, FDB entries with IPv4 remotes. Dev6, Neighs6 and FDB6 are
// the same for a second device whose neighbours and remotes are IPv6 (the
// vxlan backend's flannel-v6.<VNI> on a dual-stack network; 0 without
// one). Anything tagged, or on Dev or Dev6 in its family, that State does
// not list is stale and removed.
type State struct {
	Routes []Route
	Dev    int
	Neighs []Neigh
	FDB    []FDB

	Dev6    int
	Neighs6 []Neigh
	FDB6    []FDB
}

// links returns the devices of s and those its routes leave by, once each.
func (s State) links() *[]int {
	var out []int
	add := func(l int) {
		if l == 0 {
			return
		}
		for _, o := range out {
			if o == l {
				return
			}
		}
		out = append(out, l)
	}
	add(s.Dev)
	add(s.Dev6)
	for _, r := range s.Routes {
		add(r.LinkIndex)
	}
	return &out
}

// Keys names every entry of s, one string per entry, with its full
// content: two states program the same kernel entries iff their keys match.
func (s State) Keys() map[string]bool {
	k := make(map[string]bool, s.len())
	s.each(func(e entry) { k[e.String()] = true })
	return k
}

// Change is what one reconcile pass did, as State keys. Conflicts are
// wanted routes left out because a route weft did not make holds their
// destination (State key, then the route in the way).
type Change struct {
	Added, Removed []string
	Conflicts      map[string]string
}

// Reconcile makes the kernel hold exactly want: it adds or replaces what is
// missing or different and deletes stale tagged routes and stale entries
// on want.Dev and want.Dev6. It carries on past individual failures and
// returns them joined.
func (n *Netlink) Reconcile(want State) (Change, error) {
	c, err := n.reconcile(want)
	out := c.exported()
	sort.Strings(out.Added)
	sort.Strings(out.Removed)
	return out, err
}

// reconcile is Reconcile by entry: one dump per table, then map lookups,
// so a pass costs O(N) in the entries of the kernel and of want.
func (n *Netlink) reconcile(want State) (change, error) {
	var c change
	errR := n.reconcileRoutes(want.Routes, &c)
	var errN, errF, errN6, errF6 error
	if want.Dev != 0 {
		errN = n.reconcileNeighs(want.Dev, netlink.FAMILY_V4, want.Neighs, &c)
		errF = n.reconcileFDB(want.Dev, want.FDB, &c)
	}
	if want.Dev6 != 0 {
		errN6 = n.reconcileNeighs(want.Dev6, netlink.FAMILY_V6, want.Neighs6, &c)
		errF6 = n.reconcileFDB(want.Dev6, want.FDB6, &c)
	}
	return c, errors.Join(errR, errN, errF, errN6, errF6)
}

func (n *Netlink) reconcileRoutes(want []Route, c *change) error {
	byDst := make(map[netip.Prefix]Route, len(want))
	for _, r := range want {
		byDst[r.Dst] = r
	}
	// One dump of the main table serves both the tagged routes and the
	// conflict check of every missing one (a dump per missing route made
	// a start with 5,000 peers quadratic). Both families: a stale IPv6
	// route is as much weft's as an IPv4 one. The dump is read route by
	// route and only what needs action is kept: at 5,000 peers a pass
	// that held every route of the table held megabytes for nothing.
	if err := n.dumpNexthops(); err != nil {
		return err
	}
	seen, stale, untagged, err := n.dumpRoutes(byDst)
	if err != nil {
		return fmt.Errorf("listing routes: %w", err)
	}
	var errs []error
	for _, h := range stale {
		// Stale, or the same destination with other content (a second
		// metric, another gateway): delete exactly that route.
		got, _ := routeFromKernel(h)
		if err := n.delTagged(h); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("deleting route %s: %w", h.Dst, err))
			continue
		}
		c.removed = append(c.removed, routeEntry(got))
	}
	var put []Route
	for _, w := range want {
		if seen[w.Dst] {
			continue
		}
		// weft never replaces a route it did not make: one that is not
		// tagged but goes exactly where weft's would (flanneld's own, on a
		// host moved from flanneld) is taken over; any other holder of the
		// destination is left alone and the peer's route refused.
		if other := holder(w, untagged[w.Dst]); other != "" {
			c.conflict(routeEntry(w), other)
			continue
		}
		put = append(put, w)
	}
	n.putRoutes(put, func(w Route, err error) {
		if err != nil {
			errs = append(errs, fmt.Errorf("adding route %s: %w", w, err))
			return
		}
		c.added = append(c.added, routeEntry(w))
	})
	// Nexthop objects no wanted route has: a departed peer's whose
	// deletion failed, or those of an earlier run.
	ids := make(map[uint32]bool, len(want))
	for _, w := range want {
		if id, ok := nhID(w.Dst); ok {
			ids[id] = true
		}
	}
	errs = append(errs, n.removeUnwantedNexthops(ids))
	return errors.Join(errs...)
}

// dumpRoutes reads the main table once and sorts its routes against the
// wanted ones: seen are the wanted destinations a tagged route already
// serves exactly, stale the tagged unicast routes to delete, untagged the
// routes weft did not tag to a wanted destination (a conflict, or
// flanneld's own route to take over). It runs the dump again while the
// kernel reports it interrupted, as Dump does.
func (n *Netlink) dumpRoutes(byDst map[netip.Prefix]Route) (seen map[netip.Prefix]bool, stale []netlink.Route, untagged map[netip.Prefix][]netlink.Route, err error) {
	filter := &netlink.Route{Table: unix.RT_TABLE_MAIN}
	for range dumpRetries {
		seen = make(map[netip.Prefix]bool, len(byDst))
		stale, untagged = nil, map[netip.Prefix][]netlink.Route{}
		visited := 0
		err = n.H.RouteListFilteredIter(netlink.FAMILY_ALL, filter, netlink.RT_FILTER_TABLE, func(h netlink.Route) bool {
			visited++
			got, ok := routeFromKernel(h) // a nil Dst (default route) is 0.0.0.0/0 or ::/0
			w, wanted := byDst[got.Dst]
			switch {
			case h.Protocol != RouteProtocol:
				if wanted {
					untagged[got.Dst] = append(untagged[got.Dst], h)
				}
			case h.Type != unix.RTN_UNICAST:
				// the daemon's --ip-blackhole-route, also tagged: not a backend's
			case ok && wanted && !seen[got.Dst] && got == w:
				seen[got.Dst] = true
			default:
				stale = append(stale, h)
			}
			return true
		})
		n.ops.dumps.Add(1)
		n.ops.dumped.Add(uint64(visited))
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return seen, stale, untagged, err
		}
	}
	return nil, nil, nil, fmt.Errorf("netlink dump kept being interrupted: %w", err)
}

// untaggedRoute describes a route of the main table to w's destination that
// weft did not tag and that differs from w, or returns "".
func (n *Netlink) untaggedRoute(w Route) (string, error) {
	filter := &netlink.Route{Dst: ipnet(w.Dst), Table: unix.RT_TABLE_MAIN}
	have, err := dump(n, func() ([]netlink.Route, error) {
		return n.H.RouteListFiltered(family(w.Dst.Addr()), filter, netlink.RT_FILTER_DST|netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return "", fmt.Errorf("listing routes to %s: %w", w.Dst, err)
	}
	return holder(w, have), nil
}

// holder describes the first of routes (the main table's to w's
// destination) that weft did not tag and that differs from w, or returns
// "".
func holder(w Route, routes []netlink.Route) string {
	for _, h := range routes {
		if h.Protocol == RouteProtocol {
			continue
		}
		if got, ok := routeFromKernel(h); ok && got == w && h.Type == unix.RTN_UNICAST {
			continue // the same route, untagged: take it over
		}
		return h.String()
	}
	return ""
}

// ip6DefaultMetric is the metric the kernel gives an IPv6 route added
// without one (IP6_RT_PRIO_USER): `ip -6 route` shows weft's and
// flanneld's routes with "metric 1024".
const ip6DefaultMetric = 1024

func routeFromKernel(r netlink.Route) (Route, bool) {
	if r.Dst == nil {
		if r.Family == netlink.FAMILY_V6 {
			return Route{Dst: netip.PrefixFrom(netip.IPv6Unspecified(), 0)}, false
		}
		return Route{Dst: netip.PrefixFrom(netip.IPv4Unspecified(), 0)}, false
	}
	ip, _ := netip.AddrFromSlice(r.Dst.IP)
	bits, _ := r.Dst.Mask.Size()
	gw, _ := netip.AddrFromSlice(r.Gw)
	ip, gw = ip.Unmap(), gw.Unmap()
	out := Route{Dst: netip.PrefixFrom(ip, bits), Gw: gw, LinkIndex: r.LinkIndex,
		Onlink: r.Flags&int(netlink.FLAG_ONLINK) != 0}
	// A multipath route or one with a metric is not one weft made. An
	// IPv6 route always has one: the kernel's default is what weft's get.
	metric := r.Priority == 0 || ip.Is6() && r.Priority == ip6DefaultMetric
	return out, len(r.MultiPath) == 0 && metric
}

// family is the netlink address family of a.
func family(a netip.Addr) int {
	if a.Is4() {
		return netlink.FAMILY_V4
	}
	return netlink.FAMILY_V6
}

// reconcileNeighs makes dev's permanent neighbours of family (IPv4 on the
// IPv4 vxlan device, IPv6 on the IPv6 one) exactly want.
func (n *Netlink) reconcileNeighs(dev, fam int, want []Neigh, c *change) error {
	have, err := dump(n, func() ([]netlink.Neigh, error) { return n.H.NeighList(dev, fam) })
	if err != nil {
		return fmt.Errorf("listing neighbours: %w", err)
	}
	byIP := make(map[netip.Addr]net.HardwareAddr, len(want))
	for _, w := range want {
		byIP[w.IP] = w.MAC
	}
	ok := make(map[netip.Addr]bool)
	var errs []error
	for _, h := range have {
		ip, _ := netip.AddrFromSlice(h.IP)
		ip = ip.Unmap()
		mac, wanted := byIP[ip]
		if wanted && h.State&netlink.NUD_PERMANENT != 0 && bytes.Equal(h.HardwareAddr, mac) {
			ok[ip] = true
			continue
		}
		if wanted || h.State&netlink.NUD_PERMANENT == 0 {
			continue // replaced below, or the kernel's own (never ours)
		}
		if err := n.neighDel(&h); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("deleting neighbour %s: %w", ip, err))
			continue
		}
		c.removed = append(c.removed, neighEntry(Neigh{IP: ip, MAC: h.HardwareAddr}, dev))
	}
	b := n.newBatch()
	for _, w := range want {
		if ok[w.IP] {
			continue
		}
		b.queueNeigh(w, dev, func(err error) {
			if err != nil {
				errs = append(errs, fmt.Errorf("adding neighbour %s lladdr %s: %w", w.IP, w.MAC, err))
				return
			}
			c.added = append(c.added, neighEntry(w, dev))
		})
	}
	b.flush()
	return errors.Join(errs...)
}

// reconcileFDB makes dev's FDB exactly want.
func (n *Netlink) reconcileFDB(dev int, want []FDB, c *change) error {
	have, err := dump(n, func() ([]netlink.Neigh, error) { return n.H.NeighList(dev, unix.AF_BRIDGE) })
	if err != nil {
		return fmt.Errorf("listing fdb: %w", err)
	}
	type key struct {
		mac mac
		dst netip.Addr
	}
	wanted := make(map[key]bool, len(want))
	for _, w := range want {
		wanted[key{macOf(w.MAC), w.Dst}] = true
	}
	ok := make(map[key]bool, len(want))
	var errs []error
	for _, h := range have {
		if h.LinkIndex != dev {
			continue
		}
		dst, _ := netip.AddrFromSlice(h.IP)
		k := key{macOf(h.HardwareAddr), dst.Unmap()}
		if wanted[k] && !ok[k] {
			ok[k] = true
			continue
		}
		// Every fdb entry of weft's vxlan device is weft's: the device
		// does no learning (IFLA_VXLAN_LEARNING off) and weft adds no
		// all-zeros default entry.
		del := h
		del.Family = unix.AF_BRIDGE
		del.Flags |= netlink.NTF_SELF
		if err := n.neighDel(&del); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("deleting fdb %s dst %s: %w", h.HardwareAddr, k.dst, err))
			continue
		}
		c.removed = append(c.removed, fdbEntry(FDB{MAC: h.HardwareAddr, Dst: k.dst}, dev))
	}
	b := n.newBatch()
	for _, w := range want {
		if ok[key{macOf(w.MAC), w.Dst}] {
			continue
		}
		b.queueFDB(w, dev, func(err error) {
			if err != nil {
				errs = append(errs, fmt.Errorf("adding fdb %s dst %s: %w", w.MAC, w.Dst, err))
				return
			}
			c.added = append(c.added, fdbEntry(w, dev))
		})
	}
	b.flush()
	return errors.Join(errs...)
}

func (c *change) conflict(e entry, other string) {
	if c.conflicts == nil {
		c.conflicts = map[entry]string{}
	}
	c.conflicts[e] = other
}

func (n *Netlink) setNeigh(w Neigh, dev int) error {
	nb := &netlink.Neigh{LinkIndex: dev, Family: family(w.IP), State: netlink.NUD_PERMANENT,
		Type: unix.RTN_UNICAST, IP: w.IP.AsSlice(), HardwareAddr: w.MAC}
	if err := n.neighSet(nb); err != nil {
		return fmt.Errorf("adding neighbour %s lladdr %s: %w", w.IP, w.MAC, err)
	}
	return nil
}

// setFDB: NeighSet is RTM_NEWNEIGH with NLM_F_REPLACE: for a MAC the
// device already knows, vxlan_fdb_update replaces its first remote, so a
// peer that moved gets its new address in place.
func (n *Netlink) setFDB(w FDB, dev int) error {
	nb := &netlink.Neigh{LinkIndex: dev, Family: unix.AF_BRIDGE, State: netlink.NUD_PERMANENT,
		Flags: netlink.NTF_SELF, IP: w.Dst.AsSlice(), HardwareAddr: w.MAC}
	if err := n.neighSet(nb); err != nil {
		return fmt.Errorf("adding fdb %s dst %s: %w", w.MAC, w.Dst, err)
	}
	return nil
}
