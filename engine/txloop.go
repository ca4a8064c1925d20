package engine

import (
	"net/netip"
	"time"
)

// txLoop moves packets from the TUN to the transport. It owns its buffers
// for its whole life: a packet is read into bufs[i] at Headroom, its TTL is
// patched in place, and the transport sends it from the same memory. With
// a SegmentingDevice and a GatherTransport a packet may continue in a
// tail: the segments of a super-packet have their headers in their own
// buffers and their payloads where the super-packet was read (in another
// of bufs), and the transport sends the two pieces as one datagram.
type txLoop struct {
	e     *Engine
	dev   Device    // its queue's: it alone reads it
	tr    Transport // its queue's: it alone sends through it
	bufs  [][]byte  // full-length elements, never handed on
	sizes []int
	tails [][]byte // with seg: the rest of packet i, inside another of bufs

	// Per batch, after classify: packets to send, grouped by peer. A
	// candidate is its buffer from the start up to the packet's end (or
	// its head's, when it has a tail), so the header can go in front of
	// the packet.
	cand     [][]byte
	candTail [][]byte
	candPeer []*Peer
	out      [][]byte
	outTail  [][]byte
	outDst   []netip.AddrPort
	groups   []*Peer

	ttl bool // the encapsulation lowers the TTL

	// readable is the Device's Readable, if it has one; more its
	// ReadMore, which drains without asking first.
	readable ReadableDevice
	more     DrainingDevice
	// seg and gather are set together, when the Device cuts super-packets
	// without copying and the Transport sends from two pieces.
	seg    SegmentingDevice
	gather GatherTransport
	drain  bool   // read more after the first read of a batch (not NoDrain)
	whole  []byte // a tailed packet joined for the tap; made on first use

	icmp icmpWriter
	rt   realtimeState
	tap  tapper
	bc   batchCounters
	c    loopCounters
}

func newTxLoop(e *Engine, q Queue) *txLoop {
	n := max(e.cfg.BatchSize, q.Device.BatchSize())
	l := &txLoop{
		e:        e,
		dev:      q.Device,
		tr:       q.Transport,
		bufs:     NewBuffers(n),
		sizes:    make([]int, n),
		cand:     make([][]byte, 0, n),
		candPeer: make([]*Peer, 0, n),
		out:      make([][]byte, 0, n),
		outDst:   make([]netip.AddrPort, 0, n),
		groups:   make([]*Peer, 0, n),
		drain:    !e.cfg.NoDrain,
	}
	l.icmp.init(e, q.Device)
	l.ttl = e.cfg.Encap.DecrementsTTL()
	if r, ok := q.Device.(ReadableDevice); ok && !e.cfg.NoDrain {
		l.readable = r
	}
	if m, ok := q.Device.(DrainingDevice); ok && !e.cfg.NoDrain {
		l.more = m
	}
	sd, ok1 := q.Device.(SegmentingDevice)
	gt, ok2 := q.Transport.(GatherTransport)
	if ok1 && ok2 && !e.cfg.CopySegments {
		l.seg, l.gather = sd, gt
		l.tails = make([][]byte, n)
		l.candTail = make([][]byte, 0, n)
		l.outTail = make([][]byte, 0, n)
	}
	return l
}

func (l *txLoop) run() error {
	defer l.e.startRealtime(l.dev, &l.rt)()
	for {
		if err := l.rt.wait(l.e); err != nil {
			return err
		}
		n, err := l.read()
		if err != nil {
			if isClosed(err) || l.e.closing.Load() {
				return errClosed
			}
			// A malformed super-packet or a transient error: the packets of
			// this read are lost, the loop goes on.
			l.c.readErrs.Add(1)
			l.e.logReadError("tun", err)
			continue
		}
		if n == 0 {
			continue
		}
		l.bc.read = n
		l.rt.read(n)
		k := l.classify(l.e.table.Load(), n)
		if k > 0 {
			var refused int
			var err error
			if l.gather != nil {
				refused, err = l.gather.WriteBatchGather(l.out[:k], l.outTail[:k], l.outDst[:k])
			} else {
				refused, err = l.tr.WriteBatch(l.out[:k], l.outDst[:k])
			}
			if err != nil {
				if isClosed(err) || l.e.closing.Load() {
					return errClosed
				}
				return err
			}
			l.bc.drops[DropSendError] += uint32(refused)
			l.bc.dropped = l.bc.dropped || refused > 0
		}
		l.bc.flush(&l.c)
		l.icmp.flush(&l.c)
	}
}

