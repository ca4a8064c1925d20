package harness

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/weft-net/weft/bench/lab"
	"github.com/weft-net/weft/bench/report"
	"github.com/weft-net/weft/bench/traffic"
)

// BenchConfig configures RunBench.
type BenchConfig struct {
	Binary string // weft executable for child processes
	// Flanneld is a flanneld binary for the "flanneld" row: real flanneld
	// hosts with the UDP backend against the same etcd.
	Flanneld string
	Hosts    int // per backend lab; default 2
	Backends []string
	// Workloads to run; default report.Workloads, less the standard-tool
	// ones whose tool is not installed (named here, a missing tool fails
	// the run instead: see selectWorkloads).
	Workloads   []string
	Duration    time.Duration
	Reps        int
	Leases      string // LeasesEtcd (default) or LeasesStatic
	UnderlayMTU int
	// Iperf3 adds iperf3's TCP 1 stream as a cross-check: "auto" (default:
	// when iperf3 is installed), "on" or "off".
	Iperf3 string
	// UDPRate is the paced 64-byte UDP workload's rate (packets/s) when
	// kernel vxlan's flat-out rate of the same rep is not known (vxlan is
	// not among Backends, or its sample failed); 0 skips the workload then.
	UDPRate int
	// MemEvery is how often the engines' resident sets are read during a
	// run; default DefaultMemEvery.
	MemEvery time.Duration
	// IPv6 measures over IPv6: dual-stack labs, pods reached at their
	// IPv6 addresses (veth: the hosts' IPv6 underlay addresses), and the
	// kernel vxlan and host-gw rows configured by weft itself (its
	// dual-stack state is flanneld's, checked by the e2e tests), since
	// the bench's own netlink setup of those rows is IPv4 only. Leases
	// come from etcd; the flanneld row has no IPv6.
	IPv6 bool
	// Guard, if set, gets every lab so a signal tears them down.
	Guard *lab.Guard
	// Progress receives one line per sample before it runs.
	Progress func(line string)
	Command  string // recorded in the report
}

// bench is one backend's lab, ready to measure.
type benchLab struct {
	backend string
	c       *Cluster
	path    Path
}

