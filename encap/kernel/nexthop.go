package kernel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// Why nexthop objects (Netlink.Nexthops): the kernel gives every IPv4
// route a fib_info (its nexthop) and first looks for one to share in a
// hash keyed by protocol, scope, preferred source, metric and output
// device, not by gateway. Every route weft adds to flannel.<VNI> (or
// host-gw's underlay) falls in one bucket, and each insert walks all of
// them (fib_find_info): ~0.3 ms of a lease event at 5,000 peers, the
// largest single cost of one (docs/scale.md). A route by nexthop id
// (`ip route add D nhid N`, kernel 5.3+) is hashed by the id, so adding
// it costs the same at 5,000 routes as at 5. Removing one stays O(1).
//
// The price is the routes' shape: `ip route` prints "nhid N" before
// "via" (the kernel still reports gateway and device with the route while
// net.ipv4.nexthop_compat_mode is 1, its default, which the reconciler
// needs), and `ip nexthop` lists weft's objects, tagged RouteProtocol.
// flanneld's routes are plain, so this is opt-in (--route-nexthops).
//
// Only IPv4: an IPv6 route has its own fib6_info and no shared bucket.
// A nexthop's id is its route's destination address (10.5.2.0/24 ->
// 0x0a050200): unique among one host's peer routes (their subnets do not
// overlap), stable across restarts, so nothing maps ids to routes. An id
// someone else holds (another routing daemon's object) is never taken
// over: that route goes in plain, counted.

// nhaFlagOnlink is RTNH_F_ONLINK in struct nhmsg's flags.
const nhaFlagOnlink = unix.RTNH_F_ONLINK

// rtaNHID is RTA_NH_ID: a route's nexthop object.
const rtaNHID = 30

// nexthop is what an IPv4 nexthop object of weft's carries.
type nexthop struct {
	gw     netip.Addr
	link   int
	onlink bool
}

// nexthops is the Netlink's nexthop state: the raw socket its requests
// go through (the netlink library has no API for nexthop objects) and the
// objects weft holds, from the last dump and its own requests since.
type nexthops struct {
	once  sync.Once
	sock  map[int]*nl.SocketHandle
	off   string // why nexthops are not used ("" while they are)
	mu    sync.Mutex
	owned map[uint32]nexthop
}

// nhmsg is struct nhmsg.
type nhmsg struct {
	family, scope, protocol uint8
	flags                   uint32
}

func (m *nhmsg) Len() int { return 8 }

func (m *nhmsg) Serialize() []byte {
	b := make([]byte, 8)
	b[0], b[1], b[2] = m.family, m.scope, m.protocol
	binary.NativeEndian.PutUint32(b[4:], m.flags)
	return b
}

// nhID is the nexthop id for a route to dst, false for what gets no
// nexthop object (IPv6, the default route).
func nhID(dst netip.Prefix) (uint32, bool) {
	a, ok := v4(dst.Addr())
	return a, ok && a != 0
}

// nhInit opens the raw socket in the Netlink's namespace, once, and
// decides whether IPv4 routes go in by nexthop object. The socket is
// opened also when they do not, so that the objects of an earlier run
// with --route-nexthops are still read, kept while their routes are
// wanted, and removed with them.
func (n *Netlink) nhInit() {
	n.nh.once.Do(func() {
		s, err := n.openSocket()
		if err != nil {
			n.nh.off = "cannot open a netlink socket: " + err.Error()
			return
		}
		n.nh.sock = map[int]*nl.SocketHandle{unix.NETLINK_ROUTE: {Socket: s}}
		switch {
		case !n.Nexthops:
			n.nh.off = "off (--route-nexthops=false)"
		case n.NS == nil && compatModeOff():
			// The reconciler compares the routes it dumps with the wanted
			// ones by gateway and device, which the kernel reports for a
			// route by nexthop id only in compat mode.
			n.nh.off = "net.ipv4.nexthop_compat_mode is 0"
		}
	})
}

func compatModeOff() bool {
	b, err := os.ReadFile("/proc/sys/net/ipv4/nexthop_compat_mode")
	return err == nil && strings.TrimSpace(string(b)) == "0"
}

