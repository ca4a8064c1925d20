package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/weft-net/weft/bench/harness"
	"github.com/weft-net/weft/bench/lab"
	"github.com/weft-net/weft/bench/lab/labtest"
	"github.com/weft-net/weft/bench/traffic"
	"github.com/weft-net/weft/daemon"
	"github.com/weft-net/weft/lease"
	"github.com/weft-net/weft/lease/etcdserver"
)

// kcluster is weft on every host of a lab, leasing through one embedded
// etcd served from the switch namespace.
type kcluster struct {
	*harness.Cluster
	t   *testing.T
	cli *clientv3.Client
}

func newKCluster(t *testing.T, hosts int, netconf string, prep func(*lab.Lab)) *kcluster {
	t.Helper()
	return newKClusterOpts(t, lab.Options{Hosts: hosts}, netconf, prep)
}

// newKClusterOpts is newKCluster for a lab of opts (IPv6, say).
func newKClusterOpts(t *testing.T, opts lab.Options, netconf string, prep func(*lab.Lab)) *kcluster {
	t.Helper()
	l := labtest.New(t, opts)
	if prep != nil {
		prep(l)
	}
	var etcd *etcdserver.Server
	err := lab.InNamespace(l.Switch, func() error {
		var err error
		etcd, err = etcdserver.Start(etcdserver.Options{Dir: filepath.Join(l.Dir, "etcd"), ListenClientURLs: []string{harness.EtcdEndpoint()}})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(etcd.Close)
	cli, err := clientv3.New(clientv3.Config{
		Endpoints: etcd.Endpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop(),
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return lab.DialContext(l.Switch)(ctx, "tcp4", addr)
		})},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	k := &kcluster{Cluster: harness.New(l, self(t)), t: t, cli: cli}
	k.putConfig(netconf)
	return k
}

func (k *kcluster) putConfig(netconf string) {
	k.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := k.cli.Put(ctx, harness.EtcdPrefix+"/config", netconf); err != nil {
		k.t.Fatal(err)
	}
}

// start starts weft on hosts (1-based) and waits for their subnet files.
func (k *kcluster) start(extra []string, hosts ...int) {
	k.t.Helper()
	for _, i := range hosts {
		if err := k.StartWeft(k.Lab.Host(i), extra...); err != nil {
			k.t.Fatal(err)
		}
		k.waitSubnets()
	}
}

// waitSubnets waits up to 30 s for every started daemon's subnet file.
func (k *kcluster) waitSubnets() {
	k.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	err := k.WaitSubnets(ctx)
	cancel()
	if err != nil {
		k.t.Fatal(err)
	}
}

func (k *kcluster) stop(hosts ...int) {
	k.t.Helper()
	for _, i := range hosts {
		if p := k.Runs[i-1]; p != nil {
			if p.Exited() {
				k.t.Errorf("weft on h%d exited early:\n%s", i, p.Log())
			}
			p.Stop()
			// SIGTERM is a clean stop: exit status 0, state left in place.
			if err := p.Wait(); err != nil {
				k.t.Errorf("weft on h%d did not exit cleanly on SIGTERM: %v\n%s", i, err, p.Log())
			}
			k.Runs[i-1] = nil
		}
	}
}

// sh runs a command in host i's namespace and returns its output.
func (k *kcluster) sh(i int, argv ...string) string {
	k.t.Helper()
	out, err := k.Lab.Exec(k.Lab.Host(i).Name, argv...)
	if err != nil {
		k.t.Fatalf("h%d: %s: %v\n%s", i, strings.Join(argv, " "), err, out)
	}
	return string(out)
}

func (k *kcluster) stats(i int) daemon.StatusReport {
	k.t.Helper()
	var s daemon.StatusReport
	out := k.sh(i, k.Binary, "stats", "--debug-socket", harness.DebugSocket(k.Lab.Host(i)))
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		k.t.Fatalf("weft stats: %v\n%s", err, out)
	}
	return s
}

