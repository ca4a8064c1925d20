package traffic

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"
)

// RROptions configure RunRR.
type RROptions struct {
	Addr     string        // server host:port
	Size     int           // request and response bytes; default 64
	Duration time.Duration // run for this long (default 5s) ...
	Count    int           // ... or for this many round trips, if > 0
}

// RunRR sends one small message at a time over a TCP connection (Nagle
// off) and waits for the echo, as netperf's TCP_RR does: at low load this is
// the latency a batching data path must not worsen.
func RunRR(ctx context.Context, o RROptions) (*Result, error) {
	if o.Size == 0 {
		o.Size = 64
	}
	if o.Duration == 0 && o.Count == 0 {
		o.Duration = 5 * time.Second
	}
	if o.Size < 1 || o.Size > 1<<20 || o.Count < 0 || o.Duration < 0 {
		return nil, errors.New("traffic: rr wants size 1..1MiB and a positive duration or count")
	}
	c, r, err := dial(ctx, o.Addr, hello{Mode: "rr", Size: o.Size})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	_ = c.SetNoDelay(true)
	req := make([]byte, o.Size)
	for i := range req {
		req[i] = byte(i * 7)
	}
	resp := make([]byte, o.Size)
	rtts := make([]time.Duration, 0, 1<<16)
	start := time.Now()
	end := start.Add(o.Duration)
	for (o.Count > 0 && len(rtts) < o.Count) || (o.Count == 0 && time.Now().Before(end)) {
		t := time.Now()
		if _, err := c.Write(req); err != nil {
			return nil, ctxOr(ctx, fmt.Errorf("traffic: rr: %w", err))
		}
		if _, err := io.ReadFull(r, resp); err != nil {
			return nil, ctxOr(ctx, fmt.Errorf("traffic: rr: %w", err))
		}
		rtts = append(rtts, time.Since(t))
		if resp[0] != req[0] || resp[len(resp)-1] != req[len(req)-1] {
			return nil, errors.New("traffic: rr: the echo differs from the request")
		}
	}
	elapsed := time.Since(start)
	res := &Result{Mode: "rr", Target: o.Addr, PayloadSize: o.Size, Seconds: elapsed.Seconds(), Requests: int64(len(rtts))}
	if len(rtts) == 0 {
		return nil, errors.New("traffic: rr: no round trip completed")
	}
	slices.Sort(rtts)
	var sum time.Duration
	for _, d := range rtts {
		sum += d
	}
	us := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
	res.RTTMedianUs = us(quantile(rtts, 0.5))
	res.RTTP99Us = us(quantile(rtts, 0.99))
	res.RTTMinUs = us(rtts[0])
	res.RTTMeanUs = us(sum / time.Duration(len(rtts)))
	res.RequestsPerSecond = float64(len(rtts)) / elapsed.Seconds()
	return res, nil
}

// quantile is the nearest-rank q-quantile of sorted.
func quantile(sorted []time.Duration, q float64) time.Duration {
	i := int(q*float64(len(sorted))+0.5) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

func ctxOr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}
