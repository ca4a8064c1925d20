// Package capture takes live captures of the packets an engine forwards and
// drops: a Hub is the engine's Tap and fans packets out to any number of
// concurrent Captures, each with its own filter and bounded queue; a
// Writer turns what a Capture reads into pcapng, one interface per capture
// point, with the peer and the drop reason in each packet's comment.
//
// The data path never waits for a reader: a Capture's queue is a
// preallocated ring per loop, and a packet that finds it full is counted as
// overflow, reported when the capture ends.
package capture

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/weft-net/weft/engine"
)

// Target is what a Hub taps: an *engine.Engine.
type Target interface{ SetTap(engine.Tap) }

var _ Target = (*engine.Engine)(nil)

// Hub is the engine's Tap while at least one Capture runs. It attaches
// itself to the target when the first Capture starts and detaches when the
// last one stops, so an engine nobody captures pays one atomic load per
// batch.
type Hub struct {
	target Target
	mu     sync.Mutex // Start and Stop; never taken on the packet path
	subs   atomic.Pointer[[]*Capture]
	nextID uint64
	closed bool
	active map[uint64]*Capture
	queued int           // bytes of ring of the active captures
	limits Limits        // guarded by mu
	lost   atomic.Uint64 // overflow of every capture since the hub was made
	stalls atomic.Uint64 // captures ended because their reader took nothing
	ipv6   atomic.Bool   // the network carries IPv6: captures are LINKTYPE_ETHERNET (NewWriter)
}

// SetIPv6 tells the hub whether the network carries IPv6, which decides
// the link type of the captures it streams (NewWriter).
func (h *Hub) SetIPv6(on bool) { h.ipv6.Store(on) }

// Limits bound what the captures of one hub may hold, so a debug client
// (or many) cannot take the daemon's memory or CPU.
type Limits struct {
	// Captures is the most captures running at once; Start refuses more
	// with ErrBusy.
	Captures int
	// QueueBytes is the most ring memory of all running captures together
	// (each holds two rings of its Queue, rounded up to a power of two).
	QueueBytes int
	// Stall ends a capture whose reader accepted no bytes for this long
	// (ServeCapture's stream): a client that stops reading must not hold
	// a capture, its memory and a slot forever.
	Stall time.Duration
}

// DefaultLimits are a new hub's limits.
var DefaultLimits = Limits{Captures: 8, QueueBytes: 256 << 20, Stall: 30 * time.Second}

var _ engine.Tap = (*Hub)(nil)

// NewHub returns a hub for target; nothing is tapped until Start.
func NewHub(target Target) *Hub {
	return &Hub{target: target, active: map[uint64]*Capture{}, limits: DefaultLimits}
}

// SetLimits replaces the hub's limits; zero fields keep the defaults.
// Running captures are not affected.
func (h *Hub) SetLimits(l Limits) {
	if l.Captures <= 0 {
		l.Captures = DefaultLimits.Captures
	}
	if l.QueueBytes <= 0 {
		l.QueueBytes = DefaultLimits.QueueBytes
	}
	if l.Stall <= 0 {
		l.Stall = DefaultLimits.Stall
	}
	h.mu.Lock()
	h.limits = l
	h.mu.Unlock()
}

func (h *Hub) stallTimeout() time.Duration {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.limits.Stall
}

// Stalls is how many captures ended because their reader stopped taking
// bytes, ever.
func (h *Hub) Stalls() uint64 { return h.stalls.Load() }

// Capture is called by the engine's loops for every packet while any
// capture runs. It parses the headers once, and copies the packet into
// each capture whose points and filter accept it.
func (h *Hub) Capture(p *engine.TapPacket) {
	subs := h.subs.Load()
	if subs == nil {
		return
	}
	var (
		v      view
		parsed bool
		ts     int64
	)
	for _, c := range *subs {
		if !c.points.Has(p.Point) {
			continue
		}
		if !c.filter.matchesAll() {
			if !parsed {
				v.parse(p)
				parsed = true
			}
			if !c.filter.match(&v) {
				continue
			}
		}
		if ts == 0 {
			ts = time.Now().UnixNano()
		}
		c.push(ts, p)
	}
}

// Options configure one capture.
type Options struct {
	Filter *Filter   // nil: every packet
	Points PointSet  // 0: every point
	Snap   int       // most bytes kept of each packet (default and most: engine.MaxPacket)
	Queue  int       // bytes of queue per loop (default 4 MiB, at least 256 KiB, at most MaxQueue)
	Count  int       // stop after this many packets (0: no limit)
	Until  time.Time // stop at this time (zero: no limit)
}

