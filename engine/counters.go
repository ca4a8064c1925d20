package engine

import "sync/atomic"

// loopCounters belong to one loop. The loop adds a whole batch's worth at
// once (batchCounters.flush), so the packet path does plain increments on
// memory no other core writes, and a reader sees consistent-enough sums.
type loopCounters struct {
	packets, bytes, batches, icmp, readErrs atomic.Uint64
	drops                                   [NumDropReasons]atomic.Uint64
}

// batchCounters accumulate one batch, loop-local, no atomics.
type batchCounters struct {
	packets, bytes uint64
	drops          [NumDropReasons]uint32
	dropped        bool
}

func (b *batchCounters) drop(r DropReason) {
	b.drops[r]++
	b.dropped = true
}

func (b *batchCounters) flush(c *loopCounters) {
	if b.packets != 0 {
		c.packets.Add(b.packets)
		c.bytes.Add(b.bytes)
	}
	c.batches.Add(1)
	if b.dropped {
		for r, n := range b.drops {
			if n != 0 {
				c.drops[r].Add(uint64(n))
			}
		}
	}
	*b = batchCounters{}
}

func (c *loopCounters) addTo(s *Stats, tx bool) {
	if tx {
		s.TxPackets, s.TxBytes, s.TxBatches = c.packets.Load(), c.bytes.Load(), c.batches.Load()
	} else {
		s.RxPackets, s.RxBytes, s.RxBatches = c.packets.Load(), c.bytes.Load(), c.batches.Load()
	}
	s.ICMPErrors += c.icmp.Load()
	s.ReadErrors += c.readErrs.Load()
	for r := range c.drops {
		s.Drops[r] += c.drops[r].Load()
	}
}
