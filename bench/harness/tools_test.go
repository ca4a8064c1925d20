package harness

import (
	"bytes"
	"context"
	"errors"
	"math"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/bench/lab/labtest"
	"github.com/weft-net/weft/bench/report"
)

// iperf3 3.12's client JSON of `-u -l 64 -b 0 -t 1` on loopback: the
// receiver's figures are end.sum_received's (795899 datagrams by sequence
// number, 117933 of them lost), not end.sum's or its lost_percent.
func TestParseIperf3UDP(t *testing.T) {
	b, err := os.ReadFile("testdata/iperf3-udp64.json")
	if err != nil {
		t.Fatal(err)
	}
	r, err := parseIperf3UDP(b)
	if err != nil {
		t.Fatal(err)
	}
	if r.Sent != 796130 || r.Delivered != 795899-117933 || r.Delivered*64 != r.Bytes || r.PayloadSize != 64 {
		t.Errorf("counts %+v", r)
	}
	if want := float64(677966) / 1.00004; r.DeliveredPPS != want {
		t.Errorf("delivered %v/s, want %v", r.DeliveredPPS, want)
	}
	if want := 117933.0 / 795899; r.Loss == nil || *r.Loss != want {
		t.Errorf("loss %v, want the receiver's %v", r.Loss, want)
	}
	for _, bad := range []string{`{"error": "the server is busy running a test. try again later"}`,
		`{"end": {"sum": {"packets": 5, "sender": true}}}`, `not json`} {
		if _, err := parseIperf3UDP([]byte(bad)); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
}

func TestParsePing(t *testing.T) {
	out := `PING 10.5.2.2 (10.5.2.2) 56(84) bytes of data.
64 bytes from 10.5.2.2: icmp_seq=1 ttl=62 time=0.260 ms
64 bytes from 10.5.2.2: icmp_seq=2 ttl=62 time=0.027 ms
64 bytes from 10.5.2.2: icmp_seq=2 ttl=62 time=0.031 ms (DUP!)
64 bytes from 10.5.2.2: icmp_seq=4 ttl=62 time=1.25 ms

--- 10.5.2.2 ping statistics ---
6 packets transmitted, 3 received, +1 duplicates, 50% packet loss, time 36ms
rtt min/avg/max/mdev = 0.027/0.512/1.250/0.110 ms
`
	r, err := parsePing([]byte(out))
	if err != nil {
		t.Fatal(err)
	}
	// Echoes 5 and 6 were in flight at the deadline: not lost.
	if r.Sent != 4 || r.Delivered != 3 || r.Requests != 3 || r.Loss == nil || *r.Loss != 0.25 || r.Seconds != 0.036 || math.Abs(r.SentPPS-6/0.036) > 1e-9 {
		t.Errorf("counts %+v", r)
	}
	if r.RTTMinUs != 27 || r.RTTMedianUs != 260 || r.RTTP99Us != 1250 || math.Abs(r.RTTMeanUs-1537.0/3) > 1e-9 {
		t.Errorf("round trips %+v", r)
	}
	for _, bad := range []string{"ping: connect: Network is unreachable\n",
		"--- x ping statistics ---\n3 packets transmitted, 0 received, 100% packet loss, time 20ms\n"} {
		if _, err := parsePing([]byte(bad)); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// sockperf 3.7's ping-pong output as it prints it, colour escapes and all.
func TestParseSockperf(t *testing.T) {
	b, err := os.ReadFile("testdata/sockperf-pp.txt")
	if err != nil {
		t.Fatal(err)
	}
	r, err := parseSockperf(b)
	if err != nil {
		t.Fatal(err)
	}
	if r.Seconds != 0.55 || r.Sent != 9469 || r.Delivered != 9469 || r.Requests != 9469 {
		t.Errorf("counts %+v", r)
	}
	if r.RTTMinUs != 3.404 || r.RTTMedianUs != 71.801 || r.RTTP99Us != 134.804 || r.RTTMeanUs != 57.84 {
		t.Errorf("round trips %+v", r)
	}
	if _, err := parseSockperf([]byte("sockperf: '-i' Invalid address: ::1\n")); err == nil {
		t.Error("an error message parsed")
	}
}

// Named in --workloads, a workload whose tool is missing fails the run
// with the package to install; from the default list it is left out
// with a note; sockperf is left out of the default list under IPv6.
func TestSelectWorkloads(t *testing.T) {
	noSockperf := func(cmd string) (string, error) {
		if cmd == "sockperf" {
			return "", errors.New("not found")
		}
		return "/usr/bin/" + cmd, nil
	}
	noIperf3 := func(cmd string) (string, error) {
		if cmd == "iperf3" {
			return "", errors.New("not found")
		}
		return "/usr/bin/" + cmd, nil
	}
	kept, left, err := selectWorkloads(report.Workloads, false, false, noSockperf)
	if err != nil || slices.Contains(kept, report.WorkloadSockperf) || len(kept) != len(report.Workloads)-1 ||
		len(left) != 1 || !strings.Contains(left[0], "apt-get install sockperf") {
		t.Errorf("default without sockperf: kept %v, left out %v, %v", kept, left, err)
	}
	kept, left, _ = selectWorkloads(report.Workloads, false, false, noIperf3)
	if slices.Contains(kept, report.WorkloadIperf3UDP64) || slices.Contains(kept, report.WorkloadPingLoaded) ||
		!slices.Contains(kept, report.WorkloadPing) || len(left) != 2 {
		t.Errorf("default without iperf3: kept %v, left out %v", kept, left)
	}
	_, _, err = selectWorkloads([]string{report.WorkloadTCP1, report.WorkloadSockperf}, true, false, noSockperf)
	if err == nil || !strings.Contains(err.Error(), "apt-get install sockperf") {
		t.Errorf("sockperf named but missing: %v", err)
	}
	_, _, err = selectWorkloads([]string{report.WorkloadPingLoaded}, true, false, noIperf3)
	if err == nil || !strings.Contains(err.Error(), "apt-get install iperf3") {
		t.Errorf("ping-loaded named without iperf3: %v", err)
	}
	all := func(cmd string) (string, error) { return "/usr/bin/" + cmd, nil }
	kept, left, _ = selectWorkloads(report.Workloads, false, true, all)
	if slices.Contains(kept, report.WorkloadSockperf) || len(left) != 1 {
		t.Errorf("default under IPv6: kept %v, left out %v", kept, left)
	}
	kept, left, _ = selectWorkloads([]string{report.WorkloadSockperf}, true, true, all)
	if !slices.Equal(kept, []string{report.WorkloadSockperf}) || len(left) != 0 {
		t.Errorf("sockperf named under IPv6: kept %v, left out %v", kept, left)
	}
}

// checkStdTool checks a standard tool's sample of a run of d: counts that
// add up and round trips in order. Figures are never asserted.
func checkStdTool(t *testing.T, s report.Sample, d time.Duration) {
	t.Helper()
	r := s.Result
	if r == nil {
		return
	}
	rtts := func() {
		if r.Requests <= 0 || r.RTTMinUs <= 0 || r.RTTMinUs > r.RTTMedianUs || r.RTTMedianUs > r.RTTP99Us || r.RTTMeanUs <= 0 {
			t.Errorf("%s rep %d %s: round trips %+v", s.Backend, s.Rep, s.Workload, r)
		}
	}
	switch s.Workload {
	case report.WorkloadIperf3UDP64:
		if r.Sent <= 0 || r.Delivered <= 0 || r.DeliveredPPS <= 0 || r.Loss == nil || *r.Loss < 0 || *r.Loss >= 1 || r.PayloadSize != 64 {
			t.Errorf("%s rep %d %s: %+v", s.Backend, s.Rep, s.Workload, r)
		}
		// The receiver's socket overflows are read in its namespace: some
		// of what was sent, never more.
		if o := r.ReceiverOverflows; o == nil || *o < 0 || *o > r.Sent {
			t.Errorf("%s rep %d %s: receiver overflows %v of %d sent", s.Backend, s.Rep, s.Workload, o, r.Sent)
		}
	case report.WorkloadPing, report.WorkloadPingLoaded:
		rtts()
		if r.Sent <= 0 || r.Delivered <= 0 || r.Delivered > r.Sent || r.Requests != r.Delivered || r.Loss == nil || r.SentPPS <= 0 ||
			r.Seconds < float64(wholeSeconds(d))-0.1 {
			t.Errorf("%s rep %d %s: %+v", s.Backend, s.Rep, s.Workload, r)
		}
		if s.Workload == report.WorkloadPingLoaded && (r.Streams != 4 || r.Bytes <= 0 || r.BitsPerSecond <= 0) {
			t.Errorf("%s rep %d %s: no load under the echoes: %+v", s.Backend, s.Rep, s.Workload, r)
		}
	case report.WorkloadSockperf:
		rtts()
		if r.Sent <= 0 || r.Delivered <= 0 || r.Seconds <= 0 {
			t.Errorf("%s rep %d %s: %+v", s.Backend, s.Rep, s.Workload, r)
		}
	}
}

// The standard tools alone on kernel vxlan and weft's udp backend: every
// sample runs and is sane, and the table has their figures and ratios.
func TestBenchStdTools(t *testing.T) {
	labtest.RequireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	tools := []string{report.WorkloadIperf3UDP64, report.WorkloadPing, report.WorkloadPingLoaded, report.WorkloadSockperf}
	rep, err := RunBench(ctx, BenchConfig{
		Binary: weftBin, Backends: []string{BackendVXLAN, BackendUDP}, Workloads: tools,
		Duration: time.Second, Reps: 1, Leases: LeasesStatic, Iperf3: "off", Progress: func(s string) { t.Log(s) },
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Samples) != 2*len(tools) {
		t.Fatalf("%d samples, want %d", len(rep.Samples), 2*len(tools))
	}
	for _, s := range rep.Samples {
		if s.Error != "" || s.Result == nil {
			t.Errorf("%s %s: %s", s.Backend, s.Workload, s.Error)
			continue
		}
		checkStdTool(t, s, time.Second)
	}
	var table bytes.Buffer
	if err := rep.WriteTable(&table); err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", table.String())
	_, ratios, _ := strings.Cut(table.String(), "standard tools, ratio to vxlan:")
	for line := range strings.SplitSeq(ratios, "\n") {
		if f := strings.Fields(line); len(f) == 10 && f[0] == BackendUDP {
			if f[1] != "-" || !strings.HasSuffix(f[2], "x") || !strings.HasSuffix(f[3], "x") || !strings.HasSuffix(f[9], "x") {
				t.Errorf("udp's ratios to vxlan: %q", line)
			}
			return
		}
	}
	t.Errorf("no ratios of udp to vxlan:\n%s", table.String())
}

// A standard tool named in --workloads but not installed fails the run
// before any lab is built, naming the package.
func TestBenchMissingTool(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	_, err := RunBench(context.Background(), BenchConfig{Backends: []string{BackendVeth}, Workloads: []string{report.WorkloadSockperf},
		Duration: time.Second, Reps: 1, Iperf3: "off"})
	if err == nil || !strings.Contains(err.Error(), "sockperf is not installed (apt-get install sockperf)") {
		t.Fatalf("RunBench without sockperf: %v", err)
	}
}
