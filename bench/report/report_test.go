package report

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/bench/traffic"
)

func samples() []Sample {
	loss := 0.25
	pacedLoss := 0.02
	var s []Sample
	for rep, gbps := range []float64{1, 3, 2} {
		for _, b := range []string{"vxlan", "udp"} {
			f := 1.0
			var mem []EngineMem
			if b == "udp" {
				f = 0.5
				// VmHWM of 20, 30 and 25 MiB over the reps: the
				// peak is 30, the median 25.
				hwm := []int64{20, 30, 25}[rep] * 1024
				mem = []EngineMem{{Host: 1, RSSKiB: hwm - 1024, HWMKiB: hwm}, {Host: 2, RSSKiB: 10240, HWMKiB: 12288}}
			}
			s = append(s,
				Sample{Backend: b, Rep: rep + 1, Workload: WorkloadTCP1, CPUSeconds: 2, EngineCPUSeconds: 1,
					Result: &traffic.Result{Mode: "tcp", BitsPerSecond: gbps * f * 1e9, Bytes: 4e9}, EngineMem: mem},
				Sample{Backend: b, Rep: rep + 1, Workload: WorkloadUDP64,
					Result: &traffic.Result{Mode: "udp", DeliveredPPS: 93900 / f, Loss: &loss}, EngineMem: mem},
			)
		}
		// Paced at vxlan's rate of the rep, after every backend's other
		// workloads; the udp sender falls behind in rep 2.
		for _, b := range []string{"vxlan", "udp"} {
			sent := 93900.0
			if b == "udp" && rep == 1 {
				sent = 90000
			}
			s = append(s, Sample{Backend: b, Rep: rep + 1, Workload: WorkloadUDP64Paced, PacedFrom: PacedFromVXLAN,
				Result: &traffic.Result{Mode: "udp", TargetRate: 93900, SentPPS: sent, DeliveredPPS: sent * (1 - pacedLoss), Loss: &pacedLoss}})
		}
	}
	s = append(s, Sample{Backend: "udp", Rep: 4, Workload: WorkloadRR, Error: "boom",
		EngineMem: []EngineMem{{Host: 1, RSSKiB: 1024, HWMKiB: 2048}}})
	return s
}

func TestSummarize(t *testing.T) {
	rows := Summarize(samples(), []string{"vxlan", "udp", "veth"}, strings.ToUpper)
	if len(rows) != 3 || rows[0].Label != "VXLAN" {
		t.Fatalf("%+v", rows)
	}
	got := rows[0].Metrics["tcp1_gbps"]
	if got != (Stat{Median: 2, Min: 1, Max: 3, N: 3}) {
		t.Fatalf("vxlan tcp1 = %+v", got)
	}
	if s := rows[1].Metrics["tcp1_gbps"]; s.Median != 1 {
		t.Fatalf("udp tcp1 = %+v", s)
	}
	if s := rows[0].Metrics["cpu_s_per_gb"]; s.Median != 0.5 || s.N != 3 {
		t.Fatalf("cpu per GB = %+v", s)
	}
	if s := rows[0].Metrics["udp64_loss_pct"]; s.Median != 25 {
		t.Fatalf("loss = %+v", s)
	}
	if _, ok := rows[1].Metrics["rr_p50_us"]; ok || rows[1].Errors != 1 {
		t.Fatalf("failed sample counted as a figure: %+v", rows[1])
	}
	if s := rows[1].Metrics["udp64_paced_loss_pct"]; s.Median != 2 || s.N != 3 {
		t.Fatalf("paced loss = %+v", s)
	}
	// Memory counts every sample, the failed one too (it still says what
	// the engine holds), and only where engines run.
	if s := rows[1].Metrics["engine_rss_peak_mib"]; s.Max != 30 || s.Median != 25 || s.N != 7 {
		t.Fatalf("udp engine RSS = %+v", s)
	}
	if s, ok := rows[0].Metrics["engine_rss_peak_mib"]; ok {
		t.Fatalf("engine RSS for kernel vxlan: %+v", s)
	}
	if len(rows[2].Metrics) != 0 {
		t.Fatalf("unmeasured backend has figures: %+v", rows[2])
	}
	if s := stat([]float64{4, 1, 2, 3}); s.Median != 2.5 {
		t.Fatalf("even median = %v", s.Median)
	}
}

func testReport() *Report {
	backends := []string{"vxlan", "udp", "veth"}
	r := &Report{Started: time.Now(), Finished: time.Now(), Machine: DescribeMachine(),
		Params: Params{Hosts: 2, Reps: 3, DurationSec: 1, Backends: backends}, Samples: samples()}
	r.Summary = Summarize(r.Samples, backends, func(b string) string { return "<" + b + " & co>" })
	return r
}

