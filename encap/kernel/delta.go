package kernel

import (
	"errors"
	"sync"
)

// changeQueue holds the changes of the wanted state queued for the next
// Update (see Change), or that the whole state may have changed (resync).
type changeQueue struct {
	mu     sync.Mutex
	deltas []delta
	resync bool
}

type delta struct{ gone, added State }

// Change queues a change of the wanted state for the next Update and wakes
// the loop: gone holds the entries no longer wanted, added those wanted
// now, each in a State's form (Dev and Dev6 name the devices of their
// neighbour and FDB entries). The backend's Desired must already give the
// state with the change made. Update programs the queued changes in order,
// without calling Desired or reading the whole state, so a peer that came
// or went costs its own entries, whatever the number of peers. Trigger
// (the whole state may have changed) makes the next Update diff the whole
// state instead. It never blocks.
func (r *Reconciler) Change(gone, added State) {
	r.init()
	r.queue.mu.Lock()
	r.queue.deltas = append(r.queue.deltas, delta{gone, added})
	r.queue.mu.Unlock()
	select {
	case r.trigger <- struct{}{}:
	default:
	}
}

// takeQueue empties the queue.
func (r *Reconciler) takeQueue() ([]delta, bool) {
	r.queue.mu.Lock()
	defer r.queue.mu.Unlock()
	d, resync := r.queue.deltas, r.queue.resync
	r.queue.deltas, r.queue.resync = nil, false
	return d, resync
}

// applyDeltas programs queued changes against the base. It reports false
// when it cannot (no base, a device that changed, an entry an index cannot
// key): the caller diffs the whole state.
func (r *Reconciler) applyDeltas(ds []delta) (bool, error) {
	x := r.base
	if x == nil {
		return false, nil
	}
	ok := true
	check := func(e entry) {
		if !x.keyable(e) {
			ok = false
		}
	}
	for _, d := range ds {
		d.gone.each(check)
		d.added.each(check)
	}
	if !ok {
		return false, nil
	}
	r.updates.Add(1)
	var c change
	var errs []error
	for _, d := range ds {
		// What a change both removes and adds stays as it is: a vxlan peer
		// whose public IP changed keeps its route and neighbour (only its
		// FDB entry moves), instead of losing them for a moment and paying
		// a route add, which the kernel makes O(N) at N routes of one
		// device (fib_find_info walks one hash bucket holding them all).
		kept := d.added.set()
		d.gone.each(func(e entry) {
			if kept.has(e) {
				return
			}
			if got, ok := x.get(e); ok && got == e {
				r.removeEntry(e, &c, &errs)
				x.del(e)
			}
		})
		d.added.each(func(e entry) {
			if got, ok := x.get(e); ok {
				if got == e {
					return
				}
				r.removeEntry(got, &c, &errs)
				x.del(got)
			}
			r.addEntry(e, &c, &errs)
			x.put(e)
		})
	}
	return true, r.finishUpdate(c, errs)
}

// each calls fn with every entry of s.
func (s State) each(fn func(entry)) {
	for _, rt := range s.Routes {
		fn(routeEntry(rt))
	}
	for _, n := range s.Neighs {
		fn(neighEntry(n, s.Dev))
	}
	for _, f := range s.FDB {
		fn(fdbEntry(f, s.Dev))
	}
	for _, n := range s.Neighs6 {
		fn(neighEntry(n, s.Dev6))
	}
	for _, f := range s.FDB6 {
		fn(fdbEntry(f, s.Dev6))
	}
}

// keyable reports whether x can hold e: a neighbour or FDB entry on x's
// device of its family, with a six-byte MAC.
func (x *index) keyable(e entry) bool {
	switch e.kind {
	case kindRoute:
		_, ok4 := v4(e.dst.Addr())
		_, ok6 := v6(e.dst.Addr())
		return ok4 || ok6
	case kindNeigh, kindFDB:
		if e.mac.n != 6 {
			return false
		}
		if _, ok := v4(e.ip); ok {
			return x.dev != 0 && e.link == x.dev
		}
		_, ok := v6(e.ip)
		return ok && x.dev6 != 0 && e.link == x.dev6
	}
	return false
}

