package engine

import "net/netip"

// Point is where in the engine a packet was seen.
type Point uint8

const (
	// PointFromTUN: an inner packet as read from the TUN, before anything
	// is decided about it.
	PointFromTUN Point = iota
	// PointToTUN: an inner packet from a peer, accepted and about to be
	// written into the TUN.
	PointToTUN
	// PointDrop: a packet not forwarded; Reason says why.
	PointDrop
	NumPoints
)

var pointNames = [NumPoints]string{"from-tun", "to-tun", "drop"}

func (p Point) String() string {
	if p < NumPoints {
		return pointNames[p]
	}
	return "unknown"
}

// TapPacket is one packet shown to a Tap.
type TapPacket struct {
	Point   Point
	Reason  DropReason     // for PointDrop
	Peer    netip.AddrPort // the destination peer (to the underlay) or the sender (from it); invalid if none
	FromTUN bool           // the packet came from the TUN side (else from the underlay)
	// Data is the packet; it is only valid during the call.
	Data []byte
}

// Tap sees the packets the loops handle, for live captures. Capture runs
// on the packet path, on the loops' goroutines (two at once): it must copy
// what it keeps, never block and never allocate on the common path.
type Tap interface {
	Capture(p *TapPacket)
}

type tapBox struct{ t Tap }

// SetTap starts showing packets to t (nil stops). With no tap the loops
// pay one atomic load per batch.
func (e *Engine) SetTap(t Tap) {
	if t == nil {
		e.tap.Store(nil)
		return
	}
	e.tap.Store(&tapBox{t})
}

// tapper is a loop's view of the tap for one batch. Its packet is reused so
// showing one costs no allocation.
type tapper struct {
	t   Tap
	pkt TapPacket
}

func (tp *tapper) load(e *Engine) {
	if b := e.tap.Load(); b != nil {
		tp.t = b.t
	} else {
		tp.t = nil
	}
}

func (tp *tapper) show(point Point, reason DropReason, peer netip.AddrPort, fromTUN bool, data []byte) {
	tp.pkt = TapPacket{Point: point, Reason: reason, Peer: peer, FromTUN: fromTUN, Data: data}
	tp.t.Capture(&tp.pkt)
	tp.pkt.Data = nil
}
