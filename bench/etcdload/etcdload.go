// Package etcdload measures what a cluster's hosts cost etcd (issue 19):
// `weft bench --etcd-load`. N simulated hosts in this process, each a
// lease/etcdstore.Store of its own and so a connection of its own, make a
// weft host's requests against a real `weft etcd` on a free loopback
// port: Config, Acquire, Keep (its etcd lease, renewed with
// KeepAliveOnce, and the watch of its own key) and WatchChanges' listing
// and prefix watch (through Store.Follow, which makes the same calls and
// keeps no leases). The figures are the etcd process's: CPU time and
// VmRSS from /proc, its own /metrics (watch streams, watchers, messages
// per gRPC method, lease renewals) and its connections' TCP counters
// (sock_diag, as ss reads them).
//
// Phases: N leases are written first, as if the hosts had joined earlier;
// then the start storm, every host starting at once (a cluster restarted,
// or etcd's hosts all rebooted): until each has listed and an event
// written after reaches all of them; then N hosts idle; then single lease
// events fanned out to all N watchers, one at a time; then a churn of
// joins and leaves at a rate.
package etcdload

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/procfs"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/lease/etcdstore"
)

// Options configure Run. A phase with no events (or no idle window) is
// left out; `weft bench --etcd-load` sets the defaults.
type Options struct {
	Binary        string        // the weft binary that serves `weft etcd`
	Hosts         int           // N
	FanOutEvents  int           // events fanned out one at a time (50)
	ChurnRate     int           // events per second of the churn (50)
	ChurnDuration time.Duration // (20 s)
	// Idle is the window etcd is measured alone (the leases, no host)
	// and then with the N hosts idle (60 s). Without it, CPU per event
	// includes etcd's upkeep.
	Idle time.Duration
	// StartParallel, when set, lets this many hosts be in their start
	// (from Config until their listing arrived) at a time, the others
	// waiting; 0 starts all at once. One process stands in for all the
	// hosts: the hosts' own work (parsing N leases' JSON in Acquire,
	// decoding two listings of N keys and N re-puts) on this machine's
	// cores would otherwise hold up their requests past etcdstore's 10 s
	// timeout, which real hosts, each on its own CPU, do not.
	StartParallel int
	// ConcurrentJoins lets the churn's joins reach etcd as they are
	// due, racing each other as hosts joining at once do (etcdstore's
	// claim fails when any lease was created since the joining host's
	// listing, so of concurrent joins one wins per round). By default
	// they go one at a time, so the churn is its events' fan-out.
	ConcurrentJoins bool
	// RenewEvery, when set, has the hosts renew their etcd leases this
	// often (TTL twice it, renew margin it), to measure renewals at a
	// rate where they show; weft's default is a 24 h TTL renewed 60 min
	// before it runs out.
	RenewEvery time.Duration
	// Timeout bounds each wait for the hosts (default 10 min).
	Timeout  time.Duration
	Progress func(string)
}

func (o *Options) defaults() error {
	if o.Timeout == 0 {
		o.Timeout = 10 * time.Minute
	}
	if o.Progress == nil {
		o.Progress = func(string) {}
	}
	if o.Binary == "" {
		return errors.New("etcd load: no weft binary")
	}
	if o.Hosts < 1 || o.Hosts+1+o.FanOutEvents+o.churnEvents() > maxSubnet {
		return fmt.Errorf("etcd load: %d hosts and %d joining: the /8 of /24s holds %d", o.Hosts, 1+o.FanOutEvents+o.churnEvents(), maxSubnet)
	}
	if o.FanOutEvents < 0 || o.ChurnRate < 0 || o.ChurnDuration < 0 || o.Idle < 0 {
		return errors.New("etcd load: negative event count, rate or duration")
	}
	if o.RenewEvery != 0 && o.RenewEvery < 2*time.Second {
		return fmt.Errorf("etcd load: renewing every %s: etcd's shortest TTL is about 2 s", o.RenewEvery)
	}
	return nil
}

