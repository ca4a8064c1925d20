package kernel

import (
	"net"
	"sync/atomic"

	"github.com/vishvananda/netlink"
)

// Ops counts the netlink work of a Netlink: requests (one per entry,
// whether alone, a round trip each, or in a batch of many per sendmsg),
// batches, and dumps, with the entries they returned. A dump walks a
// whole table in the kernel whatever its filter, so its cost grows with
// the table; tests use the counts to hold the cost of one lease event
// independent of the cluster's size.
type Ops struct {
	Requests, Batches, Dumps, Dumped uint64
}

type opCounter struct{ requests, batches, dumps, dumped atomic.Uint64 }

// Ops returns the counts so far.
func (n *Netlink) Ops() Ops {
	return Ops{Requests: n.ops.requests.Load(), Batches: n.ops.batches.Load(), Dumps: n.ops.dumps.Load(), Dumped: n.ops.dumped.Load()}
}

// dump is Dump, counted.
func dump[T any](n *Netlink, f func() ([]T, error)) ([]T, error) {
	out, err := Dump(f)
	n.ops.dumps.Add(1)
	n.ops.dumped.Add(uint64(len(out)))
	return out, err
}

func (n *Netlink) request() { n.ops.requests.Add(1) }

func (n *Netlink) routeReplace(r *netlink.Route) error { n.request(); return n.H.RouteReplace(r) }
func (n *Netlink) routeAdd(r *netlink.Route) error     { n.request(); return n.H.RouteAdd(r) }
func (n *Netlink) routeDel(r *netlink.Route) error     { n.request(); return n.H.RouteDel(r) }
func (n *Netlink) neighSet(nb *netlink.Neigh) error    { n.request(); return n.H.NeighSet(nb) }
func (n *Netlink) neighDel(nb *netlink.Neigh) error    { n.request(); return n.H.NeighDel(nb) }

func (n *Netlink) routeGet(ip net.IP, o *netlink.RouteGetOptions) ([]netlink.Route, error) {
	n.request()
	return n.H.RouteGetWithOptions(ip, o)
}