// eventually polls cond until it holds or the bound passes.
func (k *kcluster) eventually(what string, bound time.Duration, cond func() (bool, string)) {
	k.t.Helper()
	deadline := time.Now().Add(bound)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			k.t.Fatalf("%s: not within %s; last state:\n%s", what, bound, state)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (k *kcluster) ping(a, b int) {
	k.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ha, hb := k.Lab.Host(a), k.Lab.Host(b)
	res, err := lab.Ping(ctx, ha.Pod, hb.PodIP, 3, 20*time.Millisecond, 2*time.Second)
	if err != nil || res.Received == 0 {
		k.t.Fatalf("ping pod h%d -> pod h%d (%s): %d replies, %v", a, b, hb.PodIP, res.Received, err)
	}
}

// tcp sends a verified stream from host a's pod to host b's pod.
func (k *kcluster) tcp(a, b int, n int) {
	k.t.Helper()
	k.tcpTo(a, b, k.Lab.Host(b).PodIP, n)
}

// tcpTo is tcp to dst, one of host b's pod addresses (IPv4 or IPv6).
func (k *kcluster) tcpTo(a, b int, dst netip.Addr, n int) {
	k.t.Helper()
	hb := k.Lab.Host(b)
	listen := "0.0.0.0:" + strconv.Itoa(traffic.DefaultPort)
	if dst.Is6() {
		listen = "[::]:" + strconv.Itoa(traffic.DefaultPort)
	}
	srv, err := k.Lab.Start(hb.Pod, fmt.Sprintf("traffic-h%d", b), k.Binary, "traffic", "server", "--listen", listen)
	if err != nil {
		k.t.Fatal(err)
	}
	defer srv.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := k.Lab.ExecContext(ctx, k.Lab.Host(a).Pod, k.Binary, "traffic", "tcp", "--to", dst.String(),
		"--bytes", fmt.Sprint(n), "--verify", "sha256")
	if err != nil {
		k.t.Fatalf("tcp h%d -> h%d: %v\n%s", a, b, err, out)
	}
	var res traffic.Result
	if err := json.Unmarshal(out, &res); err != nil || res.Bytes != int64(n) {
		k.t.Fatalf("tcp h%d -> h%d: server verified %d bytes of %d (%v): %s", a, b, res.Bytes, n, err, out)
	}
}

// leaseValue reads host i's lease value from etcd, byte for byte.
func (k *kcluster) leaseValue(i int) string {
	k.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	key := harness.EtcdPrefix + "/subnets/" + lease.LeaseKey(k.Envs[i-1].Subnet, k.Envs[i-1].IPv6Subnet)
	resp, err := k.cli.Get(ctx, key)
	if err != nil || len(resp.Kvs) != 1 {
		k.t.Fatalf("lease %s: %v", key, err)
	}
	return string(resp.Kvs[0].Value)
}

func (k *kcluster) deleteLease(i int) {
	k.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := k.cli.Delete(ctx, harness.EtcdPrefix+"/subnets/"+lease.LeaseKey(k.Envs[i-1].Subnet, k.Envs[i-1].IPv6Subnet)); err != nil {
		k.t.Fatal(err)
	}
}

// fixtureHas reports whether flanneld's recorded kernel state has line
// (whitespace-trimmed) in it.
func fixtureHas(t *testing.T, file, line string) bool {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", file))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.TrimSpace(l) == line {
			return true
		}
	}
	return false
}

// weftProto inserts weft's route tag where `ip route` prints it, turning
// flanneld's line into weft's; everything else must be the same.
func weftProto(flannelLine string) string {
	if l, ok := strings.CutSuffix(flannelLine, " onlink"); ok {
		return l + " proto 87 onlink"
	}
	return flannelLine + " proto 87"
}

func lines(s string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return out
}

func has(s, line string) bool {
	for _, l := range lines(s) {
		if l == line {
			return true
		}
	}
	return false
}