func (o *Options) churnEvents() int { return int(float64(o.ChurnRate) * o.ChurnDuration.Seconds()) }

// ttl is the hosts' etcd lease TTL and their renew margin.
func (o *Options) ttl() (ttl, margin time.Duration) {
	if o.RenewEvery != 0 {
		return 2 * o.RenewEvery, o.RenewEvery
	}
	return etcdstore.DefaultLeaseTTL, etcdstore.DefaultRenewMargin
}

// Result is one run's figures.
type Result struct {
	Hosts int `json:"hosts"`
	// TTL and RenewEvery are the hosts' etcd leases': weft renews a lease
	// its margin before it runs out (lease/etcdstore/keep.go, renewAt).
	TTL        time.Duration `json:"lease_ttl_ns"`
	RenewEvery time.Duration `json:"renew_every_ns"`
	// RenewalsPerSecond is what that makes N hosts send etcd.
	RenewalsPerSecond float64 `json:"renewals_per_second_by_design"`
	Alone             Alone   `json:"etcd_alone"`
	Storm             Storm   `json:"start_storm"`
	Idle              Idle    `json:"idle"`
	FanOut            FanOut  `json:"fan_out"`
	Churn             *Churn  `json:"churn,omitempty"`
	// ServerRSSPeak is the etcd process's VmHWM at the end.
	ServerRSSPeak uint64 `json:"server_rss_peak_bytes"`
	// Warnings counts what the hosts logged at Warn or above (retries,
	// watches lost), with the first few lines.
	Warnings     int64    `json:"host_warnings"`
	WarningLines []string `json:"host_warning_lines,omitempty"`
}

// Alone is etcd holding the N leases with no host connected, over the
// idle window: its own upkeep, which Idle includes.
type Alone struct {
	Window    time.Duration `json:"window_ns"`
	ServerCPU time.Duration `json:"server_cpu_ns"`
	ServerRSS uint64        `json:"server_rss_bytes"`
}

// Storm is every host starting at once.
type Storm struct {
	// Listed: until every host had acquired its lease and listed all.
	Listed time.Duration `json:"all_listed_ns"`
	// Settled: until an event written after that reached every host (so
	// every watch was made and had caught up).
	Settled time.Duration `json:"settled_ns"`
	// A host's Acquire (median, max), and its start until its listing
	// arrived (median; the max is Listed).
	AcquireMedian    time.Duration `json:"acquire_median_ns"`
	AcquireMax       time.Duration `json:"acquire_max_ns"`
	HostListedMedian time.Duration `json:"host_listed_median_ns"`
	ServerCPU        time.Duration `json:"server_cpu_ns"`
	ServerSys        time.Duration `json:"server_system_cpu_ns"`
	ServerRSS        uint64        `json:"server_rss_max_bytes"`
	ClientCPU        time.Duration `json:"client_cpu_ns"`
	KeysListed       int64         `json:"keys_listed"`
	// Events is the watch events the hosts received: each host's re-put
	// of its lease, sent to every host watching by then.
	Events   int64              `json:"events_received"`
	BytesIn  float64            `json:"server_grpc_bytes_received"`
	BytesOut float64            `json:"server_grpc_bytes_sent"`
	Requests map[string]float64 `json:"requests_by_method"`
}

