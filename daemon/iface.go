package daemon

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/encap"
	"github.com/weft-net/weft/encap/kernel"
	"github.com/weft-net/weft/lease"
)

// extIface is the interface that carries inter-host traffic and the
// address peers reach this host at.
type extIface struct {
	Name  string
	Index int
	// Addr is the interface address weft binds its sockets to and the
	// kernel vxlan device sends from (flanneld's IfaceAddr).
	Addr netip.Addr
	// PublicIP is what the lease advertises: --public-ip, or Addr
	// (flanneld's ExtAddr).
	PublicIP netip.Addr
	MTU      int
	// Addr6 and PublicIPv6 are Addr and PublicIP for IPv6, set on a
	// network with IPv6 only (withIPv6, or the lookup itself on an
	// IPv6-only network, where Addr and PublicIP stay zero).
	Addr6      netip.Addr
	PublicIPv6 netip.Addr
}

// host is what the backends know of it: they bind to, and the kernel vxlan
// device sends from, Addr; leases advertise PublicIP.
func (e *extIface) host() encap.Host {
	return encap.Host{Iface: e.Name, IfaceIndex: e.Index, IfaceAddr: e.Addr, PublicIP: e.PublicIP, IfaceMTU: e.MTU,
		IfaceAddr6: e.Addr6, PublicIPv6: e.PublicIPv6}
}

// findExtIface chooses the interface and its address as flanneld v0.28.9
// does (main.go, pkg/ipmatch/match.go LookupExtIface, pkg/ip/iface.go),
// in the current network namespace: by IPv4 (the interface's IPv4
// address; IPv6 is added by withIPv6), or on an IPv6-only network by
// IPv6 (lookupExtIface6).
func findExtIface(f InterfaceOptions, ipv6Only bool, log *slog.Logger) (*extIface, error) {
	if ipv6Only {
		return lookupExtIface6(&netlink.Handle{}, f, log)
	}
	return lookupExtIface(&netlink.Handle{}, f, log)
}

// lookupExtIface is findExtIface through h:
//
//   - With none of --iface, --iface-regex, --iface-can-reach: the interface
//     that holds --public-ip, with that address; without --public-ip, the
//     interface of the main table's first default route.
//   - Else each --iface in order, a name (its first address) or an address
//     (the interface holding it, with that address); then each
//     --iface-regex in order, first against every interface's addresses
//     (that address), then against their names (the first address); then
//     --iface-can-reach (the route's interface and source address). A kind
//     that matches nothing usable falls through to the next, logged.
//
// An interface's first address is its first global unicast IPv4 address,
// else its first link-local one. --public-ip, when given, is advertised
// whatever interface was chosen. Unlike flanneld, an --iface-regex that is
// not a regular expression or an --iface-can-reach that is not an address
// is refused rather than skipped.
func lookupExtIface(h *netlink.Handle, f InterfaceOptions, log *slog.Logger) (*extIface, error) {
	return lookup(h, f, false, log)
}

// lookupExtIface6 is lookupExtIface on an IPv6-only network, as flanneld's
// ipv6Stack: every choice by IPv6 address. The interface may have IPv4
// addresses too; they are not used. Without a choice, the interface that
// holds --public-ipv6, else that of the main table's first IPv6 default
// route; --iface by address and --iface-can-reach take IPv6 addresses;
// --iface-regex matches IPv6 addresses, then names. An interface's first
// address is its first global unicast IPv6 address (ipv6Addrs): unlike
// flanneld, never a link-local one, which other hosts cannot route to.
// --public-ipv6, when given, is advertised whatever interface was chosen.
func lookupExtIface6(h *netlink.Handle, f InterfaceOptions, log *slog.Logger) (*extIface, error) {
	e, err := lookup(h, f, true, log)
	if err != nil {
		return nil, err
	}
	return e, lease.CheckPublicIPv6(e.PublicIPv6)
}