// DefaultQueue is the queue size per loop when Options.Queue is 0.
const DefaultQueue = 4 << 20

// MaxQueue is the largest queue per loop a capture may ask for (`weft
// capture --buffer-size`); a capture holds two. It is a power of two, so
// rounding a queue up never passes it.
const MaxQueue = 64 << 20

const minQueue = 256 << 10

// Capture is one running capture: its filter, its queues and its counts.
type Capture struct {
	ID      uint64
	hub     *Hub
	filter  *Filter
	points  PointSet
	snap    int
	opts    Options
	rings   [2]*ring // by the loop that fills it: [1] from the TUN, [0] from the underlay
	waiting atomic.Bool
	wake    chan struct{}
	stop    chan struct{}
	once    sync.Once

	overflow [engine.NumPoints]atomic.Uint64
	captured [engine.NumPoints]uint64 // written by the reader only
	started  time.Time
}

// ErrClosed is returned by Start once the hub is closed.
var ErrClosed = errors.New("capture: the engine is shutting down")

// ErrBusy is returned by Start when the hub's limits (Limits.Captures,
// Limits.QueueBytes) leave no room for another capture.
var ErrBusy = errors.New("capture: too many captures running")

// Start begins a capture. The caller must Read it and Stop it.
func (h *Hub) Start(o Options) (*Capture, error) {
	if o.Points == 0 {
		o.Points = AllPoints
	}
	if o.Snap <= 0 || o.Snap > engine.MaxPacket {
		o.Snap = engine.MaxPacket
	}
	if o.Queue < 0 || o.Queue > MaxQueue {
		return nil, fmt.Errorf("capture: a queue of %d bytes is outside 0..%d", o.Queue, MaxQueue)
	}
	if o.Queue == 0 {
		o.Queue = DefaultQueue
	}
	// A ring holds at least a few largest records, so one never fails to
	// fit an empty ring.
	if min := max(minQueue, 4*(o.Snap+hdrLen)); o.Queue < min {
		o.Queue = min
	}
	size := 2 * ringSize(o.Queue)
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil, ErrClosed
	}
	if len(h.active) >= h.limits.Captures {
		return nil, fmt.Errorf("%w: %d of %d; stop one first", ErrBusy, len(h.active), h.limits.Captures)
	}
	if h.queued+size > h.limits.QueueBytes {
		return nil, fmt.Errorf("%w: their queues hold %d MiB and this one needs %d MiB more, over the %d MiB allowed; ask for a smaller queue",
			ErrBusy, h.queued>>20, size>>20, h.limits.QueueBytes>>20)
	}
	// Allocated under the lock so that refused requests allocate nothing
	// and concurrent ones cannot pass the budget together; Start is rare
	// and the lock is never taken on the packet path.
	c := &Capture{
		hub: h, filter: o.Filter, points: o.Points, snap: o.Snap, opts: o,
		rings:   [2]*ring{newRing(o.Queue), newRing(o.Queue)},
		wake:    make(chan struct{}, 1),
		stop:    make(chan struct{}),
		started: time.Now(),
	}
	h.nextID++
	c.ID = h.nextID
	h.active[c.ID] = c
	h.queued += size
	h.publish()
	return c, nil
}

// publish installs the current set of captures; called with h.mu held.
func (h *Hub) publish() {
	if len(h.active) == 0 {
		h.subs.Store(nil)
		h.target.SetTap(nil)
		return
	}
	subs := make([]*Capture, 0, len(h.active))
	for _, c := range h.active {
		subs = append(subs, c)
	}
	h.subs.Store(&subs)
	h.target.SetTap(h)
}

// Lookup returns the running capture with this id.
func (h *Hub) Lookup(id uint64) *Capture {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.active[id]
}

// Active is how many captures run.
func (h *Hub) Active() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.active)
}

// Overflow is how many packets all captures lost to a full queue, ever.
func (h *Hub) Overflow() uint64 { return h.lost.Load() }

// Close stops every capture and refuses new ones: for shutdown. Readers
// finish what is queued.
func (h *Hub) Close() {
	h.mu.Lock()
	h.closed = true
	caps := make([]*Capture, 0, len(h.active))
	for _, c := range h.active {
		caps = append(caps, c)
	}
	h.mu.Unlock()
	for _, c := range caps {
		c.Stop()
	}
}

func (c *Capture) push(ts int64, p *engine.TapPacket) {
	side := 0
	if p.FromTUN {
		side = 1
	}
	if !c.rings[side].push(ts, p, c.snap) && !c.rings[1-side].push(ts, p, c.snap) {
		c.overflow[p.Point].Add(1)
		c.hub.lost.Add(1)
		return
	}
	if c.waiting.Load() && c.waiting.CompareAndSwap(true, false) {
		select {
		case c.wake <- struct{}{}:
		default:
		}
	}
}

