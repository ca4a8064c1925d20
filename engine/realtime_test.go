package engine

import (
	"testing"
	"time"
)

// TestRealtimeYields walks a realtime loop's scheduling through its two
// ways of giving up its priority and back, with the thread's policy
// recorded instead of set.
func TestRealtimeYields(t *testing.T) {
	var policy []int
	t0 := time.Unix(1000, 0)
	r := realtimeState{prio: 7, busySince: t0, winStart: t0}
	r.set = func(p int) error { policy = append(policy, p); return nil }
	want := func(step string, yields uint64, p ...int) {
		t.Helper()
		if len(policy) != len(p) || (len(p) > 0 && policy[len(p)-1] != p[len(p)-1]) {
			t.Fatalf("%s: policies set %v, want %v", step, policy, p)
		}
		if r.yields.Load() != yields {
			t.Fatalf("%s: %d yields, want %d", step, r.yields.Load(), yields)
		}
	}

	// Busy: packets waiting after every batch, for the budget.
	r.busy(t0.Add(realtimeBudget / 2))
	want("busy within budget", 0)
	r.busy(t0.Add(realtimeBudget))
	want("busy past budget", 1, 0)
	r.busy(t0.Add(2 * realtimeBudget))
	want("still busy", 1, 0)
	r.idle()
	want("idle", 1, 0, 7)

	// Small batches: more than floodWakes wakeups in a window, one packet each.
	now := t0.Add(time.Second)
	r.woke(now) // starts a window
	policy = policy[:0]
	for i := 0; i <= floodWakes; i++ {
		r.read(1)
		r.woke(now.Add(time.Duration(i) * floodWindow / (floodWakes + 2)))
	}
	r.woke(now.Add(floodWindow))
	want("one packet a wakeup", 2, 0)
	// At normal priority the packets gather: few wakeups, many packets.
	// That is not calm.
	now = now.Add(floodWindow)
	r.read(50 * floodBatch)
	r.woke(now.Add(floodWindow))
	want("few wakeups, many packets", 2, 0)
	// A busy spell ending while yielded for small batches keeps the
	// thread at normal priority.
	r.busy(now.Add(floodWindow + realtimeBudget))
	r.idle()
	want("busy and idle while yielded", 2, 0)
	// Calm: a window with few packets.
	now = now.Add(floodWindow)
	r.read(calmPackets)
	r.woke(now.Add(floodWindow))
	want("calm", 2, 0, 7)

	// Big batches are never a flood, however often they come.
	now = now.Add(floodWindow)
	policy = policy[:0]
	for i := 0; i <= 2*floodWakes; i++ {
		r.read(floodBatch)
		r.woke(now.Add(time.Duration(i) * floodWindow / (2*floodWakes + 2)))
	}
	r.read(floodBatch)
	r.woke(now.Add(floodWindow))
	want("big batches", 2)
}
