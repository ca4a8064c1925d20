package harness

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/xml"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/bench/lab"
	"github.com/weft-net/weft/bench/lab/labtest"
	"github.com/weft-net/weft/bench/report"
)

// leftovers lists the namespaces and registrations of the given labs, and
// the processes running the test's weft binary. (Other tests may run labs
// of their own at the same time, so only these labs are looked at.)
func leftovers(t *testing.T, prefixes []string) []string {
	t.Helper()
	var s []string
	for _, dir := range []string{"/run/netns", "/run/weft-lab"} {
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			if slices.Contains(prefixes, strings.SplitN(e.Name(), "-", 2)[0]) {
				s = append(s, dir+"/"+e.Name())
			}
		}
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/exe")
	for _, p := range procs {
		if exe, err := os.Readlink(p); err == nil && exe == weftBin {
			s = append(s, "process "+p)
		}
	}
	slices.Sort(s)
	return s
}

// A short run of every backend: each row has its figures, the samples
// interleave the backends, the JSON is complete, the SVG well-formed, and
// nothing of the run is left behind. Figures are never asserted.
func TestBenchShort(t *testing.T) {
	labtest.RequireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	const reps = 2
	leases := LeasesStatic
	if hasEtcdCommand() {
		leases = LeasesEtcd
	}
	t.Logf("weft backends take their leases from: %s", leases)
	rep, err := RunBench(ctx, BenchConfig{
		Binary: weftBin, Hosts: 2, Backends: Backends, Duration: 300 * time.Millisecond, Reps: reps,
		Leases: leases, Command: "test", Progress: func(s string) { t.Log(s) },
	})
	if err != nil {
		t.Fatal(err)
	}
	var prefixes []string
	for _, b := range Backends {
		if p := rep.Backends[b].Lab; lab.GeneratedPrefix.MatchString(p) {
			prefixes = append(prefixes, p)
		}
	}
	if len(prefixes) != len(Backends) {
		t.Fatalf("report names labs %v for %d backends", prefixes, len(Backends))
	}
	if left := leftovers(t, prefixes); len(left) > 0 {
		t.Errorf("bench left behind %v", left)
	}

	var order []string
	for _, s := range rep.Samples {
		if s.Error != "" {
			t.Errorf("run %d %s %s: %s", s.Rep, s.Backend, s.Workload, s.Error)
		}
		order = append(order, s.Backend+"/"+s.Workload)
	}
	// The default list, less the standard tools that are missing here
	// (CI installs them all).
	workloads, leftOut, _ := selectWorkloads(report.Workloads, false, false, exec.LookPath)
	if len(leftOut) > 0 && os.Getenv("CI") == "true" {
		t.Errorf("CI without every standard tool: %v", leftOut)
	}
	if !slices.Equal(rep.Params.LeftOut, leftOut) {
		t.Errorf("report says left out %v, want %v", rep.Params.LeftOut, leftOut)
	}
	if _, err := exec.LookPath("iperf3"); err == nil {
		workloads = append(workloads, report.WorkloadIperf3)
	}
	// Every backend's workloads in turn, then the paced one of every
	// backend, once vxlan's flat-out rate of the rep is known.
	var want []string
	for range reps {
		for _, b := range Backends {
			for _, w := range workloads {
				if w != report.WorkloadUDP64Paced {
					want = append(want, b+"/"+w)
				}
			}
		}
		for _, b := range Backends {
			want = append(want, b+"/"+report.WorkloadUDP64Paced)
		}
	}
	if !slices.Equal(order, want) {
		t.Fatalf("samples ran in order %v, want backends interleaved: %v", order, want)
	}
	if len(rep.Summary) != len(Backends) {
		t.Fatalf("%d summary rows for %d backends", len(rep.Summary), len(Backends))
	}
	for _, row := range rep.Summary {
		for _, m := range report.Metrics {
			s, ok := row.Metrics[m.Key]
			if m.Workload != "" && !slices.Contains(workloads, m.Workload) {
				continue
			}
			engineOnly := m.Key == "engine_cpu_s_per_gb" || m.Key == "engine_rss_peak_mib"
			if engineOnly && !isWeft(row.Backend) {
				if ok {
					t.Errorf("%s: %s reported for a kernel backend", row.Backend, m.Key)
				}
				continue
			}
			n := reps
			if m.Workload == "" {
				n = reps * len(workloads) // memory: every sample
			}
			if !ok || s.N != n || s.Min > s.Median || s.Median > s.Max || (m.Peak && s.Max <= 0) {
				t.Errorf("%s: metric %s = %+v, ok %v", row.Backend, m.Key, s, ok)
			}
		}
		if row.Label == "" || row.Errors != 0 {
			t.Errorf("row %+v", row)
		}
	}

	var js bytes.Buffer
	if err := rep.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	var back report.Report
	if err := json.Unmarshal(js.Bytes(), &back); err != nil {
		t.Fatalf("JSON does not parse: %v", err)
	}
	m := back.Machine
	if m.Kernel == "" || m.CPUs < 1 || m.GoVersion == "" || m.WeftVersion == "" || m.MemTotalKB == 0 {
		t.Errorf("machine description incomplete: %+v", m)
	}
	if len(back.Samples) != len(want) || back.Params.Reps != reps || len(back.Summary) != len(Backends) || back.Finished.Before(back.Started) {
		t.Errorf("JSON incomplete: %d samples, params %+v", len(back.Samples), back.Params)
	}
	for _, b := range Backends {
		info, ok := back.Backends[b]
		if !ok || info.Label == "" {
			t.Errorf("JSON lacks backend %s", b)
		}
		if (b == BackendUDP || b == BackendUDPRealtime || b == BackendUDPQueues2 || b == BackendUDPUnbatched) && !json.Valid(info.WeftStats) {
			t.Errorf("%s: no weft stats (offload state) in the JSON", b)
		}
		if b == BackendUDPQueues2 || b == BackendUVXLANQueues {
			var st struct {
				Engine struct{ Queues []json.RawMessage } `json:"engine"`
			}
			if err := json.Unmarshal(info.WeftStats, &st); err != nil || len(st.Engine.Queues) != 2 {
				t.Errorf("%s: %d queues in weft stats (%v), want 2", b, len(st.Engine.Queues), err)
			}
		}
		if b == BackendUDPRealtime {
			var st struct {
				Engine struct{ RealtimeLoops int } `json:"engine"`
			}
			if err := json.Unmarshal(info.WeftStats, &st); err != nil || st.Engine.RealtimeLoops != 2 {
				t.Errorf("%s: %d realtime loops in weft stats (%v), want 2", b, st.Engine.RealtimeLoops, err)
			}
		}
	}
	vxlanRate := map[int]float64{}
	for _, s := range back.Samples {
		if s.Result == nil || s.Result.Mode == "" || s.CPUSeconds <= 0 {
			t.Errorf("sample %+v incomplete", s)
			continue
		}
		if s.Backend == BackendVXLAN && s.Workload == report.WorkloadUDP64 {
			vxlanRate[s.Rep] = s.Result.DeliveredPPS
		}
		checkMem(t, s, 2)
		checkStdTool(t, s, 300*time.Millisecond)
	}
	for _, s := range back.Samples {
		if s.Workload != report.WorkloadUDP64Paced || s.Result == nil {
			continue
		}
		if want := int(vxlanRate[s.Rep] + 0.5); s.PacedFrom != report.PacedFromVXLAN || s.Result.TargetRate != want || want == 0 {
			t.Errorf("%s rep %d paced at %d from %q, want vxlan's flat-out %d of the same rep", s.Backend, s.Rep, s.Result.TargetRate, s.PacedFrom, want)
		}
		if s.Result.Loss == nil || s.Result.Sent == 0 {
			t.Errorf("%s rep %d paced: no loss figure: %+v", s.Backend, s.Rep, s.Result)
		}
	}

	var svg bytes.Buffer
	if err := rep.WriteSVG(&svg); err != nil {
		t.Fatal(err)
	}
	checkSVG(t, svg.Bytes(), len(Backends))

	var table bytes.Buffer
	if err := rep.WriteTable(&table); err != nil {
		t.Fatal(err)
	}
	for _, s := range append([]string{"ratio to vxlan", "ratio to veth", "64 B UDP paced", "paced loss", "engine RSS peak",
		"at kernel vxlan's flat-out delivered rate of the same repetition: rep 1 ",
		"iperf3 64 B UDP", "ping loaded p99", "sockperf median", "standard tools, ratio to vxlan:"}, Backends...) {
		if !strings.Contains(table.String(), s) {
			t.Errorf("table lacks %q:\n%s", s, table.String())
		}
	}
	t.Logf("\n%s", table.String())
}

