// Package scale is weft's scale benchmark (issue 19): one real weft host in
// a namespace lab and N-1 simulated peers written into the lab's `weft etcd`
// as flanneld writes them, per backend. It measures the time from start to
// the full state, the weft process's CPU per lease event and the time until
// its state is correct after the last event of a churn (puts and deletes at
// a given rate), its RSS, and N-1 hosts joining one lease at a time.
//
// "Correct" is read where it takes effect: the kernel's tagged routes (and,
// for vxlan, neighbours and FDB entries) through netlink for the kernel
// backends, the admitted peers of `weft status` for udp.
package scale

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/weft-net/weft/bench/harness"
	"github.com/weft-net/weft/bench/lab"
	"github.com/weft-net/weft/bench/memcg"
	"github.com/weft-net/weft/daemon"
)

// Options configure Run.
type Options struct {
	Binary string // set per run from Binaries
	// RunFlags are weft run flags of this variant, set per run from
	// Binaries (an entry "PATH --flag ..." runs PATH with them).
	RunFlags []string
	// Binaries are the weft binaries to measure, interleaved per backend
	// (an old and a new build compare under the same load).
	Binaries []string
	Hosts    int      // N: the real host and N-1 simulated peers
	Backends []string // udp, vxlan, host-gw, uvxlan (vxlan from userspace)
	Events   int      // lease events per churn, half puts of new peers and half deletes
	Rates    []int    // churn rates, events per second
	JoinRate int      // puts per second of the join run; 0 skips it
	// ProfileDir, when set, receives the weft process's heap profile
	// (pprof, from its debug socket) at the steady state and after the
	// churn: <binary>-<backend>-<N>-{steady,churn}.heap.pb.gz.
	ProfileDir string
	// CPUProfileDir, when set, receives the weft process's CPU profile
	// (pprof) of the quiet window and of each churn:
	// <binary>-<backend>-<N>-{idle,churn<rate>}.cpu.pb.gz. Profiling
	// costs the process some CPU of its own (SIGPROF at 100 Hz), which
	// the figures of that run then include.
	CPUProfileDir string
	// MemoryMax, when > 0, starts weft run in a memory cgroup of this
	// hard limit in bytes (a pod's limit), and reports its peak charge
	// and the OOM kills.
	MemoryMax int64
	// Timeout bounds each wait for a correct state.
	Timeout  time.Duration
	Progress func(string)
}

// Churn is one churn run's figures.
type Churn struct {
	Rate        int           `json:"rate"`
	Events      int           `json:"events"`
	CPUPerEvent time.Duration `json:"cpu_per_event_ns"`
	After       time.Duration `json:"correct_after_last_event_ns"`
	RSSMax      uint64        `json:"rss_max_bytes"`
	RSSMaxAnon  uint64        `json:"rss_max_anon_bytes"` // the most anonymous memory seen
}

// Join is the run where N-1 peers join one put at a time.
type Join struct {
	Rate    int           `json:"rate"`
	Puts    int           `json:"puts"`
	PutTime time.Duration `json:"put_time_ns"`
	After   time.Duration `json:"correct_after_last_put_ns"`
	CPU     time.Duration `json:"cpu_ns"`
	RSSMax  uint64        `json:"rss_max_bytes"`
}

