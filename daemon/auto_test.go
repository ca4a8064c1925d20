package daemon

import (
	"testing"
	"time"
)

// A peer that flaps slower than autoSettle still cannot make a host move
// more than once per autoSettleMax; a quiet autoFlapWindow forgives.
func TestAutoSettleBacksOff(t *testing.T) {
	a := &autoState{}
	t0 := time.Unix(1e9, 0)
	if got := a.settle(t0); got != autoSettle {
		t.Fatalf("first move waits %s, want %s", got, autoSettle)
	}
	now := t0
	var waits []time.Duration
	for range 10 {
		w := a.settle(now)
		waits = append(waits, w)
		now = now.Add(w)
		a.record(Move{At: now})
	}
	if waits[1] != 2*autoSettle || waits[2] != 4*autoSettle || waits[9] != autoSettleMax {
		t.Fatalf("waits %v: want doubling from %s up to %s", waits, autoSettle, autoSettleMax)
	}
	if got := a.settle(now.Add(autoFlapWindow)); got != autoSettle {
		t.Fatalf("after a quiet %s: %s, want %s", autoFlapWindow, got, autoSettle)
	}
	if n, last := a.counts(); n != 10 || !last.At.Equal(now) {
		t.Fatalf("counts %d %v", n, last)
	}
}