func isWeft(backend string) bool {
	return backend == BackendUDP || backend == BackendUDPRealtime || backend == BackendUDPQueues2 || backend == BackendUDPUnbatched || backend == BackendUVXLAN || backend == BackendUVXLANQueues
}

// checkMem checks a sample's engine memory: for a weft backend every
// engine's VmRSS and VmHWM after the run and a series of readings during
// it; nothing for a kernel backend.
func checkMem(t *testing.T, s report.Sample, hosts int) {
	t.Helper()
	if !isWeft(s.Backend) {
		if s.EngineMem != nil || s.EngineRSS != nil {
			t.Errorf("%s rep %d %s: engine memory for a kernel backend", s.Backend, s.Rep, s.Workload)
		}
		return
	}
	if len(s.EngineMem) != hosts {
		t.Errorf("%s rep %d %s: memory of %d engines, want %d", s.Backend, s.Rep, s.Workload, len(s.EngineMem), hosts)
	}
	for i, m := range s.EngineMem {
		if m.Host != i+1 || m.RSSKiB <= 0 || m.HWMKiB < m.RSSKiB {
			t.Errorf("%s rep %d %s: engine memory %+v", s.Backend, s.Rep, s.Workload, m)
		}
	}
	if len(s.EngineRSS) < 2 {
		t.Errorf("%s rep %d %s: %d RSS readings, want at least the start and the end", s.Backend, s.Rep, s.Workload, len(s.EngineRSS))
	}
	for i, p := range s.EngineRSS {
		if len(p.RSSKiB) != hosts || slices.Contains(p.RSSKiB, 0) || (i > 0 && p.Seconds <= s.EngineRSS[i-1].Seconds) {
			t.Errorf("%s rep %d %s: RSS reading %d: %+v", s.Backend, s.Rep, s.Workload, i, p)
		}
	}
}

