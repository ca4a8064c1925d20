package daemon

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"regexp"

	"github.com/vishvananda/netlink"
)

// extIface is the interface that carries inter-host traffic and the
// address peers reach this host at.
type extIface struct {
	Name     string
	Index    int
	Addr     netip.Addr // the interface's own IPv4 address
	PublicIP netip.Addr // --public-ip, or Addr
	MTU      int
}

// findExtIface resolves --iface, --iface-regex and --iface-can-reach as
// flanneld does: the first --iface (name or IP) that exists, else the first
// interface matching a regex, else the interface of the route to the
// --iface-can-reach address, else the interface of the default route.
func findExtIface(f InterfaceOptions) (*extIface, error) {
	var link netlink.Link
	var err error
	switch {
	case len(f.Ifaces) > 0:
		for _, s := range f.Ifaces {
			if link, err = linkByNameOrIP(s); err == nil {
				break
			}
		}
		if link == nil {
			return nil, fmt.Errorf("--iface: none of %v is usable: %v", []string(f.Ifaces), err)
		}
	case len(f.IfaceRegex) > 0:
		links, lerr := netlink.LinkList()
		if lerr != nil && !errors.Is(lerr, netlink.ErrDumpInterrupted) {
			return nil, lerr
		}
		for _, expr := range f.IfaceRegex {
			re, rerr := regexp.Compile(expr)
			if rerr != nil {
				return nil, fmt.Errorf("--iface-regex: %q: %v", expr, rerr)
			}
			for _, l := range links {
				if re.MatchString(l.Attrs().Name) {
					link = l
					break
				}
				if a, _ := firstIPv4(l); a.IsValid() && re.MatchString(a.String()) {
					link = l
					break
				}
			}
			if link != nil {
				break
			}
		}
		if link == nil {
			return nil, fmt.Errorf("--iface-regex: no interface matches %v", []string(f.IfaceRegex))
		}
	default:
		target := net.IPv4zero
		if len(f.IfaceCanReach) > 0 {
			a, perr := netip.ParseAddr(f.IfaceCanReach[0])
			if perr != nil {
				return nil, fmt.Errorf("--iface-can-reach: %v", perr)
			}
			target = a.AsSlice()
		}
		routes, rerr := netlink.RouteGet(target)
		if rerr != nil || len(routes) == 0 {
			return nil, fmt.Errorf("no --iface given and no route to %s to find one: %v", target, rerr)
		}
		if link, err = netlink.LinkByIndex(routes[0].LinkIndex); err != nil {
			return nil, err
		}
	}
	addr, err := firstIPv4(link)
	if err != nil {
		return nil, fmt.Errorf("interface %s: %v", link.Attrs().Name, err)
	}
	e := &extIface{Name: link.Attrs().Name, Index: link.Attrs().Index, Addr: addr, PublicIP: addr, MTU: link.Attrs().MTU}
	if f.PublicIP.IsValid() {
		e.PublicIP = f.PublicIP
	}
	return e, nil
}

func linkByNameOrIP(s string) (netlink.Link, error) {
	if a, err := netip.ParseAddr(s); err == nil {
		links, err := netlink.LinkList()
		if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
			return nil, err
		}
		for _, l := range links {
			addrs, _ := netlink.AddrList(l, netlink.FAMILY_V4)
			for _, x := range addrs {
				if y, ok := netip.AddrFromSlice(x.IP); ok && y.Unmap() == a {
					return l, nil
				}
			}
		}
		return nil, fmt.Errorf("no interface has address %s", a)
	}
	return netlink.LinkByName(s)
}

func firstIPv4(l netlink.Link) (netip.Addr, error) {
	addrs, err := netlink.AddrList(l, netlink.FAMILY_V4)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return netip.Addr{}, err
	}
	for _, a := range addrs {
		if x, ok := netip.AddrFromSlice(a.IP); ok && !x.IsLoopback() {
			return x.Unmap(), nil
		}
	}
	return netip.Addr{}, errors.New("has no IPv4 address")
}
