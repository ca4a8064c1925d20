package engine

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"time"
)

// rxLoop moves datagrams from the transport into the TUN. Each packet is
// received into a BufferSize element at Headroom and written to the TUN
// from there; the Device uses the headroom for its virtio-net header.
type rxLoop struct {
	e     *Engine
	queue int      // the queue whose socket it reads
	r     Receiver // the queue's transport, or one of its receivers
	dev   Device   // the queue's device, which it writes into (one queue)
	// With several queues: every queue's Device, and per queue the
	// packets of a batch whose flow hashes to it (flowQueue).
	devs  []Device
	outq  [][][]byte
	bufs  [][]byte
	sizes []int
	srcs  []netip.AddrPort
	out   [][]byte
	// With trains (a TrainReceiver and an InPlaceWriter): datagram i is
	// pkts[i][Headroom:], inside one of bufs, perhaps beside others.
	trains TrainReceiver
	pkts   [][]byte

	tap tapper
	rt  realtimeState
	bc  batchCounters
	c   loopCounters

	off int  // where inner packets start in a buffer: Headroom + encapsulation overhead
	ttl bool // the encapsulation lowers the TTL
	// bigTCP: the device cuts TCP packets longer than its MTU itself, so
	// a peer's unsegmented TSO packet is not oversize (LargeTCPWriter).
	bigTCP bool
	// bigTCP6: the same for TCP over IPv6 (LargeTCP6Writer).
	bigTCP6 bool
}

// LargeTCPWriter is a Device that accepts TCP packets longer than its MTU
// and has the kernel segment them (a TSO super-packet a kernel vxlan peer
// delivered whole). It speaks for TCP over IPv4 only.
type LargeTCPWriter interface {
	SegmentsLargeTCP() bool
}

// LargeTCP6Writer is LargeTCPWriter for TCP over IPv6: without it, an IPv6
// packet from a peer longer than the MTU is dropped as oversize.
type LargeTCP6Writer interface {
	SegmentsLargeTCP6() bool
}

func newRxLoop(e *Engine, queue int, r Receiver) *rxLoop {
	n := e.cfg.BatchSize
	dev := e.queues[queue].Device
	l := &rxLoop{
		e:     e,
		queue: queue,
		r:     r,
		dev:   dev,
		bufs:  NewBuffers(n),
		sizes: make([]int, n),
		srcs:  make([]netip.AddrPort, n),
		out:   make([][]byte, 0, n),
	}
	l.off = Headroom + e.cfg.Encap.Overhead()
	l.ttl = e.cfg.Encap.DecrementsTTL()
	if len(e.queues) > 1 {
		for _, q := range e.queues {
			l.devs = append(l.devs, q.Device)
			l.outq = append(l.outq, make([][]byte, 0, n))
		}
	}
	// The queues of one TUN answer alike: the first speaks for all.
	if w, ok := dev.(LargeTCPWriter); ok {
		l.bigTCP = w.SegmentsLargeTCP()
	}
	if w, ok := dev.(LargeTCP6Writer); ok {
		l.bigTCP6 = w.SegmentsLargeTCP6()
	}
	tr, ok1 := r.(TrainReceiver)
	w, ok2 := dev.(InPlaceWriter)
	if ok1 && ok2 && w.WritesInPlace() && !e.cfg.CopyTrains {
		l.trains = tr
		l.pkts = make([][]byte, n)
	}
	return l
}

