package engine

import (
	"sync/atomic"
	"time"
)

// Waitable is the optional interface of a Device or a Receiver whose
// readiness a realtime loop (Config.RealtimePriority) waits for in poll(2)
// on its own thread. Through the Go netpoller, a packet wakes whichever
// thread polls the netpoller, at normal priority, which then hands the loop
// to its thread: under load both wait behind the busy threads of the host.
// In poll(2) the kernel wakes the loop's own thread, at its own priority.
type Waitable interface {
	// WaitFD returns the descriptor that turns readable when a read has
	// something to return, or -1 when a read returns at once without
	// waiting (the Receiver still holds datagrams from its last system
	// call). It is called only by the loop that reads, before each read,
	// and must not block. The descriptor stays valid until Close; the
	// engine stops waiting on it before it closes the Device and the
	// Transport.
	WaitFD() int
}

// A realtime loop gives its priority up, and runs at normal priority, in
// two cases; both are counted in Stats.RealtimeYields.
//
// Busy: it found packets waiting after every batch for realtimeBudget.
// A loop that never runs out of work (more traffic than a CPU forwards)
// must not starve the host's other tasks, as the kernel hands softirq work
// that runs on to ksoftirqd at normal priority. It is realtime again when
// it next finds nothing to do.
//
// Small batches: it woke more than floodWakes times in a floodWindow for
// fewer than floodBatch packets a wakeup on average. At realtime priority
// each packet of a sender of small datagrams wakes the loop at once, and
// the loop moves them one system call each (measured: a third of the
// 64-byte packet rate); at normal priority they gather while the sender
// runs and go many per call, so few wakeups alone do not mean the flood
// is over: it is realtime again after a window with at most calmPackets
// packets.
const realtimeBudget = 10 * time.Millisecond

const (
	floodWindow = 10 * time.Millisecond
	floodWakes  = 100 // 10,000 wakeups a second
	floodBatch  = 4
	calmPackets = 100 // 10,000 packets a second
)

// realtimeState is what a loop knows about its own scheduling. Only the
// loop touches it, except yields.
type realtimeState struct {
	w    Waitable // nil: the loop waits in the netpoller (not realtime)
	pf   [2]pollFD
	prio int
	set  func(prio int) error // the thread's policy: setFIFO, or a test's

	busySince             time.Time // last wakeup after a sleep
	busyYield, smallYield bool

	winStart    time.Time // the small-batch window
	wakes, pkts int
	yields      atomic.Uint64
}

// read records a batch of n packets.
func (r *realtimeState) read(n int) { r.pkts += n }

// busy is called when packets were waiting without a sleep.
func (r *realtimeState) busy(now time.Time) {
	if !r.busyYield && now.Sub(r.busySince) >= realtimeBudget {
		r.yield(&r.busyYield, true)
	}
}

// idle is called before the loop sleeps.
func (r *realtimeState) idle() {
	if r.busyYield {
		r.yield(&r.busyYield, false)
	}
}

// woke is called when the loop wakes from a sleep.
func (r *realtimeState) woke(now time.Time) {
	r.busySince = now
	r.wakes++
	if now.Sub(r.winStart) < floodWindow {
		return
	}
	small := r.wakes > floodWakes && r.pkts < floodBatch*r.wakes
	switch {
	case !r.smallYield && small:
		r.yield(&r.smallYield, true)
	case r.smallYield && r.pkts <= calmPackets:
		r.yield(&r.smallYield, false)
	}
	r.winStart, r.wakes, r.pkts = now, 0, 0
}

// yield sets one reason to yield (busyYield or smallYield) to v, and the
// thread's policy when that changes whether any reason holds.
func (r *realtimeState) yield(reason *bool, v bool) {
	before := r.busyYield || r.smallYield
	*reason = v
	switch after := r.busyYield || r.smallYield; {
	case after && !before:
		if r.set(0) == nil {
			r.yields.Add(1)
		}
	case before && !after:
		_ = r.set(r.prio)
	}
}

// startRealtime makes the calling loop realtime if the engine is
// configured for it and side (the loop's Device or Receiver) is Waitable.
// It returns the function to call when the loop ends.
func (e *Engine) startRealtime(side any, r *realtimeState) (done func()) {
	done = func() {}
	if e.cfg.RealtimePriority == 0 || e.wake < 0 {
		return done
	}
	w, ok := side.(Waitable)
	if !ok {
		return done
	}
	if err := enterRealtime(e.cfg.RealtimePriority); err != nil {
		e.realtimeFailed(err)
		return done
	}
	r.w, r.prio, r.set = w, e.cfg.RealtimePriority, setFIFO
	r.busySince, r.winStart = time.Now(), time.Now()
	e.rtLoops.Add(1)
	return func() { e.rtLoops.Add(-1) }
}

// realtimeFailed records why a loop stays at normal priority, and logs it
// the first time.
func (e *Engine) realtimeFailed(err error) {
	msg := err.Error()
	if e.rtErr.Swap(&msg) == nil {
		e.log.Warn("forwarding loops stay at normal priority: packets of every flow wait behind bulk traffic for a CPU", "err", err)
	}
}
