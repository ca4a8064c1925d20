package engine

import (
	"context"
	"errors"
	"net/netip"
	"testing"
	"time"
)

// badFDDevice and badFDTransport block until closed and then fail with an
// error that is not net.ErrClosed, as a side built on a raw descriptor
// may (EBADF).
type badFDDevice struct{ closed chan struct{} }

func (d badFDDevice) Read([][]byte, []int, int) (int, error) {
	<-d.closed
	return 0, errors.New("read: bad file descriptor")
}
func (d badFDDevice) Write(b [][]byte, _ int) (int, error) { return len(b), nil }
func (badFDDevice) BatchSize() int                         { return 1 }
func (d badFDDevice) Close() error                         { close(d.closed); return nil }

type badFDTransport struct{ closed chan struct{} }

func (t badFDTransport) ReadBatch([][]byte, []int, []netip.AddrPort, int) (int, error) {
	<-t.closed
	return 0, errors.New("recvmmsg: bad file descriptor")
}
func (badFDTransport) WriteBatch(p [][]byte, _ []netip.AddrPort) (int, error) { return 0, nil }
func (badFDTransport) BatchSize() int                                         { return MaxBatch }
func (t badFDTransport) Close() error                                         { close(t.closed); return nil }

// Run returns when its context ends even if the sides answer Close with
// errors other than net.ErrClosed: the loops stop on any error once the
// engine is closing, instead of retrying it for ever.
func TestRunEndsWhatEverCloseReturns(t *testing.T) {
	e, err := New(badFDDevice{make(chan struct{})}, badFDTransport{make(chan struct{})}, Config{BatchSize: 8, MTU: 1472})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	time.Sleep(10 * time.Millisecond)
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
}

// With CheckSourcePort, a datagram from a peer's address but another port
// (another process on that host) is dropped under its own reason; the
// peer's own port passes; without the check both pass.
func TestRxWrongSourcePort(t *testing.T) {
	for _, check := range []bool{true, false} {
		e, err := New(nopDevice{}, nopTransport{}, Config{BatchSize: 4, MTU: 1472, AntiSpoof: true, CheckSourcePort: check})
		if err != nil {
			t.Fatal(err)
		}
		e.SetTable(testTable(t))
		l := e.rx[0]
		for i, port := range []uint16{8285, 40000} {
			p := udpPacket(t, "10.5.2.7", "10.5.1.2", 64, make([]byte, 100))
			l.sizes[i] = copy(l.bufs[i][Headroom:], p)
			l.srcs[i] = netip.AddrPortFrom(netip.MustParseAddr("192.0.2.2"), port)
		}
		k := l.classify(e.Table(), 2)
		l.bc.flush(&l.c)
		s := e.Stats()
		if want := map[bool]int{true: 1, false: 2}[check]; k != want || (check && s.Drops[DropWrongSourcePort] != 1) {
			t.Errorf("check %v: forwarded %d, drops %v", check, k, s.DropsByName())
		}
	}
}