// lookup is lookupExtIface (v6 false) and lookupExtIface6 (v6 true).
func lookup(h *netlink.Handle, f InterfaceOptions, v6 bool, log *slog.Logger) (*extIface, error) {
	fam := family(v6)
	regexes := make([]*regexp.Regexp, len(f.IfaceRegex))
	for i, expr := range f.IfaceRegex {
		re, err := regexp.Compile(expr)
		if err != nil {
			return nil, fmt.Errorf("--iface-regex: %q: %v", expr, err)
		}
		regexes[i] = re
	}
	var canReach netip.Addr
	if n := len(f.IfaceCanReach); n > 0 {
		// flanneld's --iface-can-reach is a single value: the last given wins.
		a, err := netip.ParseAddr(f.IfaceCanReach[n-1])
		if err != nil || !fam.is(a) {
			return nil, fmt.Errorf("--iface-can-reach: %q is not an %s address", f.IfaceCanReach[n-1], fam)
		}
		canReach = a
	}
	public, publicFlag := f.PublicIP, "--public-ip"
	if v6 {
		public, publicFlag = f.PublicIPv6, "--public-ipv6"
	}
	withPublic := func(e *extIface) *extIface {
		if v6 {
			e.PublicIPv6 = e.Addr6
			if public.IsValid() {
				e.PublicIPv6 = public
			}
			return e
		}
		e.PublicIP = e.Addr
		if public.IsValid() {
			e.PublicIP = public
		}
		return e
	}

	if len(f.Ifaces) == 0 && len(regexes) == 0 && !canReach.IsValid() {
		if public.IsValid() {
			e, err := byAddr(h, public, fam)
			if err != nil {
				return nil, fmt.Errorf("%s %s without --iface: %v (flanneld uses the interface that holds the public IP; "+
					"for an address this host does not have, such as a NAT's, name the interface with --iface)", publicFlag, public, err)
			}
			return withPublic(e), nil
		}
		e, err := byDefaultRoute(h, fam)
		if err != nil {
			return nil, fmt.Errorf("no --iface given and %v", err)
		}
		return withPublic(e), nil
	}

	var tried []string
	skip := func(what string, err error) {
		tried = append(tried, fmt.Sprintf("%s: %v", what, err))
		log.Info("interface not usable, trying the next choice", "choice", what, "err", err)
	}
	for _, s := range f.Ifaces {
		e, err := byNameOrAddr(h, s, fam)
		if err == nil {
			return withPublic(e), nil
		}
		skip("--iface "+s, err)
	}
	if len(regexes) > 0 {
		links, err := kernel.Dump(h.LinkList)
		if err != nil {
			return nil, err
		}
		for i, re := range regexes {
			e, err := byRegex(h, links, re, fam)
			if err == nil {
				return withPublic(e), nil
			}
			skip("--iface-regex "+f.IfaceRegex[i], err)
		}
	}
	if canReach.IsValid() {
		e, err := byRoute(h, canReach, fam)
		if err == nil {
			return withPublic(e), nil
		}
		skip("--iface-can-reach "+canReach.String(), err)
	}
	return nil, fmt.Errorf("no interface matches --iface, --iface-regex or --iface-can-reach (%s)", strings.Join(tried, "; "))
}

// family is the address family an interface is chosen by: IPv4, or IPv6
// on an IPv6-only network.
type family bool

func (f family) String() string {
	if f {
		return "IPv6"
	}
	return "IPv4"
}

// is says whether a is an address of the family.
func (f family) is(a netip.Addr) bool {
	if f {
		return a.Is6() && !a.Is4In6()
	}
	return a.Is4()
}

func (f family) netlink() int {
	if f {
		return netlink.FAMILY_V6
	}
	return netlink.FAMILY_V4
}

// addrs are l's usable addresses of the family, in the order the first is
// chosen by.
func (f family) addrs(h *netlink.Handle, l netlink.Link) ([]netip.Addr, error) {
	if f {
		return ipv6Addrs(h, l)
	}
	return ipv4Addrs(h, l)
}

// newExt is link with addr, or its first address of fam when addr is not
// valid.
func newExt(h *netlink.Handle, l netlink.Link, addr netip.Addr, fam family) (*extIface, error) {
	if !addr.IsValid() {
		addrs, err := fam.addrs(h, l)
		if err != nil {
			return nil, err
		}
		if len(addrs) == 0 {
			if fam {
				return nil, fmt.Errorf("interface %s has no global IPv6 address", l.Attrs().Name)
			}
			return nil, fmt.Errorf("interface %s has no IPv4 address", l.Attrs().Name)
		}
		addr = addrs[0]
	}
	a := l.Attrs()
	if a.MTU == 0 {
		return nil, fmt.Errorf("interface %s has no MTU", a.Name)
	}
	e := &extIface{Name: a.Name, Index: a.Index, MTU: a.MTU}
	if fam {
		e.Addr6 = addr
	} else {
		e.Addr = addr
	}
	return e, nil
}

