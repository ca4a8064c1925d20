package harness

import (
	"context"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/weft-net/weft/bench/traffic"
)

// sockperfPort is sockperf's own default port.
const sockperfPort = "11111"

// startSockperfServer starts `sockperf server` on the path's server and
// waits until its UDP socket is bound: a ping-pong client whose first
// messages find no server would wait out its run.
func (bl *benchLab) startSockperfServer(ctx context.Context) error {
	if _, err := bl.c.Lab.Start(bl.path.ServerNS, "sockperf-server", "sockperf", "server", "-i", bl.path.ServerIP.String(), "-p", sockperfPort); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for {
		out, err := bl.c.Lab.ExecContext(ctx, bl.path.ServerNS, "ss", "-Hlun", "sport = :"+sockperfPort)
		if err == nil && len(strings.TrimSpace(string(out))) > 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("sockperf server in %s: not listening on UDP port %s: %v", bl.path.ServerNS, sockperfPort, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// sockperf runs sockperf's ping-pong client for d (whole seconds): UDP,
// 64-byte messages, one in flight, back to back, as rr does over TCP.
// --full-rtt makes it report round trips, not the half it prints by
// default. sockperf spends the run's first 400 ms warming up and measures
// the rest ("Valid Duration"); its percentiles are its own.
func (bl *benchLab) sockperf(ctx context.Context, d time.Duration) (*traffic.Result, error) {
	out, err := bl.c.Lab.ExecContext(ctx, bl.path.ClientNS, "sockperf", "ping-pong", "-i", bl.path.ServerIP.String(), "-p", sockperfPort,
		"-m", "64", "-t", strconv.Itoa(wholeSeconds(d)), "--full-rtt")
	if err != nil {
		return nil, fmt.Errorf("sockperf: %w", err)
	}
	res, err := parseSockperf(out)
	if err != nil {
		return nil, err
	}
	res.Target = bl.path.ServerIP.String()
	return res, nil
}

var (
	ansiEscape    = regexp.MustCompile(`\x1b\[[0-9;]*m`)
	sockperfValid = regexp.MustCompile(`\[Valid Duration\] RunTime=([0-9.]+) sec; SentMessages=(\d+); ReceivedMessages=(\d+)`)
	sockperfStats = map[string]*regexp.Regexp{
		"mean": regexp.MustCompile(`avg-rtt=([0-9.]+)`),
		"n":    regexp.MustCompile(`Total (\d+) observations`),
		"min":  regexp.MustCompile(`<MIN> observation =\s*([0-9.]+)`),
		"p50":  regexp.MustCompile(`percentile 50\.000 =\s*([0-9.]+)`),
		"p99":  regexp.MustCompile(`percentile 99\.000 =\s*([0-9.]+)`),
	}
)

// parseSockperf reads `sockperf ping-pong --full-rtt` output: the valid
// window's message counts, and the round-trip statistics in µs.
func parseSockperf(out []byte) (*traffic.Result, error) {
	text := ansiEscape.ReplaceAllString(string(out), "")
	m := sockperfValid.FindStringSubmatch(text)
	if m == nil {
		return nil, fmt.Errorf("sockperf: no valid-duration line in %q", text)
	}
	res := &traffic.Result{Mode: "sockperf", PayloadSize: 64}
	res.Seconds, _ = strconv.ParseFloat(m[1], 64)
	res.Sent, _ = strconv.ParseInt(m[2], 10, 64)
	res.Delivered, _ = strconv.ParseInt(m[3], 10, 64)
	v := map[string]float64{}
	for k, re := range sockperfStats {
		m := re.FindStringSubmatch(text)
		if m == nil {
			return nil, fmt.Errorf("sockperf: no %s in %q (was it run with --full-rtt?)", k, text)
		}
		v[k], _ = strconv.ParseFloat(m[1], 64)
	}
	if v["n"] == 0 || res.Seconds <= 0 {
		return nil, fmt.Errorf("sockperf: no round trips measured")
	}
	res.Requests = int64(v["n"])
	res.RequestsPerSecond = v["n"] / res.Seconds
	res.RTTMinUs, res.RTTMedianUs, res.RTTP99Us, res.RTTMeanUs = v["min"], v["p50"], v["p99"], v["mean"]
	return res, nil
}
