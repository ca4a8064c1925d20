// Package wakeup measures what it costs to wake a sleeping thread on this
// machine: the floor under the latency any userspace forwarder adds per
// hop at low load, since each packet it forwards must wake the loop that
// reads it (docs/performance.md, "Round-trip latency").
//
//	go test -bench . -benchtime 20000x -count 5 ./bench/wakeup/
package wakeup

import (
	"os"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
)

// BenchmarkPipePingPongNetpoller: two goroutines bounce one byte over two
// pipes, each parking in the Go netpoller between bytes, as weft's loops
// do. One op is a round trip: two wakeups.
func BenchmarkPipePingPongNetpoller(b *testing.B) {
	ar, aw := pipe(b)
	br, bw := pipe(b)
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 1)
		for {
			if _, err := ar.Read(buf); err != nil {
				return
			}
			if _, err := bw.Write(buf); err != nil {
				return
			}
		}
	}()
	buf := make([]byte, 1)
	b.ResetTimer()
	for range b.N {
		if _, err := aw.Write(buf); err != nil {
			b.Fatal(err)
		}
		if _, err := br.Read(buf); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	aw.Close()
	<-done
}

// BenchmarkPipePingPongThreads: the same with two OS threads blocking in
// read(2), no Go scheduler between the kernel's wakeup and the reader:
// the least a wakeup can cost from userspace without spinning.
func BenchmarkPipePingPongThreads(b *testing.B) {
	var a, c [2]int
	if err := unix.Pipe(a[:]); err != nil {
		b.Fatal(err)
	}
	if err := unix.Pipe(c[:]); err != nil {
		b.Fatal(err)
	}
	defer unix.Close(a[1])
	defer unix.Close(c[0])
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		defer unix.Close(a[0])
		defer unix.Close(c[1])
		buf := make([]byte, 1)
		for {
			if n, err := unix.Read(a[0], buf); err != nil || n == 0 {
				return
			}
			if _, err := unix.Write(c[1], buf); err != nil {
				return
			}
		}
	}()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	buf := make([]byte, 1)
	b.ResetTimer()
	for range b.N {
		if _, err := unix.Write(a[1], buf); err != nil {
			b.Fatal(err)
		}
		if _, err := unix.Read(c[0], buf); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	unix.Close(a[1])
	<-done
}

func pipe(b *testing.B) (*os.File, *os.File) {
	r, w, err := os.Pipe()
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { r.Close(); w.Close() })
	return r, w
}
