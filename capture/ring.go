package capture

import (
	"encoding/binary"
	"net/netip"
	"sync/atomic"

	"github.com/weft-net/weft/engine"
)

// ring is a bounded single-producer, single-consumer queue of packet
// copies in one preallocated byte slice. The producer (a loop goroutine)
// never waits: a record that does not fit is refused and counted by the
// caller. A claim flag guards the producer side, so a second goroutine that
// arrives while one is pushing is refused rather than racing it.
//
// Records are 8-byte aligned: a 32-byte header, then the copied bytes. A
// record never wraps; the space left at the end is marked and skipped.
type ring struct {
	buf  []byte
	mask uint64
	head atomic.Uint64 // bytes published; written by the producer
	tail atomic.Uint64 // bytes consumed; written by the consumer
	busy atomic.Bool   // a producer is pushing
}

const (
	hdrLen     = 48
	wrapMarker = ^uint32(0)
)

// Record is one captured packet as the consumer sees it. Data is valid only
// during the callback it is passed to.
type Record struct {
	Time   int64 // unix nanoseconds
	Point  engine.Point
	Reason engine.DropReason
	Peer   netip.AddrPort
	Length int // the packet's length; len(Data) is less if the snap length cut it
	Data   []byte
}

func newRing(size int) *ring {
	n := ringSize(size)
	return &ring{buf: make([]byte, n), mask: uint64(n - 1)}
}

// ringSize is size rounded up to a power of two; callers bound size by
// MaxQueue first, so the doubling can neither overflow nor run long.
func ringSize(size int) int {
	if size > MaxQueue {
		panic("capture: ring larger than MaxQueue")
	}
	n := 1
	for n < size {
		n <<= 1
	}
	return n
}

// push copies one packet in; false if it does not fit (or another producer
// holds the ring).
func (r *ring) push(ts int64, p *engine.TapPacket, snap int) bool {
	if !r.busy.CompareAndSwap(false, true) {
		return false
	}
	defer r.busy.Store(false)
	capLen := len(p.Data)
	if capLen > snap {
		capLen = snap
	}
	need := uint64(hdrLen+capLen+7) &^ 7
	size := uint64(len(r.buf))
	h, t := r.head.Load(), r.tail.Load()
	pos := h & r.mask
	if pos+need > size {
		// Skip the rest of the buffer; the record starts at 0.
		waste := size - pos
		if h+waste+need-t > size {
			return false
		}
		binary.LittleEndian.PutUint32(r.buf[pos:], wrapMarker)
		h += waste
		pos = 0
	} else if h+need-t > size {
		return false
	}
	b := r.buf[pos : pos+need]
	binary.LittleEndian.PutUint32(b[0:], uint32(need))
	binary.LittleEndian.PutUint32(b[4:], uint32(capLen))
	binary.LittleEndian.PutUint32(b[8:], uint32(len(p.Data)))
	b[12], b[13], b[14], b[15] = byte(p.Point), byte(p.Reason), 0, 0
	if p.Peer.IsValid() {
		// b[14] is the peer's address family (4 or 6); its address is
		// b[16:32] in the 16-byte form, its port b[32:34].
		b[14] = 6
		if p.Peer.Addr().Is4() {
			b[14] = 4
		}
		a := p.Peer.Addr().As16()
		copy(b[16:32], a[:])
		binary.LittleEndian.PutUint16(b[32:], p.Peer.Port())
	}
	binary.LittleEndian.PutUint64(b[40:], uint64(ts))
	copy(b[hdrLen:], p.Data[:capLen])
	r.head.Store(h + need)
	return true
}

// peek reads the oldest published record into rec without freeing it;
// false if the ring is empty. Only the consumer calls it.
func (r *ring) peek(rec *Record) bool {
	h, t := r.head.Load(), r.tail.Load()
	for t < h {
		pos := t & r.mask
		l := binary.LittleEndian.Uint32(r.buf[pos:])
		if l == wrapMarker {
			t += uint64(len(r.buf)) - pos
			r.tail.Store(t)
			continue
		}
		b := r.buf[pos : pos+uint64(l)]
		capLen := binary.LittleEndian.Uint32(b[4:])
		*rec = Record{
			Length: int(binary.LittleEndian.Uint32(b[8:])),
			Point:  engine.Point(b[12]),
			Reason: engine.DropReason(b[13]),
			Time:   int64(binary.LittleEndian.Uint64(b[40:])),
			Data:   b[hdrLen : hdrLen+capLen],
		}
		switch a := netip.AddrFrom16([16]byte(b[16:32])); b[14] {
		case 4:
			rec.Peer = netip.AddrPortFrom(a.Unmap(), binary.LittleEndian.Uint16(b[32:]))
		case 6:
			rec.Peer = netip.AddrPortFrom(a, binary.LittleEndian.Uint16(b[32:]))
		}
		return true
	}
	return false
}

// pop frees the record peek returned; its Data is invalid afterwards.
func (r *ring) pop() {
	t := r.tail.Load()
	r.tail.Store(t + uint64(binary.LittleEndian.Uint32(r.buf[t&r.mask:])))
}

// drain hands every published record to fn, oldest first, and frees its
// space after fn returns. It stops early when fn returns false and returns
// how many records it handed over.
func (r *ring) drain(fn func(*Record) bool) int {
	n := 0
	var rec Record
	for r.peek(&rec) {
		ok := fn(&rec)
		r.pop()
		n++
		if !ok {
			break
		}
	}
	return n
}

// drainMerged drains two rings into fn in timestamp order, so a capture's
// packets come out in the order the two loops saw them.
func drainMerged(a, b *ring, fn func(*Record) bool) int {
	var ra, rb Record
	okA, okB := a.peek(&ra), b.peek(&rb)
	n := 0
	for okA || okB {
		var ok bool
		if okA && (!okB || ra.Time <= rb.Time) {
			ok = fn(&ra)
			a.pop()
			okA = a.peek(&ra)
		} else {
			ok = fn(&rb)
			b.pop()
			okB = b.peek(&rb)
		}
		n++
		if !ok {
			break
		}
	}
	return n
}

// discard frees everything published.
func (r *ring) discard() { r.tail.Store(r.head.Load()) }
