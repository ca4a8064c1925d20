package capture

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

// The HTTP protocol of a capture, as served on weft's debug socket:
//
//	GET /capture?filter=EXPR&points=from-tun,drop&snap=N&count=N&duration=D&queue=BYTES
//	  -> 200, pcapng streamed as packets arrive; header Weft-Capture-Id;
//	     trailers Weft-Captured, Weft-Overflow (totals) and Weft-Summary.
//	POST /capture/stop?id=ID
//	  -> 204: the capture ends, the stream delivers what was queued, then
//	     its interface statistics and trailers.
//
// A client that stops by closing the connection loses the trailers; `weft
// capture` stops with /capture/stop on Ctrl-C so it can report overflow.
const (
	HeaderID       = "Weft-Capture-Id"
	TrailerCount   = "Weft-Captured"
	TrailerLost    = "Weft-Overflow"
	TrailerSummary = "Weft-Summary"
	ContentType    = "application/x-pcapng"
)

// Params are a capture request's query parameters.
type Params struct {
	Filter   string
	Points   string
	Snap     int
	Count    int
	Duration time.Duration
	Queue    int
}

// Query encodes p as a query string.
func (p Params) Query() string {
	q := url.Values{}
	if p.Filter != "" {
		q.Set("filter", p.Filter)
	}
	if p.Points != "" {
		q.Set("points", p.Points)
	}
	if p.Snap > 0 {
		q.Set("snap", strconv.Itoa(p.Snap))
	}
	if p.Count > 0 {
		q.Set("count", strconv.Itoa(p.Count))
	}
	if p.Duration > 0 {
		q.Set("duration", p.Duration.String())
	}
	if p.Queue > 0 {
		q.Set("queue", strconv.Itoa(p.Queue))
	}
	return q.Encode()
}

// Options checks p and turns it into capture options.
func (p Params) Options() (Options, error) {
	var o Options
	f, err := ParseFilter(p.Filter)
	if err != nil {
		return o, err
	}
	pts, err := ParsePoints(p.Points)
	if err != nil {
		return o, err
	}
	if p.Snap < 0 || p.Count < 0 || p.Duration < 0 || p.Queue < 0 {
		return o, errors.New("snap, count, duration and queue must not be negative")
	}
	if p.Queue > MaxQueue {
		return o, fmt.Errorf("queue: %d bytes is more than the most, %d (%d MiB)", p.Queue, MaxQueue, MaxQueue>>20)
	}
	o = Options{Filter: f, Points: pts, Snap: p.Snap, Count: p.Count, Queue: p.Queue}
	if p.Duration > 0 {
		o.Until = time.Now().Add(p.Duration)
	}
	return o, nil
}

func paramsFromQuery(q url.Values) (Params, error) {
	p := Params{Filter: q.Get("filter"), Points: q.Get("points")}
	for _, n := range []struct {
		key string
		v   *int
	}{{"snap", &p.Snap}, {"count", &p.Count}, {"queue", &p.Queue}} {
		if s := q.Get(n.key); s != "" {
			v, err := strconv.Atoi(s)
			if err != nil {
				return p, fmt.Errorf("%s: %q is not a number", n.key, s)
			}
			*n.v = v
		}
	}
	if s := q.Get("duration"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			return p, fmt.Errorf("duration: %v", err)
		}
		p.Duration = d
	}
	return p, nil
}

// ServeCapture handles GET /capture.
func (h *Hub) ServeCapture(w http.ResponseWriter, r *http.Request) {
	p, err := paramsFromQuery(r.URL.Query())
	var o Options
	if err == nil {
		o, err = p.Options()
	}
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	c, err := h.Start(o)
	if err != nil {
		code := http.StatusBadRequest
		if errors.Is(err, ErrBusy) || errors.Is(err, ErrClosed) {
			code = http.StatusServiceUnavailable
		}
		http.Error(w, err.Error(), code)
		return
	}
	defer c.Stop()
	// Every write must make progress within the stall timeout, or the
	// stream fails and the capture ends: a client that stops reading
	// would otherwise hold the capture, its queues and a slot for good.
	stall := h.stallTimeout()
	rc := http.NewResponseController(w)
	sw := &stallWriter{w: w, rc: rc, timeout: stall}
	defer func() {
		if sw.stalled {
			h.stalls.Add(1)
		}
	}()
	w.Header().Set("Content-Type", ContentType)
	w.Header().Set(HeaderID, strconv.FormatUint(c.ID, 10))
	w.Header().Set("Trailer", strings.Join([]string{TrailerCount, TrailerLost, TrailerSummary}, ", "))
	w.Header().Set("Cache-Control", "no-store")
	pw, err := NewWriter(sw, o.Filter.String(), c.snap, h.ipv6.Load())
	flush := func() error {
		if err := pw.Flush(); err != nil {
			return err
		}
		return sw.flush()
	}
	if err == nil {
		err = flush()
	}
	if err != nil {
		return
	}
	err = c.Read(r.Context(), pw.Write, flush)
	if err != nil && !errors.Is(err, context.Canceled) {
		return // the client is gone or its connection broke
	}
	s := c.Stats()
	if pw.Close(s) != nil || sw.flush() != nil {
		return
	}
	w.Header().Set(TrailerCount, strconv.FormatUint(s.TotalCaptured(), 10))
	w.Header().Set(TrailerLost, strconv.FormatUint(s.TotalOverflow(), 10))
	w.Header().Set(TrailerSummary, s.Summary())
}

