package kernel

import (
	"errors"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// The full pass's adds, in batches (batch.go). Each request is the one
// the netlink library would send for the same entry (NeighSet,
// RouteReplace), built here because the library sends as it builds. Where
// the batch socket itself fails, an entry falls back to its single
// request, so a pass never does less than it did before batches.

// queueNeigh queues w on dev (RTM_NEWNEIGH, create or replace, as
// NeighSet); done gets the outcome.
func (b *batch) queueNeigh(w Neigh, dev int, done func(error)) {
	b.queue(neighSetRequest(w.IP.AsSlice(), w.MAC, dev, family(w.IP), 0), done, func() error {
		return b.n.neighSet(&netlink.Neigh{LinkIndex: dev, Family: family(w.IP), State: netlink.NUD_PERMANENT,
			Type: unix.RTN_UNICAST, IP: w.IP.AsSlice(), HardwareAddr: w.MAC})
	})
}

// queueFDB queues w on the vxlan device dev (`bridge fdb replace ... self
// permanent`, as NeighSet with NTF_SELF).
func (b *batch) queueFDB(w FDB, dev int, done func(error)) {
	b.queue(neighSetRequest(w.Dst.AsSlice(), w.MAC, dev, unix.AF_BRIDGE, netlink.NTF_SELF), done, func() error {
		return b.n.neighSet(&netlink.Neigh{LinkIndex: dev, Family: unix.AF_BRIDGE, State: netlink.NUD_PERMANENT,
			Flags: netlink.NTF_SELF, IP: w.Dst.AsSlice(), HardwareAddr: w.MAC})
	})
}

func neighSetRequest(ip []byte, mac net.HardwareAddr, dev, fam, flags int) nlRequest {
	typ := unix.RTN_UNICAST
	if fam == unix.AF_BRIDGE {
		typ = 0
	}
	return nlRequest{typ: unix.RTM_NEWNEIGH, flags: unix.NLM_F_CREATE | unix.NLM_F_REPLACE, data: []nl.NetlinkRequestData{
		&netlink.Ndmsg{Family: uint8(fam), Index: uint32(dev), State: netlink.NUD_PERMANENT, Flags: uint8(flags), Type: uint8(typ)},
		nl.NewRtAttr(unix.NDA_DST, ip),
		nl.NewRtAttr(unix.NDA_LLADDR, []byte(mac)),
	}}
}

// queueRoute queues w replacing whatever tagged route holds its
// destination (RouteReplace), plain.
func (b *batch) queueRoute(w Route, done func(error)) {
	b.queue(plainRouteRequest(w), done, func() error { return b.n.routeReplace(w.netlink()) })
}

func plainRouteRequest(w Route) nlRequest {
	msg := nl.NewRtMsg()
	msg.Family = uint8(family(w.Dst.Addr()))
	msg.Dst_len = uint8(w.Dst.Bits())
	msg.Protocol = uint8(RouteProtocol)
	if w.Onlink {
		msg.Flags = uint32(netlink.FLAG_ONLINK)
	}
	return nlRequest{typ: unix.RTM_NEWROUTE, flags: unix.NLM_F_CREATE | unix.NLM_F_REPLACE, data: []nl.NetlinkRequestData{msg,
		nl.NewRtAttr(unix.RTA_DST, w.Dst.Addr().AsSlice()),
		nl.NewRtAttr(unix.RTA_GATEWAY, w.Gw.AsSlice()),
		nl.NewRtAttr(unix.RTA_OIF, nl.Uint32Attr(uint32(w.LinkIndex))),
	}}
}

// queue adds req to the batch; when the batch socket fails, alone runs
// the entry's single request instead and done gets its outcome.
func (b *batch) queue(req nlRequest, done func(error), alone func() error) {
	b.add(req.typ, req.flags, req.data, func(err error) {
		if errors.Is(err, errBatchSocket) {
			err = alone()
		}
		done(err)
	})
}

// putRoutes puts every route of ws as putRoute(w, false) would (by
// nexthop object where those are on, else plain), in batches: first the
// nexthop objects, then the routes. done gets each route's outcome, in
// the order the kernel handled them.
func (n *Netlink) putRoutes(ws []Route, done func(Route, error)) {
	var byNH []Route
	var ids []uint32
	plain := n.newBatch()
	if n.nhOn() {
		objs := n.newBatch()
		for _, w := range ws {
			id, ok := nhID(w.Dst)
			if !ok {
				plain.queueRoute(w, func(err error) { done(w, err) })
				continue
			}
			req, owned, skip := n.nexthopPut(id, w)
			if skip {
				byNH, ids = append(byNH, w), append(ids, id)
				continue
			}
			objs.queue(req, func(err error) {
				err = n.nexthopPutDone(id, w, owned, err)
				switch {
				case err == nil:
					byNH, ids = append(byNH, w), append(ids, id)
				case errors.Is(err, errForeignNexthop):
					n.nhForeign.Add(1)
					plain.queueRoute(w, func(err error) { done(w, err) })
				case n.nhUnsupported(err):
					plain.queueRoute(w, func(err error) { done(w, err) })
				default:
					done(w, fmt.Errorf("adding nexthop %d: %w", id, err))
				}
			}, func() error { return n.putNexthop(id, w) })
		}
		objs.flush()
	} else {
		for _, w := range ws {
			plain.queueRoute(w, func(err error) { done(w, err) })
		}
	}
	routes := n.newBatch()
	for i, w := range byNH {
		id := ids[i]
		routes.queue(routeByNexthopRequest(w, id, false), func(err error) { done(w, err) },
			func() error { return n.routeByNexthop(w, id, false) })
	}
	routes.flush()
	plain.flush()
}