// Result is one backend at one N.
type Result struct {
	Binary    string        `json:"binary"`
	Backend   string        `json:"backend"`
	N         int           `json:"n"`
	Start     time.Duration `json:"start_to_full_state_ns"`
	RSSSteady uint64        `json:"rss_steady_bytes"`
	// RSSSteadyAnon is the anonymous part of RSSSteady (heap, stacks, the
	// runtime's own): the rest is the binary's pages, which the lab's
	// weft etcd, running the same file, makes look larger than on a host.
	RSSSteadyAnon uint64 `json:"rss_steady_anon_bytes"`
	// IdleCPU is the weft process's CPU time per second over a quiet
	// window at the steady state (no lease event, nothing polling it):
	// what it costs over time, which a churn's CPU per event includes,
	// spread over the events.
	IdleCPU time.Duration `json:"idle_cpu_per_second_ns"`
	// CheckCPU is what one check of the host's state cost the weft
	// process at the steady state (a /status of every peer for udp, 0
	// for the kernel backends); the churn's CPU leaves out the checks
	// made before the state was correct, at this much each.
	CheckCPU time.Duration `json:"check_cpu_ns"`
	Churn    []Churn       `json:"churn"`
	// Repair is the time from deleting one peer's kernel entries by hand
	// (the route; for vxlan also the neighbour and FDB entry) until they
	// are back (kernel backends).
	Repair time.Duration `json:"repair_ns,omitempty"`
	Join   *Join         `json:"join,omitempty"`
	// Restart is weft stopped and started again after the churn.
	Restart *Restart `json:"restart,omitempty"`
	// With Options.MemoryMax: the cgroup's limit, the most it was
	// charged from start to the end of the churn, and the OOM kills.
	// Error is why the run failed, if it did.
	Error       string `json:"error,omitempty"`
	CgroupLimit int64  `json:"cgroup_limit_bytes,omitempty"`
	CgroupPeak  uint64 `json:"cgroup_peak_bytes,omitempty"`
	OOMKills    uint64 `json:"oom_kills,omitempty"`
}

// leaseType is the Backend.Type of a benchmarked backend.
func leaseType(backend string) string {
	if backend == "uvxlan" {
		return "vxlan"
	}
	return backend
}

func netconf(backend string) string {
	backend = leaseType(backend)
	return fmt.Sprintf(`{"Network":%q,"SubnetLen":%d,"Backend":{"Type":%q}}`, Network, SubnetLen, backend)
}

// Run measures every backend of o in turn, each in labs of its own.
func Run(ctx context.Context, o Options) ([]Result, error) {
	if o.Hosts < 2 || o.Hosts > 60000 {
		return nil, fmt.Errorf("scale: --hosts %d: want 2..60000 (a /8 holds 65,536 /24s, and churn needs spare ones)", o.Hosts)
	}
	if o.Events%2 != 0 || o.Events < 2 {
		return nil, fmt.Errorf("scale: --events %d: want an even number >= 2 (half puts, half deletes)", o.Events)
	}
	if len(o.Binaries) == 0 {
		return nil, errors.New("scale: no weft binary")
	}
	if o.Timeout == 0 {
		o.Timeout = 10 * time.Minute
	}
	if o.Progress == nil {
		o.Progress = func(string) {}
	}
	// A build that fails (a timeout, an OOM kill in a memory cgroup) is a
	// result too: it is recorded and the others still run.
	var out []Result
	var errs []error
	for _, b := range o.Backends {
		for _, bin := range o.Binaries {
			r, err := runBinary(ctx, o, bin, b)
			if err != nil {
				r.Error = err.Error()
				errs = append(errs, err)
				if ctx.Err() != nil {
					return append(out, r), errors.Join(errs...)
				}
			}
			out = append(out, r)
		}
	}
	return out, errors.Join(errs...)
}

func runBinary(ctx context.Context, o Options, bin, b string) (Result, error) {
	o.Binary, o.RunFlags = splitVariant(bin)
	r, err := runSteadyAndChurn(ctx, o, b)
	r.Binary = filepath.Base(o.Binary)
	if len(o.RunFlags) > 0 {
		r.Binary += " " + strings.Join(o.RunFlags, " ")
	}
	if err != nil {
		return r, fmt.Errorf("%s (%s): %w", b, bin, err)
	}
	if o.JoinRate > 0 {
		j, err := runJoin(ctx, o, b)
		if err != nil {
			return r, fmt.Errorf("%s (%s) join: %w", b, bin, err)
		}
		r.Join = &j
	}
	return r, nil
}

// host is one lab with etcd and the real weft host, not yet started.
type host struct {
	o     Options // o.Binary is the one to run
	typ   string
	lab   *lab.Lab
	c     *harness.Cluster
	sim   *sim
	chk   *checker
	run   *lab.Proc
	own   netip.Prefix
	want  map[netip.Prefix]bool
	cg    *memcg.Cgroup // with o.MemoryMax
	peers []int         // simulated peers in the store, oldest first
	next  int           // the next unused simulated id
	// checkCPU is what one check of the state costs the weft process
	// (measureCheckCPU); 0 until measured.
	checkCPU time.Duration
}