func TestTable(t *testing.T) {
	var b bytes.Buffer
	if err := testReport().WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	t.Logf("\n%s", out)
	for _, want := range []string{"ratio to vxlan", "0.50x", "2.00 ±50%", "<udp & co>",
		"64 B UDP paced", "paced loss", "engine RSS peak",
		"at kernel vxlan's flat-out delivered rate of the same repetition: rep 1 93.9 kpps, rep 2 93.9 kpps",
		"udp rep 2 offered 90.0 of 93.9 kpps",
		// Paced delivered over vxlan's flat-out delivered: 92.0 / 93.9.
		"64 B UDP paced: over vxlan's 64 B UDP delivered; issue #7 asks for at least 1.00x",
		"0.98x",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	// The peak column shows the largest VmHWM (30 MiB), not the median
	// (25), and '-' for the kernel row.
	var vxlanLine, udpLine string
	_, cost, _ := strings.Cut(out, "engine RSS peak")
	for line := range strings.SplitSeq(cost, "\n") {
		if strings.HasPrefix(line, "vxlan ") && vxlanLine == "" {
			vxlanLine = line
		} else if strings.HasPrefix(line, "udp ") && udpLine == "" {
			udpLine = line
		}
	}
	if !strings.HasSuffix(udpLine, " 30.0") || !strings.HasSuffix(vxlanLine, " -") {
		t.Errorf("cost table rows %q and %q, want the udp peak 30.0 and '-' for vxlan:\n%s", udpLine, vxlanLine, out)
	}
	if strings.Contains(out, "ratio to veth") {
		t.Errorf("ratio to a backend with no figures:\n%s", out)
	}
}

func TestJSONAndSVG(t *testing.T) {
	r := testReport()
	var js bytes.Buffer
	if err := r.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(js.Bytes(), &back); err != nil || len(back.Samples) != len(r.Samples) {
		t.Fatalf("JSON round trip: %v", err)
	}
	var svg bytes.Buffer
	if err := r.WriteSVG(&svg); err != nil {
		t.Fatal(err)
	}
	d := xml.NewDecoder(&svg)
	for {
		_, err := d.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("SVG not well-formed (labels need escaping): %v", err)
		}
	}
	if DescribeMachine().CPUs < 1 {
		t.Fatal("no CPUs")
	}
}

// series is a run of secs seconds with a reading every 5 s per engine.
func series(secs int, rss ...func(t int) int64) []MemPoint {
	var ps []MemPoint
	for t := 0; t <= secs; t += 5 {
		p := MemPoint{Seconds: float64(t)}
		for _, f := range rss {
			p.RSSKiB = append(p.RSSKiB, f(t))
		}
		ps = append(ps, p)
	}
	return ps
}

func TestMemTrends(t *testing.T) {
	flat := func(t int) int64 { return 20*1024 + int64(t%17)*20 } // breathes by < 1 MiB
	grows := func(t int) int64 { return 20*1024 + int64(t)*16 }   // +9.4 MiB over 600 s
	// +7.8 MiB over the first 200 s, then no more.
	settles := func(t int) int64 { return 20*1024 + int64(min(t, 200))*40 }
	r := &Report{Params: Params{Reps: 1}, Samples: []Sample{
		{Backend: "udp", Rep: 1, Workload: WorkloadTCP1, EngineRSS: series(600, flat, grows, settles),
			EngineMem: []EngineMem{{Host: 1, RSSKiB: 20 * 1024, HWMKiB: 22 * 1024}, {Host: 2, RSSKiB: 30 * 1024, HWMKiB: 31 * 1024}}},
		// Too short for a first and a last minute.
		{Backend: "udp", Rep: 1, Workload: WorkloadTCP4, EngineRSS: series(100, grows)},
	}}
	r.MemoryTrends = MemTrends(r.Samples)
	if len(r.MemoryTrends) != 3 {
		t.Fatalf("trends %+v, want one per engine of the long run", r.MemoryTrends)
	}
	a, b, c := r.MemoryTrends[0], r.MemoryTrends[1], r.MemoryTrends[2]
	if a.Host != 1 || !a.Flat || a.StartMiB != 20 || a.PeakMiB != 22 || a.Seconds != 600 || a.Points != 121 {
		t.Errorf("flat engine: %+v", a)
	}
	// First minute: up to t=60 (20 MiB + 960 KiB); the minute before the
	// middle: t=240..300; last: t=540..600.
	if b.Host != 2 || b.Flat || b.Settled || b.FirstMinuteMaxMiB != 20.9375 || b.MidMinuteMaxMiB != 24.6875 ||
		b.LastMinuteMaxMiB != 29.375 || b.SecondHalfGrowthMiB != 4.6875 || b.PeakMiB != 31 {
		t.Errorf("growing engine: %+v", b)
	}
	if c.Host != 3 || c.Flat || !c.Settled || c.GrowthMiB != 5.46875 || c.SecondHalfGrowthMiB != 0 {
		t.Errorf("settling engine: %+v", c)
	}
	var out bytes.Buffer
	if err := r.WriteTable(&out); err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", out.String())
	for _, want := range []string{"engine memory over long runs", "host 1", "flat", "host 2", "+8.4", "+4.7", "GROWS", "host 3", "settled"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, out.String())
		}
	}
}
