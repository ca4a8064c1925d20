package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/weft-net/weft/bench/harness"
	"github.com/weft-net/weft/bench/lab"
	"github.com/weft-net/weft/bench/lab/labtest"
	"github.com/weft-net/weft/daemon"
)

// The fault tests (issue 9) share this lab: `weft etcd` as a process in
// the switch namespace (so it can be stopped and killed like a real one),
// `weft run` on every host, and a client of the lab's etcd for the test.

// soak reports whether the long versions run (make soak); CI runs the
// short ones.
func soak() bool { return os.Getenv("WEFT_SOAK") == "1" }

// soakDuration is short in CI and long under make soak.
func soakDuration(ci, long time.Duration) time.Duration {
	if soak() {
		return long
	}
	return ci
}

// figure logs a measured figure in a form bench/soak/soak.sh collects into
// docs/reliability.md. Figures are reported, never asserted.
func figure(t *testing.T, format string, args ...any) {
	t.Helper()
	t.Logf("FIGURE %s: %s", t.Name(), fmt.Sprintf(format, args...))
}

// udpNetconf leases hosts below 10.8.128.0: the tests' made-up leases,
// spoofed sources and foreign destinations are above, so they can never
// be a real host's.
const udpNetconf = `{"Network":"10.8.0.0/16","SubnetLen":24,"SubnetMax":"10.8.127.0","Backend":{"Type":"udp"}}`

type flab struct {
	*harness.Cluster
	t       *testing.T
	netconf string
	cli     *clientv3.Client
}

func newFLab(t *testing.T, hosts int, netconf string) *flab {
	t.Helper()
	l := labtest.New(t, lab.Options{Hosts: hosts})
	f := &flab{Cluster: harness.New(l, self(t)), t: t, netconf: netconf}
	f.startEtcd()
	cli, err := clientv3.New(clientv3.Config{
		Endpoints: []string{harness.EtcdEndpoint()}, DialTimeout: 5 * time.Second, Logger: zap.NewNop(),
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return lab.DialContext(l.Switch)(ctx, "tcp4", addr)
		})},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	f.cli = cli
	return f
}

func (f *flab) startEtcd() {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := f.StartEtcd(ctx, f.netconf); err != nil {
		f.t.Fatal(err)
	}
}

// stopEtcd stops etcd as an outage would: SIGKILL, no goodbye to clients.
func (f *flab) stopEtcd() {
	f.t.Helper()
	f.Etcd.Signal(9)
	if err := f.Etcd.WaitContext(context.Background()); err == nil {
		f.t.Fatal("etcd exited 0 on SIGKILL")
	}
}

