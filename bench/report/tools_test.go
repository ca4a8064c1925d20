package report

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/bench/traffic"
)

// toolSamples are the standard tools' samples of two backends over three
// reps: the udp row at half vxlan's iperf3 rate and twice its ping.
func toolSamples() []Sample {
	var s []Sample
	for rep := 1; rep <= 3; rep++ {
		for _, b := range []string{"vxlan", "udp"} {
			f := 1.0
			if b == "udp" {
				f = 2
			}
			loss := 0.01 * f
			overflows := int64(100e3 * f) // udp: as many again overflowed the receiver
			s = append(s,
				Sample{Backend: b, Rep: rep, Workload: WorkloadIperf3UDP64,
					Result: &traffic.Result{Mode: "iperf3-udp", Seconds: 1, Delivered: int64(200e3 / f), DeliveredPPS: 200e3 / f, Loss: &loss, ReceiverOverflows: &overflows}},
				Sample{Backend: b, Rep: rep, Workload: WorkloadPing,
					Result: &traffic.Result{Mode: "ping", Sent: 500, Delivered: 500, SentPPS: 63, RTTMedianUs: 50 * f, RTTP99Us: 90 * f}},
				Sample{Backend: b, Rep: rep, Workload: WorkloadPingLoaded,
					Result: &traffic.Result{Mode: "ping", Sent: 500, Delivered: 500, SentPPS: 90, RTTMedianUs: 400 * f, RTTP99Us: 900 * f}},
				Sample{Backend: b, Rep: rep, Workload: WorkloadSockperf,
					Result: &traffic.Result{Mode: "sockperf", Sent: 9000, Delivered: 9000, RTTMedianUs: 30 * f, RTTP99Us: 60 * f}},
			)
		}
	}
	// A loaded ping that lost 3 echoes.
	s[len(s)-2].Result.Delivered = 497
	return s
}

// The standard tools get a table, ratios and panels of their own; the
// report says which default workloads were left out and which samples
// lost round trips; without tool samples there is no tools table.
func TestStdToolsReport(t *testing.T) {
	backends := []string{"vxlan", "udp"}
	r := &Report{Started: time.Now(), Finished: time.Now(), Params: Params{Reps: 3, Backends: backends,
		LeftOut: []string{"sockperf: sockperf is not installed (apt-get install sockperf)"}}, Samples: toolSamples()}
	r.Summary = Summarize(r.Samples, backends, strings.ToUpper)
	udp := r.Summary[1].Metrics
	if udp["iperf3_udp64_kpps"].Median != 100 || udp["iperf3_udp64_loss_pct"].Median != 2 || udp["iperf3_udp64_into_pod_kpps"].Median != 300 ||
		udp["ping_p99_us"].Median != 180 || udp["ping_loaded_p50_us"].Median != 800 || udp["sockperf_p99_us"].N != 3 {
		t.Fatalf("udp row %+v", udp)
	}
	var b bytes.Buffer
	if err := r.WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	t.Logf("\n%s", out)
	for _, want := range []string{"iperf3 64 B UDP", "iperf3 UDP loss", "iperf3 64 B into pod", "UdpRcvbufErrors", "ping median", "ping loaded p99", "sockperf p99",
		"`iperf3 -u -l 64 -b 0`", "standard tools, ratio to vxlan:",
		"left out of the default workloads: sockperf: sockperf is not installed (apt-get install sockperf)",
		"round trips without a reply (not in the medians and p99s): udp rep 3 ping-loaded 3 of 500",
		"ping kept 63.0 to 90.0 echoes/s of the 100 asked",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q", want)
		}
	}
	// udp over vxlan: half the packet rate, twice every round trip.
	_, ratios, _ := strings.Cut(out, "standard tools, ratio to vxlan:")
	for line := range strings.SplitSeq(ratios, "\n") {
		if f := strings.Fields(line); len(f) > 0 && f[0] == "udp" {
			if want := []string{"udp", "-", "0.50x", "1.00x", "2.00x", "2.00x", "2.00x", "2.00x", "2.00x", "2.00x"}; strings.Join(f, " ") != strings.Join(want, " ") {
				t.Errorf("ratio row %q, want %q", f, want)
			}
		}
	}
	var svg bytes.Buffer
	if err := r.WriteSVG(&svg); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"iperf3_udp64_kpps", "ping_p50_us", "ping_loaded_p99_us", "sockperf_p50_us"} {
		if !strings.Contains(svg.String(), `id="`+key+`"`) {
			t.Errorf("SVG has no %s panel", key)
		}
	}
	if strings.Contains(svg.String(), `id="tcp1_gbps"`) || strings.Contains(svg.String(), "no data") {
		t.Errorf("SVG has a panel of a workload that did not run")
	}
	if strings.Contains(out, "RR loaded median  CPU per GB") {
		t.Errorf("ratio table of the generator's figures with none measured:\n%s", out)
	}

	b.Reset()
	if err := testReport().WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(b.String(), "standard tools") || strings.Contains(b.String(), "ping median") {
		t.Errorf("tools table without tool samples:\n%s", b.String())
	}
}