// drainReserve is the room a further read needs: the most segments a TSO
// super-packet of one MTU-sized flow splits into is 64 KiB / 1 KiB-ish;
// with less room left the batch goes out as it is.
const drainReserve = 64

// maxDrainReads bounds the reads per batch so a steady trickle cannot
// delay the batch's first packet by more than a few reads.
const maxDrainReads = 64

// read fills the batch: one blocking read, then more while the device has
// packets waiting (when it can tell), so small packets are moved many per
// wakeup instead of one.
func (l *txLoop) read() (int, error) {
	if spin := l.e.cfg.BusyPoll; spin > 0 && l.readable != nil && l.rt.w == nil {
		// Busy-poll for a moment before a read that may park: a wakeup
		// through the netpoller costs tens of microseconds per hop.
		until := time.Now().Add(spin)
		for !l.readable.Readable() && time.Now().Before(until) {
		}
	}
	if l.seg != nil {
		return l.readSegments()
	}
	n, err := l.dev.Read(l.bufs, l.sizes, Headroom)
	if err != nil {
		return n, err
	}
	if l.more != nil {
		for reads := 1; reads < maxDrainReads && len(l.bufs)-n >= drainReserve; reads++ {
			m, err := l.more.ReadMore(l.bufs[n:], l.sizes[n:], Headroom)
			n += m
			if err != nil {
				// What that read returned is lost; the loop goes on with
				// what it has.
				l.c.readErrs.Add(1)
				break
			}
			if m == 0 {
				break // drained
			}
		}
		return n, nil
	}
	if l.readable == nil {
		return n, nil
	}
	for reads := 1; reads < maxDrainReads && len(l.bufs)-n >= drainReserve && l.readable.Readable(); reads++ {
		m, err := l.dev.Read(l.bufs[n:], l.sizes[n:], Headroom)
		n += m
		if err != nil {
			// Keep what was read; the error shows again on the next read
			// if it persists.
			break
		}
	}
	return n, nil
}

// readSegments is read for a SegmentingDevice: the same blocking read and
// drain, the segments' payloads left where their super-packet was read.
func (l *txLoop) readSegments() (int, error) {
	n, err := l.seg.ReadSegments(l.bufs, l.sizes, l.tails, Headroom, true)
	if err != nil || !l.drain {
		return n, err
	}
	for reads := 1; reads < maxDrainReads && len(l.bufs)-n >= drainReserve; reads++ {
		m, err := l.seg.ReadSegments(l.bufs[n:], l.sizes[n:], l.tails[n:], Headroom, false)
		n += m
		if err != nil {
			l.c.readErrs.Add(1)
			break
		}
		if m == 0 {
			break
		}
	}
	return n, nil
}

// joined returns pkt and its tail as one slice, for the tap: a copy when
// there is a tail (the tap is on, so this is not the fast path).
func (l *txLoop) joined(pkt, tail []byte) []byte {
	if len(tail) == 0 {
		return pkt
	}
	if l.whole == nil {
		l.whole = make([]byte, MaxPacket)
	}
	n := copy(l.whole, pkt)
	n += copy(l.whole[n:], tail)
	return l.whole[:n]
}

// classify validates the n packets just read, decides each one's peer and
// lays out l.out/l.outDst grouped by peer. It returns how many to send.
func (l *txLoop) classify(t *Table, n int) int {
	l.cand, l.candPeer = l.cand[:0], l.candPeer[:0]
	if l.seg != nil {
		l.candTail = l.candTail[:0]
	}
	l.tap.load(l.e)
	for i := 0; i < n; i++ {
		pkt := l.bufs[i][Headroom : Headroom+l.sizes[i]]
		var tail []byte
		if l.seg != nil {
			tail = l.tails[i]
		}
		if l.tap.t != nil {
			l.tap.show(PointFromTUN, DropNone, netip.AddrPort{}, true, l.joined(pkt, tail))
		}
		if isIPv6(pkt) {
			l.classify6(t, i, pkt, tail)
			continue
		}
		size, r := checkIPv4Len(pkt, len(pkt)+len(tail))
		if r == DropNone {
			pkt, tail, r = trim(pkt, tail, size)
		}
		if r != DropNone {
			l.drop(r, nil, pkt, tail)
			continue
		}
		var p *Peer
		if t != nil {
			p = t.lookup(dstIP(pkt))
		}
		if p == nil {
			l.drop(DropNoRoute, nil, pkt, tail)
			if !t.subnetBroadcast(dstIP(pkt)) {
				l.icmp.queue(pkt, icmpDestUnreachable, icmpCodeNetUnreach)
			}
			continue
		}
		if l.ttl && !decrementTTL(pkt) {
			l.drop(DropTTLExpired, p, pkt, tail)
			if !t.subnetBroadcast(dstIP(pkt)) {
				l.icmp.queue(pkt, icmpTimeExceeded, icmpCodeTTLExceeded)
			}
			continue
		}
		l.addCandidate(i, pkt, tail, p)
	}
	return l.group()
}