// TestKernelVXLAN runs three vxlan hosts through what issue 5 promises,
// then switches the cluster to host-gw and cleans up: flanneld's lease
// bytes and kernel state shapes, pod traffic, repair of hand-deleted
// state, a departed host's state removed, a restart with the same MAC and
// nothing doubled, and `weft cleanup` leaving nothing.
func TestKernelVXLAN(t *testing.T) {
	k := newKCluster(t, 3, `{"Network":"10.5.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan"}}`, nil)
	k.start(nil, 1, 2, 3)
	mac := map[int]string{}
	for i := 1; i <= 3; i++ {
		h := k.Lab.Host(i)
		mac[i] = strings.TrimSpace(k.sh(i, "cat", "/sys/class/net/flannel.1/address"))
		want := fmt.Sprintf(`{"PublicIP":"%s","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"%s"}}`, h.IP, mac[i])
		if got := k.leaseValue(i); got != want {
			t.Fatalf("h%d lease\n got %s\nwant %s", i, got, want)
		}
		if k.Envs[i-1].MTU != 1450 {
			t.Errorf("h%d FLANNEL_MTU %d, want 1450", i, k.Envs[i-1].MTU)
		}
	}
	dev := k.sh(1, "ip", "-d", "link", "show", "flannel.1")
	shape := "vxlan id 1 local %s dev %s srcport 0 0 dstport 8472 nolearning ttl auto ageing 300 udpcsum noudp6zerocsumtx noudp6zerocsumrx"
	if !strings.Contains(dev, fmt.Sprintf(shape, k.Lab.Host(1).IP, k.Lab.Host(1).Underlay)) || !strings.Contains(dev, "mtu 1450") {
		t.Fatalf("flannel.1 unlike flanneld's:\n%s", dev)
	}
	// The same shape templates, filled with the fixture's values, are
	// lines of flanneld's recorded state.
	const fx = "flannel-vxlan-kernel-state-h1.txt"
	route := func(i int) string {
		sn := k.Envs[i-1].Subnet
		return fmt.Sprintf("%s via %s dev flannel.1 onlink", sn, sn.Addr())
	}
	neigh := func(i int) string {
		return fmt.Sprintf("%s dev flannel.1 lladdr %s PERMANENT", k.Envs[i-1].Subnet.Addr(), mac[i])
	}
	fdb := func(i int) string {
		return fmt.Sprintf("%s dev flannel.1 dst %s self permanent", mac[i], k.Lab.Host(i).IP)
	}
	if !fixtureHas(t, fx, "10.5.55.0/24 via 10.5.55.0 dev flannel.1 onlink") || !fixtureHas(t, fx, "10.5.55.0 dev flannel.1 lladdr d6:61:c5:27:4e:01 PERMANENT") ||
		!fixtureHas(t, fx, "d6:61:c5:27:4e:01 dev flannel.1 dst 192.0.2.2 self permanent") {
		t.Fatal("the shapes checked here are not flanneld's recorded ones")
	}
	peerState := func(on, peer int, present bool) (bool, string) {
		r, n, f := k.sh(on, "ip", "route"), k.sh(on, "ip", "neigh"), k.sh(on, "bridge", "fdb", "show")
		all := r + n + f
		return has(r, weftProto(route(peer))) == present && has(n, neigh(peer)) == present && has(f, fdb(peer)) == present, all
	}
	for _, on := range []int{1, 2, 3} {
		for _, peer := range []int{1, 2, 3} {
			if on != peer {
				k.eventually(fmt.Sprintf("h%d programs h%d", on, peer), 10*time.Second, func() (bool, string) { return peerState(on, peer, true) })
			}
		}
	}
	k.ping(1, 2)
	k.ping(2, 1)
	k.ping(3, 1)
	k.tcp(1, 2, 16<<20)

	// Hand-deleted route and neighbour come back.
	k.sh(1, "ip", "route", "del", k.Envs[1].Subnet.String())
	k.sh(1, "ip", "neigh", "del", k.Envs[1].Subnet.Addr().String(), "dev", "flannel.1")
	k.eventually("reconcile repairs h1's state for h2", 10*time.Second, func() (bool, string) { return peerState(1, 2, true) })
	var vs struct{ Reconcile struct{ Repairs uint64 } }
	json.Unmarshal(k.stats(1).BackendStatus, &vs)
	if vs.Reconcile.Repairs < 2 {
		t.Errorf("h1 counted %d repairs, want at least 2", vs.Reconcile.Repairs)
	}

	// h3 leaves: its lease goes, and with it its state on h1 and h2.
	k.stop(3)
	k.deleteLease(3)
	for _, on := range []int{1, 2} {
		k.eventually(fmt.Sprintf("h%d drops h3", on), 10*time.Second, func() (bool, string) { return peerState(on, 3, false) })
	}

	// SIGTERM leaves the state in place; a restart keeps the MAC and the
	// lease bytes and doubles nothing.
	lease1 := k.leaseValue(1)
	k.stop(1)
	if ok, st := peerState(1, 2, true); !ok {
		t.Fatalf("SIGTERM removed state:\n%s", st)
	}
	k.start(nil, 1)
	if m := strings.TrimSpace(k.sh(1, "cat", "/sys/class/net/flannel.1/address")); m != mac[1] {
		t.Fatalf("restart changed the VtepMAC %s -> %s", mac[1], m)
	}
	if got := k.leaseValue(1); got != lease1 {
		t.Fatalf("restart changed the lease %s -> %s", lease1, got)
	}
	k.eventually("h1 after restart", 10*time.Second, func() (bool, string) { return peerState(1, 2, true) })
	if r := k.sh(1, "ip", "route"); strings.Count(r, k.Envs[1].Subnet.String()) != 1 || strings.Count(k.sh(1, "bridge", "fdb", "show", "dev", "flannel.1"), "dst") != 1 {
		t.Fatalf("duplicates after restart:\n%s", r)
	}
	k.ping(1, 2)

	// Switch the cluster to host-gw: flannel.1 goes, plain routes come
	// (flanneld's "10.5.51.0/24 via 192.0.2.2 dev fa-v1"), traffic flows.
	if !fixtureHas(t, "flannel-hostgw-kernel-state-h1.txt", "10.5.51.0/24 via 192.0.2.2 dev fa-v1") {
		t.Fatal("host-gw shape is not flanneld's")
	}
	k.putConfig(`{"Network":"10.5.0.0/16","SubnetLen":24,"Backend":{"Type":"host-gw"}}`)
	k.stop(1, 2)
	k.start(nil, 1, 2, 3) // h3 comes back from leaving, over its vxlan leftovers
	gwRoute := func(on, peer int) string {
		return weftProto(fmt.Sprintf("%s via %s dev %s", k.Envs[peer-1].Subnet, k.Lab.Host(peer).IP, k.Lab.Host(on).Underlay))
	}
	for _, on := range []int{1, 2, 3} {
		k.eventually(fmt.Sprintf("h%d on host-gw", on), 10*time.Second, func() (bool, string) {
			r, l := k.sh(on, "ip", "route"), k.sh(on, "ip", "link")
			ok := !strings.Contains(l, "flannel.1") && !strings.Contains(r, "flannel")
			for peer := 1; peer <= 3; peer++ {
				ok = ok && (peer == on || has(r, gwRoute(on, peer)))
			}
			return ok, r + l
		})
	}
	if !strings.HasPrefix(k.leaseValue(1), fmt.Sprintf(`{"PublicIP":"%s","PublicIPv6":null,"BackendType":"host-gw"}`, k.Lab.Host(1).IP)) {
		t.Fatalf("host-gw lease: %s", k.leaseValue(1))
	}
	k.ping(1, 2)
	k.ping(3, 1)
	k.tcp(2, 1, 16<<20)
	k.sh(1, "ip", "route", "del", k.Envs[1].Subnet.String())
	k.eventually("host-gw route repaired", 10*time.Second, func() (bool, string) {
		r := k.sh(1, "ip", "route")
		return has(r, gwRoute(1, 2)), r
	})
	k.stop(2)
	k.deleteLease(2)
	k.eventually("h1 drops h2's route", 10*time.Second, func() (bool, string) {
		r := k.sh(1, "ip", "route")
		return !strings.Contains(r, k.Envs[1].Subnet.String()), r
	})

	// weft cleanup after SIGTERM: nothing of weft's is left.
	k.stop(1, 3)
	for _, i := range []int{1, 2, 3} {
		out := k.sh(i, k.Binary, "cleanup", "--debug-socket", harness.DebugSocket(k.Lab.Host(i)))
		if i == 1 && !strings.Contains(out, "removed route "+k.Envs[2].Subnet.String()) {
			t.Errorf("h1: weft cleanup did not remove the route it left on SIGTERM:\n%s", out)
		}
		r, l := k.sh(i, "ip", "route"), k.sh(i, "ip", "link")
		if strings.Contains(r, "proto 87") || strings.Contains(l, "flannel") {
			t.Errorf("h%d after weft cleanup:\n%s%s", i, r, l)
		}
	}
}