// RunBench builds one lab per backend, then measures the workloads with
// the backends interleaved (A B C A B C ...) so that drift on a noisy
// machine hits them alike. A failed sample is recorded with its error and
// the run goes on; a backend that cannot be set up fails the run. Every
// lab is closed before RunBench returns.
func RunBench(ctx context.Context, cfg BenchConfig) (rep *report.Report, err error) {
	if cfg.Hosts == 0 {
		cfg.Hosts = 2
	}
	if cfg.Leases == "" {
		cfg.Leases = LeasesEtcd
	}
	explicit := len(cfg.Workloads) > 0
	if !explicit {
		cfg.Workloads = report.Workloads
	}
	if cfg.Progress == nil {
		cfg.Progress = func(string) {}
	}
	if cfg.MemEvery == 0 {
		cfg.MemEvery = DefaultMemEvery
	}
	switch {
	case cfg.Hosts < 2 || cfg.Hosts > lab.MaxHosts:
		return nil, fmt.Errorf("--hosts: %d, want 2..%d", cfg.Hosts, lab.MaxHosts)
	case cfg.Reps < 1:
		return nil, fmt.Errorf("--reps: %d, want at least 1", cfg.Reps)
	case cfg.Duration < 100*time.Millisecond:
		return nil, fmt.Errorf("--duration: %v, want at least 100ms", cfg.Duration)
	case len(cfg.Backends) == 0:
		return nil, errors.New("--backends: none given")
	case cfg.Leases != LeasesEtcd && cfg.Leases != LeasesStatic:
		return nil, fmt.Errorf("--leases: %q, want etcd or static", cfg.Leases)
	case cfg.UDPRate < 0:
		return nil, fmt.Errorf("--udp-rate: %d packets/s, want >= 0", cfg.UDPRate)
	case cfg.IPv6 && cfg.Leases != LeasesEtcd:
		return nil, errors.New("--ipv6: the IPv6 rows lease through etcd (--leases etcd)")
	case cfg.IPv6 && slices.Contains(cfg.Backends, BackendFlanneld):
		return nil, errors.New("--ipv6: flanneld's udp backend carries no IPv6; leave out the flanneld row")
	case cfg.MemEvery < 10*time.Millisecond:
		return nil, fmt.Errorf("memory reading interval %v, want at least 10ms", cfg.MemEvery)
	}
	for i, b := range cfg.Backends {
		if !slices.Contains(Backends, b) && b != BackendFlanneld {
			return nil, fmt.Errorf("--backends: unknown backend %q (want some of %s)", b, strings.Join(Backends, ","))
		}
		if slices.Contains(cfg.Backends[:i], b) {
			return nil, fmt.Errorf("--backends: %q given twice", b)
		}
	}
	if cfg.Iperf3 == "" {
		cfg.Iperf3 = "auto"
	}
	_, noIperf := exec.LookPath("iperf3")
	switch {
	case cfg.Iperf3 == "on" && noIperf != nil:
		return nil, errors.New("--iperf3=on: iperf3 is not installed (apt-get install iperf3)")
	case cfg.Iperf3 == "on" || (cfg.Iperf3 == "auto" && noIperf == nil):
		if !slices.Contains(cfg.Workloads, report.WorkloadIperf3) {
			cfg.Workloads = append(slices.Clone(cfg.Workloads), report.WorkloadIperf3)
		}
	case cfg.Iperf3 != "auto" && cfg.Iperf3 != "off":
		return nil, fmt.Errorf("--iperf3: %q, want auto, on or off", cfg.Iperf3)
	}
	for _, w := range cfg.Workloads {
		if !slices.Contains(report.Workloads, w) && w != report.WorkloadIperf3 {
			return nil, fmt.Errorf("--workloads: unknown workload %q (want some of %s)", w, strings.Join(report.Workloads, ","))
		}
	}
	workloads, leftOut, err := selectWorkloads(cfg.Workloads, explicit, cfg.IPv6, exec.LookPath)
	if err != nil {
		return nil, err
	}
	cfg.Workloads = workloads

	rep = &report.Report{
		Command: cfg.Command, Started: time.Now(), Machine: report.DescribeMachine(),
		Params: report.Params{IPv6: cfg.IPv6, Hosts: cfg.Hosts, Backends: cfg.Backends, Workloads: cfg.Workloads,
			DurationSec: cfg.Duration.Seconds(), Reps: cfg.Reps, Leases: cfg.Leases, UnderlayMTU: cfg.UnderlayMTU,
			UDPRate: cfg.UDPRate, MemEverySec: cfg.MemEvery.Seconds(), LeftOut: leftOut},
		Backends: map[string]report.BackendInfo{},
	}
	var labs []*benchLab
	defer func() {
		var errs []error
		for _, bl := range labs {
			if cerr := bl.c.Lab.Close(); cerr != nil {
				errs = append(errs, cerr)
			}
		}
		if err == nil && len(errs) > 0 {
			err = fmt.Errorf("teardown: %w", errors.Join(errs...))
		}
	}()
	for _, b := range cfg.Backends {
		cfg.Progress(fmt.Sprintf("setting up %s: %d hosts", b, cfg.Hosts))
		l, err := lab.New(lab.Options{Hosts: cfg.Hosts, UnderlayMTU: cfg.UnderlayMTU, IPv6: cfg.IPv6})
		if err != nil {
			return nil, err
		}
		if cfg.Guard != nil {
			cfg.Guard.Add(l)
		}
		bl := &benchLab{backend: b, c: New(l, cfg.Binary)}
		bl.c.IPv6 = cfg.IPv6
		bl.c.Flanneld = cfg.Flanneld
		labs = append(labs, bl)
		if bl.path, err = SetupBackend(ctx, bl.c, b, cfg.Leases); err != nil {
			return nil, fmt.Errorf("backend %s: %w\n%s", b, err, l.Logs())
		}
		if _, err := bl.c.StartTrafficServer(bl.path.ServerNS, "traffic-server", bl.path.ServerIP.Is6()); err != nil {
			return nil, err
		}
		// One iperf3 server serves every iperf3 workload in turn.
		if needs(cfg.Workloads, toolIperf3) {
			if _, err := l.Start(bl.path.ServerNS, "iperf3-server", "iperf3", "-s"); err != nil {
				return nil, err
			}
		}
		if needs(cfg.Workloads, toolSockperf) {
			if err := bl.startSockperfServer(ctx); err != nil {
				return nil, fmt.Errorf("backend %s: %w\n%s", b, err, l.Logs())
			}
		}
		label := BackendLabel(b)
		if cfg.IPv6 {
			label = BackendLabel6(b)
		}
		rep.Backends[b] = report.BackendInfo{Label: label, Lab: l.Prefix, WeftStats: bl.c.WeftStats(ctx, l.Host(1))}
	}

	total := cfg.Reps * len(labs) * len(cfg.Workloads)
	done := 0
	start := time.Now()
	run := func(r int, bl *benchLab, w string) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		left := time.Duration(total-done) * (cfg.Duration + 500*time.Millisecond)
		if done > 0 {
			left = time.Since(start) / time.Duration(done) * time.Duration(total-done)
		}
		cfg.Progress(fmt.Sprintf("run %d/%d  %-13s %-11s  sample %d/%d, about %s left",
			r, cfg.Reps, bl.backend, w, done+1, total, left.Round(time.Second)))
		var s report.Sample
		if w == report.WorkloadUDP64Paced {
			s = bl.measurePaced(ctx, rep.Samples, r, cfg)
		} else {
			s = bl.measure(ctx, w, cfg.Duration, nil, cfg.MemEvery)
		}
		s.Rep = r
		if s.Error != "" && ctx.Err() != nil {
			return ctx.Err()
		}
		rep.Samples = append(rep.Samples, s)
		done++
		return nil
	}
	for r := 1; r <= cfg.Reps; r++ {
		for _, bl := range labs {
			for _, w := range cfg.Workloads {
				if w == report.WorkloadUDP64Paced {
					continue
				}
				if err := run(r, bl, w); err != nil {
					return nil, err
				}
			}
		}
		// The paced workload goes last in the rep, so that kernel
		// vxlan's flat-out rate of this rep is known for every backend,
		// whatever the order of --backends.
		if slices.Contains(cfg.Workloads, report.WorkloadUDP64Paced) {
			for _, bl := range labs {
				if err := run(r, bl, report.WorkloadUDP64Paced); err != nil {
					return nil, err
				}
			}
		}
	}
	rep.Finished = time.Now()
	rep.Summary = report.Summarize(rep.Samples, cfg.Backends, func(b string) string { return rep.Backends[b].Label })
	rep.MemoryTrends = report.MemTrends(rep.Samples)
	return rep, nil
}

