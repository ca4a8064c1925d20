package kernel

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Update programs what changed in the wanted state since the last pass,
// from the changes queued by Change when there are only those (without
// calling Desired), else by diffing Desired's whole state:
// the route, neighbour and FDB entry of a peer that came or went, one
// request each, with no dump of the kernel's tables, so a lease event costs
// the same at 5,000 peers as at 5. What someone changed by hand meanwhile
// is left to the full passes (the periodic one, and those netlink events
// trigger). Without a good last pass (the first, or after a failure), or
// when the device changed, it runs a full pass instead.
func (r *Reconciler) Update() error {
	r.mu.Lock()
	deltas, resync := r.takeQueue()
	var done bool
	var err error
	if !resync && len(deltas) > 0 {
		done, err = r.applyDeltas(deltas)
	}
	if !done {
		done, err = r.update()
	}
	r.mu.Unlock()
	if !done {
		return r.Pass()
	}
	return err
}

func (r *Reconciler) update() (bool, error) {
	if r.base == nil {
		return false, nil
	}
	want, ready, err := r.Desired()
	if err != nil {
		r.fail(err)
		return true, err
	}
	if !ready {
		return true, nil
	}
	x := r.spare
	if x == nil {
		x = new(index)
	}
	if want.Dev != r.base.dev || want.Dev6 != r.base.dev6 || !x.fill(want) {
		return false, nil
	}
	r.updates.Add(1)
	var c change
	var errs []error
	// Removals first: a peer that moved (new public IP or MAC) is one
	// entry removed and one added.
	x.diff(r.base, func(e entry) { r.removeEntry(e, &c, &errs) }, func(e entry) { r.addEntry(e, &c, &errs) })
	if err := r.finishUpdate(c, errs); err != nil {
		return true, err
	}
	r.spare, r.base = r.base, x
	return true, nil
}

// remove deletes one entry weft programmed. A route is deleted with weft's
// protocol in the request, and the kernel deletes only a route of that
// protocol (fib_table_delete matches fc_protocol when it is set), so a
// route weft did not make is never touched.
// It reports whether it deleted something (false: it was gone already).
func (n *Netlink) remove(e entry) (bool, error) {
	var err error
	switch e.kind {
	case kindRoute:
		gone, err := n.removeRoute(e.route())
		if err != nil {
			return false, fmt.Errorf("deleting %s: %w", e, err)
		}
		return gone, nil
	case kindNeigh:
		err = n.neighDel(&netlink.Neigh{LinkIndex: e.link, Family: family(e.ip), IP: e.ip.AsSlice()})
	case kindFDB:
		err = n.neighDel(&netlink.Neigh{LinkIndex: e.link, Family: unix.AF_BRIDGE, Flags: netlink.NTF_SELF,
			HardwareAddr: e.mac.hw(), IP: e.ip.AsSlice()})
	}
	if errors.Is(err, unix.ENOENT) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("deleting %s: %w", e, err)
	}
	return true, nil
}

// addRoute adds w, or returns the route weft did not make that holds its
// destination (see untaggedRoute), without dumping the routing table when
// it can: it asks the FIB which entry it would use for w's first address
// (RTM_F_FIB_MATCH, one request); when that is a less specific route of
// the main table, or there is none, no route to exactly w's destination
// answers lookups, and w is added with NLM_F_EXCL, which the kernel
// refuses (EEXIST) if a route of the same destination, TOS and metric
// exists after all. Anything else takes the dump of untaggedRoute. The
// lookup cannot see a route whose nexthops are all dead or one with a TOS:
// such a route with another metric than weft's could be shadowed, as it
// could be by a more specific route anyone adds.
func (n *Netlink) addRoute(w Route) (string, error) {
	if !n.mayBeHeld(w) {
		err := n.putRoute(w, true)
		if err == nil {
			return "", nil
		}
		if !errors.Is(err, unix.EEXIST) {
			return "", fmt.Errorf("adding route %s: %w", w, err)
		}
	}
	if other, err := n.untaggedRoute(w); err != nil || other != "" {
		return other, err
	}
	if err := n.putRoute(w, false); err != nil {
		return "", fmt.Errorf("adding route %s: %w", w, err)
	}
	return "", nil
}

func (n *Netlink) mayBeHeld(w Route) bool {
	rs, err := n.routeGet(w.Dst.Addr().AsSlice(), &netlink.RouteGetOptions{FIBMatch: true})
	if errors.Is(err, unix.ENETUNREACH) || errors.Is(err, unix.EHOSTUNREACH) {
		return false // no route at all
	}
	if err != nil || len(rs) != 1 || rs[0].Table != unix.RT_TABLE_MAIN {
		return true
	}
	bits := 0
	if rs[0].Dst != nil {
		bits, _ = rs[0].Dst.Mask.Size()
	}
	return bits >= w.Dst.Bits()
}