func newHost(ctx context.Context, o Options, typ string) (*host, error) {
	l, err := lab.New(lab.Options{Hosts: 1})
	if err != nil {
		return nil, err
	}
	h := &host{o: o, typ: typ, lab: l, c: harness.New(l, o.Binary), want: map[netip.Prefix]bool{}, next: 1}
	if err := h.setup(ctx); err != nil {
		h.close()
		return nil, err
	}
	return h, nil
}

func (h *host) setup(ctx context.Context) error {
	hh := h.lab.Hosts[0]
	own := netip.PrefixFrom(PeerNet.Addr().Next(), PeerNet.Bits())
	if out, err := h.lab.Exec(hh.Name, "ip", "addr", "add", own.String(), "dev", hh.Underlay); err != nil {
		return fmt.Errorf("adding %s to the underlay: %v: %s", own, err, out)
	}
	if err := h.c.StartEtcd(ctx, netconf(h.typ)); err != nil {
		return err
	}
	s, err := newSim(h.lab, leaseType(h.typ))
	if err != nil {
		return err
	}
	h.sim = s
	// weft run gets a binary of its own, out of the page cache: the lab's
	// weft etcd runs the same file, and the kernel maps the cached pages
	// around each one a process touches (fault-around), so on the shared
	// file weft run's RSS would count pages only etcd needs. On a host,
	// weft run is alone with its binary.
	bin, err := memcg.ColdCopy(h.o.Binary, filepath.Join(h.lab.Dir, "weft-run"))
	if err != nil {
		return err
	}
	if h.o.MemoryMax > 0 {
		cg, err := memcg.New(h.o.MemoryMax, fmt.Sprintf("weft-scale-%d-%s", os.Getpid(), filepath.Base(h.lab.Dir)))
		if err != nil {
			return err
		}
		h.cg = cg
		if bin, err = cg.Wrap(bin); err != nil {
			return err
		}
	}
	h.c.Binary = bin
	return nil
}

func (h *host) close() {
	if h.chk != nil {
		h.chk.close()
	}
	if h.sim != nil {
		h.sim.close()
	}
	h.lab.Close()
	if h.cg != nil {
		h.cg.Remove()
	}
}

// flags are weft run's flags beyond the harness's.
func (h *host) flags() []string {
	flags := []string{"--public-ip=" + h.lab.Hosts[0].IP.String(), "--iptables-forward-rules=false"}
	if h.typ == "uvxlan" {
		flags = append(flags, "--no-kernel-vxlan")
	}
	return append(flags, h.o.RunFlags...)
}

// splitVariant splits an entry of Binaries into the binary and the weft
// run flags after it.
func splitVariant(entry string) (string, []string) {
	f := strings.Fields(entry)
	if len(f) == 0 {
		return "", nil
	}
	return f[0], f[1:]
}

// add registers n new simulated peers (not yet written).
func (h *host) add(n int) []int {
	ids := make([]int, 0, n)
	for len(ids) < n {
		i := h.next
		h.next++
		if subnet(i) == h.own {
			continue
		}
		ids = append(ids, i)
		h.peers = append(h.peers, i)
		h.want[subnet(i)] = true
	}
	return ids
}

// start starts weft run and returns when its subnet file is written.
func (h *host) start(ctx context.Context) error {
	hh := h.lab.Hosts[0]
	if err := h.c.StartWeft(hh, h.flags()...); err != nil {
		return err
	}
	h.run = h.c.Runs[0]
	if h.cg != nil {
		if err := h.cg.Join(h.run.Pid()); err != nil {
			return err
		}
	}
	if err := h.c.WaitSubnets(ctx); err != nil {
		return err
	}
	h.own = h.c.Envs[0].Subnet
	chk, err := newChecker(h.typ, hh.Name, harness.DebugSocket(hh))
	if err != nil {
		return err
	}
	h.chk = chk
	return nil
}

