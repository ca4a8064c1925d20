package kernel

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// DefaultInterval is how often the reconcile loop checks the kernel when
// nothing told it to. Netlink events trigger a pass sooner: deletions of
// routes, neighbours and FDB entries that were not weft's own, and a
// device of the state (or one its routes leave by) deleted, taken down or
// losing an address, after which IPv4 flushes routes without announcing
// them (and any change of such a device or its addresses, after which
// refused routes may go in). The period catches what events still miss (an entry changed in
// place), at the cost of dumping every table: ~0.1 s of CPU at 5,000
// peers, which every 5 s (the period until these link and address events
// were watched) was most of what a lease event cost at 50 events a second.
const DefaultInterval = 30 * time.Second

// debounce lets a burst of events (a device deleted with all its routes)
// end before the pass that repairs them.
const debounce = 50 * time.Millisecond

// Reconciler keeps the kernel in step with a backend's wanted state: on
// every change of it, on netlink events about weft's routes and device,
// and every Interval.
type Reconciler struct {
	NL       *Netlink
	Log      *slog.Logger
	Interval time.Duration
	// Desired returns the state to program, or ready=false before the
	// first lease snapshot (nothing is removed until weft knows its
	// peers, so a restart keeps leftover state flowing). It may (re)create
	// what the state hangs on, such as the vxlan device.
	Desired func() (s State, ready bool, err error)

	trigger chan struct{}
	once    sync.Once
	queue   changeQueue

	mu        sync.Mutex
	installed entrySet         // entries weft programmed and believes in place
	conflicts map[entry]string // wanted routes refused, for logging once
	// refusedView is conflicts as Stats shows them, published after each
	// pass or update: Stats must not wait for a pass (a full pass at
	// thousands of peers holds mu for seconds; `weft status` timed out).
	refusedView atomic.Pointer[map[string]string]
	dev, dev6   atomic.Int64 // the devices of the last state, for event filtering
	// links are the devices of the last state and those its routes leave
	// by (host-gw's underlay): their link and address events wake a pass.
	links atomic.Pointer[[]int]
	// base indexes the state the kernel held after the last pass that
	// ended without error: an Update programs only its difference from
	// the new state. nil after a failure, until a full pass. spare is the
	// next index to fill.
	base, spare *index

	// own are deletions an Update made, whose netlink events must not
	// wake a full pass (each would dump every table per lease event).
	ownMu sync.Mutex
	own   map[entry]struct{}

	passes, updates, programmed, repairs, stale, failures, refusedRoutes atomic.Uint64
	lastErr                                                              atomic.Value // string
}

// Stats are the reconcile loop's counters.
type Stats struct {
	// Passes counts full passes (dumps of the kernel's tables); Updates
	// passes that programmed only a change of the leases.
	Passes  uint64 `json:"passes"`
	Updates uint64 `json:"updates"`
	// Programmed counts entries added because the leases changed;
	// Repairs entries weft had programmed that were found missing or
	// altered and were put back; StaleRemoved tagged entries no lease
	// wants any more (a peer left, or state left from an earlier run).
	Programmed   uint64 `json:"programmed"`
	Repairs      uint64 `json:"repairs"`
	StaleRemoved uint64 `json:"stale_removed"`
	Failures     uint64 `json:"failures"`
	// Conflicts counts wanted routes refused because a route weft did
	// not make holds the destination (each counted once while it lasts);
	// Refused lists those of the last pass.
	Conflicts uint64            `json:"conflicts"`
	Refused   map[string]string `json:"refused_routes,omitempty"`
	LastError string            `json:"last_error,omitempty"`
	// PlainRoutes says why IPv4 routes go in plain rather than by nexthop
	// object ("" when they go by nexthop object; see Netlink.Nexthops);
	// ForeignNexthops counts routes put in plain because another holds
	// their nexthop id.
	PlainRoutes     string `json:"plain_routes,omitempty"`
	ForeignNexthops uint64 `json:"foreign_nexthops,omitempty"`
}

func (r *Reconciler) init() {
	r.once.Do(func() {
		r.trigger = make(chan struct{}, 1)
		if r.Interval <= 0 {
			r.Interval = DefaultInterval
		}
	})
}

// Trigger asks for a pass soon: the whole wanted state may have changed
// (see Change for a part of it). It never blocks.
func (r *Reconciler) Trigger() {
	r.init()
	r.queue.mu.Lock()
	r.queue.resync = true
	r.queue.mu.Unlock()
	select {
	case r.trigger <- struct{}{}:
	default:
	}
}

// Stats returns the counters.
func (r *Reconciler) Stats() Stats {
	s := Stats{Passes: r.passes.Load(), Updates: r.updates.Load(), Programmed: r.programmed.Load(), Repairs: r.repairs.Load(),
		StaleRemoved: r.stale.Load(), Failures: r.failures.Load(), Conflicts: r.refusedRoutes.Load()}
	if v := r.refusedView.Load(); v != nil && len(*v) > 0 {
		s.Refused = *v
	}
	s.LastError, _ = r.lastErr.Load().(string)
	s.PlainRoutes, s.ForeignNexthops = r.NL.NexthopsOff(), r.NL.nhForeign.Load()
	return s
}