// stallWriter gives every write to (and flush of) a capture stream a
// deadline: timeout from the moment it starts. A write that cannot finish
// by then fails, with stalled set. Between writes there is no deadline,
// so a capture that sees no packets for long stays open.
type stallWriter struct {
	w       http.ResponseWriter
	rc      *http.ResponseController
	timeout time.Duration
	stalled bool
}

// arm and disarm set and clear the deadline. Not every ResponseWriter takes
// deadlines (http.ErrNotSupported); then the stream runs without one.
func (s *stallWriter) arm()    { _ = s.rc.SetWriteDeadline(time.Now().Add(s.timeout)) }
func (s *stallWriter) disarm() { _ = s.rc.SetWriteDeadline(time.Time{}) }

func (s *stallWriter) check(err error) error {
	if err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		s.stalled = true
	}
	return err
}

func (s *stallWriter) Write(b []byte) (int, error) {
	s.arm()
	n, err := s.w.Write(b)
	if err == nil {
		s.disarm()
	}
	return n, s.check(err)
}

func (s *stallWriter) flush() error {
	s.arm()
	err := s.rc.Flush()
	if errors.Is(err, http.ErrNotSupported) {
		err = nil
	}
	if err == nil {
		s.disarm()
	}
	return s.check(err)
}

// ServeStop handles POST /capture/stop?id=ID.
func (h *Hub) ServeStop(w http.ResponseWriter, r *http.Request) {
	id, err := strconv.ParseUint(r.URL.Query().Get("id"), 10, 64)
	if err != nil {
		http.Error(w, "id: not a capture id", http.StatusBadRequest)
		return
	}
	c := h.Lookup(id)
	if c == nil {
		http.Error(w, fmt.Sprintf("no capture %d is running", id), http.StatusNotFound)
		return
	}
	c.Stop()
	w.WriteHeader(http.StatusNoContent)
}

// Register adds the capture endpoints to mux, served by h.
func (h *Hub) Register(mux *http.ServeMux) {
	RegisterFunc(mux, func() (*Hub, string) { return h, "" })
}

// RegisterFunc adds the capture endpoints to mux, each request served by
// the Hub that current returns when it arrives: a daemon replaces its data
// path, and the hub with it, while it runs. While there is none, GET
// /capture answers 409 Conflict with the reason current gives, and POST
// /capture/stop 404, since no capture can be running.
func RegisterFunc(mux *http.ServeMux, current func() (hub *Hub, why string)) {
	mux.HandleFunc("GET /capture", func(w http.ResponseWriter, r *http.Request) {
		h, why := current()
		if h == nil {
			http.Error(w, why, http.StatusConflict)
			return
		}
		h.ServeCapture(w, r)
	})
	mux.HandleFunc("POST /capture/stop", func(w http.ResponseWriter, r *http.Request) {
		h, _ := current()
		if h == nil {
			http.Error(w, "no capture is running", http.StatusNotFound)
			return
		}
		h.ServeStop(w, r)
	})
}

// Result is what a finished stream reports.
type Result struct {
	Captured, Overflow uint64
	Summary            string
	Complete           bool // the trailers arrived: the capture ended cleanly
}

// Stream copies a capture's pcapng from resp to out, flushing out (when it
// can) after every read so a pipe reader sees packets live, and reads the
// trailers at the end.
func Stream(resp *http.Response, out io.Writer) (Result, error) {
	var res Result
	buf := make([]byte, 64<<10)
	fl, _ := out.(interface{ Flush() error })
	for {
		n, err := resp.Body.Read(buf)
		if n > 0 {
			if _, werr := out.Write(buf[:n]); werr != nil {
				return res, werr
			}
			if fl != nil {
				if werr := fl.Flush(); werr != nil {
					return res, werr
				}
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return res, fmt.Errorf("the capture stream broke: %w", err)
		}
	}
	if s := resp.Trailer.Get(TrailerSummary); s != "" {
		res.Complete = true
		res.Summary = s
		res.Captured, _ = strconv.ParseUint(resp.Trailer.Get(TrailerCount), 10, 64)
		res.Overflow, _ = strconv.ParseUint(resp.Trailer.Get(TrailerLost), 10, 64)
	}
	return res, nil
}