// get returns the entry x holds under e's key (a route's destination, a
// neighbour's address; an FDB entry is its own key).
func (x *index) get(e entry) (entry, bool) {
	switch e.kind {
	case kindRoute:
		if a, ok := v4(e.dst.Addr()); ok {
			r, ok := x.routes[uint64(a)<<8|uint64(e.dst.Bits())]
			return routeEntry(r), ok
		}
		a, _ := v6(e.dst.Addr())
		r, ok := x.routes6[prefix6{a, uint8(e.dst.Bits())}]
		return routeEntry(r), ok
	case kindNeigh:
		if a, ok := v4(e.ip); ok {
			m, ok := x.neighs[a]
			return entry{kind: kindNeigh, ip: e.ip, mac: macOf(m[:]), link: x.dev}, ok
		}
		a, _ := v6(e.ip)
		m, ok := x.neighs6[a]
		return entry{kind: kindNeigh, ip: e.ip, mac: macOf(m[:]), link: x.dev6}, ok
	case kindFDB:
		var ok bool
		if a, is4 := v4(e.ip); is4 {
			_, ok = x.fdb[fdbKey{[6]byte(e.mac.b[:6]), a}]
		} else {
			a, _ := v6(e.ip)
			_, ok = x.fdb6[fdbKey6{[6]byte(e.mac.b[:6]), a}]
		}
		return e, ok
	}
	return entry{}, false
}

func (x *index) put(e entry) {
	switch e.kind {
	case kindRoute:
		r := e.route()
		if a, ok := v4(e.dst.Addr()); ok {
			x.routes[uint64(a)<<8|uint64(e.dst.Bits())] = r
			return
		}
		a, _ := v6(e.dst.Addr())
		x.routes6[prefix6{a, uint8(e.dst.Bits())}] = r
	case kindNeigh:
		if a, ok := v4(e.ip); ok {
			x.neighs[a] = [6]byte(e.mac.b[:6])
			return
		}
		a, _ := v6(e.ip)
		x.neighs6[a] = [6]byte(e.mac.b[:6])
	case kindFDB:
		if a, ok := v4(e.ip); ok {
			x.fdb[fdbKey{[6]byte(e.mac.b[:6]), a}] = struct{}{}
			return
		}
		a, _ := v6(e.ip)
		x.fdb6[fdbKey6{[6]byte(e.mac.b[:6]), a}] = struct{}{}
	}
}

func (x *index) del(e entry) {
	switch e.kind {
	case kindRoute:
		if a, ok := v4(e.dst.Addr()); ok {
			delete(x.routes, uint64(a)<<8|uint64(e.dst.Bits()))
			return
		}
		a, _ := v6(e.dst.Addr())
		delete(x.routes6, prefix6{a, uint8(e.dst.Bits())})
	case kindNeigh:
		if a, ok := v4(e.ip); ok {
			delete(x.neighs, a)
			return
		}
		a, _ := v6(e.ip)
		delete(x.neighs6, a)
	case kindFDB:
		if a, ok := v4(e.ip); ok {
			delete(x.fdb, fdbKey{[6]byte(e.mac.b[:6]), a})
			return
		}
		a, _ := v6(e.ip)
		delete(x.fdb6, fdbKey6{[6]byte(e.mac.b[:6]), a})
	}
}

// removeEntry deletes e from the kernel for an update, recording it in c.
func (r *Reconciler) removeEntry(e entry, c *change, errs *[]error) {
	if _, refused := r.conflicts[e]; refused {
		delete(r.conflicts, e) // never installed: nothing to remove
		return
	}
	r.expectOwn(e)
	if gone, err := r.NL.remove(e); err != nil || !gone {
		r.forgetOwn(&e)
		if err != nil {
			*errs = append(*errs, err)
			return
		}
	}
	c.removed = append(c.removed, e)
}

// addEntry programs e for an update, recording it in c.
func (r *Reconciler) addEntry(e entry, c *change, errs *[]error) {
	var err error
	switch e.kind {
	case kindRoute:
		var other string
		if other, err = r.NL.addRoute(e.route()); err == nil && other != "" {
			c.conflict(e, other)
			return
		}
	case kindNeigh:
		err = r.NL.setNeigh(Neigh{IP: e.ip, MAC: e.mac.hw()}, e.link)
	case kindFDB:
		err = r.NL.setFDB(FDB{MAC: e.mac.hw(), Dst: e.ip}, e.link)
	}
	if err != nil {
		*errs = append(*errs, err)
		return
	}
	c.added = append(c.added, e)
}

// finishUpdate records what an update did. After an error the next pass
// is a full one.
func (r *Reconciler) finishUpdate(c change, errs []error) error {
	r.record(c, nil, true)
	if r.installed == nil {
		r.installed = entrySet{}
	}
	for _, e := range c.removed {
		r.installed.remove(e)
	}
	for _, e := range c.added {
		r.installed.add(e)
	}
	for e, other := range c.conflicts {
		if r.conflicts == nil {
			r.conflicts = map[entry]string{}
		}
		r.conflicts[e] = other
	}
	r.publishRefused()
	if err := errors.Join(errs...); err != nil {
		r.fail(err)
		r.base = nil // the next pass is a full one
		r.Trigger()
		return err
	}
	return nil
}