// trim cuts a packet to the size its header gives (a datagram may carry
// trailing bytes). A packet with a tail was cut by the device itself,
// so its header must lie whole in pkt.
func trim(pkt, tail []byte, size int) ([]byte, []byte, DropReason) {
	if len(tail) == 0 {
		return pkt[:size], nil, DropNone
	}
	if size < len(pkt) {
		return pkt, tail, DropBadLength
	}
	return pkt, tail[:size-len(pkt)], DropNone
}

func (l *txLoop) addCandidate(i int, pkt, tail []byte, p *Peer) {
	l.cand = append(l.cand, l.bufs[i][:Headroom+len(pkt)])
	l.candPeer = append(l.candPeer, p)
	if l.seg != nil {
		l.candTail = append(l.candTail, tail)
	}
}

// classify6 is classify for an IPv6 packet, in the order of the
// kernel's ip6_forward: the route, then the hop limit, then the MTU, each
// failure answered with its ICMPv6 error. Packets from the TUN are
// bounded by its MTU, so a packet above it is one the kernel should not
// have handed over (the TUN's MTU raised under a running engine): IPv6
// routers never fragment, and the sender learns the MTU from Packet Too
// Big instead of the peer dropping the packet as oversize.
func (l *txLoop) classify6(t *Table, i int, pkt, tail []byte) {
	size, r := checkIPv6Len(pkt, len(pkt)+len(tail))
	if r == DropNone {
		pkt, tail, r = trim(pkt, tail, size)
	}
	if r != DropNone {
		l.drop(r, nil, pkt, tail)
		return
	}
	var p *Peer
	if t != nil {
		p = t.lookup6(dst6(pkt))
	}
	if p == nil {
		l.drop(DropNoRoute, nil, pkt, tail)
		l.icmp.queue6(pkt, icmp6DestUnreachable, icmp6CodeNoRoute, 0)
		return
	}
	if l.ttl && hopLimitExpired(pkt) {
		l.drop(DropTTLExpired, p, pkt, tail)
		l.icmp.queue6(pkt, icmp6TimeExceeded, icmp6CodeHopLimitExceeded, 0)
		return
	}
	if size > l.e.cfg.MTU {
		l.drop(DropOversize, p, pkt, tail)
		l.icmp.queue6(pkt, icmp6PacketTooBig, 0, uint32(l.e.cfg.MTU))
		return
	}
	if l.ttl {
		pkt[7]--
	}
	l.addCandidate(i, pkt, tail, p)
}

// drop counts a packet not sent; the tap sees it whole.
func (l *txLoop) drop(r DropReason, p *Peer, pkt, tail []byte) {
	l.bc.drop(r)
	if l.tap.t != nil {
		var ep netip.AddrPort
		if p != nil {
			ep = p.Endpoint
		}
		l.tap.show(PointDrop, r, ep, true, l.joined(pkt, tail))
	}
}

// group orders the candidates by peer, keeping each peer's packets in
// their original order, so the transport can coalesce a peer's run into one
// GSO send. Batches rarely hold more than a few peers, so a scan over the
// distinct peers seen beats sorting. A peer with an IPv6 endpoint gets two
// runs, its IPv4 packets to Endpoint and its IPv6 packets to Endpoint6.
func (l *txLoop) group() int {
	l.out, l.outDst, l.groups = l.out[:0], l.outDst[:0], l.groups[:0]
	if l.seg != nil {
		l.outTail = l.outTail[:0]
	}
	if len(l.cand) == 0 {
		return 0
	}
	for _, p := range l.candPeer {
		seen := false
		for _, g := range l.groups {
			if g == p {
				seen = true
				break
			}
		}
		if !seen {
			l.groups = append(l.groups, p)
		}
	}
	for _, g := range l.groups {
		var pkts, bytes uint64
		if g.Endpoint6.IsValid() {
			pkts, bytes = l.emit(g, g.Endpoint, familyIPv4)
			p6, b6 := l.emit(g, g.Endpoint6, familyIPv6)
			pkts, bytes = pkts+p6, bytes+b6
		} else {
			pkts, bytes = l.emit(g, g.Endpoint, familyAny)
		}
		g.tx.packets.Add(pkts)
		g.tx.bytes.Add(bytes)
		l.bc.packets += pkts
		l.bc.bytes += bytes
	}
	return len(l.out)
}