// Idle is N hosts connected, watching and holding their leases.
type Idle struct {
	Window     time.Duration `json:"window_ns"`
	ServerCPU  time.Duration `json:"server_cpu_ns"`
	ServerSys  time.Duration `json:"server_system_cpu_ns"`
	ServerRSS  uint64        `json:"server_rss_bytes"`
	ServerAnon uint64        `json:"server_rss_anon_bytes"`
	// Of etcd's memory: its Go heap in use and goroutine stacks, and
	// its goroutines (etcd's /metrics).
	HeapInuse    float64 `json:"server_heap_inuse_bytes"`
	StackInuse   float64 `json:"server_stack_inuse_bytes"`
	Goroutines   float64 `json:"server_goroutines"`
	WatchStreams float64 `json:"watch_streams"`
	Watchers     float64 `json:"watchers"`
	Conns        int     `json:"server_connections"`
	// Requests is the gRPC messages the server received per second, by
	// method; Renewals the leases it renewed per second (its counter).
	Requests map[string]float64 `json:"requests_per_second_by_method"`
	Renewals float64            `json:"renewals_per_second"`
	// SegsIn is the TCP segments with data the server received per
	// second over the hosts' connections (HTTP/2 pings included, which
	// no etcd metric counts), SegsOut those it sent.
	SegsIn  float64 `json:"data_segments_in_per_second"`
	SegsOut float64 `json:"segments_out_per_second"`
}

// CPUPerMinute is the etcd process's CPU time per minute of idle.
func (i Idle) CPUPerMinute() time.Duration { return perMinute(i.ServerCPU, i.Window) }

// CPUPerMinute is the etcd process's CPU time per minute alone.
func (a Alone) CPUPerMinute() time.Duration { return perMinute(a.ServerCPU, a.Window) }

func perMinute(cpu, window time.Duration) time.Duration {
	if window <= 0 {
		return 0
	}
	return time.Duration(float64(cpu) * float64(time.Minute) / float64(window))
}

// FanOut is single events, one at a time, each until every host has it.
type FanOut struct {
	Events int `json:"events"`
	// All is the time from an event's write request until the last host
	// received it, First until the first did: median and max over events.
	AllMedian   time.Duration `json:"all_hosts_median_ns"`
	AllMax      time.Duration `json:"all_hosts_max_ns"`
	FirstMedian time.Duration `json:"first_host_median_ns"`
	// SpreadMedian is the median of last minus first: the fan-out itself,
	// without the write's commit (etcd's WAL fsync) that both include.
	SpreadMedian time.Duration `json:"spread_median_ns"`
	// CPUPerEvent is the server's CPU over the phase less the idle rate,
	// per event.
	CPUPerEvent time.Duration `json:"server_cpu_per_event_ns"`
	// SysShare is the system time's share of the server's CPU.
	SysShare  float64       `json:"server_system_share"`
	ClientCPU time.Duration `json:"client_cpu_ns"`
}

// Churn is joins and leaves at a rate.
type Churn struct {
	Rate     int           `json:"rate"`
	Events   int           `json:"events"`
	Duration time.Duration `json:"duration_ns"`
	// ServerCPU is from the first write until every host had every
	// event; CPUPerEvent that less the idle rate, per event.
	ServerCPU   time.Duration `json:"server_cpu_ns"`
	ServerSys   time.Duration `json:"server_system_cpu_ns"`
	CPUPerEvent time.Duration `json:"server_cpu_per_event_ns"`
	// After is from the last event's write until every host had every
	// event.
	After     time.Duration `json:"all_hosts_after_last_ns"`
	AllMedian time.Duration `json:"all_hosts_median_ns"`
	AllMax    time.Duration `json:"all_hosts_max_ns"`
	ServerRSS uint64        `json:"server_rss_max_bytes"`
	ClientCPU time.Duration `json:"client_cpu_ns"`
	// LostClaims is the joins' claims that lost to a join at the same
	// time and were made again (each one more Txn).
	LostClaims int64 `json:"lost_claims"`
}

// prefix is weft's (flanneld's) default etcd prefix.
const prefix = etcdstore.DefaultPrefix