// settled is when a host's state was first seen correct, and what
// seeing it cost weft.
type settled struct {
	at time.Time
	// cpu is the weft process's CPU time read just before the check that
	// found the state correct, less what the checks before it cost
	// (checkCPU each), so that a check's cost is not counted as the
	// work checked: for udp, each check is a /status of every peer.
	cpu time.Duration
	mem memory
}

// waitCorrect polls the host's state every 50 ms until it holds exactly
// h.want (or o.Timeout passes).
func (h *host) waitCorrect(ctx context.Context) (settled, error) {
	deadline := time.Now().Add(h.o.Timeout)
	var s settled
	var last string
	pid := h.run.Pid()
	for checks := 0; ; checks++ {
		if h.run.Exited() {
			return s, fmt.Errorf("weft run exited: %v\n%s", h.run.Wait(), h.run.Log())
		}
		s.mem.sample(pid)
		cpu, err := cpuTime(pid)
		if err != nil {
			return s, err
		}
		ok, why, err := h.chk.correct(h.want)
		now := time.Now()
		if err == nil && ok {
			s.at, s.cpu = now, cpu-time.Duration(checks)*h.checkCPU
			return s, nil
		}
		if err != nil {
			why = err.Error()
		}
		if why != last {
			h.o.Progress(fmt.Sprintf("%s: waiting: %s", h.typ, why))
			last = why
		}
		if now.After(deadline) {
			return s, fmt.Errorf("state not correct after %v: %s", h.o.Timeout, why)
		}
		select {
		case <-ctx.Done():
			return s, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// checkRuns is how many checks measureCheckCPU times.
const checkRuns = 10

// measureCheckCPU sets h.checkCPU, what one check of the state costs the
// weft process, from checkRuns checks at the steady state: a /status of
// every peer for udp (the JSON, and the collections it brings on);
// nothing for the kernel backends, whose checks read the kernel from the
// bench's own process.
func (h *host) measureCheckCPU() error {
	h.checkCPU = 0
	if kernelBackend(h.typ) {
		return nil
	}
	pid := h.run.Pid()
	cpu0, err := cpuTime(pid)
	if err != nil {
		return err
	}
	for range checkRuns {
		if _, _, err := h.chk.correct(h.want); err != nil {
			return err
		}
	}
	cpu1, err := cpuTime(pid)
	if err != nil {
		return err
	}
	h.checkCPU = (cpu1 - cpu0) / checkRuns
	return nil
}

// runSteadyAndChurn writes N-1 peers, starts weft, measures the time to the
// full state, then each churn rate.
func runSteadyAndChurn(ctx context.Context, o Options, typ string) (Result, error) {
	r := Result{Backend: typ, N: o.Hosts}
	h, err := newHost(ctx, o, typ)
	if err != nil {
		return r, err
	}
	defer h.close()
	o.Progress(fmt.Sprintf("%s: writing %d simulated peers", typ, o.Hosts-1))
	// The real host's subnet is not known before it starts: it takes a
	// free one, so none of these.
	if err := h.sim.putAll(ctx, h.add(o.Hosts-1)); err != nil {
		return r, err
	}
	o.Progress(fmt.Sprintf("%s: starting weft", typ))
	t0 := time.Now()
	if err := h.start(ctx); err != nil {
		return r, err
	}
	s, err := h.waitCorrect(ctx)
	if err != nil {
		return r, err
	}
	r.Start = s.at.Sub(t0)
	// Settle: the first periodic pass, then read the steady RSS.
	time.Sleep(6 * time.Second)
	if r.RSSSteady, err = rss(h.run.Pid()); err != nil {
		return r, err
	}
	r.RSSSteadyAnon, _ = rssAnon(h.run.Pid())
	if err := h.saveHeap("steady"); err != nil {
		return r, err
	}
	if r.IdleCPU, err = h.idle(idleWindow); err != nil {
		return r, err
	}
	if err := h.measureCheckCPU(); err != nil {
		return r, err
	}
	r.CheckCPU = h.checkCPU
	for _, rate := range o.Rates {
		o.Progress(fmt.Sprintf("%s: churn of %d events at %d/s", typ, o.Events, rate))
		c, err := h.churn(ctx, rate)
		if err != nil {
			return r, err
		}
		r.Churn = append(r.Churn, c)
		time.Sleep(time.Second)
	}
	if err := h.saveHeap("churn"); err != nil {
		return r, err
	}
	if h.cg != nil {
		r.CgroupLimit = h.o.MemoryMax
		r.CgroupPeak, r.OOMKills = h.cg.Peak()
	}
	if kernelBackend(typ) {
		o.Progress(fmt.Sprintf("%s: deleting a peer's kernel entries by hand", typ))
		t0 := time.Now()
		if err := h.chk.deleteOne(subnet(h.peers[len(h.peers)/2])); err != nil {
			return r, err
		}
		s, err := h.waitCorrect(ctx)
		if err != nil {
			return r, fmt.Errorf("repair: %w", err)
		}
		r.Repair = s.at.Sub(t0)
	}
	o.Progress(fmt.Sprintf("%s: restarting weft", typ))
	rs, err := h.restart(ctx)
	if err != nil {
		return r, fmt.Errorf("restart: %w", err)
	}
	r.Restart = &rs
	return r, nil
}

// churn alternates a put of a new peer with a delete of the oldest.
func (h *host) churn(ctx context.Context, rate int) (Churn, error) {
	c := Churn{Rate: rate, Events: h.o.Events}
	evs := make([]event, 0, h.o.Events)
	for len(evs) < h.o.Events {
		id := h.add(1)[0]
		evs = append(evs, event{id: id})
		old := h.peers[0]
		h.peers = h.peers[1:]
		delete(h.want, subnet(old))
		evs = append(evs, event{id: old, del: true})
	}
	pid := h.run.Pid()
	// The profile covers the events and a second after them; it is saved
	// once the CPU is read, so writing it is not counted.
	profiled := h.cpuProfile(fmt.Sprintf("churn%d", rate), time.Duration(len(evs))*time.Second/time.Duration(rate)+time.Second)
	cpu0, err := cpuTime(pid)
	if err != nil {
		return c, err
	}
	stop := sampleRSS(pid)
	err = h.sim.paced(ctx, evs, rate)
	last := time.Now()
	maxRSS := stop()
	if err != nil {
		return c, err
	}
	s, err := h.waitCorrect(ctx)
	if err != nil {
		return c, err
	}
	if err := profiled(); err != nil {
		return c, err
	}
	c.After = s.at.Sub(last)
	// max: where the checks' estimate overshoots what a tiny churn cost.
	c.CPUPerEvent = max(s.cpu-cpu0, 0) / time.Duration(len(evs))
	maxRSS.add(s.mem)
	c.RSSMax, c.RSSMaxAnon = maxRSS.rss, maxRSS.anon
	return c, nil
}

// runJoin starts weft alone, then writes N-1 peers one put each at
// o.JoinRate.
func runJoin(ctx context.Context, o Options, typ string) (Join, error) {
	j := Join{Rate: o.JoinRate, Puts: o.Hosts - 1}
	h, err := newHost(ctx, o, typ)
	if err != nil {
		return j, err
	}
	defer h.close()
	if err := h.start(ctx); err != nil {
		return j, err
	}
	if _, err := h.waitCorrect(ctx); err != nil {
		return j, err
	}
	if err := h.measureCheckCPU(); err != nil {
		return j, err
	}
	o.Progress(fmt.Sprintf("%s: %d hosts join, %d/s", typ, o.Hosts-1, o.JoinRate))
	ids := h.add(o.Hosts - 1)
	evs := make([]event, len(ids))
	for k, id := range ids {
		evs[k] = event{id: id}
	}
	pid := h.run.Pid()
	cpu0, err := cpuTime(pid)
	if err != nil {
		return j, err
	}
	t0 := time.Now()
	stop := sampleRSS(pid)
	err = h.sim.paced(ctx, evs, o.JoinRate)
	last := time.Now()
	maxRSS := stop()
	if err != nil {
		return j, err
	}
	j.PutTime = last.Sub(t0)
	s, err := h.waitCorrect(ctx)
	if err != nil {
		return j, err
	}
	maxRSS.add(s.mem)
	j.After, j.CPU, j.RSSMax = s.at.Sub(last), max(s.cpu-cpu0, 0), maxRSS.rss
	return j, nil
}

// Binaries returns the weft binaries to run: the comma-separated entries
// of list, or this executable. An entry is a path, optionally followed by
// weft run flags for that variant ("bin/weft --route-nexthops"), so one
// binary with and without a flag compares interleaved.
func Binaries(list string) ([]string, error) {
	if list == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, errors.New("finding the weft binary: " + err.Error())
		}
		return []string{exe}, nil
	}
	var out []string
	for _, e := range strings.Split(list, ",") {
		p, flags := splitVariant(e)
		abs, err := filepath.Abs(p)
		if err != nil {
			return nil, err
		}
		if _, err := os.Stat(abs); err != nil {
			return nil, err
		}
		out = append(out, strings.Join(append([]string{abs}, flags...), " "))
	}
	return out, nil
}

// sampleRSS samples pid's memory every 20 ms until the returned function
// is called, which returns the most seen.
func sampleRSS(pid int) func() memory {
	stop := make(chan struct{})
	sampled := make(chan memory)
	go func() {
		var m memory
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			m.sample(pid)
			select {
			case <-stop:
				sampled <- m
				return
			case <-t.C:
			}
		}
	}()
	return func() memory { close(stop); return <-sampled }
}