// Stop detaches the capture from the engine; what is queued can still be
// read. It is safe to call more than once and from any goroutine.
func (c *Capture) Stop() {
	c.once.Do(func() {
		h := c.hub
		h.mu.Lock()
		if h.active[c.ID] == c {
			delete(h.active, c.ID)
			h.queued -= 2 * len(c.rings[0].buf)
		}
		h.publish()
		h.mu.Unlock()
		close(c.stop)
	})
}

// Stopped is closed once Stop was called.
func (c *Capture) Stopped() <-chan struct{} { return c.stop }

// Read hands queued packets to fn, in timestamp order, until the capture is
// stopped (and its queues drained), ctx ends, the count or time limit is
// reached, or fn fails. It stops the capture before returning. Read must
// be called from one goroutine; flush is called whenever the queues run
// empty, so a live reader sees packets promptly.
func (c *Capture) Read(ctx context.Context, fn func(*Record) error, flush func() error) error {
	defer c.Stop()
	var timer <-chan time.Time
	if !c.opts.Until.IsZero() {
		t := time.NewTimer(time.Until(c.opts.Until))
		defer t.Stop()
		timer = t.C
	}
	var ferr error
	done := false
	each := func(r *Record) bool {
		if done {
			return false
		}
		if err := fn(r); err != nil {
			ferr, done = err, true
			return false
		}
		c.captured[r.Point]++
		if c.opts.Count > 0 && c.total() >= uint64(c.opts.Count) {
			done = true
			return false
		}
		return true
	}
	drain := func() int { return drainMerged(c.rings[1], c.rings[0], each) }
	for {
		n := drain()
		if done {
			return ferr
		}
		if n > 0 {
			continue
		}
		if flush != nil {
			if err := flush(); err != nil {
				return err
			}
		}
		select {
		case <-c.stop:
			// Stopped: no producer adds any more, so one last pass empties it.
			drain()
			return ferr
		default:
		}
		c.waiting.Store(true)
		if drain() > 0 {
			c.waiting.Store(false)
			if done {
				return ferr
			}
			continue
		}
		select {
		case <-c.wake:
		case <-c.stop:
		case <-timer:
			c.Stop()
		case <-ctx.Done():
			c.Stop()
			return ctx.Err()
		}
		c.waiting.Store(false)
	}
}

func (c *Capture) total() uint64 {
	var n uint64
	for _, v := range c.captured {
		n += v
	}
	return n
}

// Stats are a capture's counts. Call after Read returns for final figures.
type Stats struct {
	Started  time.Time
	Captured [engine.NumPoints]uint64 // packets handed to the reader
	Overflow [engine.NumPoints]uint64 // packets lost because the queue was full
}

// TotalCaptured and TotalOverflow sum the points.
func (s Stats) TotalCaptured() (n uint64) {
	for _, v := range s.Captured {
		n += v
	}
	return n
}

func (s Stats) TotalOverflow() (n uint64) {
	for _, v := range s.Overflow {
		n += v
	}
	return n
}

// Stats returns the capture's counts; Captured is only stable once Read
// has returned.
func (c *Capture) Stats() Stats {
	s := Stats{Started: c.started, Captured: c.captured}
	for i := range c.overflow {
		s.Overflow[i] = c.overflow[i].Load()
	}
	return s
}

// PointSet is a set of capture points.
type PointSet uint8

// AllPoints holds every capture point.
const AllPoints = PointSet(1<<engine.NumPoints - 1)

// Has reports whether p is in the set.
func (s PointSet) Has(p engine.Point) bool { return s&(1<<p) != 0 }

func (s PointSet) String() string {
	var names []string
	for p := engine.Point(0); p < engine.NumPoints; p++ {
		if s.Has(p) {
			names = append(names, p.String())
		}
	}
	return strings.Join(names, ",")
}

// ParsePoints parses a comma-separated list of point names; "" or "all"
// is every point.
func ParsePoints(s string) (PointSet, error) {
	if s == "" || s == "all" {
		return AllPoints, nil
	}
	var set PointSet
	for _, name := range strings.Split(s, ",") {
		p, ok := ParsePoint(strings.TrimSpace(name))
		if !ok {
			return 0, fmt.Errorf("capture point %q is not one of from-tun, to-tun, drop", name)
		}
		set |= 1 << p
	}
	return set, nil
}
