package engine

import "math"

// codel keeps the queue in front of the receive loop short: the kernel's
// socket buffer is a single FIFO, sized to absorb bursts, and when the
// loop is the slowest stage a bulk TCP flow fills it and every other flow
// waits behind it (measured: 8 ms under four streams, where kernel vxlan,
// which has no such queue, stays under 0.1 ms). This is CoDel (RFC 8289)
// run at dequeue, on the time each datagram spent queued, taken from the
// kernel's receive timestamp: while the least delay seen stays above
// target for a whole interval there is a standing queue, and packets are
// dropped (or ECN-marked) at a rate that rises with the square root of the
// count until it drains. Bursts that drain within an interval are never
// touched.
type codel struct {
	target, interval int64 // nanoseconds

	firstAbove int64 // when the delay may first be judged standing; 0: below target
	dropNext   int64 // when the next drop is due while dropping
	count      uint32
	lastCount  uint32
	dropping   bool
}

func newCodel(target, interval int64) codel {
	return codel{target: target, interval: interval}
}

// okToDrop is RFC 8289's dodequeue: is the delay a standing queue's?
func (c *codel) okToDrop(now, sojourn int64) bool {
	if sojourn < c.target {
		c.firstAbove = 0
		return false
	}
	if c.firstAbove == 0 {
		c.firstAbove = now + c.interval
		return false
	}
	return now >= c.firstAbove
}

// drop reports whether the packet dequeued at now after sojourn
// nanoseconds in the queue is to be dropped (or marked).
func (c *codel) drop(now, sojourn int64) bool {
	ok := c.okToDrop(now, sojourn)
	if c.dropping {
		if !ok {
			c.dropping = false
			return false
		}
		if now >= c.dropNext {
			c.count++
			c.dropNext = c.controlLaw(c.dropNext)
			return true
		}
		return false
	}
	if !ok {
		return false
	}
	c.dropping = true
	// Resume near the last drop rate if the queue came back soon after
	// the last dropping state ended (RFC 8289, section 5.6).
	delta := c.count - c.lastCount
	if delta > 1 && now-c.dropNext < 16*c.interval {
		c.count = delta
	} else {
		c.count = 1
	}
	c.lastCount = c.count
	c.dropNext = c.controlLaw(now)
	return true
}

func (c *codel) controlLaw(t int64) int64 {
	return t + int64(float64(c.interval)/math.Sqrt(float64(c.count)))
}
