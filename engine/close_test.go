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
