package vxlan

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/weft-net/weft/encap/udp"
	"github.com/weft-net/weft/engine"
)

// DefaultSourcePorts is how many source ports a Transport spreads flows
// over. ECMP routers and receive-side scaling hash the outer 5-tuple, and
// the source port is the only part that differs between two hosts' flows,
// so it has to vary per flow; 8 keeps one socket per port cheap while
// giving a 2- or 4-way ECMP group or a NIC's RSS queues several keys.
const DefaultSourcePorts = 8

// TransportOptions configure ListenTransport.
type TransportOptions struct {
	// Local is the host's public IP and the VXLAN port (8472): datagrams
	// are received there, as by the kernel's vxlan socket.
	Local netip.AddrPort
	// Local6, on a dual-stack network, is the host's IPv6 address and the
	// VXLAN port: the IPv6 underlay a kernel flannel-v6.<VNI> uses. The
	// Transport then receives on both (engine.MultiReceiver) and sends
	// each frame from a socket of its destination's family. Zero: IPv4
	// only.
	Local6 netip.AddrPort
	// SourcePorts is how many sender sockets (and so source ports) flows
	// are spread over (default DefaultSourcePorts).
	SourcePorts int
	// BatchSize, NoGSO, NoGRO: as udp.Options.
	BatchSize    int
	NoGSO, NoGRO bool
	// ReusePort binds the receiving sockets with SO_REUSEPORT, so that
	// the Transports of several queues receive on the one VXLAN port: the
	// kernel hands each datagram to one of them by a hash of its 4-tuple,
	// in which a VXLAN sender's per-flow source port spreads one peer's
	// flows over the group (udp.Options.ReusePort).
	ReusePort bool
}

// Transport carries VXLAN frames: it receives on the VXLAN port and sends
// each inner flow from one of a few sockets bound to ephemeral ports.
//
// The kernel's vxlan picks each frame's UDP source port from the inner
// flow's hash (udp_flow_src_port over the device's port range, by default
// the local port range net.ipv4.ip_local_port_range, as flannel's
// "srcport 0 0" shows). A UDP socket sends from the one port it is bound
// to, and raw sockets would lose UDP GSO, so the Transport binds N sockets
// to ports the kernel picks from that same range and sends a flow through
// socket hash(flow) mod N. A peer's packets stay adjacent per socket, so
// each socket still coalesces a peer's run into GSO sends; a flow keeps
// one port, so its packets keep their order.
type Transport struct {
	rx     *udp.Conn
	rx6    *udp.Conn   // nil without Local6
	tx     []*udp.Conn // the IPv4 senders, then the IPv6 ones
	n4     int         // how many of tx are IPv4
	ports  []uint16
	ports6 []uint16
	seed   uint64
	batch  int

	// per-sender slices of one WriteBatch, preallocated
	pkts  [][][]byte
	tails [][][]byte
	dsts  [][]netip.AddrPort

	// SendFrame's one-message batch, used by the receive loop only
	frame    [1][]byte
	frameDst [1]netip.AddrPort
}

var (
	_ engine.Transport       = (*Transport)(nil)
	_ engine.GatherTransport = (*Transport)(nil)
	_ engine.TrainReceiver   = (*Transport)(nil)
	_ engine.MultiReceiver   = (*Transport)(nil)
)

// ListenTransport opens the receiving socket and the sender sockets.
func ListenTransport(o TransportOptions) (*Transport, error) {
	if o.SourcePorts == 0 {
		o.SourcePorts = DefaultSourcePorts
	}
	if o.SourcePorts < 1 || o.SourcePorts > 64 {
		return nil, fmt.Errorf("vxlan: %d source ports is outside 1..64", o.SourcePorts)
	}
	if o.BatchSize == 0 {
		o.BatchSize = 128
	}
	rx, err := udp.Listen(udp.Options{Local: o.Local, BatchSize: o.BatchSize, NoGSO: true, NoGRO: o.NoGRO, ReusePort: o.ReusePort})
	if err != nil {
		return nil, fmt.Errorf("vxlan: %w", err)
	}
	t := &Transport{rx: rx, batch: o.BatchSize}
	var seed [8]byte
	rand.Read(seed[:])
	t.seed = binary.LittleEndian.Uint64(seed[:])
	if err := t.addSenders(o, o.Local.Addr(), &t.ports); err != nil {
		t.Close()
		return nil, err
	}
	t.n4 = len(t.tx)
	if o.Local6.IsValid() {
		if !o.Local6.Addr().Is6() || o.Local6.Addr().Is4In6() {
			t.Close()
			return nil, fmt.Errorf("vxlan: %s is not an IPv6 address", o.Local6)
		}
		if t.rx6, err = udp.Listen(udp.Options{Local: o.Local6, BatchSize: o.BatchSize, NoGSO: true, NoGRO: o.NoGRO, ReusePort: o.ReusePort}); err != nil {
			t.Close()
			return nil, fmt.Errorf("vxlan: IPv6 underlay: %w", err)
		}
		if err := t.addSenders(o, o.Local6.Addr(), &t.ports6); err != nil {
			t.Close()
			return nil, err
		}
	}
	return t, nil
}

