package lab

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"

	"github.com/vishvananda/netlink"
)

// A routed lab puts some hosts on a second underlay segment, SegmentB
// (TEST-NET-2), on a second bridge in the switch namespace, which routes
// between the two segments. Hosts on different segments then reach each
// other only through a router, as hosts in different racks or subnets do:
// host-gw cannot work between them, vxlan and udp can.
var (
	SegmentB  = netip.MustParsePrefix("198.51.100.0/24")
	RouterIPB = netip.MustParseAddr("198.51.100.254") // the switch's address on SegmentB
)

// BridgeB is the second segment's bridge, in the switch namespace.
func (l *Lab) BridgeB() string { return l.Prefix + "brb" }

// MoveBehindRouter moves host h to SegmentB: its switch port goes to the
// second bridge (created on first use, with forwarding on in the switch),
// its underlay address becomes SegmentB's .(index+1), and every host gets
// a route to the other segment through the switch. h.IP changes. Lab-wide
// services at SwitchIP stay reachable from both segments.
func (l *Lab) MoveBehindRouter(h *Host) error {
	if err := l.moveBehindRouter(h); err != nil {
		return fmt.Errorf("lab: MoveBehindRouter(%s): %w", h.Name, err)
	}
	return nil
}

func (l *Lab) moveBehindRouter(h *Host) error {
	sw, swNs, err := handle(l.Switch)
	if err != nil {
		return err
	}
	defer swNs.Close()
	defer sw.Close()
	br, err := sw.LinkByName(l.BridgeB())
	if err != nil {
		attrs := netlink.NewLinkAttrs()
		attrs.Name, attrs.MTU = l.BridgeB(), l.MTU
		if err := sw.LinkAdd(&netlink.Bridge{LinkAttrs: attrs}); err != nil {
			return fmt.Errorf("bridge %s: %w", l.BridgeB(), err)
		}
		if err := addAddr(sw, l.Switch, l.BridgeB(), netip.PrefixFrom(RouterIPB, SegmentB.Bits())); err != nil {
			return err
		}
		if err := linkUp(sw, l.Switch, l.BridgeB()); err != nil {
			return err
		}
		if err := WriteSysctl(l.Switch, "net/ipv4/ip_forward", "1"); err != nil {
			return err
		}
		if br, err = sw.LinkByName(l.BridgeB()); err != nil {
			return err
		}
	}
	port, err := sw.LinkByName(l.Prefix + "s" + strconv.Itoa(h.Index))
	if err != nil {
		return err
	}
	if err := sw.LinkSetMaster(port, br); err != nil {
		return fmt.Errorf("moving %s to %s: %w", port.Attrs().Name, l.BridgeB(), err)
	}

	hh, hNs, err := handle(h.Name)
	if err != nil {
		return err
	}
	defer hNs.Close()
	defer hh.Close()
	under, err := hh.LinkByName(h.Underlay)
	if err != nil {
		return err
	}
	old := &netlink.Addr{IPNet: &net.IPNet{IP: h.IP.AsSlice(), Mask: net.CIDRMask(UnderlayNet.Bits(), 32)}}
	if err := hh.AddrDel(under, old); err != nil {
		return fmt.Errorf("removing %s: %w", h.IP, err)
	}
	ip := netip.AddrFrom4([4]byte{198, 51, 100, byte(h.Index + 1)})
	if err := addAddr(hh, h.Name, h.Underlay, netip.PrefixFrom(ip, SegmentB.Bits())); err != nil {
		return err
	}
	h.IP = ip
	for _, o := range l.Hosts {
		dst, via := SegmentB, SwitchIP
		if SegmentB.Contains(o.IP) {
			dst, via = UnderlayNet, RouterIPB
		}
		if err := routeVia(o, dst, via); err != nil {
			return err
		}
	}
	return nil
}

func routeVia(h *Host, dst netip.Prefix, via netip.Addr) error {
	hh, ns, err := handle(h.Name)
	if err != nil {
		return err
	}
	defer ns.Close()
	defer hh.Close()
	link, err := hh.LinkByName(h.Underlay)
	if err != nil {
		return err
	}
	r := &netlink.Route{LinkIndex: link.Attrs().Index, Gw: via.AsSlice(),
		Dst: &net.IPNet{IP: dst.Addr().AsSlice(), Mask: net.CIDRMask(dst.Bits(), 32)}}
	if err := hh.RouteReplace(r); err != nil {
		return fmt.Errorf("route %s via %s in %s: %w", dst, via, h.Name, err)
	}
	return nil
}
