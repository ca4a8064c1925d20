package harness

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/weft-net/weft/bench/traffic"
)

// pingInterval spaces the ping workloads' echoes: 100 a second asked, so
// the path idles between them, and a run of a few seconds gives hundreds
// of round trips, enough for a p99. iputils waits in whole timer ticks,
// so the rate it keeps is lower on some kernels (about 63/s at HZ=250);
// the result says the rate kept (SentPPS).
const pingInterval = 10 * time.Millisecond

var (
	pingReply   = regexp.MustCompile(`icmp_seq=(\d+) .*time=([0-9.]+) ms`)
	pingSummary = regexp.MustCompile(`(\d+) packets transmitted, (\d+) received.*time (\d+)ms`)
)

// ping runs iputils ping from the path's client to its server, an echo
// every pingInterval, for d (-w: whole seconds, at least 1), and returns
// each reply's round trip as ping printed it (to the µs below 1 ms).
func (bl *benchLab) ping(ctx context.Context, d time.Duration) (*traffic.Result, error) {
	out, err := bl.c.Lab.ExecContext(ctx, bl.path.ClientNS, "ping", "-n", "-i", strconv.FormatFloat(pingInterval.Seconds(), 'f', -1, 64),
		"-w", strconv.Itoa(wholeSeconds(d)), bl.path.ServerIP.String())
	if err != nil {
		// iputils exits non-zero when no echo came back at all.
		return nil, fmt.Errorf("ping: %w", err)
	}
	res, err := parsePing(out)
	if err != nil {
		return nil, err
	}
	res.Target = bl.path.ServerIP.String()
	return res, nil
}

// parsePing reads iputils ping's output (without -q): a line per reply
// with its sequence number and time, and the summary. Duplicate replies
// are not round trips and are skipped. Loss is counted as iperf3's
// receiver counts it: Sent is the echoes up to the last one answered
// (by sequence number) and Delivered the replies, so the echoes still in
// flight when the deadline ended ping are not counted lost (iputils'
// own "packet loss" counts them). SentPPS is every echo sent over the
// run's time.
func parsePing(out []byte) (*traffic.Result, error) {
	var rtts []time.Duration
	res := &traffic.Result{Mode: "ping"}
	var transmitted, lastSeq, prevSeq int64
	summary := false
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		if m := pingReply.FindStringSubmatch(line); m != nil && !strings.Contains(line, "DUP!") {
			seq, err1 := strconv.ParseInt(m[1], 10, 64)
			ms, err2 := strconv.ParseFloat(m[2], 64)
			if err1 != nil || err2 != nil {
				return nil, fmt.Errorf("ping: bad reply line %q", line)
			}
			// icmp_seq is 16 bits: unwrap it.
			for seq+1<<15 < prevSeq {
				seq += 1 << 16
			}
			prevSeq = seq
			lastSeq = max(lastSeq, seq)
			rtts = append(rtts, time.Duration(math.Round(ms*float64(time.Millisecond))))
		}
		if m := pingSummary.FindStringSubmatch(line); m != nil {
			transmitted, _ = strconv.ParseInt(m[1], 10, 64)
			received, _ := strconv.ParseInt(m[2], 10, 64)
			if received != int64(len(rtts)) {
				return nil, fmt.Errorf("ping: %d reply lines, but the summary says %d received", len(rtts), received)
			}
			msecs, _ := strconv.ParseFloat(m[3], 64)
			res.Seconds = msecs / 1e3
			summary = true
		}
	}
	switch {
	case !summary:
		return nil, fmt.Errorf("ping: no summary in %q", out)
	case len(rtts) == 0:
		return nil, fmt.Errorf("ping: no reply to %d echoes", transmitted)
	}
	setRTTs(res, rtts)
	// Echo sequence numbers start at 1.
	res.Sent, res.Delivered = lastSeq, int64(len(rtts))
	loss := max(0, float64(res.Sent-res.Delivered)/float64(res.Sent))
	res.Loss = &loss
	if res.Seconds > 0 {
		res.SentPPS = float64(transmitted) / res.Seconds
		res.RequestsPerSecond = float64(res.Requests) / res.Seconds
	}
	return res, nil
}

// setRTTs fills in the round-trip figures as weft traffic's rr does:
// nearest-rank quantiles, in µs.
func setRTTs(res *traffic.Result, rtts []time.Duration) {
	s := slices.Clone(rtts)
	slices.Sort(s)
	q := func(q float64) float64 {
		i := int(q*float64(len(s))+0.5) - 1
		return float64(s[max(0, min(i, len(s)-1))]) / 1e3
	}
	var sum time.Duration
	for _, r := range s {
		sum += r
	}
	res.Requests = int64(len(s))
	res.RTTMinUs = float64(s[0]) / 1e3
	res.RTTMedianUs = q(0.5)
	res.RTTP99Us = q(0.99)
	res.RTTMeanUs = float64(sum) / float64(len(s)) / 1e3
}

// pingLoaded runs the ping workload while `iperf3 -P 4` (TCP, four
// streams, the same client to the same server) fills the path: ping-loaded
// is rr-loaded's question asked with standard tools. The bulk starts
// loadRamp before the echoes and ends loadRamp after them (iperf3 takes
// whole seconds, as ping's deadline does). A bulk client that exits
// before the ramp is over (the shared iperf3 server still busy with the
// last test) is started again. The bulk must succeed and outlast the
// echoes, or the figure would be of an idle path. The result carries the
// bulk's receiver-side rate (Bytes, BitsPerSecond, Streams) beside the
// round trips.
func (bl *benchLab) pingLoaded(ctx context.Context, d time.Duration) (*traffic.Result, error) {
	pingDur := time.Duration(wholeSeconds(d)) * time.Second
	secs := strconv.Itoa(int(math.Ceil((loadRamp + pingDur + loadRamp).Seconds())))
	type bulkEnd struct {
		out []byte
		err error
		at  time.Time
	}
	var bulk chan bulkEnd
	startBulk := func() {
		bulk = make(chan bulkEnd, 1)
		go func() {
			out, err := bl.c.Lab.ExecContext(ctx, bl.path.ClientNS, "iperf3", "-c", bl.path.ServerIP.String(), "-J", "-P", "4", "-t", secs)
			bulk <- bulkEnd{out, err, time.Now()}
		}()
	}
	startBulk()
ramp:
	for try := 1; ; try++ {
		select {
		case <-time.After(loadRamp):
			break ramp
		case b := <-bulk:
			if try == 10 || ctx.Err() != nil {
				return nil, fmt.Errorf("iperf3 -P 4 ended before the echoes started: %v", b.err)
			}
			time.Sleep(200 * time.Millisecond)
			startBulk()
		}
	}
	pingStart := time.Now()
	res, err := bl.ping(ctx, d)
	pingEnd := time.Now()
	b := <-bulk
	switch {
	case err != nil:
		return nil, err
	case b.err != nil:
		return nil, fmt.Errorf("iperf3 -P 4 under the echoes: %w", b.err)
	case b.at.Before(pingEnd):
		return nil, fmt.Errorf("iperf3 -P 4 ended %v into the echoes, before ping did (%v)",
			b.at.Sub(pingStart).Round(time.Millisecond), pingEnd.Sub(pingStart).Round(time.Millisecond))
	}
	load, err := parseIperf3TCP(b.out)
	if err != nil {
		return nil, fmt.Errorf("iperf3 -P 4 under the echoes: %w", err)
	}
	res.Streams, res.Bytes, res.BitsPerSecond = 4, load.Bytes, load.BitsPerSecond
	return res, nil
}