// addSenders opens o.SourcePorts sender sockets on local's address.
func (t *Transport) addSenders(o TransportOptions, local netip.Addr, ports *[]uint16) error {
	for range o.SourcePorts {
		c, err := udp.Listen(udp.Options{Local: netip.AddrPortFrom(local, 0), BatchSize: o.BatchSize,
			NoGSO: o.NoGSO, NoGRO: true, SendOnly: true, SocketBuffer: 4 << 20})
		if err != nil {
			return fmt.Errorf("vxlan: sender socket: %w", err)
		}
		t.tx = append(t.tx, c)
		*ports = append(*ports, c.LocalAddr().Port())
		t.pkts = append(t.pkts, make([][]byte, 0, o.BatchSize))
		t.tails = append(t.tails, make([][]byte, 0, o.BatchSize))
		t.dsts = append(t.dsts, make([]netip.AddrPort, 0, o.BatchSize))
	}
	return nil
}

// Receivers implements engine.MultiReceiver: the IPv4 and the IPv6
// receiving sockets, each read by a receive loop of its own. Without an
// IPv6 underlay there is one, and the engine reads it through ReadBatch.
func (t *Transport) Receivers() []engine.Receiver {
	if t.rx6 == nil {
		return nil
	}
	return []engine.Receiver{t.rx, t.rx6}
}

// BatchSize implements engine.Transport.
func (t *Transport) BatchSize() int { return t.batch }

// LocalAddr is the receiving socket's address.
func (t *Transport) LocalAddr() netip.AddrPort { return t.rx.LocalAddr() }

// SourcePorts are the ports frames leave from (over IPv4).
func (t *Transport) SourcePorts() []uint16 { return t.ports }

// SourcePorts6 are the ports frames leave from over IPv6 (none without
// an IPv6 underlay).
func (t *Transport) SourcePorts6() []uint16 { return t.ports6 }

// WaitFD implements engine.Waitable for the one receiving socket the
// engine reads through ReadBatch.
func (t *Transport) WaitFD() int { return t.rx.WaitFD() }

// ReadBatch implements engine.Transport.
func (t *Transport) ReadBatch(bufs [][]byte, sizes []int, srcs []netip.AddrPort, offset int) (int, error) {
	return t.rx.ReadBatch(bufs, sizes, srcs, offset)
}

// ReadTrains implements engine.TrainReceiver: the receiving socket's.
func (t *Transport) ReadTrains(bufs, pkts [][]byte, srcs []netip.AddrPort, offset int) (int, error) {
	return t.rx.ReadTrains(bufs, pkts, srcs, offset)
}

// WriteBatch implements engine.Transport. pkts[i] are whole VXLAN frames;
// the flow is hashed from the inner packet after HeaderLen, and the frame
// sent from a sender of its destination's family.
func (t *Transport) WriteBatch(pkts [][]byte, dsts []netip.AddrPort) (int, error) {
	return t.WriteBatchGather(pkts, nil, dsts)
}

