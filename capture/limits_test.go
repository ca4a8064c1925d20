package capture

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/weft-net/weft/engine"
)

// TestQueueIsBounded: a queue beyond MaxQueue is refused before anything
// is allocated: 2^40 bytes ran the daemon out of memory, and 2^62+1
// overflowed the ring's size doubling to 0 and spun forever.
func TestQueueIsBounded(t *testing.T) {
	for _, q := range []int{MaxQueue + 1, 1 << 40, 4611686018427387905} {
		if _, err := (Params{Queue: q}).Options(); err == nil || !strings.Contains(err.Error(), "queue") {
			t.Fatalf("queue %d: %v, want a refusal naming the queue", q, err)
		}
		h := NewHub(&fakeTarget{})
		if c, err := h.Start(Options{Queue: q}); err == nil {
			c.Stop()
			t.Fatalf("Start with a queue of %d bytes succeeded", q)
		}
	}
	if _, err := (Params{Queue: MaxQueue}).Options(); err != nil {
		t.Fatalf("queue %d: %v", MaxQueue, err)
	}
	h := NewHub(&fakeTarget{})
	mux := http.NewServeMux()
	h.Register(mux)
	srv := httptest.NewServer(mux)
	defer srv.Close()
	for _, q := range []string{"1099511627776", "4611686018427387905"} {
		resp, err := http.Get(srv.URL + "/capture?queue=" + q)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), "queue") {
			t.Errorf("queue=%s: %d %s", q, resp.StatusCode, body)
		}
	}
	if h.Active() != 0 {
		t.Error("a refused capture is running")
	}
}

// TestHubRefusesTooManyCaptures: captures beyond Limits.Captures, or whose
// queues would pass Limits.QueueBytes, are refused with 503 and a reason;
// a slot freed is usable again.
func TestHubRefusesTooManyCaptures(t *testing.T) {
	h := NewHub(&fakeTarget{})
	h.SetLimits(Limits{Captures: 2})
	mux := http.NewServeMux()
	h.Register(mux)
	srv := httptest.NewServer(mux)
	defer srv.Close()
	a, err := h.Start(Options{Queue: minQueue})
	if err != nil {
		t.Fatal(err)
	}
	b, err := h.Start(Options{Queue: minQueue})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Stop()
	if _, err := h.Start(Options{}); !errors.Is(err, ErrBusy) {
		t.Fatalf("a third capture: %v, want ErrBusy", err)
	}
	resp, err := http.Get(srv.URL + "/capture")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), "too many captures") {
		t.Fatalf("a third capture over HTTP: %d %s", resp.StatusCode, body)
	}
	a.Stop()
	c, err := h.Start(Options{Queue: minQueue})
	if err != nil {
		t.Fatalf("after a stop: %v", err)
	}
	c.Stop()

	// The memory budget: two rings per capture.
	h = NewHub(&fakeTarget{})
	h.SetLimits(Limits{QueueBytes: 16 << 20})
	var caps []*Capture
	for i := 0; i < 2; i++ {
		c, err := h.Start(Options{Queue: 4 << 20})
		if err != nil {
			t.Fatalf("capture %d of 8 MiB each in 16 MiB: %v", i+1, err)
		}
		caps = append(caps, c)
	}
	if _, err := h.Start(Options{Queue: minQueue}); !errors.Is(err, ErrBusy) || !strings.Contains(err.Error(), "MiB") {
		t.Fatalf("past the budget: %v, want ErrBusy naming the sizes", err)
	}
	caps[0].Stop()
	caps[0].Stop() // twice: the budget is returned once
	if c, err := h.Start(Options{Queue: 4 << 20}); err != nil {
		t.Fatalf("after a stop: %v", err)
	} else {
		c.Stop()
	}
	caps[1].Stop()
	if h.queued != 0 {
		t.Errorf("%d bytes of queue still counted with no capture running", h.queued)
	}
}

// TestStalledReaderEndsCapture: a client that asks for a capture and then
// reads nothing is cut off once a write makes no progress for the stall
// timeout; the capture ends and is counted.
func TestStalledReaderEndsCapture(t *testing.T) {
	h := NewHub(&fakeTarget{})
	h.SetLimits(Limits{Stall: 300 * time.Millisecond})
	mux := http.NewServeMux()
	h.Register(mux)
	srv := httptest.NewServer(mux)
	defer srv.Close()
	d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		return c.Control(func(fd uintptr) {
			syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
		})
	}}
	conn, err := d.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "GET /capture?queue=%d HTTP/1.1\r\nHost: weft\r\n\r\n", minQueue)
	for start := time.Now(); h.Active() == 0; time.Sleep(time.Millisecond) {
		if time.Since(start) > 10*time.Second {
			t.Fatal("the capture did not start")
		}
	}
	p := &engine.TapPacket{Point: engine.PointToTUN, Data: make([]byte, 1400)}
	deadline := time.Now().Add(30 * time.Second)
	for h.Active() != 0 {
		if time.Now().After(deadline) {
			t.Fatal("a capture nobody reads is still running after 30s")
		}
		for i := 0; i < 100; i++ {
			h.Capture(p)
		}
		time.Sleep(time.Millisecond)
	}
	if h.Stalls() != 1 {
		t.Errorf("stalls %d, want 1", h.Stalls())
	}
}

// TestRegisterFuncServesTheCurrentHub: the routes follow the hub current
// returns at each request (a daemon swaps its data path while it runs);
// without one, /capture says why and /capture/stop finds nothing to stop.
func TestRegisterFuncServesTheCurrentHub(t *testing.T) {
	var hub *Hub
	mux := http.NewServeMux()
	RegisterFunc(mux, func() (*Hub, string) { return hub, "the kernel forwards: nothing to capture" })
	srv := httptest.NewServer(mux)
	defer srv.Close()
	do := func(method, path string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, srv.URL+path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	if code, body := do("GET", "/capture"); code != http.StatusConflict || !strings.Contains(body, "the kernel forwards") {
		t.Fatalf("GET /capture without a hub: %d %q", code, body)
	}
	if code, _ := do("POST", "/capture/stop?id=1"); code != http.StatusNotFound {
		t.Fatalf("POST /capture/stop without a hub: %d", code)
	}

	hub = NewHub(&fakeTarget{})
	c, err := hub.Start(Options{Queue: minQueue})
	if err != nil {
		t.Fatal(err)
	}
	if code, body := do("POST", fmt.Sprintf("/capture/stop?id=%d", c.ID)); code != http.StatusNoContent {
		t.Fatalf("POST /capture/stop with a hub: %d %q", code, body)
	}
	select {
	case <-c.Stopped():
	case <-time.After(5 * time.Second):
		t.Fatal("the capture did not stop")
	}
	if code, _ := do("GET", "/capture?filter=tcp+bogus"); code != http.StatusBadRequest {
		t.Fatalf("GET /capture with a hub and a bad filter: %d, want the hub's 400", code)
	}
}