// start starts weft on host i with extra flags and waits for its subnet
// file; the pod is attached to the leased subnet.
func (f *flab) start(i int, extra ...string) {
	f.t.Helper()
	if err := f.StartWeft(f.Lab.Host(i), extra...); err != nil {
		f.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := f.WaitSubnets(ctx); err != nil {
		f.t.Fatal(err)
	}
}

func (f *flab) exec(ns string, argv ...string) string {
	f.t.Helper()
	out, err := f.Lab.Exec(ns, argv...)
	if err != nil {
		f.t.Fatalf("%s: %v\n%s", strings.Join(argv, " "), err, out)
	}
	return string(out)
}

// udpStats reads host i's udp backend counters; ok is false while the
// engine does not answer (restarting).
func (f *flab) udpStats(i int) (daemon.StatusReport, bool) {
	var u daemon.StatusReport
	out, err := f.Lab.Exec(f.Lab.Host(i).Name, f.Binary, "stats", "--debug-socket", harness.DebugSocket(f.Lab.Host(i)))
	if err != nil || json.Unmarshal(out, &u) != nil || u.Engine == nil {
		return u, false
	}
	return u, true
}

func (f *flab) mustStats(i int) daemon.StatusReport {
	f.t.Helper()
	u, ok := f.udpStats(i)
	if !ok {
		f.t.Fatalf("h%d: weft stats does not answer\n%s", i, f.Lab.Logs())
	}
	return u
}

// etcdSubnets lists the subnets etcd holds, sorted.
func (f *flab) etcdSubnets() ([]string, error) {
	ls, err := f.Leases(context.Background())
	if err != nil {
		return nil, err
	}
	var out []string
	for _, l := range ls {
		out = append(out, l.Subnet)
	}
	slices.Sort(out)
	return out, nil
}

// tableSubnets is the engine's view of the cluster on host i: its peers
// and its own subnet, sorted, in etcd's notation.
func (f *flab) tableSubnets(i int) []string {
	u := f.mustStats(i)
	out := []string{f.Envs[i-1].Subnet.String()}
	for _, p := range u.Peers {
		out = append(out, p.Subnet.String())
	}
	slices.Sort(out)
	return out
}

// waitConverged waits until every running engine's table equals etcd's
// leases, as a freshly started engine's would.
func (f *flab) waitConverged(bound time.Duration, hosts ...int) {
	f.t.Helper()
	deadline := time.Now().Add(bound)
	for {
		want, err := f.etcdSubnets()
		state := fmt.Sprintf("etcd: %v (%v)", want, err)
		ok := err == nil
		for _, i := range hosts {
			got := f.tableSubnets(i)
			state += fmt.Sprintf("\nh%d: %v", i, got)
			ok = ok && slices.Equal(got, want)
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			f.t.Fatalf("tables did not converge to etcd's leases within %s:\n%s", bound, state)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// pinger pings from one pod to another continuously and counts.
type pinger struct {
	sent, lost atomic.Int64
	stop       chan struct{}
	done       sync.WaitGroup
}

// startPinger pings dst from ns every interval (each waiting up to 1 s)
// until stopped.
func startPinger(ns string, dst string, interval time.Duration) *pinger {
	p := &pinger{stop: make(chan struct{})}
	p.done.Add(1)
	go func() {
		defer p.done.Done()
		addr := mustAddr(dst)
		for {
			select {
			case <-p.stop:
				return
			default:
			}
			res, _ := lab.Ping(context.Background(), ns, addr, 1, 0, time.Second)
			p.sent.Add(1)
			if res.Received == 0 {
				p.lost.Add(1)
			}
			time.Sleep(interval)
		}
	}()
	return p
}

func (p *pinger) Stop() (sent, lost int64) {
	close(p.stop)
	p.done.Wait()
	return p.sent.Load(), p.lost.Load()
}

// procStatus reads fields of /proc/PID/status (VmRSS in kB, Threads, CapEff).
func procStatus(pid int, field string) string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return ""
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, field+":"); ok {
			return strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB"))
		}
	}
	return ""
}

// leftovers lists what weft created that is still in namespace ns: TUN
// and vxlan devices, routes with weft's tag (proto 87) or through them,
// neighbours and FDB entries on them, and flanneld's iptables chains.
func leftovers(l *lab.Lab, ns string) []string {
	var out []string
	sh := func(argv ...string) string {
		b, _ := l.Exec(ns, argv...)
		return string(b)
	}
	for _, line := range lines(sh("ip", "-o", "link", "show")) {
		if strings.Contains(line, ": flannel") {
			out = append(out, "device: "+line)
		}
	}
	for _, line := range lines(sh("ip", "route", "show", "table", "all")) {
		if strings.Contains(line, "proto 87") || strings.Contains(line, "dev flannel") {
			out = append(out, "route: "+line)
		}
	}
	for _, line := range lines(sh("ip", "neigh", "show")) {
		if strings.Contains(line, "dev flannel") {
			out = append(out, "neighbour: "+line)
		}
	}
	for _, line := range lines(sh("bridge", "fdb", "show")) {
		if strings.Contains(line, "dev flannel") {
			out = append(out, "fdb: "+line)
		}
	}
	for _, line := range lines(sh("iptables-save")) {
		if strings.Contains(line, "FLANNEL") {
			out = append(out, "iptables: "+line)
		}
	}
	return out
}

// stopAndClean stops weft on every host (SIGTERM must exit 0), runs weft
// cleanup there and fails if anything weft created is left.
func (f *flab) stopAndClean() {
	f.t.Helper()
	for i, p := range f.Runs {
		if p == nil {
			continue
		}
		if p.Exited() {
			f.t.Errorf("weft on h%d exited during the test:\n%s", i+1, p.Log())
		}
		p.Stop()
		if err := p.Wait(); err != nil && !p.Exited() {
			f.t.Errorf("h%d: %v", i+1, err)
		}
		f.Runs[i] = nil
	}
	for _, h := range f.Lab.Hosts {
		f.exec(h.Name, f.Binary, "cleanup", "--debug-socket", harness.DebugSocket(h))
		if left := leftovers(f.Lab, h.Name); len(left) > 0 {
			f.t.Errorf("%s: left after weft cleanup:\n%s", h.Name, strings.Join(left, "\n"))
		}
	}
}