func (l *rxLoop) run() error {
	defer l.e.startRealtime(l.r, &l.rt)()
	for {
		if err := l.rt.wait(l.e); err != nil {
			return err
		}
		var n int
		var err error
		if l.trains != nil {
			n, err = l.trains.ReadTrains(l.bufs, l.pkts, l.srcs, Headroom)
		} else {
			n, err = l.r.ReadBatch(l.bufs, l.sizes, l.srcs, Headroom)
		}
		if err != nil {
			if isClosed(err) || l.e.closing.Load() {
				return errClosed
			}
			l.c.readErrs.Add(1)
			l.e.logReadError("transport", err)
			continue
		}
		if n == 0 {
			continue
		}
		l.bc.read = n
		l.rt.read(n)
		k := l.classify(l.e.table.Load(), n)
		if k > 0 {
			var err error
			if l.outq != nil {
				err = l.writeQueues(l.out[:k])
			} else {
				err = l.write(l.dev, l.out[:k])
			}
			if err != nil {
				return err
			}
		}
		l.bc.flush(&l.c)
	}
}

// write writes a batch's packets into dev. l.out and l.outq hold copies
// of the slice headers: whatever Write does to them (it may grow them
// while coalescing), l.bufs keeps its full-length elements. A failed write
// is counted; only a closed device ends the loop.
func (l *rxLoop) write(dev Device, pkts [][]byte) error {
	if _, err := dev.Write(pkts, l.off); err != nil {
		if isClosed(err) || l.e.closing.Load() {
			return errClosed
		}
		l.bc.drops[DropTUNWriteError] += uint32(countErrors(err))
		l.bc.dropped = true
	}
	return nil
}

// writeQueues writes each packet of a batch into the queue its flow
// hashes to, each queue's share with one Write. (classify leaves the
// batch in l.out as with one queue, so one queue pays nothing for this.)
func (l *rxLoop) writeQueues(out [][]byte) error {
	for _, b := range out {
		q := flowQueue(b[l.off:], len(l.outq))
		l.outq[q] = append(l.outq[q], b)
	}
	for q, pkts := range l.outq {
		if len(pkts) == 0 {
			continue
		}
		err := l.write(l.devs[q], pkts)
		l.outq[q] = pkts[:0]
		if err != nil {
			return err
		}
	}
	return nil
}

// classify validates the n datagrams just received, patches each packet's
// TTL, and lays out l.out for the TUN write. It returns how many to write.
func (l *rxLoop) classify(t *Table, n int) int {
	l.out = l.out[:0]
	antiSpoof, checkPort := l.e.cfg.AntiSpoof, l.e.cfg.CheckSourcePort
	mtu := l.e.cfg.MTU
	// Datagrams arrive in runs from the same peer; remember the last one to
	// skip the map lookup and to add the peer's counters once per run.
	var (
		last     *Peer
		lastAddr netip.Addr
		runPkts  uint64
		runBytes uint64
	)
	flushRun := func() {
		if last != nil && runPkts != 0 {
			last.rx.packets.Add(runPkts)
			last.rx.bytes.Add(runBytes)
		}
		runPkts, runBytes = 0, 0
	}
	l.tap.load(l.e)
	enc, oh := l.e.cfg.Encap, l.off-Headroom
	for i := 0; i < n; i++ {
		var buf []byte // the datagram at Headroom, its capacity ending with it
		if l.trains != nil {
			buf = l.pkts[i]
		} else {
			buf = l.bufs[i][:Headroom+l.sizes[i]]
		}
		dgram := buf[Headroom:]
		var p *Peer
		src := l.srcs[i].Addr()
		if t != nil {
			if last != nil && src == lastAddr {
				p = last
			} else if p = t.peerBySource(src); p != nil {
				flushRun()
				last, lastAddr = p, src
			}
		}
		if len(dgram) < oh {
			l.drop(DropBadEncap, i, dgram)
			continue
		}
		if oh > 0 {
			// The capacity ends with the datagram: an Encap may read a frame
			// it answers itself (VXLAN's ARP), never stale buffer bytes.
			if r := enc.Decapsulate(dgram[:oh:len(dgram)], p); r != DropNone {
				l.drop(r, i, dgram)
				continue
			}
		}
		pkt := dgram[oh:]
		v6 := isIPv6(pkt)
		var (
			size int
			r    DropReason
		)
		if v6 {
			size, r = checkIPv6(pkt)
		} else {
			size, r = checkIPv4(pkt)
		}
		if r != DropNone {
			l.drop(r, i, pkt)
			continue
		}
		pkt = pkt[:size]
		if antiSpoof {
			switch {
			case p == nil:
				r = DropUnknownPeer
			case checkPort && l.srcs[i] != p.Endpoint && l.srcs[i] != p.Endpoint6:
				r = DropWrongSourcePort
			case p.Endpoint6.IsValid() && v6 != src.Is6():
				// A peer with an IPv6 underlay endpoint sends its IPv6
				// packets from there and its IPv4 packets from its IPv4
				// endpoint, as a kernel vxlan host's two devices do.
				r = DropSpoofedSource
			case v6:
				r = l.admit6(t, p, pkt, mtu)
			default:
				r = l.admit4(t, p, pkt, mtu)
			}
			if r != DropNone {
				l.drop(r, i, pkt)
				continue
			}
		}
		if l.ttl {
			var ok bool
			if v6 {
				ok = decrementHopLimit(pkt)
			} else {
				ok = decrementTTL(pkt)
			}
			if !ok {
				l.drop(DropTTLExpired, i, pkt)
				continue
			}
		}
		if p != nil && p == last {
			runPkts++
			runBytes += uint64(size)
		}
		l.bc.packets++
		l.bc.bytes += uint64(size)
		l.out = append(l.out, buf[:l.off+size])
		if l.tap.t != nil {
			l.tap.show(PointToTUN, DropNone, l.srcs[i], false, pkt)
		}
	}
	flushRun()
	return len(l.out)
}

