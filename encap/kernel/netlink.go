// Package kernel holds what weft's kernel backends (vxlan, host-gw) share:
// the netlink handle they program through, the tag that marks what weft
// creates, the reconcile pass and loop that keep the kernel in step with
// the leases, and the cleanup of everything weft created. It never touches
// kernel state weft did not create.
package kernel

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"strings"
	"sync/atomic"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// RouteProtocol tags every route weft creates (rtm_protocol; `ip route`
// prints it as "proto 87" unless /etc/iproute2/rt_protos names it). The
// kernel interprets only values up to RTPROT_STATIC (4) and stores larger
// ones untouched, so routing daemons pick their own: 87 ('W') is used by no
// protocol in iproute2's rt_protos. flanneld's routes carry "proto boot";
// weft adopts such a route when it programs the same destination, because
// RTM_NEWROUTE with NLM_F_REPLACE overwrites it in place.
const RouteProtocol netlink.RouteProtocol = 87

// VXLANDevicePattern matches the names of the vxlan devices flanneld and
// weft create: flannel.<VNI>, and flannel-v6.<VNI> on a dual-stack network.
var VXLANDevicePattern = regexp.MustCompile(`^flannel(-v6)?\.[0-9]+$`)

// VXLANDevice6 is the name of the IPv6 vxlan device that goes with the
// IPv4 one named dev (flannel.<VNI> -> flannel-v6.<VNI>), or "" when dev
// is not named flannel.<VNI>.
func VXLANDevice6(dev string) string {
	vni, ok := strings.CutPrefix(dev, "flannel.")
	if !ok || !VXLANDevicePattern.MatchString(dev) {
		return ""
	}
	return "flannel-v6." + vni
}

// Netlink is where the kernel backends program: a handle and its network
// namespace (tests use a fresh namespace; the daemon its own).
type Netlink struct {
	H  *netlink.Handle
	NS *netns.NsHandle // nil: the caller's namespace (for subscriptions)
	// Nexthops makes IPv4 routes go in by nexthop object (see nexthop.go);
	// set before the first use.
	Nexthops bool

	ops       opCounter
	nh        nexthops
	bs        batchSock
	nhForeign atomic.Uint64 // routes put in plain: their nexthop id is another's
}

// Current returns a Netlink for the calling process's namespace.
func Current() (*Netlink, error) {
	h, err := netlink.NewHandle()
	if err != nil {
		return nil, fmt.Errorf("netlink: %w", err)
	}
	return &Netlink{H: h}, nil
}

// Close releases the handle and the nexthop socket. A Netlink a backend
// holds lives as long as the daemon; one made for a single look (auto's
// rule, a cleanup) is closed after it.
func (n *Netlink) Close() {
	n.H.Close()
	n.nh.once.Do(func() { n.nh.off = "closed" }) // never opened: nothing to close
	if s := n.nh.sock[unix.NETLINK_ROUTE]; s != nil {
		s.Socket.Close()
	}
	n.bs.once.Do(func() { n.bs.err = errors.New("closed") })
	if n.bs.s != nil {
		n.bs.s.Close()
	}
}

// dumpRetries bounds retries of an interrupted dump. The kernel sets
// NLM_F_DUMP_INTR when the table changed during a multi-part dump; the
// result may then miss or repeat entries, so it is never trusted.
const dumpRetries = 10

// Dump runs a netlink dump again while the kernel reports it interrupted.
func Dump[T any](f func() ([]T, error)) ([]T, error) {
	var err error
	for range dumpRetries {
		var out []T
		out, err = f()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return out, err
		}
	}
	return nil, fmt.Errorf("netlink dump kept being interrupted: %w", err)
}

// Connected returns the prefixes directly connected on link index: the
// IPv4 and IPv6 addresses of the interface with their prefix lengths,
// link-local ones left out (no peer's public address is link-local).
// host-gw reads them on every lease event, so this is one address dump:
// the link itself is looked up (its full attributes, some 90 µs here) only
// when it holds no address, to tell a deleted link (an error) from one
// without addresses.
func (n *Netlink) Connected(index int) ([]netip.Prefix, error) {
	stub := &netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: index}}
	addrs, err := Dump(func() ([]netlink.Addr, error) { return n.H.AddrList(stub, netlink.FAMILY_ALL) })
	if err != nil {
		return nil, err
	}
	if len(addrs) == 0 {
		if _, err := n.H.LinkByIndex(index); err != nil {
			return nil, err
		}
	}
	var out []netip.Prefix
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		if ip.IsLinkLocalUnicast() {
			continue
		}
		bits, _ := a.Mask.Size()
		out = append(out, netip.PrefixFrom(ip, bits).Masked())
	}
	return out, nil
}