// WriteBatchGather implements engine.GatherTransport as WriteBatch does
// engine.Transport: frame i is pkts[i] followed by tails[i] (tails may be
// nil), the flow hashed from the inner headers in pkts[i].
func (t *Transport) WriteBatchGather(pkts, tails [][]byte, dsts []netip.AddrPort) (int, error) {
	if len(t.tx) == 1 {
		return t.tx[0].WriteBatchGather(pkts, tails, dsts)
	}
	n6 := len(t.tx) - t.n4
	for i, p := range pkts {
		var h uint32
		if len(p) > HeaderLen {
			h = flowHash(p[HeaderLen:], t.seed)
		}
		var b int
		if dsts[i].Addr().Is6() && n6 > 0 {
			b = t.n4 + bucket(h, n6)
		} else {
			b = bucket(h, t.n4)
		}
		t.pkts[b] = append(t.pkts[b], p)
		t.dsts[b] = append(t.dsts[b], dsts[i])
		if tails != nil {
			t.tails[b] = append(t.tails[b], tails[i])
		}
	}
	refused := 0
	var err error
	for b, c := range t.tx {
		if len(t.pkts[b]) == 0 {
			continue
		}
		if err == nil {
			var tl [][]byte // nil without tails
			if tails != nil {
				tl = t.tails[b]
			}
			var r int
			r, err = c.WriteBatchGather(t.pkts[b], tl, t.dsts[b])
			refused += r
		}
		// Drop the references: the engine owns the buffers.
		clear(t.pkts[b])
		clear(t.tails[b])
		t.pkts[b], t.dsts[b], t.tails[b] = t.pkts[b][:0], t.dsts[b][:0], t.tails[b][:0]
	}
	return refused, err
}

// SendFrame sends one frame (an ARP reply) from the VXLAN port. It is for
// the receive loop's rare replies: the receiving socket sends nothing else,
// so its send state is the receive loop's own.
func (t *Transport) SendFrame(frame []byte, to netip.AddrPort) error {
	rx := t.rx
	if to.Addr().Is6() && t.rx6 != nil {
		rx = t.rx6
	}
	t.frame[0], t.frameDst[0] = frame, to
	refused, err := rx.WriteBatch(t.frame[:], t.frameDst[:])
	t.frame[0] = nil
	if err == nil && refused > 0 {
		err = fmt.Errorf("vxlan: the kernel refused a frame to %s", to)
	}
	return err
}

// Close implements engine.Transport.
func (t *Transport) Close() error {
	var errs []error
	if t.rx != nil {
		errs = append(errs, t.rx.Close())
	}
	if t.rx6 != nil {
		errs = append(errs, t.rx6.Close())
	}
	for _, c := range t.tx {
		errs = append(errs, c.Close())
	}
	return errors.Join(errs...)
}

// TransportStats are the receiving sockets' counters and the senders'
// summed (both families).
type TransportStats struct {
	SourcePorts  []uint16   `json:"source_ports"`
	SourcePorts6 []uint16   `json:"source_ports_v6,omitempty"`
	Receive      udp.Stats  `json:"receive"`
	Receive6     *udp.Stats `json:"receive_v6,omitempty"` // the IPv6 underlay's, dual-stack only
	Send         udp.Stats  `json:"send"`
}

// Add returns the counters of s and o together, as one Transport of both
// their sockets (the queues of one data path).
func (s TransportStats) Add(o TransportStats) TransportStats {
	s.SourcePorts = append(slices.Clip(s.SourcePorts), o.SourcePorts...)
	s.SourcePorts6 = append(slices.Clip(s.SourcePorts6), o.SourcePorts6...)
	s.Receive = udp.Sum(s.Receive, o.Receive)
	if o.Receive6 != nil {
		r6 := *o.Receive6
		if s.Receive6 != nil {
			r6 = udp.Sum(*s.Receive6, r6)
		}
		s.Receive6 = &r6
	}
	s.Send = udp.Sum(s.Send, o.Send)
	return s
}

// Stats returns the Transport's counters.
func (t *Transport) Stats() TransportStats {
	s := TransportStats{SourcePorts: t.ports, SourcePorts6: t.ports6, Receive: t.rx.Stats()}
	if t.rx6 != nil {
		r6 := t.rx6.Stats()
		s.Receive6 = &r6
	}
	s.Send.GSO = true
	for _, c := range t.tx {
		cs := c.Stats()
		s.Send.GSO = s.Send.GSO && cs.GSO
		s.Send.GSOFallbacks += cs.GSOFallbacks
		s.Send.SendCalls += cs.SendCalls
		s.Send.SendMessages += cs.SendMessages
		s.Send.SendSegments += cs.SendSegments
		s.Send.SendErrors += cs.SendErrors
		if cs.LastSendErrno != 0 {
			s.Send.LastSendErrno = cs.LastSendErrno
		}
	}
	return s
}