// pacedRate is the rate of rep r's paced workload: what kernel vxlan
// delivered flat out in the same rep, else the configured rate; 0 with
// the reason when there is neither.
func pacedRate(samples []report.Sample, r, fallback int) (rate int, from, skip string) {
	for _, s := range samples {
		if s.Backend == BackendVXLAN && s.Workload == report.WorkloadUDP64 && s.Rep == r &&
			s.Error == "" && s.Result != nil && s.Result.DeliveredPPS >= 1 {
			return int(math.Round(s.Result.DeliveredPPS)), report.PacedFromVXLAN, ""
		}
	}
	if fallback > 0 {
		return fallback, report.PacedFromFlag, ""
	}
	return 0, "", "kernel vxlan's flat-out 64 B UDP rate is not known (add vxlan to --backends and udp64 to --workloads) and --udp-rate is 0"
}

// measurePaced runs the paced workload of rep r.
func (bl *benchLab) measurePaced(ctx context.Context, samples []report.Sample, r int, cfg BenchConfig) report.Sample {
	rate, from, skip := pacedRate(samples, r, cfg.UDPRate)
	if rate == 0 {
		return report.Sample{Backend: bl.backend, Workload: report.WorkloadUDP64Paced, Skipped: skip}
	}
	s := bl.measure(ctx, report.WorkloadUDP64Paced, cfg.Duration, []string{"--rate", strconv.Itoa(rate)}, cfg.MemEvery)
	s.PacedFrom = from
	return s
}