// Pass runs one full reconcile pass now: it dumps the kernel's tables and
// repairs whatever differs from the wanted state. Passes are serialized.
func (r *Reconciler) Pass() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	// The pass programs the whole state, changes queued so far included.
	r.takeQueue()
	want, ready, err := r.Desired()
	if err != nil {
		r.fail(err)
		return err
	}
	if !ready {
		return nil
	}
	r.dev.Store(int64(want.Dev))
	r.dev6.Store(int64(want.Dev6))
	r.links.Store(want.links())
	r.passes.Add(1)
	r.forgetOwn(nil)
	c, err := r.NL.reconcile(want)
	wanted := want.set()
	r.record(c, wanted, false)
	r.conflicts = c.conflicts
	r.publishRefused()
	if err != nil {
		r.fail(err)
		// Keep what is known to be in place; a later pass retries the rest.
		for h := range r.installed {
			if _, ok := wanted[h]; !ok {
				delete(r.installed, h)
			}
		}
		r.base = nil
		return err
	}
	for e := range c.conflicts {
		wanted.remove(e) // not installed
	}
	r.installed = wanted
	r.setBase(want)
	return nil
}

// record counts and logs what a pass did. wanted is the pass's state; an
// update counts its removals as stale whatever they were.
func (r *Reconciler) record(c change, wanted entrySet, update bool) {
	for _, e := range c.added {
		if r.installed.has(e) && !update {
			r.repairs.Add(1)
			r.Log.Warn("repaired kernel state someone removed or changed", "entry", e)
		} else {
			r.programmed.Add(1)
			r.Log.Debug("programmed", "entry", e)
		}
	}
	for e, other := range c.conflicts {
		if _, known := r.conflicts[e]; !known {
			r.refusedRoutes.Add(1)
			r.Log.Warn("refusing a peer's route: a route weft did not make holds its destination", "want", e, "existing", other)
		}
	}
	for _, e := range c.removed {
		if wanted.has(e) {
			continue // a duplicate or altered copy of a wanted entry
		}
		r.stale.Add(1)
		if update {
			// A peer that left: the store and admission logged it at
			// Info already; a line per entry (three for vxlan) is what
			// debugging wants, not every lease event.
			r.Log.Debug("removed a departed peer's kernel state", "entry", e)
			continue
		}
		r.Log.Info("removed stale kernel state", "entry", e)
	}
}

func (r *Reconciler) fail(err error) {
	r.failures.Add(1)
	r.lastErr.Store(err.Error())
	r.Log.Error("reconciling kernel state", "err", err)
}

// Run reconciles until ctx ends, then returns nil, leaving the kernel
// state in place for the next start (as flanneld does on SIGTERM).
func (r *Reconciler) Run(ctx context.Context) error {
	r.init()
	events, watching := r.subscribe(ctx)
	// Run returns once its subscriptions are closed: a caller may then
	// release what they hang on (the namespace handle).
	defer func() { <-watching }()
	tick := time.NewTicker(r.Interval)
	defer tick.Stop()
	r.Pass()
	for {
		full := true
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		case <-r.trigger:
			full = false // the leases changed: program the difference
		case <-events:
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(debounce):
			}
			drain(events)
		}
		drain(r.trigger)
		if full {
			r.Pass()
		} else {
			r.Update()
		}
	}
}

func drain(c <-chan struct{}) {
	for {
		select {
		case <-c:
		default:
			return
		}
	}
}

// subscribe turns kernel notifications about weft's routes and about
// neighbours and FDB entries of its device into wake-ups. A subscription
// that ends (the kernel drops a socket's messages when its buffer
// overflows, ENOBUFS, and the netlink library then closes the channel:
// 5,000 routes programmed in half a second do that) wakes a full pass,
// since events were lost, and is made again; one that cannot be made
// leaves the periodic pass, logged.
func (r *Reconciler) subscribe(ctx context.Context) (wakes <-chan struct{}, done <-chan struct{}) {
	wake := make(chan struct{}, 1)
	ended := make(chan struct{})
	poke := func() {
		select {
		case wake <- struct{}{}:
		default:
		}
	}
	go func() {
		defer close(ended)
		warned := false
		for ctx.Err() == nil {
			err := r.watch(ctx, poke)
			if err != nil && !warned {
				r.Log.Warn("cannot watch routes and neighbours; repairing every interval until it can", "interval", r.Interval, "err", err)
				warned = true
			}
			poke()
			wait := time.Second
			if err != nil {
				wait = r.Interval
			}
			select {
			case <-ctx.Done():
			case <-time.After(wait):
			}
		}
	}()
	return wake, ended
}

// subscribeBuffer is the receive buffer asked for each subscription, so
// a burst of a few thousand route changes fits (SO_RCVBUFFORCE as root).
const subscribeBuffer = 4 << 20