// idleWindow is how long the quiet window of Result.IdleCPU lasts.
const idleWindow = 5 * time.Second

// idle measures the weft process's CPU per second over d with no event and
// no poll of its state.
func (h *host) idle(d time.Duration) (time.Duration, error) {
	profiled := h.cpuProfile("idle", d)
	pid := h.run.Pid()
	cpu0, err := cpuTime(pid)
	if err != nil {
		return 0, err
	}
	t0 := time.Now()
	time.Sleep(d)
	cpu1, err := cpuTime(pid)
	if err != nil {
		return 0, err
	}
	el := time.Since(t0)
	if err := profiled(); err != nil {
		return 0, err
	}
	return time.Duration(float64(cpu1-cpu0) / el.Seconds()), nil
}

// cpuProfile starts a CPU profile of the weft process over about d (when
// o.CPUProfileDir is set); the returned function waits for it and saves it
// as <binary>-<backend>-<N>-<when>.cpu.pb.gz.
func (h *host) cpuProfile(when string, d time.Duration) func() error {
	if h.o.CPUProfileDir == "" {
		return func() error { return nil }
	}
	secs := int((d + time.Second - 1) / time.Second)
	done := make(chan error, 1)
	go func() {
		hc, base, where := h.chk.status.HTTP(time.Duration(secs)*time.Second + 10*time.Second)
		resp, err := hc.Get(fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", base, secs))
		if err != nil {
			done <- fmt.Errorf("cpu profile: %w", daemon.ReachError(where, err))
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err == nil && resp.StatusCode != http.StatusOK {
			err = fmt.Errorf("%s: %s", resp.Status, b)
		}
		if err != nil {
			done <- fmt.Errorf("cpu profile: %w", err)
			return
		}
		name := fmt.Sprintf("%s-%s-%d-%s.cpu.pb.gz", filepath.Base(h.o.Binary)+strings.Join(h.o.RunFlags, ""), h.typ, h.o.Hosts, when)
		done <- os.WriteFile(filepath.Join(h.o.CPUProfileDir, name), b, 0o644)
	}()
	// The profile starts when the request is served: give it that moment.
	time.Sleep(50 * time.Millisecond)
	return func() error { return <-done }
}

// saveHeap writes the weft process's heap profile to o.ProfileDir (when
// set), named by binary, backend, N and when.
func (h *host) saveHeap(when string) error {
	if h.o.ProfileDir == "" {
		return nil
	}
	b, err := h.chk.status.Get("/debug/pprof/heap")
	if err != nil {
		return fmt.Errorf("heap profile: %v", err)
	}
	name := fmt.Sprintf("%s-%s-%d-%s.heap.pb.gz", filepath.Base(h.o.Binary)+strings.Join(h.o.RunFlags, ""), h.typ, h.o.Hosts, when)
	return os.WriteFile(filepath.Join(h.o.ProfileDir, name), b, 0o644)
}
