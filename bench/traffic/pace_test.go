package traffic

import (
	"context"
	"testing"
	"time"
)

// drive runs p as sendUDP does, waking at the given gaps, and returns the
// tokens taken and the largest burst.
func drive(p *pacer, now time.Time, gaps []time.Duration) (taken, biggest int, end time.Time) {
	for _, g := range gaps {
		now = now.Add(g)
		burst := 0
		for {
			n := p.due(now, sendBatch)
			if n == 0 {
				break
			}
			p.took(n)
			burst += n
		}
		taken += burst
		biggest = max(biggest, burst)
	}
	return taken, biggest, now
}

// At 100-150 kpps the pacer wakes once per timer tick (Go cannot sleep
// for less) and sends what fell due, so the rate is exact over a second
// even when ticks come late and uneven.
func TestPacerRate(t *testing.T) {
	start := time.Unix(1000, 0)
	for _, rate := range []int{100000, 120000, 150000} {
		p := newPacer(rate, start)
		var gaps []time.Duration
		for i := 0; len(gaps) == 0 || sum(gaps) < time.Second; i++ {
			// 1, 2, 3 ms and back: a loaded machine's timers.
			gaps = append(gaps, time.Duration(1+i%3)*time.Millisecond)
		}
		taken, biggest, end := drive(p, start, gaps)
		want := int(float64(rate) * end.Sub(start).Seconds())
		if taken != want || p.skipped != 0 {
			t.Errorf("rate %d: %d taken over %v, want %d (skipped %d)", rate, taken, end.Sub(start), want, p.skipped)
		}
		if biggest > rate*3/1000+1 {
			t.Errorf("rate %d: burst of %d after a 3 ms tick", rate, biggest)
		}
		if w := p.wait(end); w != paceTick {
			t.Errorf("rate %d: waits %v with nothing due, want one tick (%v), not one packet's time", rate, w, paceTick)
		}
	}
}

// A sender that stalls longer than the bucket holds sends one bucket,
// not the whole backlog, and the rest is counted as skipped.
func TestPacerStall(t *testing.T) {
	start := time.Unix(1000, 0)
	const rate = 100000
	p := newPacer(rate, start)
	taken, biggest, _ := drive(p, start, []time.Duration{time.Millisecond, 100 * time.Millisecond, time.Millisecond})
	bucket := int(rate * paceDepth.Seconds())
	if biggest != bucket {
		t.Errorf("burst after a 100 ms stall: %d, want the bucket, %d", biggest, bucket)
	}
	if got := int64(taken) + p.skipped; got != rate*102/1000 {
		t.Errorf("taken %d + skipped %d = %d, want every token of 102 ms accounted (%d)", taken, p.skipped, got, rate*102/1000)
	}
	if p.skipped != rate*100/1000-int64(bucket) {
		t.Errorf("skipped %d", p.skipped)
	}
	// A slow rate waits for its next packet, and a rate too low to fill a
	// batch still gets a bucket of one batch.
	slow := newPacer(10, start)
	slow.took(slow.due(start.Add(time.Second), sendBatch))
	if w := slow.wait(start.Add(time.Second)); w < 99*time.Millisecond || w > 101*time.Millisecond {
		t.Errorf("10 packets/s waits %v for the next", w)
	}
	if slow.burst != sendBatch {
		t.Errorf("bucket of %d at 10 packets/s", slow.burst)
	}
}

func sum(d []time.Duration) (s time.Duration) {
	for _, x := range d {
		s += x
	}
	return s
}

// Through a real socket every token of the run is either sent or counted
// as skipped (save the last moments before the end, which fall due after
// the sender's last look at the clock).
func TestUDPPacedAccounting(t *testing.T) {
	addr := startServer(t)
	const rate = 120000
	res, err := RunUDP(context.Background(), UDPOptions{Addr: addr, Size: 64, Rate: rate, Duration: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	due := float64(rate) * res.Seconds
	got := float64(res.Sent + res.SendErrors + res.PaceSkipped)
	if got > due+1 || got < due-float64(rate)*0.05 {
		t.Errorf("sent %d + errors %d + skipped %d = %.0f over %.3fs, want %.0f due", res.Sent, res.SendErrors, res.PaceSkipped, got, res.Seconds, due)
	}
	if res.TargetRate != rate {
		t.Errorf("target rate %d", res.TargetRate)
	}
	t.Logf("offered %.0f/s of %d/s (%d skipped), delivered %.0f/s", res.SentPPS, rate, res.PaceSkipped, res.DeliveredPPS)
}
