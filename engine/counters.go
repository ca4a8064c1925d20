package engine

import (
	"math/bits"
	"sync/atomic"
)

// loopCounters belong to one loop. The loop adds a whole batch's worth at
// once (batchCounters.flush), so the packet path does plain increments on
// memory no other core writes, and a reader sees consistent-enough sums.
//
// With several queues the loops run on several cores at once: the pads
// keep each loop's counters off the cache lines of whatever the
// allocator put beside them.
type loopCounters struct {
	_                                       [64]byte
	packets, bytes, batches, icmp, readErrs atomic.Uint64
	drops                                   [NumDropReasons]atomic.Uint64
	// sizes counts reads by how many packets they returned, in powers of
	// two: bucket i holds reads of 2^(i-1) .. 2^i - 1 packets.
	sizes [BatchSizeBuckets]atomic.Uint64
	read  atomic.Uint64 // packets the reads returned, forwarded or not
	_     [64]byte
}

// BatchSizeBuckets is the number of batch-size buckets: reads of 1, 2-3,
// 4-7, ... up to MaxBatch packets.
const BatchSizeBuckets = 12

// BatchSizeBucketMax is the largest batch size counted in bucket i.
func BatchSizeBucketMax(i int) int { return 1<<i - 1 }

// batchCounters accumulate one batch, loop-local, no atomics.
type batchCounters struct {
	read           int // packets the read returned
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
	if b.read > 0 {
		c.sizes[min(bits.Len(uint(b.read)), BatchSizeBuckets-1)].Add(1)
		c.read.Add(uint64(b.read))
	}
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
	sizes := &s.RxBatchSizes
	if tx {
		s.TxPackets += c.packets.Load()
		s.TxBytes += c.bytes.Load()
		s.TxBatches += c.batches.Load()
		s.TxRead += c.read.Load()
		sizes = &s.TxBatchSizes
	} else {
		s.RxPackets += c.packets.Load()
		s.RxBytes += c.bytes.Load()
		s.RxBatches += c.batches.Load()
		s.RxRead += c.read.Load()
	}
	for i := range c.sizes {
		sizes[i] += c.sizes[i].Load()
	}
	s.ICMPErrors += c.icmp.Load()
	s.ReadErrors += c.readErrs.Load()
	for r := range c.drops {
		s.Drops[r] += c.drops[r].Load()
	}
}
