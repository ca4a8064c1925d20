package traffic

import "time"

// A pacer is a token bucket that releases datagrams at a steady rate in
// bursts, one burst per wake-up. Sleeping until the next single datagram
// is due cannot pace 100k datagrams/s: Go's timers on Linux wake through
// epoll_pwait, whose timeout is whole milliseconds, so every sleep lasts
// at least about 1 ms. The pacer sleeps at least paceTick and then lets
// out everything that fell due meanwhile.
//
// The bucket holds at most burst tokens. A sender that was descheduled
// for longer than that does not make up for it with one long burst, which
// would measure the path's queue depth rather than its rate: the tokens
// beyond the bucket are dropped and counted in skipped, so the offered
// rate (datagrams sent over the run) says what the path was really given.
type pacer struct {
	rate    float64 // tokens per second
	start   time.Time
	burst   int64
	issued  int64 // tokens taken or skipped since start
	skipped int64
}

const (
	// paceTick is the shortest sleep the pacer asks for, about what Go's
	// timers can give anyway.
	paceTick = time.Millisecond
	// paceDepth is how much sending the bucket holds: a few ticks, so a
	// timer that fires late (a loaded machine) costs nothing, but a
	// sender that stalls longer does not burst.
	paceDepth = 5 * time.Millisecond
)

func newPacer(rate int, start time.Time) *pacer {
	burst := max(int64(float64(rate)*paceDepth.Seconds()), sendBatch)
	return &pacer{rate: float64(rate), start: start, burst: burst}
}

// due returns how many datagrams may go at now, at most limit; the caller
// reports what it sent with took.
func (p *pacer) due(now time.Time, limit int) int {
	n := int64(now.Sub(p.start).Seconds()*p.rate) - p.issued
	if n > p.burst {
		p.skipped += n - p.burst
		p.issued += n - p.burst
		n = p.burst
	}
	return int(max(0, min(n, int64(limit))))
}

// took takes n tokens.
func (p *pacer) took(n int) { p.issued += int64(n) }

// wait is how long to sleep when nothing is due at now: until the next
// token, but never less than paceTick.
func (p *pacer) wait(now time.Time) time.Duration {
	next := p.start.Add(time.Duration(float64(p.issued+1) / p.rate * float64(time.Second)))
	return max(next.Sub(now), paceTick)
}