// NexthopsOff says why IPv4 routes go in plain, "" when they go by
// nexthop object.
func (n *Netlink) NexthopsOff() string {
	n.nhInit()
	n.nh.mu.Lock()
	defer n.nh.mu.Unlock()
	return n.nh.off
}

func (n *Netlink) nhOn() bool {
	n.nhInit()
	n.nh.mu.Lock()
	defer n.nh.mu.Unlock()
	return n.nh.off == ""
}

// nhUnsupported turns nexthops off when the kernel does not know them
// (before 5.3: RTM_NEWNEXTHOP is an unknown message type).
func (n *Netlink) nhUnsupported(err error) bool {
	if !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.EAFNOSUPPORT) {
		return false
	}
	n.nh.mu.Lock()
	n.nh.off = "the kernel has no nexthop objects: " + err.Error()
	n.nh.mu.Unlock()
	return true
}

func (n *Netlink) nhRequest(typ, flags int) *nl.NetlinkRequest {
	return &nl.NetlinkRequest{
		NlMsghdr: unix.NlMsghdr{Len: unix.SizeofNlMsghdr, Type: uint16(typ), Flags: unix.NLM_F_REQUEST | uint16(flags)},
		Sockets:  n.nh.sock,
	}
}

// errForeignNexthop: the id is held by a nexthop weft did not make.
var errForeignNexthop = errors.New("the nexthop id is another's")

// putNexthop makes weft's nexthop id carry r's gateway, device and onlink
// flag, without a request when it does already.
func (n *Netlink) putNexthop(id uint32, r Route) error {
	req, owned, skip := n.nexthopPut(id, r)
	if skip {
		return nil
	}
	return n.nexthopPutDone(id, r, owned, n.execute(req))
}

// nlRequest is one netlink request, for a batch or alone.
type nlRequest struct {
	typ, flags uint16 // NLM_F_REQUEST and NLM_F_ACK are added when sent
	data       []nl.NetlinkRequestData
}

// execute sends r alone on the raw socket and waits for its answer.
func (n *Netlink) execute(r nlRequest) error {
	n.request()
	_, err := (&nl.NetlinkRequest{NlMsghdr: unix.NlMsghdr{Len: unix.SizeofNlMsghdr, Type: r.typ,
		Flags: unix.NLM_F_REQUEST | unix.NLM_F_ACK | r.flags}, Data: r.data, Sockets: n.nh.sock}).Execute(unix.NETLINK_ROUTE, 0)
	return err
}

// nexthopPut is putNexthop's request: skip when weft's object already
// carries r; owned when the id is weft's (the request replaces it, else it
// creates one and fails with EEXIST if the id is another's).
func (n *Netlink) nexthopPut(id uint32, r Route) (req nlRequest, owned, skip bool) {
	want := nexthop{gw: r.Gw, link: r.LinkIndex, onlink: r.Onlink}
	n.nh.mu.Lock()
	have, owned := n.nh.owned[id]
	n.nh.mu.Unlock()
	if owned && have == want {
		return nlRequest{}, true, true
	}
	flags := uint16(unix.NLM_F_CREATE | unix.NLM_F_EXCL)
	if owned {
		flags = unix.NLM_F_CREATE | unix.NLM_F_REPLACE
	}
	msg := &nhmsg{family: unix.AF_INET, protocol: uint8(RouteProtocol)}
	if r.Onlink {
		msg.flags = nhaFlagOnlink
	}
	return nlRequest{typ: unix.RTM_NEWNEXTHOP, flags: flags, data: []nl.NetlinkRequestData{msg,
		nl.NewRtAttr(unix.NHA_ID, nl.Uint32Attr(id)),
		nl.NewRtAttr(unix.NHA_OIF, nl.Uint32Attr(uint32(r.LinkIndex))),
		nl.NewRtAttr(unix.NHA_GATEWAY, r.Gw.AsSlice())}}, owned, false
}

// nexthopPutDone records the outcome of nexthopPut's request: the object
// is weft's on success; errForeignNexthop when it created none because the
// id is another's.
func (n *Netlink) nexthopPutDone(id uint32, r Route, owned bool, err error) error {
	if err != nil {
		if !owned && errors.Is(err, unix.EEXIST) {
			return errForeignNexthop
		}
		return err
	}
	n.nh.mu.Lock()
	if n.nh.owned == nil {
		n.nh.owned = map[uint32]nexthop{}
	}
	n.nh.owned[id] = nexthop{gw: r.Gw, link: r.LinkIndex, onlink: r.Onlink}
	n.nh.mu.Unlock()
	return nil
}