// measure runs one workload (extra: more flags for weft traffic) and the
// CPU and memory accounting around it.
func (bl *benchLab) measure(ctx context.Context, workload string, d time.Duration, extra []string, memEvery time.Duration) report.Sample {
	s := report.Sample{Backend: bl.backend, Workload: workload}
	to := bl.path.ServerIP.String()
	ds := d.String()
	var args []string
	switch workload {
	case report.WorkloadTCP1:
		args = []string{"tcp", "--to", to, "--duration", ds, "--streams", "1"}
	case report.WorkloadTCP4:
		args = []string{"tcp", "--to", to, "--duration", ds, "--streams", "4"}
	case report.WorkloadUDP64, report.WorkloadUDP64Paced:
		args = []string{"udp", "--to", to, "--duration", ds, "--size", "64"}
	case report.WorkloadRR, report.WorkloadRRLoaded:
		args = []string{"rr", "--to", to, "--duration", ds, "--size", "64"}
	}
	args = append(args, extra...)
	ctx, cancel := context.WithTimeout(ctx, d+60*time.Second)
	defer cancel()
	cpu0 := machineCPU()
	eng0 := bl.engineCPU()
	stopRSS := bl.watchRSS(memEvery)
	var res *traffic.Result
	var err error
	switch workload {
	case report.WorkloadIperf3:
		res, err = bl.iperf3(ctx, d)
	case report.WorkloadIperf3UDP64:
		res, err = bl.iperf3UDP64(ctx, d)
	case report.WorkloadPing:
		res, err = bl.ping(ctx, d)
	case report.WorkloadPingLoaded:
		res, err = bl.pingLoaded(ctx, d)
	case report.WorkloadSockperf:
		res, err = bl.sockperf(ctx, d)
	case report.WorkloadRRLoaded:
		res, err = bl.loadedRR(ctx, to, d, args)
	default:
		res, err = bl.c.Traffic(ctx, bl.path.ClientNS, args...)
	}
	s.CPUSeconds = machineCPU() - cpu0
	s.EngineCPUSeconds = bl.engineCPU() - eng0
	s.EngineRSS = stopRSS()
	s.EngineMem = bl.engineMem()
	if err != nil {
		s.Error = err.Error()
		return s
	}
	s.Result = res
	return s
}

// clockTick is USER_HZ, the unit of /proc/stat and /proc/PID/stat times;
// 100 on every Linux architecture Go supports.
const clockTick = 100

// machineCPU returns the machine's busy CPU seconds so far (all CPUs):
// user, nice, system, irq, softirq and steal from /proc/stat.
func machineCPU() float64 {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0
	}
	var busy float64
	for _, i := range []int{1, 2, 3, 6, 7, 8} {
		v, _ := strconv.ParseFloat(f[i], 64)
		busy += v
	}
	return busy / clockTick
}

// engineCPU returns the CPU seconds used so far by the lab's weft
// engines (utime + stime of each process).
func (bl *benchLab) engineCPU() float64 {
	var total float64
	for _, p := range bl.c.Runs {
		if p == nil || p.Exited() {
			continue
		}
		b, err := os.ReadFile("/proc/" + strconv.Itoa(p.Pid()) + "/stat")
		if err != nil {
			continue
		}
		// Fields after the parenthesised command name; utime and stime
		// are fields 14 and 15 of the whole line.
		i := strings.LastIndexByte(string(b), ')')
		f := strings.Fields(string(b[i+1:]))
		if len(f) < 13 {
			continue
		}
		ut, _ := strconv.ParseFloat(f[11], 64)
		st, _ := strconv.ParseFloat(f[12], 64)
		total += (ut + st) / clockTick
	}
	return total
}
