package udp

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/weft-net/weft/engine"
)

// Dual carries flannel-UDP datagrams over both underlays of a dual-stack
// host: an IPv4 Conn and an IPv6 Conn, each with its own GSO/GRO state
// and runtime fallback. It receives on both (engine.MultiReceiver: a
// receive loop per socket) and sends each datagram from the socket of its
// destination's family.
type Dual struct {
	v4, v6 *Conn

	// one WriteBatch's datagrams of each family, preallocated; only the
	// send loop touches them
	pkts4, pkts6   [][]byte
	tails4, tails6 [][]byte
	dsts4, dsts6   []netip.AddrPort
}

var (
	_ engine.Transport       = (*Dual)(nil)
	_ engine.GatherTransport = (*Dual)(nil)
	_ engine.MultiReceiver   = (*Dual)(nil)
)

// ListenDual opens o's socket on local4 and another on local6 (the same
// options otherwise).
func ListenDual(o Options, local4, local6 netip.AddrPort) (*Dual, error) {
	if !local4.Addr().Is4() {
		return nil, fmt.Errorf("udp: %s is not an IPv4 address", local4)
	}
	if !local6.Addr().Is6() || local6.Addr().Is4In6() {
		return nil, fmt.Errorf("udp: %s is not an IPv6 address", local6)
	}
	o.Local = local4
	v4, err := Listen(o)
	if err != nil {
		return nil, err
	}
	o.Local = local6
	v6, err := Listen(o)
	if err != nil {
		v4.Close()
		return nil, fmt.Errorf("IPv6 underlay: %w", err)
	}
	n := v4.batch
	return &Dual{v4: v4, v6: v6,
		pkts4: make([][]byte, 0, n), pkts6: make([][]byte, 0, n),
		tails4: make([][]byte, 0, n), tails6: make([][]byte, 0, n),
		dsts4: make([]netip.AddrPort, 0, n), dsts6: make([]netip.AddrPort, 0, n)}, nil
}

// V4 and V6 are the two sockets.
func (d *Dual) V4() *Conn { return d.v4 }
func (d *Dual) V6() *Conn { return d.v6 }

// Receivers implements engine.MultiReceiver.
func (d *Dual) Receivers() []engine.Receiver { return []engine.Receiver{d.v4, d.v6} }

// ReadBatch implements engine.Transport (the engine reads through
// Receivers instead): the IPv4 socket's.
func (d *Dual) ReadBatch(bufs [][]byte, sizes []int, srcs []netip.AddrPort, offset int) (int, error) {
	return d.v4.ReadBatch(bufs, sizes, srcs, offset)
}

// BatchSize implements engine.Transport.
func (d *Dual) BatchSize() int { return d.v4.batch }

// WriteBatch implements engine.Transport: each family's datagrams, in
// their order (so a peer's run stays adjacent for GSO), from its socket.
func (d *Dual) WriteBatch(pkts [][]byte, dsts []netip.AddrPort) (int, error) {
	return d.WriteBatchGather(pkts, nil, dsts)
}

// WriteBatchGather implements engine.GatherTransport as WriteBatch does
// engine.Transport (tails may be nil).
func (d *Dual) WriteBatchGather(pkts, tails [][]byte, dsts []netip.AddrPort) (int, error) {
	n6 := 0
	for _, a := range dsts {
		if a.Addr().Is6() {
			n6++
		}
	}
	switch n6 {
	case 0:
		return d.v4.WriteBatchGather(pkts, tails, dsts)
	case len(dsts):
		return d.v6.WriteBatchGather(pkts, tails, dsts)
	}
	for i, p := range pkts {
		if dsts[i].Addr().Is6() {
			d.pkts6, d.dsts6 = append(d.pkts6, p), append(d.dsts6, dsts[i])
			if tails != nil {
				d.tails6 = append(d.tails6, tails[i])
			}
		} else {
			d.pkts4, d.dsts4 = append(d.pkts4, p), append(d.dsts4, dsts[i])
			if tails != nil {
				d.tails4 = append(d.tails4, tails[i])
			}
		}
	}
	var t4, t6 [][]byte // nil without tails
	if tails != nil {
		t4, t6 = d.tails4, d.tails6
	}
	r4, err4 := d.v4.WriteBatchGather(d.pkts4, t4, d.dsts4)
	r6, err6 := d.v6.WriteBatchGather(d.pkts6, t6, d.dsts6)
	// Drop the references: the engine owns the buffers.
	clear(d.pkts4)
	clear(d.pkts6)
	clear(d.tails4)
	clear(d.tails6)
	d.pkts4, d.dsts4, d.pkts6, d.dsts6 = d.pkts4[:0], d.dsts4[:0], d.pkts6[:0], d.dsts6[:0]
	d.tails4, d.tails6 = d.tails4[:0], d.tails6[:0]
	return r4 + r6, errors.Join(err4, err6)
}

// Close implements engine.Transport.
func (d *Dual) Close() error { return errors.Join(d.v4.Close(), d.v6.Close()) }

// Stats sums both sockets' counters: an offload counts as in use while
// both sockets use it.
func (d *Dual) Stats() Stats { return Sum(d.v4.Stats(), d.v6.Stats()) }

// Sum adds b's counters to a's; an offload is in use if both use it, and
// the last send errno is b's if it has one.
func Sum(a, b Stats) Stats {
	a.GSO, a.GRO = a.GSO && b.GSO, a.GRO && b.GRO
	a.GSOFallbacks += b.GSOFallbacks
	a.RecvCalls += b.RecvCalls
	a.RecvDatagrams += b.RecvDatagrams
	a.RecvSegments += b.RecvSegments
	a.SendCalls += b.SendCalls
	a.SendMessages += b.SendMessages
	a.SendSegments += b.SendSegments
	a.Truncated += b.Truncated
	a.SendErrors += b.SendErrors
	a.ReceiveDrops += b.ReceiveDrops
	if b.LastSendErrno != 0 {
		a.LastSendErrno = b.LastSendErrno
	}
	return a
}
