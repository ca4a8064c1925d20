// Package enginetest has in-memory stand-ins for the engine's two sides, a
// TUN device and an underlay network, so engines can forward to each other
// in a test with no root and no kernel.
package enginetest

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"

	"github.com/weft-net/weft/engine"
)

// Device is a fake TUN: Inject queues a packet for the engine to read, and
// every packet the engine writes appears on Written.
type Device struct {
	in      chan []byte
	Written chan []byte
	closed  chan struct{}
	once    sync.Once
}

var _ engine.Device = (*Device)(nil)

func NewDevice() *Device {
	return &Device{in: make(chan []byte, 1024), Written: make(chan []byte, 1024), closed: make(chan struct{})}
}

// Inject queues pkt (copied) as if the kernel had routed it into the TUN.
func (d *Device) Inject(pkt []byte) { d.in <- append([]byte(nil), pkt...) }

func (d *Device) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	n := 0
	select {
	case p := <-d.in:
		sizes[0] = copy(bufs[0][offset:], p)
		n = 1
	case <-d.closed:
		return 0, os.ErrClosed
	}
	for n < len(bufs) {
		select {
		case p := <-d.in:
			sizes[n] = copy(bufs[n][offset:], p)
			n++
		default:
			return n, nil
		}
	}
	return n, nil
}

func (d *Device) Write(bufs [][]byte, offset int) (int, error) {
	for _, b := range bufs {
		select {
		case d.Written <- append([]byte(nil), b[offset:]...):
		case <-d.closed:
			return 0, os.ErrClosed
		}
	}
	return len(bufs), nil
}

func (d *Device) BatchSize() int { return 1 }

func (d *Device) Close() error {
	d.once.Do(func() { close(d.closed) })
	return nil
}

// Network joins fake transports by address.
type Network struct {
	mu    sync.Mutex
	conns map[netip.AddrPort]*Transport
}

func NewNetwork() *Network { return &Network{conns: map[netip.AddrPort]*Transport{}} }

// A datagram's payload lies at the start of buf, a BufferSize buffer of
// the network's own: ReadBatch moves it to the reader's offset and hands
// buf over in exchange for the reader's element, as the real transports'
// GRO path does, so a caller that kept a reference to an element it passed
// sees it change.
type datagram struct {
	buf []byte
	n   int
	src netip.AddrPort
}

// Transport is a fake underlay socket bound to one address of a Network.
type Transport struct {
	net    *Network
	addr   netip.AddrPort
	in     chan datagram
	closed chan struct{}
	once   sync.Once
}

var _ engine.Transport = (*Transport)(nil)

// Listen binds a transport to addr.
func (n *Network) Listen(addr netip.AddrPort) *Transport {
	t := &Transport{net: n, addr: addr, in: make(chan datagram, 4096), closed: make(chan struct{})}
	n.mu.Lock()
	n.conns[addr] = t
	n.mu.Unlock()
	return t
}

// Send delivers payload to dst as if sent from src (which need not be a
// transport of the network): for injecting spoofed or malformed datagrams.
func (n *Network) Send(src, dst netip.AddrPort, payload []byte) error {
	n.mu.Lock()
	t := n.conns[dst]
	n.mu.Unlock()
	if t == nil {
		return errors.New("enginetest: nobody listens on " + dst.String())
	}
	if len(payload) > engine.MaxPacket {
		return errors.New("enginetest: datagram longer than engine.MaxPacket")
	}
	buf := make([]byte, engine.BufferSize)
	t.in <- datagram{buf: buf, n: copy(buf, payload), src: src}
	return nil
}

func (t *Transport) ReadBatch(bufs [][]byte, sizes []int, srcs []netip.AddrPort, offset int) (int, error) {
	n := 0
	select {
	case d := <-t.in:
		t.swapIn(bufs, sizes, srcs, 0, offset, d)
		n = 1
	case <-t.closed:
		return 0, net.ErrClosed
	}
	for n < len(bufs) {
		select {
		case d := <-t.in:
			t.swapIn(bufs, sizes, srcs, n, offset, d)
			n++
		default:
			return n, nil
		}
	}
	return n, nil
}

// swapIn exchanges bufs[i] for the datagram's own buffer, its payload
// moved to offset. The reader's old element is poisoned: it no longer
// belongs to the reader.
func (t *Transport) swapIn(bufs [][]byte, sizes []int, srcs []netip.AddrPort, i, offset int, d datagram) {
	if len(bufs[i]) != engine.BufferSize {
		panic("enginetest: ReadBatch element is not engine.BufferSize long")
	}
	if offset+d.n > len(d.buf) {
		panic("enginetest: ReadBatch offset leaves no room for the datagram")
	}
	copy(d.buf[offset:], d.buf[:d.n])
	old := bufs[i]
	bufs[i], sizes[i], srcs[i] = d.buf, d.n, d.src
	for j := range old {
		old[j] = 0xdb
	}
}

// WriteBatch delivers each packet; it panics when packets for one
// destination are not adjacent, the engine's side of the contract.
func (t *Transport) WriteBatch(pkts [][]byte, dsts []netip.AddrPort) (int, error) {
	select {
	case <-t.closed:
		return 0, net.ErrClosed
	default:
	}
	for i := 1; i < len(dsts); i++ {
		if dsts[i] != dsts[i-1] && slices.Contains(dsts[:i-1], dsts[i]) {
			panic("enginetest: WriteBatch: packets for " + dsts[i].String() + " are not adjacent")
		}
	}
	refused := 0
	for i, p := range pkts {
		if t.net.Send(t.addr, dsts[i], p) != nil {
			refused++
		}
	}
	return refused, nil
}

func (t *Transport) BatchSize() int { return engine.MaxBatch }

func (t *Transport) Close() error {
	t.once.Do(func() {
		close(t.closed)
		t.net.mu.Lock()
		delete(t.net.conns, t.addr)
		t.net.mu.Unlock()
	})
	return nil
}