// OnSegment reports whether ip lies in one of the connected prefixes,
// i.e. is reachable without a router: the kernel resolves it by ARP (or,
// for IPv6, neighbour discovery) on that interface.
func OnSegment(connected []netip.Prefix, ip netip.Addr) bool {
	for _, p := range connected {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

func ipnet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// ProbeVXLAN reports whether the kernel can create a vxlan device here, by
// creating one (named name, on no underlay) and deleting it again. A kernel
// without the vxlan module or a container without CAP_NET_ADMIN fails it.
func (n *Netlink) ProbeVXLAN(name string) error {
	attrs := netlink.NewLinkAttrs()
	attrs.Name = name
	probe := &netlink.Vxlan{LinkAttrs: attrs, VxlanId: 16777215, Port: 8472}
	if old, err := n.H.LinkByName(name); err == nil {
		// A probe left by a process that died between create and delete.
		n.H.LinkDel(old)
	}
	if err := n.H.LinkAdd(probe); err != nil {
		return fmt.Errorf("creating vxlan device %s: %w", name, err)
	}
	link, err := n.H.LinkByName(name)
	if err != nil {
		return fmt.Errorf("vxlan probe device %s vanished: %w", name, err)
	}
	if link.Type() != "vxlan" {
		return fmt.Errorf("probe device %s is of type %s", name, link.Type())
	}
	if err := n.H.LinkDel(link); err != nil {
		return fmt.Errorf("deleting vxlan probe device %s: %w", name, err)
	}
	return nil
}

// Removed lists what a cleanup removed, for logs and `weft cleanup`.
type Removed struct {
	Links    []string
	Routes   []string
	Nexthops []uint32 // ids of weft's nexthop objects
}

// RemoveVXLANDevices deletes the vxlan devices named flannel.<VNI> and
// flannel-v6.<VNI> except keep and, when keep is flannel.<VNI>, its IPv6
// companion flannel-v6.<VNI> (the vxlan backend itself removes that one
// when the network is not dual-stack). Deleting a device makes the kernel
// drop its addresses, routes, neighbours and FDB entries with it.
func (n *Netlink) RemoveVXLANDevices(keep string, out *Removed) error {
	links, err := Dump(n.H.LinkList)
	if err != nil {
		return err
	}
	keep6 := VXLANDevice6(keep)
	var errs []error
	for _, l := range links {
		name := l.Attrs().Name
		if keep != "" && (name == keep || name == keep6) || l.Type() != "vxlan" || !VXLANDevicePattern.MatchString(name) {
			continue
		}
		if err := n.H.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
			errs = append(errs, fmt.Errorf("deleting %s: %w", name, err))
			continue
		}
		out.Links = append(out.Links, name)
	}
	return errors.Join(errs...)
}

// RemoveTUN deletes the TUN device name (flannel0 of the udp backend) if it
// exists and is a TUN; a running udp backend's non-persistent TUN goes away
// with its process anyway.
func (n *Netlink) RemoveTUN(name string, out *Removed) error {
	l, err := n.H.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return err
	}
	if l.Type() != "tuntap" {
		return nil
	}
	if err := n.H.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("deleting %s: %w", name, err)
	}
	out.Links = append(out.Links, name)
	return nil
}

// RemoveTaggedRoutes deletes every route tagged RouteProtocol in the main
// table, IPv4 and IPv6.
func (n *Netlink) RemoveTaggedRoutes(out *Removed) error {
	routes, err := n.taggedRoutes()
	if err != nil {
		return err
	}
	var errs []error
	for _, r := range routes {
		if err := n.delTagged(r); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("deleting route %s: %w", r.Dst, err))
			continue
		}
		out.Routes = append(out.Routes, r.Dst.String())
	}
	// Then the nexthop objects those routes went by.
	if err := n.dumpNexthops(); err != nil {
		return errors.Join(append(errs, err)...)
	}
	n.nh.mu.Lock()
	var ids []uint32
	for id := range n.nh.owned {
		ids = append(ids, id)
	}
	n.nh.mu.Unlock()
	for _, id := range ids {
		if err := n.delNexthop(id); err != nil {
			errs = append(errs, err)
			continue
		}
		out.Nexthops = append(out.Nexthops, id)
	}
	return errors.Join(errs...)
}

func (n *Netlink) taggedRoutes() ([]netlink.Route, error) {
	return dump(n, func() ([]netlink.Route, error) {
		return n.H.RouteListFiltered(netlink.FAMILY_ALL,
			&netlink.Route{Table: unix.RT_TABLE_MAIN, Protocol: RouteProtocol},
			netlink.RT_FILTER_TABLE|netlink.RT_FILTER_PROTOCOL)
	})
}
