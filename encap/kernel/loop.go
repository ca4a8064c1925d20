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
// nothing told it to. Netlink events trigger a pass sooner; the period
// catches what events miss (IPv4 does not announce routes it flushes with
// a deleted device).
const DefaultInterval = 5 * time.Second

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

	mu        sync.Mutex
	installed map[string]bool   // keys of the last state fully programmed
	conflicts map[string]string // wanted routes refused, for logging once
	dev       atomic.Int64      // the device of the last state, for event filtering

	passes, programmed, repairs, stale, failures, refusedRoutes atomic.Uint64
	lastErr                                                     atomic.Value // string
}

// Stats are the reconcile loop's counters.
type Stats struct {
	Passes uint64 `json:"passes"`
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
}

func (r *Reconciler) init() {
	r.once.Do(func() {
		r.trigger = make(chan struct{}, 1)
		if r.Interval <= 0 {
			r.Interval = DefaultInterval
		}
	})
}

// Trigger asks for a pass soon. It never blocks.
func (r *Reconciler) Trigger() {
	r.init()
	select {
	case r.trigger <- struct{}{}:
	default:
	}
}

// Stats returns the counters.
func (r *Reconciler) Stats() Stats {
	s := Stats{Passes: r.passes.Load(), Programmed: r.programmed.Load(), Repairs: r.repairs.Load(),
		StaleRemoved: r.stale.Load(), Failures: r.failures.Load(), Conflicts: r.refusedRoutes.Load()}
	r.mu.Lock()
	if len(r.conflicts) > 0 {
		s.Refused = make(map[string]string, len(r.conflicts))
		for k, v := range r.conflicts {
			s.Refused[k] = v
		}
	}
	r.mu.Unlock()
	s.LastError, _ = r.lastErr.Load().(string)
	return s
}

// Pass runs one reconcile pass now. Passes are serialized.
func (r *Reconciler) Pass() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	want, ready, err := r.Desired()
	if err != nil {
		r.fail(err)
		return err
	}
	if !ready {
		return nil
	}
	r.dev.Store(int64(want.Dev))
	r.passes.Add(1)
	c, err := r.NL.Reconcile(want)
	keys := want.Keys()
	for _, k := range c.Added {
		if r.installed[k] {
			r.repairs.Add(1)
			r.Log.Warn("repaired kernel state someone removed or changed", "entry", k)
		} else {
			r.programmed.Add(1)
			r.Log.Debug("programmed", "entry", k)
		}
	}
	for k, other := range c.Conflicts {
		if _, known := r.conflicts[k]; !known {
			r.refusedRoutes.Add(1)
			r.Log.Warn("refusing a peer's route: a route weft did not make holds its destination", "want", k, "existing", other)
		}
		delete(keys, k) // not installed
	}
	r.conflicts = c.Conflicts
	for _, k := range c.Removed {
		if keys[k] {
			continue // a duplicate or altered copy of a wanted entry
		}
		r.stale.Add(1)
		r.Log.Info("removed stale kernel state", "entry", k)
	}
	if err != nil {
		r.fail(err)
		// Keep what is known to be in place; a later pass retries the rest.
		for k := range r.installed {
			if !keys[k] {
				delete(r.installed, k)
			}
		}
		return err
	}
	r.installed = keys
	return nil
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
	events := r.subscribe(ctx)
	tick := time.NewTicker(r.Interval)
	defer tick.Stop()
	r.Pass()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		case <-r.trigger:
		case <-events:
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(debounce):
			}
			drain(events)
		}
		drain(r.trigger)
		r.Pass()
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
// neighbours and FDB entries of its device into wake-ups. A failed
// subscription leaves the periodic pass, logged.
func (r *Reconciler) subscribe(ctx context.Context) <-chan struct{} {
	wake := make(chan struct{}, 1)
	poke := func() {
		select {
		case wake <- struct{}{}:
		default:
		}
	}
	onErr := func(err error) { r.Log.Debug("netlink subscription", "err", err) }
	routes := make(chan netlink.RouteUpdate, 64)
	if err := netlink.RouteSubscribeWithOptions(routes, ctx.Done(), netlink.RouteSubscribeOptions{
		Namespace: r.NL.NS, ErrorCallback: onErr}); err != nil {
		r.Log.Warn("cannot watch routes; repairing every interval only", "interval", r.Interval, "err", err)
		routes = nil
	}
	neighs := make(chan netlink.NeighUpdate, 64)
	if err := netlink.NeighSubscribeWithOptions(neighs, ctx.Done(), netlink.NeighSubscribeOptions{
		Namespace: r.NL.NS, ErrorCallback: onErr}); err != nil {
		r.Log.Warn("cannot watch neighbours; repairing every interval only", "interval", r.Interval, "err", err)
		neighs = nil
	}
	go func() {
		for routes != nil || neighs != nil {
			select {
			case u, ok := <-routes:
				if !ok {
					routes = nil
					continue
				}
				if u.Type == unix.RTM_DELROUTE && u.Protocol == RouteProtocol {
					poke()
				}
			case u, ok := <-neighs:
				if !ok {
					neighs = nil
					continue
				}
				if dev := r.dev.Load(); dev != 0 && int64(u.LinkIndex) == dev && u.Type == unix.RTM_DELNEIGH {
					poke()
				}
			}
		}
	}()
	return wake
}