// ipv4Addrs are l's IPv4 addresses as flanneld orders them
// (GetInterfaceIP4Addrs): the global unicast ones, then the link-local
// ones, each in the kernel's order; no loopback, multicast or broadcast.
func ipv4Addrs(h *netlink.Handle, l netlink.Link) ([]netip.Addr, error) {
	all, err := kernel.Dump(func() ([]netlink.Addr, error) { return h.AddrList(l, netlink.FAMILY_V4) })
	if err != nil {
		return nil, fmt.Errorf("addresses of %s: %w", l.Attrs().Name, err)
	}
	var global, local []netip.Addr
	for _, x := range all {
		a, ok := netip.AddrFromSlice(x.IP)
		if !ok || !a.Unmap().Is4() {
			continue
		}
		switch a = a.Unmap(); {
		case a.IsGlobalUnicast():
			global = append(global, a)
		case a.IsLinkLocalUnicast():
			local = append(local, a)
		}
	}
	return append(global, local...), nil
}

// ipv6Addrs are l's global unicast IPv6 addresses as flanneld orders them
// (GetInterfaceIP6Addrs, compareAddrs): permanent (manually assigned)
// before others, non-temporary before temporary, else the kernel's order;
// no deprecated one. flanneld takes link-local addresses last; weft never
// does (other hosts cannot route to them).
func ipv6Addrs(h *netlink.Handle, l netlink.Link) ([]netip.Addr, error) {
	all, err := kernel.Dump(func() ([]netlink.Addr, error) { return h.AddrList(l, netlink.FAMILY_V6) })
	if err != nil {
		return nil, fmt.Errorf("IPv6 addresses of %s: %w", l.Attrs().Name, err)
	}
	rank := func(x netlink.Addr) int {
		r := 0
		if x.Flags&unix.IFA_F_PERMANENT == 0 {
			r += 2
		}
		if x.Flags&unix.IFA_F_TEMPORARY != 0 {
			r++
		}
		return r
	}
	slices.SortStableFunc(all, func(a, b netlink.Addr) int { return rank(a) - rank(b) })
	var out []netip.Addr
	for _, x := range all {
		a, ok := netip.AddrFromSlice(x.IP)
		if ok && a.Is6() && !a.Is4In6() && a.IsGlobalUnicast() && x.Flags&unix.IFA_F_DEPRECATED == 0 {
			out = append(out, a)
		}
	}
	return out, nil
}

func byNameOrAddr(h *netlink.Handle, s string, fam family) (*extIface, error) {
	if a, err := netip.ParseAddr(s); err == nil {
		if !fam.is(a) {
			if fam {
				return nil, errors.New("not an IPv6 address (the network is IPv6-only)")
			}
			return nil, errors.New("not an IPv4 address (on a dual-stack network, name the interface or its IPv4 address; its IPv6 address is found on it)")
		}
		return byAddr(h, a, fam)
	}
	l, err := h.LinkByName(s)
	if err != nil {
		return nil, fmt.Errorf("no interface %s: %v", s, err)
	}
	return newExt(h, l, netip.Addr{}, fam)
}

// byAddr is the first interface (by index) holding a, with a.
func byAddr(h *netlink.Handle, a netip.Addr, fam family) (*extIface, error) {
	links, err := kernel.Dump(h.LinkList)
	if err != nil {
		return nil, err
	}
	for _, l := range links {
		addrs, err := kernel.Dump(func() ([]netlink.Addr, error) { return h.AddrList(l, fam.netlink()) })
		if err != nil {
			continue
		}
		for _, x := range addrs {
			if y, ok := netip.AddrFromSlice(x.IP); ok && y.Unmap() == a {
				return newExt(h, l, a, fam)
			}
		}
	}
	return nil, fmt.Errorf("no interface has the address %s", a)
}