// delNexthop deletes weft's nexthop id (and with it any route by it); an
// id weft does not hold is left alone. The id leaves the owned set before
// the request, so the deletion's own notification does not look like
// someone else's (Reconciler.onDeletion).
func (n *Netlink) delNexthop(id uint32) error {
	n.nh.mu.Lock()
	h, owned := n.nh.owned[id]
	delete(n.nh.owned, id)
	n.nh.mu.Unlock()
	if !owned {
		return nil
	}
	req := n.nhRequest(unix.RTM_DELNEXTHOP, unix.NLM_F_ACK)
	req.AddData(&nhmsg{family: unix.AF_UNSPEC})
	req.AddData(nl.NewRtAttr(unix.NHA_ID, nl.Uint32Attr(id)))
	n.request()
	if _, err := req.Execute(unix.NETLINK_ROUTE, 0); err != nil && !errors.Is(err, unix.ENOENT) {
		n.nh.mu.Lock()
		n.nh.owned[id] = h
		n.nh.mu.Unlock()
		return fmt.Errorf("deleting nexthop %d: %w", id, err)
	}
	return nil
}

// ownsNexthop reports whether id is one of weft's nexthop objects.
func (n *Netlink) ownsNexthop(id uint32) bool {
	n.nh.mu.Lock()
	defer n.nh.mu.Unlock()
	_, ok := n.nh.owned[id]
	return ok
}

// routeByNexthop adds (excl) or replaces the route to r.Dst by nexthop
// id, tagged RouteProtocol.
func (n *Netlink) routeByNexthop(r Route, id uint32, excl bool) error {
	return n.execute(routeByNexthopRequest(r, id, excl))
}

func routeByNexthopRequest(r Route, id uint32, excl bool) nlRequest {
	flags := uint16(unix.NLM_F_CREATE | unix.NLM_F_REPLACE)
	if excl {
		flags = unix.NLM_F_CREATE | unix.NLM_F_EXCL
	}
	msg := nl.NewRtMsg()
	msg.Family = unix.AF_INET
	msg.Dst_len = uint8(r.Dst.Bits())
	msg.Protocol = uint8(RouteProtocol)
	return nlRequest{typ: unix.RTM_NEWROUTE, flags: flags, data: []nl.NetlinkRequestData{msg,
		nl.NewRtAttr(unix.RTA_DST, r.Dst.Addr().AsSlice()),
		nl.NewRtAttr(rtaNHID, nl.Uint32Attr(id))}}
}

// putRoute adds (excl: NLM_F_EXCL, failing with EEXIST when the
// destination holds a route of the same metric) or replaces w: by a
// nexthop object of weft's when nexthops are on and w is IPv4, else
// plain. A kernel without nexthop objects turns them off for good; an id
// another holds puts this route in plain.
func (n *Netlink) putRoute(w Route, excl bool) error {
	if id, ok := nhID(w.Dst); ok && n.nhOn() {
		err := n.putNexthop(id, w)
		if err == nil {
			return n.routeByNexthop(w, id, excl)
		}
		switch {
		case errors.Is(err, errForeignNexthop):
			n.nhForeign.Add(1)
		case n.nhUnsupported(err):
		default:
			return fmt.Errorf("adding nexthop %d for route %s: %w", id, w, err)
		}
	}
	if excl {
		return n.routeAdd(w.netlink())
	}
	return n.routeReplace(w.netlink())
}

// removeRoute deletes weft's route to e's destination, plain or by
// nexthop, and the nexthop. A plain delete names the gateway and device,
// which the kernel never matches against a route by nexthop id
// (fib_nh_match), so where weft holds the id it deletes by destination
// and protocol (the tag: only weft's route) and then the nexthop. It
// reports whether a route was there.
func (n *Netlink) removeRoute(r Route) (bool, error) {
	id, ok := nhID(r.Dst)
	if ok {
		n.nh.mu.Lock()
		_, ok = n.nh.owned[id]
		n.nh.mu.Unlock()
	}
	if !ok {
		err := n.routeDel(r.netlink())
		if errors.Is(err, unix.ESRCH) {
			return false, nil
		}
		return err == nil, err
	}
	del := &netlink.Route{Dst: ipnet(r.Dst), Table: unix.RT_TABLE_MAIN, Protocol: RouteProtocol}
	err := n.routeDel(del)
	gone := err == nil
	if errors.Is(err, unix.ESRCH) {
		err = nil
	}
	return gone, errors.Join(err, n.delNexthop(id))
}