const (
	familyAny = iota
	familyIPv4
	familyIPv6
)

// emit encapsulates g's candidates of the family (familyAny: all) and
// appends them to the batch, bound for dst.
func (l *txLoop) emit(g *Peer, dst netip.AddrPort, family int) (pkts, bytes uint64) {
	enc, oh := l.e.cfg.Encap, l.e.cfg.Encap.Overhead()
	for i, p := range l.candPeer {
		if p != g {
			continue
		}
		b := l.cand[i]
		if family != familyAny && isIPv6(b[Headroom:]) != (family == familyIPv6) {
			continue
		}
		if oh > 0 {
			enc.Encapsulate(b[Headroom-oh:Headroom], b[Headroom:], g)
		}
		l.out = append(l.out, b[Headroom-oh:])
		l.outDst = append(l.outDst, dst)
		pkts++
		bytes += uint64(len(b) - Headroom)
		if l.seg != nil {
			l.outTail = append(l.outTail, l.candTail[i])
			bytes += uint64(len(l.candTail[i]))
		}
	}
	return pkts, bytes
}

// icmpWriter queues ICMP and ICMPv6 errors for the packets of one batch
// and writes them into the TUN after the batch is sent: at most
// icmpPerBatch per batch and rate per second, both families together.
type icmpWriter struct {
	e        *Engine
	dev      Device // the queue's: errors go back the way the packet came
	rate     int    // errors per second: the engine's share for one queue
	src      uint32
	src6     addr6
	enabled  bool // ICMP errors for IPv4 packets
	enabled6 bool // ICMPv6 errors for IPv6 packets
	bufs     [][]byte
	out      [][]byte
	// token bucket, refilled per second; touched only on the error path
	tokens int
	refill time.Time
}

const icmpPerBatch = 8

func (w *icmpWriter) init(e *Engine, dev Device) {
	w.e, w.dev = e, dev
	// Each queue's loop has its own bucket, so that the sum over queues
	// stays within Config.ICMPRate.
	w.rate = max(1, e.cfg.ICMPRate/len(e.queues))
	w.enabled = e.cfg.ICMPSource.Is4()
	if w.enabled {
		w.src = u32(e.cfg.ICMPSource)
	}
	w.enabled6 = e.cfg.ICMPSource6.Is6() && !e.cfg.ICMPSource6.Is4In6()
	if w.enabled6 {
		w.src6 = addr6Of(e.cfg.ICMPSource6)
	}
	w.bufs = make([][]byte, icmpPerBatch)
	for i := range w.bufs {
		w.bufs[i] = make([]byte, Headroom+max(icmpErrorLen, icmp6ErrorLen), BufferSize)
	}
	w.out = make([][]byte, 0, icmpPerBatch)
}

// take returns the next free buffer if the batch and the rate allow one
// more error.
func (w *icmpWriter) take() ([]byte, bool) {
	if len(w.out) == len(w.bufs) {
		return nil, false
	}
	if w.tokens == 0 {
		now := time.Now()
		if now.Sub(w.refill) < time.Second {
			return nil, false
		}
		w.refill, w.tokens = now, w.rate
	}
	w.tokens--
	b := w.bufs[len(w.out)]
	return b[:cap(b)], true
}

func (w *icmpWriter) queue(offender []byte, typ, code uint8) {
	if !w.enabled || len(w.out) == len(w.bufs) || !icmpErrorAllowed(offender) {
		return
	}
	b, ok := w.take()
	if !ok {
		return
	}
	n := buildICMPError(b[Headroom:], typ, code, w.src, offender)
	w.out = append(w.out, b[:Headroom+n])
}

// queue6 is queue for an IPv6 offender; param is the message's 32-bit
// field (the MTU of a Packet Too Big).
func (w *icmpWriter) queue6(offender []byte, typ, code uint8, param uint32) {
	if !w.enabled6 || len(w.out) == len(w.bufs) || !icmp6ErrorAllowed(offender, typ) {
		return
	}
	b, ok := w.take()
	if !ok {
		return
	}
	n := buildICMPv6Error(b[Headroom:], typ, code, param, w.src6, offender)
	w.out = append(w.out, b[:Headroom+n])
}

func (w *icmpWriter) flush(c *loopCounters) {
	if len(w.out) == 0 {
		return
	}
	if _, err := w.dev.Write(w.out, Headroom); err == nil {
		c.icmp.Add(uint64(len(w.out)))
	}
	w.out = w.out[:0]
}