// byRegex matches re against every interface's addresses first (that
// address), then against every name (the first address), as
// ipmatch.LookupExtIface does.
func byRegex(h *netlink.Handle, links []netlink.Link, re *regexp.Regexp, fam family) (*extIface, error) {
	for _, l := range links {
		addrs, err := fam.addrs(h, l)
		if err != nil {
			continue
		}
		for _, a := range addrs {
			if re.MatchString(a.String()) {
				return newExt(h, l, a, fam)
			}
		}
	}
	for _, l := range links {
		if re.MatchString(l.Attrs().Name) {
			return newExt(h, l, netip.Addr{}, fam)
		}
	}
	var have []string
	for _, l := range links {
		addrs, _ := fam.addrs(h, l)
		have = append(have, fmt.Sprintf("%s:%v", l.Attrs().Name, addrs))
	}
	return nil, fmt.Errorf("matches none of the interfaces (%s)", strings.Join(have, ", "))
}

// byRoute is the interface of the route to dst, with the route's source
// address (flanneld's GetInterfaceBySpecificIPRouting).
func byRoute(h *netlink.Handle, dst netip.Addr, fam family) (*extIface, error) {
	routes, err := h.RouteGet(net.IP(dst.AsSlice()))
	if err != nil || len(routes) == 0 {
		return nil, fmt.Errorf("no route to %s: %v", dst, err)
	}
	l, err := h.LinkByIndex(routes[0].LinkIndex)
	if err != nil {
		return nil, err
	}
	var src netip.Addr
	if a, ok := netip.AddrFromSlice(routes[0].Src); ok && fam.is(a.Unmap()) {
		src = a.Unmap()
		if bool(fam) && !src.IsGlobalUnicast() {
			src = netip.Addr{} // a link-local source: take the interface's first global address
		}
	}
	return newExt(h, l, src, fam)
}

// byDefaultRoute is the interface of the main table's first default route
// of the family (flanneld's GetDefaultGatewayInterface,
// GetDefaultV6GatewayInterface), with its first address.
func byDefaultRoute(h *netlink.Handle, fam family) (*extIface, error) {
	routes, err := kernel.Dump(func() ([]netlink.Route, error) { return h.RouteList(nil, fam.netlink()) })
	if err != nil {
		return nil, err
	}
	for _, r := range routes {
		if r.Dst == nil || r.Dst.String() == "0.0.0.0/0" || r.Dst.String() == "::/0" {
			if r.LinkIndex <= 0 {
				return nil, errors.New("the default route has no interface (give --iface)")
			}
			l, err := h.LinkByIndex(r.LinkIndex)
			if err != nil {
				return nil, err
			}
			return newExt(h, l, netip.Addr{}, fam)
		}
	}
	if fam {
		return nil, errors.New("there is no IPv6 default route to find the interface by (give --iface)")
	}
	return nil, errors.New("there is no default route to find the interface by (give --iface)")
}

// withIPv6 finds the chosen interface's IPv6 address for a dual-stack
// network, as flanneld does (pkg/ipmatch LookupExtIface with the dual
// stack): the interface chosen for IPv4 carries IPv6 too, its first
// global unicast IPv6 address is the one the vxlan device sends from,
// and --public-ipv6, when given, is what the lease advertises (else that
// address: "Defaulting external v6 address to interface address").
// Unlike flanneld, a link-local address is never chosen: other hosts
// cannot route to it.
func (e *extIface) withIPv6(h *netlink.Handle, publicIPv6 netip.Addr) error {
	l, err := h.LinkByIndex(e.Index)
	if err != nil {
		return fmt.Errorf("interface %s: %w", e.Name, err)
	}
	addrs, err := ipv6Addrs(h, l)
	if err != nil {
		return err
	}
	if len(addrs) > 0 {
		e.Addr6 = addrs[0]
	}
	if !e.Addr6.IsValid() {
		return fmt.Errorf("interface %s has no usable global IPv6 address, and the network config has EnableIPv6: "+
			"a dual-stack host needs one on the interface that carries inter-host traffic", e.Name)
	}
	e.PublicIPv6 = e.Addr6
	if publicIPv6.IsValid() {
		e.PublicIPv6 = publicIPv6
	}
	return lease.CheckPublicIPv6(e.PublicIPv6)
}