// Run starts `weft etcd`, runs the phases and stops it.
func Run(ctx context.Context, o Options) (*Result, error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	if err := raiseNoFile(uint64(o.Hosts) + 1024); err != nil {
		return nil, err
	}
	srv, err := startServer(ctx, o.Binary, netconf)
	if err != nil {
		return nil, err
	}
	defer srv.close()
	o.Progress(fmt.Sprintf("weft etcd (pid %d) serves %s", srv.cmd.Process.Pid, srv.endpoint))
	r := &run{o: o, srv: srv, res: &Result{Hosts: o.Hosts}}
	defer r.close()
	if err := r.setup(ctx); err != nil {
		return nil, err
	}
	for _, phase := range []func(context.Context) error{r.baseline, r.storm, r.idle, r.fanOut, r.churn} {
		if err := phase(ctx); err != nil {
			return r.res, err
		}
		if err := srv.alive(); err != nil {
			return r.res, err
		}
	}
	if u, err := procUsage(srv.proc); err == nil {
		r.res.ServerRSSPeak = u.hwm
	}
	r.res.Warnings, r.res.WarningLines = r.fl.warn.n.Load(), r.fl.warn.lines()
	return r.res, nil
}

// run is one Run's state.
type run struct {
	o         Options
	srv       *server
	res       *Result
	cli       *clientv3.Client // the driver's
	d         *driver
	tr        *tracker
	fl        *fleet
	peak      *rssPeak
	self      procfs.Proc
	stopHosts context.CancelFunc
	idleRate  float64 // server CPU seconds per second, idle
}

func (r *run) close() {
	if r.stopHosts != nil {
		r.stopHosts()
	}
	if r.fl != nil {
		r.fl.close()
	}
	if r.cli != nil {
		r.cli.Close()
	}
	if r.peak != nil {
		close(r.peak.stop)
	}
}