// watch subscribes and pokes on the events that may need a repair, until
// ctx ends or a subscription does.
func (r *Reconciler) watch(ctx context.Context, poke func()) error {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	onErr := func(err error) { r.Log.Debug("netlink subscription", "err", err) }
	dels, err := r.NL.subscribeDeletions()
	if err != nil {
		return err
	}
	lost := make(chan error, 1)
	go func() { lost <- readDeletions(sctx, dels, func(d deletion) { r.onDeletion(d, poke) }) }()
	links := make(chan netlink.LinkUpdate, 16)
	if err := netlink.LinkSubscribeWithOptions(links, sctx.Done(), netlink.LinkSubscribeOptions{
		Namespace: r.NL.NS, ErrorCallback: onErr}); err != nil {
		return err
	}
	addrs := make(chan netlink.AddrUpdate, 16)
	if err := netlink.AddrSubscribeWithOptions(addrs, sctx.Done(), netlink.AddrSubscribeOptions{
		Namespace: r.NL.NS, ErrorCallback: onErr}); err != nil {
		cancel()
		drainSub(links)
		return err
	}
	defer func() {
		cancel()
		go drainSub(links)
		go drainSub(addrs)
	}()
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-lost:
			onErr(err)
			return nil // lost: the caller makes a full pass and subscribes again
		case u, ok := <-links:
			if !ok {
				return nil
			}
			// Any change: down flushes routes unannounced, and back up
			// they can be programmed again.
			if r.watchedLink(int(u.Index)) {
				poke()
			}
		case u, ok := <-addrs:
			if !ok {
				return nil
			}
			// A deleted address flushes the routes through it unannounced;
			// an added one may let refused routes in.
			if r.watchedLink(u.LinkIndex) {
				poke()
			}
		}
	}
}

// onDeletion pokes for a deletion that may need a repair: of a route
// tagged weft's, of a neighbour or FDB entry on weft's device, of one of
// weft's nexthop objects (which takes its routes unannounced), each
// unless an Update made it.
func (r *Reconciler) onDeletion(d deletion, poke func()) {
	switch d.typ {
	case unix.RTM_DELROUTE:
		if d.proto == uint8(RouteProtocol) && !r.wasOwn(d.e) {
			poke()
		}
	case unix.RTM_DELNEIGH:
		if r.ownDevice(d.link) && !r.wasOwn(d.e) {
			poke()
		}
	case unix.RTM_DELNEXTHOP:
		if d.tagged && r.NL.ownsNexthop(d.nh) {
			poke()
		}
	}
}

// watchedLink reports whether link is a device of the last state or one
// its routes leave by.
func (r *Reconciler) watchedLink(link int) bool {
	if p := r.links.Load(); p != nil {
		for _, l := range *p {
			if l == link {
				return true
			}
		}
	}
	return false
}

// drainSub empties a subscription channel the netlink library still sends
// on (it sends without watching done) until it closes it.
func drainSub[T any](ch chan T) {
	for range ch {
	}
}

// ownDevice reports whether link is one of the devices of the last state.
func (r *Reconciler) ownDevice(link int) bool {
	l := int64(link)
	return l != 0 && (l == r.dev.Load() || l == r.dev6.Load())
}

// expectOwn records a deletion an Update is about to make.
func (r *Reconciler) expectOwn(e entry) {
	r.ownMu.Lock()
	if r.own == nil {
		r.own = map[entry]struct{}{}
	}
	r.own[ownKey(e)] = struct{}{}
	r.ownMu.Unlock()
}

// forgetOwn drops expected deletions: one that failed (no event comes),
// or all of them (k nil) when a full pass starts, which repairs anyway.
func (r *Reconciler) forgetOwn(e *entry) {
	r.ownMu.Lock()
	if e == nil {
		r.own = nil
	} else {
		delete(r.own, ownKey(*e))
	}
	r.ownMu.Unlock()
}

// wasOwn reports (once) whether a deletion event is one an Update made.
func (r *Reconciler) wasOwn(k entry) bool {
	r.ownMu.Lock()
	defer r.ownMu.Unlock()
	if _, ok := r.own[k]; ok {
		delete(r.own, k)
		return true
	}
	return false
}

// ownKey is what a deletion event tells of an entry: a route's
// destination, a neighbour's address, an FDB entry's MAC and remote.
func ownKey(e entry) entry {
	switch e.kind {
	case kindRoute:
		return entry{kind: kindRoute, dst: e.dst}
	case kindNeigh:
		return entry{kind: kindNeigh, ip: e.ip}
	}
	return entry{kind: kindFDB, ip: e.ip, mac: e.mac}
}

// setBase indexes want as the base of the next Update.
func (r *Reconciler) setBase(want State) {
	x := r.spare
	if x == nil || x == r.base {
		x = new(index)
	}
	if !x.fill(want) {
		r.base = nil
		return
	}
	r.spare, r.base = r.base, x
}

// publishRefused publishes conflicts for Stats. Called with mu held.
func (r *Reconciler) publishRefused() {
	v := make(map[string]string, len(r.conflicts))
	for e, other := range r.conflicts {
		v[e.String()] = other
	}
	r.refusedView.Store(&v)
}
