package daemon

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/weft-net/weft/encap/admission"
	"github.com/weft-net/weft/encap/auto"
	"github.com/weft-net/weft/encap/hostgw"
	"github.com/weft-net/weft/encap/kernel"
	"github.com/weft-net/weft/lease"
)

// autoSettle is how long a new outcome of auto's rule must hold before
// the host moves: a peer whose lease comes and goes faster than this does
// not make the cluster thrash between backends. Each move within
// autoFlapWindow of the last doubles it, up to autoSettleMax, so a peer
// that flaps more slowly costs a move (a second or two of traffic) at
// most every autoSettleMax.
const (
	autoSettle     = 2 * time.Second
	autoSettleMax  = 2 * time.Minute
	autoFlapWindow = 10 * time.Minute
)

// settleFor is how long an outcome must hold, given the moves so far:
// recent counts the moves since the last quiet autoFlapWindow.
func settleFor(recent int) time.Duration {
	d := autoSettle
	for range recent {
		if d *= 2; d >= autoSettleMax {
			return autoSettleMax
		}
	}
	return d
}

// autoRecheck is how long after a change of the leases an auto host
// applies its rule again (see follow): later changes within it are taken
// in the same look.
const autoRecheck = 200 * time.Millisecond

// autoFirstTimeout bounds how long the first choice waits for the leases.
const autoFirstTimeout = 15 * time.Second

// Move is one change of backend by auto, for status and the log.
type Move struct {
	At   time.Time `json:"at"`
	From string    `json:"from"`
	To   string    `json:"to"`
	Why  string    `json:"why"`
}

// autoState is an auto host's bookkeeping of moves.
type autoState struct {
	pending string // the outcome waiting out its settle time ("": none)
	recent  int    // moves, each within autoFlapWindow of the one before
	mu      sync.Mutex
	moves   uint64
	last    *Move
}

func (a *autoState) record(m Move) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.last != nil && m.At.Sub(a.last.At) < autoFlapWindow {
		a.recent++
	} else {
		a.recent = 0
	}
	a.moves++
	a.last = &m
}

// settle is how long the next outcome must hold: longer after recent
// moves, back to autoSettle once the last move is autoFlapWindow old.
func (a *autoState) settle(now time.Time) time.Duration {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.last == nil || now.Sub(a.last.At) >= autoFlapWindow {
		return autoSettle
	}
	return settleFor(a.recent + 1)
}

// counts returns the moves so far and the last one (nil: none).
func (a *autoState) counts() (uint64, *Move) {
	if a == nil {
		return 0, nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.moves, a.last
}

// decide applies auto's rule to a snapshot of every lease. ok is false
// when a fact could not be read: the caller keeps what it runs.
func (d *daemon) decide(snap []lease.Lease) (typ, why string, ok bool) {
	host := d.ext.host()
	nl, err := kernel.Current()
	if err != nil {
		return "", "", false
	}
	// Every lease event of an auto host comes here: a handle left open
	// would hold its sockets until a collection found it.
	defer nl.Close()
	connected, err := nl.Connected(host.IfaceIndex)
	if err != nil {
		d.log.Warn("auto: cannot read the interface's subnets; keeping the current backend", "iface", host.Iface, "err", err)
		return "", "", false
	}
	// Admission without the backend's part: the rule counts every host a
	// backend could be asked to reach, whatever backend its lease names
	// now (mid-move, some still name the old one).
	var own lease.Lease
	if st := d.cur.Load(); st != nil {
		own = st.own
	}
	f := auto.Facts{Self: host.PublicIP, Self6: host.PublicIPv6, Connected: connected}
	self := func(l lease.Lease) bool {
		if !d.cfg.EnableIPv4 {
			return l.Attrs.PublicIPv6 == host.PublicIPv6
		}
		return l.Attrs.PublicIP == host.PublicIP
	}
	for _, dec := range admission.Admit(admission.FromConfig(d.cfg, own, nil, nil), snap) {
		if dec.Refused == nil && !self(dec.Lease) {
			f.Peers = append(f.Peers, dec.Lease)
		}
	}
	if err := hostgw.CheckPublicIP(host); err != nil {
		f.NoHostGW = err.Error()
	}
	typ, why = auto.Choose(f)
	return typ, why, true
}

// firstChoice is auto's choice at start, from the leases as they are now.
// When they cannot be read in time, vxlan: it reaches hosts on any
// segment, and the host moves once the leases come.
func (d *daemon) firstChoice(ctx context.Context) (string, string) {
	ctx, cancel := context.WithTimeout(ctx, autoFirstTimeout)
	defer cancel()
	snaps := make(chan []lease.Lease, 1)
	go d.o.Store.Watch(ctx, snaps)
	select {
	case snap := <-snaps:
		if typ, why, ok := d.decide(snap); ok {
			return typ, why
		}
		return "vxlan", "auto: this host's facts could not be read, so vxlan, which reaches hosts on any segment, until they can"
	case <-ctx.Done():
		return "vxlan", fmt.Sprintf("auto: no lease snapshot within %s, so vxlan, which reaches hosts on any segment, until one comes", autoFirstTimeout)
	}
}

// consider is called with every snapshot: when the rule's outcome differs
// from the backend running, it (re)arms the settle timer; when it agrees,
// it disarms it.
func (d *daemon) consider(snap []lease.Lease, settle *time.Timer) {
	typ, why, ok := d.decide(snap)
	if !ok {
		return
	}
	cur := d.cur.Load().backend.Type()
	switch {
	case typ == cur:
		if d.auto.pending != "" {
			d.log.Info("auto: the cluster is back as it was; not moving", "backend", cur)
		}
		d.auto.pending = ""
		settle.Stop()
	case typ != d.auto.pending:
		wait := d.auto.settle(time.Now())
		d.log.Info("auto: the cluster changed; moving unless it changes again", "from", cur, "to", typ, "why", why, "in", wait)
		d.auto.pending = typ
		settle.Reset(wait)
	}
}

// move replaces the running backend with one of type typ: the old one is
// stopped and its kernel state removed, the new one built, the lease
// re-put with its attributes (same subnet), the new one started and fed
// the last snapshot. The subnet file is rewritten when the MTU changes.
func (d *daemon) move(ctx context.Context, typ, why string, snap []lease.Lease, fail context.CancelCauseFunc) error {
	old := d.cur.Load()
	from := old.backend.Type()
	d.log.Warn("auto: moving backend", "from", from, "to", typ, "why", why)
	d.ready.Store(false)
	if err := old.stop(); err != nil {
		d.log.Warn("the previous backend ended with an error", "backend", from, "err", err)
	}
	d.removeKernelState(old)
	b, why, err := buildBackend(ctx, &d.o, d.ext.host(), d.cfg, typ, why, d.log)
	if err != nil {
		return fmt.Errorf("auto: building %s: %w", typ, err)
	}
	st, err := d.startStage(ctx, b, why, fail)
	if err != nil {
		return fmt.Errorf("auto: starting %s: %w", typ, err)
	}
	d.cur.Store(st)
	d.apply(st, lease.Changes{Full: true, Put: snap})
	if st.mtu != old.mtu {
		d.log.Warn("auto: the overlay MTU changed; pods started before keep their MTU (see docs/auto.md)", "from", old.mtu, "to", st.mtu)
		if err := d.writeSubnetFile(st); err != nil {
			return err
		}
	}
	d.ready.Store(true)
	d.auto.record(Move{At: time.Now(), From: from, To: typ, Why: why})
	d.log.Info("auto: moved backend", "from", from, "to", st.backend.Type(), "why", why, "mtu", st.mtu)
	return nil
}