// admit4 is the anti-spoofing check of an IPv4 packet from peer p: its
// source in p's subnet, its destination in this host's, and no longer
// than the TUN's MTU unless the device cuts large TCP packets itself.
func (l *rxLoop) admit4(t *Table, p *Peer, pkt []byte, mtu int) DropReason {
	switch {
	case !p.contains(srcIP(pkt)):
		return DropSpoofedSource
	case !t.isLocal(dstIP(pkt)):
		return DropNotLocal
	case len(pkt) > mtu && !(l.bigTCP && pkt[9] == protoTCP):
		return DropOversize
	}
	return DropNone
}

// admit6 is admit4 for IPv6, against the peer's and this host's IPv6
// subnets. A peer without an IPv6 subnet sends no valid IPv6 source. The
// large-TCP exemption needs a device that cuts TCPv6 packets
// (LargeTCP6Writer); the TCP header counts only right after the fixed
// header, since an extension header in between is not parsed.
func (l *rxLoop) admit6(t *Table, p *Peer, pkt []byte, mtu int) DropReason {
	switch {
	case !p.contains6(src6(pkt)):
		return DropSpoofedSource
	case !t.isLocal6(dst6(pkt)):
		return DropNotLocal
	case len(pkt) > mtu && !(l.bigTCP6 && pkt[6] == protoTCP):
		return DropOversize
	}
	return DropNone
}

func (l *rxLoop) drop(r DropReason, i int, pkt []byte) {
	l.bc.drop(r)
	if l.tap.t != nil {
		l.tap.show(PointDrop, r, l.srcs[i], false, pkt)
	}
}

func isClosed(err error) bool {
	return errors.Is(err, os.ErrClosed) || errors.Is(err, net.ErrClosed) || errors.Is(err, errClosed)
}

func countErrors(err error) int {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return len(j.Unwrap())
	}
	return 1
}

// logReadError logs failed reads at most once per second per engine: a
// burst of bad super-packets must not become a burst of log lines.
func (e *Engine) logReadError(side string, err error) {
	now := time.Now().UnixNano()
	last := e.lastReadLog.Load()
	if now-last < int64(time.Second) || !e.lastReadLog.CompareAndSwap(last, now) {
		return
	}
	e.log.Warn("read failed; packets of this read are lost", "side", side, "err", err)
}