// delTagged deletes h, a tagged route of a dump, however it was made: a
// route by nexthop id matches no delete that names a gateway or device.
func (n *Netlink) delTagged(h netlink.Route) error {
	err := n.routeDel(&h)
	if !errors.Is(err, unix.ESRCH) || h.Gw == nil && h.LinkIndex == 0 {
		return err
	}
	h.Gw, h.LinkIndex, h.Flags, h.MultiPath = nil, 0, 0, nil
	return n.routeDel(&h)
}

// dumpNexthops reads the kernel's nexthop objects tagged RouteProtocol
// into the owned set. A kernel without them has none; with nexthops off
// it still reads them, so that stale ones are removed.
func (n *Netlink) dumpNexthops() error {
	n.nhInit()
	if n.nh.sock == nil {
		return nil
	}
	for range dumpRetries {
		owned := map[uint32]nexthop{}
		req := n.nhRequest(unix.RTM_GETNEXTHOP, unix.NLM_F_DUMP)
		req.AddData(&nhmsg{family: unix.AF_UNSPEC})
		visited := 0
		err := req.ExecuteIter(unix.NETLINK_ROUTE, unix.RTM_NEWNEXTHOP, func(m []byte) bool {
			visited++
			if id, h, ok := parseNexthop(m); ok {
				owned[id] = h
			}
			return true
		})
		n.ops.dumps.Add(1)
		n.ops.dumped.Add(uint64(visited))
		if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EINVAL) {
			return nil // no nexthop objects in this kernel
		}
		if errors.Is(err, netlink.ErrDumpInterrupted) {
			continue
		}
		if err != nil {
			return fmt.Errorf("listing nexthops: %w", err)
		}
		n.nh.mu.Lock()
		n.nh.owned = owned
		n.nh.mu.Unlock()
		return nil
	}
	return errors.New("listing nexthops: the dump kept being interrupted")
}

// parseNexthop reads one RTM_NEWNEXTHOP message: an IPv4 nexthop object
// tagged RouteProtocol with a gateway and a device, else false.
func parseNexthop(m []byte) (uint32, nexthop, bool) {
	if len(m) < 8 || m[0] != unix.AF_INET || m[2] != uint8(RouteProtocol) {
		return 0, nexthop{}, false
	}
	attrs, err := nl.ParseRouteAttr(m[8:])
	if err != nil {
		return 0, nexthop{}, false
	}
	var id uint32
	h := nexthop{onlink: binary.NativeEndian.Uint32(m[4:8])&nhaFlagOnlink != 0}
	for _, a := range attrs {
		switch a.Attr.Type {
		case unix.NHA_ID:
			if len(a.Value) == 4 {
				id = binary.NativeEndian.Uint32(a.Value)
			}
		case unix.NHA_OIF:
			if len(a.Value) == 4 {
				h.link = int(binary.NativeEndian.Uint32(a.Value))
			}
		case unix.NHA_GATEWAY:
			h.gw, _ = netip.AddrFromSlice(a.Value)
		case unix.NHA_GROUP, unix.NHA_BLACKHOLE:
			return 0, nexthop{}, false
		}
	}
	return id, h, id != 0
}

// removeUnwantedNexthops deletes weft's nexthop objects whose id no wanted
// route has (want: the ids of the wanted IPv4 routes).
func (n *Netlink) removeUnwantedNexthops(want map[uint32]bool) error {
	n.nh.mu.Lock()
	var gone []uint32
	for id := range n.nh.owned {
		if !want[id] {
			gone = append(gone, id)
		}
	}
	n.nh.mu.Unlock()
	var errs []error
	for _, id := range gone {
		errs = append(errs, n.delNexthop(id))
	}
	return errors.Join(errs...)
}