// checkSVG parses the whole document and counts the bars.
func checkSVG(t *testing.T, b []byte, backends int) {
	t.Helper()
	d := xml.NewDecoder(bytes.NewReader(b))
	rects, panels := 0, 0
	for {
		tok, err := d.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("SVG not well-formed: %v\n%s", err, b)
		}
		if se, ok := tok.(xml.StartElement); ok {
			switch se.Name.Local {
			case "rect":
				rects++
			case "g":
				panels++
			}
		}
	}
	if panels == 0 || rects != 1+panels*backends {
		t.Fatalf("SVG has %d panels and %d rects, want %d bars per panel", panels, rects, backends)
	}
}

// Without kernel vxlan in the run the paced workload takes --udp-rate,
// or is skipped (not failed) when that is 0; the engines' memory is read
// every MemEvery during a run.
func TestBenchPacedFallbackAndMemSeries(t *testing.T) {
	labtest.RequireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	rep, err := RunBench(ctx, BenchConfig{
		Binary: weftBin, Backends: []string{BackendUDP}, Workloads: []string{report.WorkloadTCP1, report.WorkloadUDP64Paced},
		Duration: time.Second, Reps: 1, Leases: LeasesStatic, Iperf3: "off", UDPRate: 20000, MemEvery: 100 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Samples) != 2 {
		t.Fatalf("samples %+v", rep.Samples)
	}
	for _, s := range rep.Samples {
		if s.Error != "" {
			t.Fatalf("%s: %s", s.Workload, s.Error)
		}
		checkMem(t, s, 2)
		// A reading every 100 ms over a second, give or take a late tick.
		if len(s.EngineRSS) < 6 {
			t.Errorf("%s: %d RSS readings over 1 s at 100 ms", s.Workload, len(s.EngineRSS))
		}
	}
	paced := rep.Samples[1]
	if paced.PacedFrom != report.PacedFromFlag || paced.Result == nil || paced.Result.TargetRate != 20000 {
		t.Errorf("paced sample without vxlan: from %q, result %+v", paced.PacedFrom, paced.Result)
	}
	if s := rep.Summary[0].Metrics["engine_rss_peak_mib"]; s.N != 2 || s.Max <= 0 {
		t.Errorf("engine RSS peak %+v", s)
	}

	rep, err = RunBench(ctx, BenchConfig{
		Binary: weftBin, Backends: []string{BackendVeth}, Workloads: []string{report.WorkloadUDP64Paced},
		Duration: 300 * time.Millisecond, Reps: 1, Iperf3: "off",
	})
	if err != nil {
		t.Fatal(err)
	}
	if s := rep.Samples[0]; s.Skipped == "" || s.Error != "" || s.Result != nil || rep.Summary[0].Errors != 0 {
		t.Fatalf("paced with no rate: %+v", s)
	}
	var table bytes.Buffer
	if err := rep.WriteTable(&table); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(table.String(), "64 B UDP paced skipped: kernel vxlan's") {
		t.Errorf("table does not say why the paced workload was skipped:\n%s", table.String())
	}
}

func TestBenchBadConfig(t *testing.T) {
	for _, cfg := range []BenchConfig{
		{Hosts: 1, Backends: []string{"veth"}, Reps: 1, Duration: time.Second},
		{Hosts: 2, Backends: []string{"gre"}, Reps: 1, Duration: time.Second},
		{Hosts: 2, Backends: []string{"veth", "veth"}, Reps: 1, Duration: time.Second},
		{Hosts: 2, Backends: []string{"veth"}, Reps: 0, Duration: time.Second},
		{Hosts: 2, Backends: []string{"veth"}, Reps: 1, Duration: time.Second, Leases: "consul"},
		{Hosts: 2, Backends: []string{"veth"}, Reps: 1, Duration: time.Second, Workloads: []string{"sctp"}},
		{Hosts: 2, Backends: []string{"veth"}, Reps: 1, Duration: time.Second, UDPRate: -1},
		{Hosts: 2, Backends: []string{"veth"}, Reps: 1, Duration: time.Second, MemEvery: time.Millisecond},
	} {
		if _, err := RunBench(context.Background(), cfg); err == nil {
			t.Errorf("RunBench(%+v) succeeded", cfg)
		}
	}
}

// hasEtcdCommand reports whether the weft under test has `weft etcd` (it
// is being written alongside the bench; until then weft backends use
// static leases).
func hasEtcdCommand() bool {
	out, _ := exec.Command(weftBin, "etcd", "-h").CombinedOutput()
	return !strings.Contains(string(out), "unknown command")
}

// The demo, as make demo runs it: every step, a result table, and nothing
// left behind.
func TestDemo(t *testing.T) {
	labtest.RequireRoot(t)
	if !hasEtcdCommand() {
		t.Log("weft etcd does not exist yet; the demo needs it")
		return
	}
	before := leftoversAll(t)
	out, err := exec.Command(weftBin, "demo", "--duration", "1s").CombinedOutput()
	if err != nil {
		t.Fatalf("weft demo: %v\n%s", err, out)
	}
	for _, want := range []string{"[1/7]", "[4/7]", "-> 192.0.2.4", "5/5 replies", "pod -> pod via weft udp", "[7/7]", "done in"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
	if after := leftoversAll(t); len(after) > len(before) {
		t.Errorf("demo left behind: before %v, after %v", before, after)
	}
}

// leftoversAll lists processes of the test's weft binary and labs whose
// owner has exited.
func leftoversAll(t *testing.T) []string {
	var dead []string
	ents, _ := os.ReadDir("/run/weft-lab")
	for _, e := range ents {
		b, err := os.ReadFile("/run/weft-lab/" + e.Name())
		var r struct{ Pid int }
		if err == nil && json.Unmarshal(b, &r) == nil {
			if _, err := os.Stat("/proc/" + strconv.Itoa(r.Pid)); err != nil {
				dead = append(dead, e.Name())
			}
		}
	}
	return append(dead, leftovers(t, nil)...)
}

// TestFlanneldRow drives the "flanneld" row with a stand-in: a script that
// runs `weft run` with the flags the bench gives flanneld. It checks the
// row's plumbing (etcd, flanneld's flags, subnet files, traffic), and that
// weft takes flanneld's command line as it is.
func TestFlanneldRow(t *testing.T) {
	labtest.RequireRoot(t)
	if !hasEtcdCommand() {
		t.Skip("no weft etcd in this build")
	}
	fake := filepath.Join(t.TempDir(), "flanneld")
	script := "#!/bin/sh\nexec " + weftBin + " run --debug-socket= \"$@\"\n"
	if err := os.WriteFile(fake, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	rep, err := RunBench(ctx, BenchConfig{
		Binary: weftBin, Flanneld: fake, Hosts: 2, Backends: []string{BackendFlanneld},
		Workloads: []string{report.WorkloadTCP1}, Duration: 300 * time.Millisecond, Reps: 1, Command: "test", Iperf3: "off",
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Samples) != 1 || rep.Samples[0].Error != "" {
		t.Fatalf("samples %+v", rep.Samples)
	}
	if rep.Samples[0].Result == nil || rep.Samples[0].Result.Bytes == 0 {
		t.Fatalf("no bytes through the flanneld row: %+v", rep.Samples[0])
	}
}