func (r *run) setup(ctx context.Context) error {
	o := r.o
	var err error
	if r.self, err = procfs.Self(); err != nil {
		return err
	}
	r.cli, err = clientv3.New(clientv3.Config{Endpoints: []string{r.srv.endpoint}, DialTimeout: 10 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return err
	}
	ttl, margin := o.ttl()
	renew := ttl - margin
	if margin >= ttl {
		renew = ttl / 2
	}
	r.res.TTL, r.res.RenewEvery = ttl, renew
	r.res.RenewalsPerSecond = float64(o.Hosts) / renew.Seconds()
	dir := prefix + "/subnets/"
	t := time.Now()
	// As if the hosts had joined earlier, with weft's TTL: a short one
	// (RenewEvery) would run out before they start.
	if err := prefill(ctx, r.cli, dir, o.Hosts, etcdstore.DefaultLeaseTTL); err != nil {
		return err
	}
	o.Progress(fmt.Sprintf("%d leases written in %.1f s", o.Hosts, time.Since(t).Seconds()))
	g, err := r.cli.Get(ctx, dir, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return err
	}
	if g.Count != int64(o.Hosts) {
		return fmt.Errorf("etcd holds %d leases, want %d", g.Count, o.Hosts)
	}
	// The joining hosts' leases are not renewed: weft's TTL keeps them
	// until their leave.
	r.d = newDriver(r.cli, dir, etcdstore.DefaultLeaseTTL, o.Hosts+1, o.ConcurrentJoins)
	r.d.seen(g.Header.Revision)
	// One slot per write of the driver (the marker, the events), and a few
	// for writes of others (a host reclaiming its lease).
	r.tr = newTracker(1 + o.FanOutEvents + o.churnEvents() + 16)
	r.fl = &fleet{tr: r.tr, hosts: make([]*host, o.Hosts), warn: &warnings{}, err: make(chan error, 1),
		opts: etcdstore.Options{Endpoints: []string{r.srv.endpoint}, Prefix: prefix, TTL: ttl, RenewMargin: margin}}
	r.fl.opts.Logger = slog.New(r.fl.warn)
	r.peak = sampleRSS(r.srv.proc)
	return nil
}

// snapshot is the server's and this process's figures at one moment.
type snapshot struct {
	at     time.Time
	server usage
	client usage
	m      metrics
}

func (r *run) snap(ctx context.Context) (snapshot, error) {
	s := snapshot{at: time.Now()}
	var err error
	if s.server, err = procUsage(r.srv.proc); err != nil {
		return s, err
	}
	if s.client, err = procUsage(r.self); err != nil {
		return s, err
	}
	s.m, err = r.srv.metrics(ctx)
	return s, err
}

// waitUntil polls cond every 2 ms until it holds, a host gives up, etcd
// exits or the timeout passes.
func (r *run) waitUntil(ctx context.Context, what string, cond func() bool) error {
	deadline := time.Now().Add(r.o.Timeout)
	for !cond() {
		select {
		case err := <-r.fl.err:
			return err
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not after %s", what, r.o.Timeout)
		}
		if err := r.srv.alive(); err != nil {
			return err
		}
	}
	return nil
}

// reached waits until every host has received w, and returns when the
// first and the last did.
func (r *run) reached(ctx context.Context, w write) (first, last time.Duration, err error) {
	s := r.tr.at(w.rev)
	if s == nil {
		return 0, 0, fmt.Errorf("revision %d outside the measured range", w.rev)
	}
	n := int64(r.o.Hosts)
	if err := r.waitUntil(ctx, fmt.Sprintf("revision %d at every host", w.rev), func() bool { return s.hosts.Load() >= n }); err != nil {
		return 0, 0, fmt.Errorf("%w (%d of %d hosts have it)", err, s.hosts.Load(), n)
	}
	return r.tr.time(s.first.Load()).Sub(w.at), r.tr.time(s.last.Load()).Sub(w.at), nil
}

func (r *run) storm(ctx context.Context) error {
	o := r.o
	hctx, cancel := context.WithCancel(ctx)
	r.stopHosts = cancel
	r.peak.reset()
	s0, err := r.snap(ctx)
	if err != nil {
		return err
	}
	if o.StartParallel > 0 {
		r.fl.slots = make(chan struct{}, o.StartParallel)
		o.Progress(fmt.Sprintf("start storm: %d hosts start, %d at a time", o.Hosts, o.StartParallel))
	} else {
		o.Progress(fmt.Sprintf("start storm: %d hosts start at once", o.Hosts))
	}
	errc := make(chan error, o.Hosts)
	for i := 1; i <= o.Hosts; i++ {
		go func() { errc <- r.fl.start(hctx, i) }()
	}
	var first error
	for range o.Hosts {
		if err := <-errc; err != nil && first == nil {
			first = err
			cancel() // the others give up too
		}
	}
	if first != nil {
		return first
	}
	n := int64(o.Hosts)
	if err := r.waitUntil(ctx, "every host listing the leases", func() bool { return r.fl.listed.Load() >= n }); err != nil {
		return fmt.Errorf("%w (%d of %d listed)", err, r.fl.listed.Load(), n)
	}
	st := &r.res.Storm
	st.Listed = time.Since(s0.at)
	o.Progress(fmt.Sprintf("start storm: every host listed after %.2f s", st.Listed.Seconds()))
	// The hosts' re-puts moved the revision on: measure from now.
	g, err := r.cli.Get(ctx, "x", clientv3.WithCountOnly())
	if err != nil {
		return err
	}
	r.d.seen(g.Header.Revision)
	r.tr.base.Store(g.Header.Revision + 1)
	w, err := r.d.join(ctx)
	if err != nil {
		return err
	}
	if _, _, err := r.reached(ctx, w); err != nil {
		return fmt.Errorf("start storm: %w", err)
	}
	s1, err := r.snap(ctx)
	if err != nil {
		return err
	}
	st.Settled = s1.at.Sub(s0.at)
	st.ServerCPU = s1.server.cpu - s0.server.cpu
	st.ServerSys = s1.server.sys - s0.server.sys
	st.ClientCPU = s1.client.cpu - s0.client.cpu
	st.ServerRSS = r.peak.reset()
	st.KeysListed = r.fl.keysListed.Load()
	var acq, listed []time.Duration
	for _, h := range r.fl.hosts {
		acq, listed = append(acq, h.acquired), append(listed, time.Duration(h.listedAfter.Load()))
	}
	st.AcquireMedian, st.AcquireMax = median(acq), slices.Max(acq)
	st.HostListedMedian = median(listed)
	st.Events = r.tr.events.Load()
	st.BytesIn = s1.m[mBytesIn] - s0.m[mBytesIn]
	st.BytesOut = s1.m[mBytesOut] - s0.m[mBytesOut]
	st.Requests = requestsPerSecond(s0.m, s1.m, time.Second) // counts: per 1 s
	o.Progress(fmt.Sprintf("start storm: settled after %.2f s, etcd CPU %.2f s", st.Settled.Seconds(), st.ServerCPU.Seconds()))
	return nil
}

// baseline is etcd with the leases and no host: what it spends on its own.
func (r *run) baseline(ctx context.Context) error {
	if r.o.Idle == 0 {
		return nil
	}
	r.o.Progress(fmt.Sprintf("etcd alone: %s", r.o.Idle))
	s0, err := r.snap(ctx)
	if err != nil {
		return err
	}
	select {
	case <-time.After(r.o.Idle):
	case <-ctx.Done():
		return ctx.Err()
	}
	s1, err := r.snap(ctx)
	if err != nil {
		return err
	}
	r.res.Alone = Alone{Window: s1.at.Sub(s0.at), ServerCPU: s1.server.cpu - s0.server.cpu, ServerRSS: s1.server.rss}
	return nil
}

func (r *run) idle(ctx context.Context) error {
	o := r.o
	if o.Idle == 0 {
		return nil
	}
	o.Progress(fmt.Sprintf("idle: %s", o.Idle))
	r.peak.reset()
	s0, err := r.snap(ctx)
	if err != nil {
		return err
	}
	t0, err := r.srv.tcp()
	if err != nil {
		return err
	}
	select {
	case <-time.After(o.Idle):
	case err := <-r.fl.err:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
	s1, err := r.snap(ctx)
	if err != nil {
		return err
	}
	t1, err := r.srv.tcp()
	if err != nil {
		return err
	}
	anon := uint64(0)
	if ps, err := r.srv.proc.NewStatus(); err == nil {
		anon = ps.RssAnon
	}
	d := s1.at.Sub(s0.at)
	in, out := segsPerSecond(t0, t1, d)
	r.res.Idle = Idle{Window: d, ServerCPU: s1.server.cpu - s0.server.cpu, ServerSys: s1.server.sys - s0.server.sys,
		ServerRSS: s1.server.rss, ServerAnon: anon,
		HeapInuse: s1.m[mHeapInuse], StackInuse: s1.m[mStackInuse], Goroutines: s1.m[mGoroutines],
		WatchStreams: s1.m[mWatchStreams], Watchers: s1.m[mWatchers], Conns: t1.conns,
		Requests: requestsPerSecond(s0.m, s1.m, d), Renewals: (s1.m[mRenewed] - s0.m[mRenewed]) / d.Seconds(),
		SegsIn: in, SegsOut: out}
	r.idleRate = r.res.Idle.ServerCPU.Seconds() / d.Seconds()
	return nil
}

// lessIdle is cpu less what the server spends idle over d.
func (r *run) lessIdle(cpu, d time.Duration) time.Duration {
	return cpu - time.Duration(r.idleRate*float64(d))
}

func (r *run) fanOut(ctx context.Context) error {
	o := r.o
	if o.FanOutEvents == 0 {
		return nil
	}
	o.Progress(fmt.Sprintf("fan-out: %d events, one at a time", o.FanOutEvents))
	s0, err := r.snap(ctx)
	if err != nil {
		return err
	}
	var all, first, spread []time.Duration
	for k := range o.FanOutEvents {
		// A leave first: the storm's marker is the first join.
		w, err := r.d.event(ctx, k+1)
		if err != nil {
			return err
		}
		f, l, err := r.reached(ctx, w)
		if err != nil {
			return fmt.Errorf("fan-out: %w", err)
		}
		first, all, spread = append(first, f), append(all, l), append(spread, l-f)
		time.Sleep(50 * time.Millisecond) // so events do not overlap
	}
	s1, err := r.snap(ctx)
	if err != nil {
		return err
	}
	r.res.FanOut = FanOut{Events: o.FanOutEvents, AllMedian: median(all), AllMax: slices.Max(all), FirstMedian: median(first),
		SpreadMedian: median(spread),
		CPUPerEvent:  r.lessIdle(s1.server.cpu-s0.server.cpu, s1.at.Sub(s0.at)) / time.Duration(o.FanOutEvents),
		SysShare:     share(s1.server.sys-s0.server.sys, s1.server.cpu-s0.server.cpu),
		ClientCPU:    s1.client.cpu - s0.client.cpu}
	return nil
}

func share(part, whole time.Duration) float64 {
	if whole <= 0 {
		return 0
	}
	return float64(part) / float64(whole)
}

func (r *run) churn(ctx context.Context) error {
	o := r.o
	n := o.churnEvents()
	if n == 0 {
		return nil
	}
	o.Progress(fmt.Sprintf("churn: %d events at %d/s", n, o.ChurnRate))
	r.peak.reset()
	s0, err := r.snap(ctx)
	if err != nil {
		return err
	}
	lost0 := r.d.lost.Load()
	writes := make([]write, n)
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	// A failed join would leave a leave waiting for it: the first error
	// ends the churn.
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for k := range n {
		if d := time.Until(s0.at.Add(time.Duration(k) * time.Second / time.Duration(o.ChurnRate))); d > 0 {
			time.Sleep(d)
		}
		if cctx.Err() != nil {
			break
		}
		wg.Go(func() {
			w, err := r.d.event(cctx, k)
			if err != nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("event %d: %w", k, err))
				mu.Unlock()
				cancel()
			}
			writes[k] = w
		})
	}
	wg.Wait()
	if len(errs) > 0 {
		return fmt.Errorf("churn: %d of %d events failed, first: %w", len(errs), n, errs[0])
	}
	var all []time.Duration
	lastAt, lastWrite := time.Time{}, time.Time{}
	for _, w := range writes {
		_, l, err := r.reached(ctx, w)
		if err != nil {
			return fmt.Errorf("churn: %w", err)
		}
		all = append(all, l)
		lastAt = later(lastAt, w.at.Add(l))
		lastWrite = later(lastWrite, w.at)
	}
	s1, err := r.snap(ctx)
	if err != nil {
		return err
	}
	c := &Churn{Rate: o.ChurnRate, Events: n, Duration: lastWrite.Sub(s0.at), After: lastAt.Sub(lastWrite),
		ServerCPU: s1.server.cpu - s0.server.cpu, ServerSys: s1.server.sys - s0.server.sys, AllMedian: median(all), AllMax: slices.Max(all),
		ServerRSS: r.peak.reset(), ClientCPU: s1.client.cpu - s0.client.cpu, LostClaims: r.d.lost.Load() - lost0}
	c.CPUPerEvent = r.lessIdle(c.ServerCPU, s1.at.Sub(s0.at)) / time.Duration(n)
	r.res.Churn = c
	return nil
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}

// raiseNoFile lets this process hold want descriptors: one connection per
// simulated host. Go raises the soft limit to the hard one at start; the
// hard one is raised too where allowed (root).
func raiseNoFile(want uint64) error {
	var l unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &l); err != nil {
		return err
	}
	if l.Cur >= want {
		return nil
	}
	n := l
	n.Cur = want
	n.Max = max(l.Max, want)
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &n); err != nil {
		return fmt.Errorf("etcd load: %d hosts need %d file descriptors, the limit is %d (hard %d), and raising it failed: %w",
			want-1024, want, l.Cur, l.Max, err)
	}
	return nil
}
