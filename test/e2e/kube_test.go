package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/weft-net/weft/bench/lab"
	"github.com/weft-net/weft/bench/lab/labtest"
	"github.com/weft-net/weft/bench/traffic"
	"github.com/weft-net/weft/daemon"
	"github.com/weft-net/weft/lease/kube/kubetest"
)

// TestKubeSubnetManager is issue 16 end to end: a real kube-apiserver on
// `weft etcd` in the lab's switch namespace, three hosts with Node
// objects, `weft run --kube-subnet-mgr` on each under deploy/'s RBAC as
// kube-flannel.yml runs flanneld, with each backend (auto picks host-gw:
// the hosts share a segment). Pods ping and move verified TCP both
// ways; subnet.env and the annotations are flanneld's; a deleted Node is
// dropped by the others; a restart keeps the subnet (and the VtepMAC).
func TestKubeSubnetManager(t *testing.T) {
	for _, backend := range []string{"udp", "vxlan", "host-gw", "auto"} {
		t.Run(backend, func(t *testing.T) { testKube(t, backend) })
	}
}

// kubeLab is the lab of the kube tests: three hosts, `weft etcd` and a
// kube-apiserver in the switch namespace, a Node per host, deploy/'s
// RBAC.
type kubeLab struct {
	l                   *lab.Lab
	exe                 string
	srv                 *kubetest.Server
	admin               kubernetes.Interface
	api                 *lab.Proc
	apiArgv             []string
	netConf, kubeconfig string
	env                 []string // more environment for weft run
	runExe              string   // the binary weft run starts from, when not exe
	runFlags            []string // more weft run flags (WEFT_KUBE_SCALE_FLAGS)
}

func newKubeLab(t *testing.T, backend string) *kubeLab {
	t.Helper()
	return newKubeLabNetwork(t, backend, "10.244.0.0/16")
}

func newKubeLabNetwork(t *testing.T, backend, network string) *kubeLab {
	t.Helper()
	return newKubeLabConf(t, `{"Network":"`+network+`","Backend":{"Type":"`+backend+`"}}`, false)
}

// newKubeLabConf is newKubeLab with the net-conf netConf; dual gives the
// lab an IPv6 underlay and each Node an IPv6 podCIDR (podCIDR6) after its
// IPv4 one, as a dual-stack cluster's IPAM does.
func newKubeLabConf(t *testing.T, netConf string, dual bool) *kubeLab {
	t.Helper()
	pods := kubePodsIPv4
	if dual {
		pods = kubePodsDual
	}
	return newKubeLabPods(t, netConf, pods)
}

// kubePods are the families of the Nodes' podCIDRs in a kube lab.
type kubePods int

const (
	kubePodsIPv4     kubePods = iota // podCIDR(i)
	kubePodsDual                     // podCIDR(i), podCIDR6(i)
	kubePodsIPv6Only                 // podCIDR6(i) alone, as an IPv6-only cluster's IPAM assigns
)

// newKubeLabPods is newKubeLabConf with the Nodes' podCIDRs as pods
// says; the lab has an IPv6 underlay (beside the IPv4 one the control
// plane uses) unless pods is kubePodsIPv4.
func newKubeLabPods(t *testing.T, netConf string, pods kubePods) *kubeLab {
	t.Helper()
	bin := kubetest.Binary(t)
	l := labtest.New(t, lab.Options{Hosts: 3, IPv6: pods != kubePodsIPv4})
	exe := self(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// The control plane in the switch namespace: etcd on its loopback,
	// the API server on the switch address the hosts reach.
	if _, err := l.Start(l.Switch, "etcd", exe, "etcd", "--data-dir", filepath.Join(l.Dir, "etcd"),
		"--listen-client-urls", "http://127.0.0.1:2379"); err != nil {
		t.Fatal(err)
	}
	kdir := filepath.Join(l.Dir, "kube")
	if err := os.MkdirAll(kdir, 0o700); err != nil {
		t.Fatal(err)
	}
	k := &kubeLab{l: l, exe: exe, srv: kubetest.Prepare(t, kdir)}
	k.srv.Dial = lab.DialContext(l.Switch)
	k.apiArgv = append([]string{bin}, k.srv.Args("http://127.0.0.1:2379", lab.SwitchIP.String(), 6443)...)
	k.startAPI(t)
	admin := k.srv.Client(t, kubetest.Admin)
	k.admin = admin
	role, binding := kubetest.DeployRBAC(t, "../../deploy/kube-weft.yml")
	if _, err := admin.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	k.netConf = filepath.Join(l.Dir, "net-conf.json")
	if err := os.WriteFile(k.netConf, []byte(netConf), 0o644); err != nil {
		t.Fatal(err)
	}
	k.kubeconfig = k.srv.Kubeconfig(t, kubetest.Weft)

	// Nodes as kubelets register them, podCIDRs as the IPAM controller
	// assigns them: host i gets 10.244.i.0/24.
	for i := range l.Hosts {
		n := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: nodeName(i), Labels: map[string]string{"kubernetes.io/hostname": nodeName(i)},
			Annotations: map[string]string{"volumes.kubernetes.io/controller-managed-attach-detach": "true"}},
			Spec: v1.NodeSpec{PodCIDR: podCIDR(i).String(), PodCIDRs: []string{podCIDR(i).String()}}}
		switch pods {
		case kubePodsDual:
			n.Spec.PodCIDRs = append(n.Spec.PodCIDRs, podCIDR6(i).String())
		case kubePodsIPv6Only:
			n.Spec.PodCIDR, n.Spec.PodCIDRs = podCIDR6(i).String(), []string{podCIDR6(i).String()}
		}
		if _, err := admin.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	return k
}

// startAPI (re)starts the API server and waits until it is ready.
func (k *kubeLab) startAPI(t *testing.T) {
	t.Helper()
	api, err := k.l.Start(k.l.Switch, "kube-apiserver", k.apiArgv...)
	if err != nil {
		t.Fatal(err)
	}
	if err := k.srv.WaitReady(func() error {
		if api.Exited() {
			return errors.New("exited:\n" + api.Log())
		}
		return nil
	}); err != nil {
		t.Fatalf("kube-apiserver: %v", err)
	}
	k.api = api
}

// start starts `weft run --kube-subnet-mgr` on host i as Node h<i+1>.
func (k *kubeLab) start(t *testing.T, i int) *lab.Proc {
	t.Helper()
	h := k.l.Hosts[i]
	os.Remove(filepath.Join(h.Dir, "subnet.env"))
	exe := k.exe
	if k.runExe != "" {
		exe = k.runExe
	}
	argv := append(append([]string{"env", "NODE_NAME=" + nodeName(i)}, k.env...), exe, "run", "--kube-subnet-mgr",
		"--kubeconfig-file", k.kubeconfig, "--net-config-path", k.netConf, "--iface", h.Underlay, "--ip-masq",
		"--subnet-file", filepath.Join(h.Dir, "subnet.env"), "--debug-socket", filepath.Join(h.Dir, "debug.sock"))
	argv = append(argv, k.runFlags...)
	p, err := k.l.Start(h.Name, "weft-"+nodeName(i), argv...)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// pingAll waits until every pod reaches every other.
func (k *kubeLab) pingAll(ctx context.Context, t *testing.T, hosts []*lab.Host) {
	t.Helper()
	for _, a := range hosts {
		for _, b := range hosts {
			if a == b {
				continue
			}
			deadline := time.Now().Add(20 * time.Second)
			for {
				res, err := lab.Ping(ctx, a.Pod, b.PodIP, 1, 0, time.Second)
				if err == nil && res.Received == 1 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("no path %s -> %s (%s -> %s) within 20 s", a.Name, b.Name, a.PodIP, b.PodIP)
				}
			}
		}
	}
}

func testKube(t *testing.T, backend string) {
	k := newKubeLab(t, backend)
	l, exe, admin := k.l, k.exe, k.admin
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	start := func(i int) *lab.Proc { return k.start(t, i) }
	procs := make([]*lab.Proc, len(l.Hosts))
	for i, h := range l.Hosts {
		procs[i] = start(i)
		env := waitFile(t, procs[i], filepath.Join(h.Dir, "subnet.env"))
		if i == 0 {
			// flanneld's subnet file for h1 (10.244.1.0/24, --ip-masq).
			want, err := os.ReadFile("../../lease/kube/testdata/subnet-" + strings.Replace(backend, "auto", "host-gw", 1) + "-h1.env")
			if err != nil {
				t.Fatal(err)
			}
			if string(env) != string(want) {
				t.Errorf("h1 subnet.env:\n%s\nflanneld's:\n%s", env, want)
			}
		}
		if !strings.Contains(string(env), "FLANNEL_SUBNET="+podCIDR(i).Addr().Next().String()+"/24\n") {
			t.Fatalf("%s subnet.env:\n%s", h.Name, env)
		}
		if err := h.AttachPod(podCIDR(i)); err != nil {
			t.Fatal(err)
		}
	}

	// The annotations, as flanneld writes them.
	for i, h := range l.Hosts {
		n, err := admin.CoreV1().Nodes().Get(ctx, nodeName(i), metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		a := n.Annotations
		wantType, wantData := "", "null"
		switch backend {
		case "vxlan":
			wantType = "vxlan"
			wantData = fmt.Sprintf(`{"VNI":1,"VtepMAC":"%s"}`, linkMAC(t, h.Name, "flannel.1"))
		case "host-gw", "auto":
			wantType = "host-gw"
		}
		if a["flannel.alpha.coreos.com/public-ip"] != h.IP.String() || a["flannel.alpha.coreos.com/kube-subnet-manager"] != "true" ||
			a["flannel.alpha.coreos.com/backend-type"] != wantType || a["flannel.alpha.coreos.com/backend-data"] != wantData {
			t.Errorf("%s annotations %v; want public-ip %s, backend-type %q, backend-data %s", nodeName(i), a, h.IP, wantType, wantData)
		}
		if !nodeNetworkAvailable(n) {
			t.Errorf("%s: no NetworkUnavailable=False (FlannelIsUp): %+v", nodeName(i), n.Status.Conditions)
		}
	}

	pingAll := func(hosts []*lab.Host) { t.Helper(); k.pingAll(ctx, t, hosts) }
	pingAll(l.Hosts)
	h1, h2, h3 := l.Hosts[0], l.Hosts[1], l.Hosts[2]
	tcp := func(from, to *lab.Host) {
		t.Helper()
		srvP, err := l.Start(to.Pod, "traffic-server-"+to.Name, exe, "traffic", "server")
		if err != nil {
			t.Fatal(err)
		}
		defer srvP.Stop()
		const n = 8 << 20
		var out []byte
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(200 * time.Millisecond) {
			out, err = l.ExecContext(ctx, from.Pod, exe, "traffic", "tcp", "--to", to.PodIP.String(), "--bytes", fmt.Sprint(n), "--verify", "sha256")
			var res traffic.Result
			if err == nil && json.Unmarshal(out, &res) == nil && res.Bytes == n {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("verified TCP %s -> %s: %v\n%s", from.Name, to.Name, err, out)
			}
		}
	}
	tcp(h1, h3)
	tcp(h3, h1)

	// flannel.1 deleted under a running daemon: flanneld v0.28.9 recreates
	// the device but not the peers' routes, neighbours and FDB entries, so
	// traffic stays broken (recorded in the kube fixtures); weft recreates
	// it with the MAC the Node's backend-data names and restores every
	// peer's entries.
	if backend == "vxlan" {
		mac := linkMAC(t, h1.Name, "flannel.1")
		if out, err := l.Exec(h1.Name, "ip", "link", "del", "flannel.1"); err != nil {
			t.Fatalf("deleting flannel.1: %v\n%s", err, out)
		}
		pingAll(l.Hosts)
		if got := linkMAC(t, h1.Name, "flannel.1"); got != mac {
			t.Errorf("flannel.1 came back with MAC %s, not the lease's %s", got, mac)
		}
	}

	// A deleted Node is no peer of the others.
	if err := admin.CoreV1().Nodes().Delete(ctx, nodeName(2), metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	procs[2].Stop()
	for _, h := range []*lab.Host{h1, h2} {
		waitPeers(t, l, h, exe, func(p []netip.Prefix) bool { return len(p) == 1 && !slices.Contains(p, podCIDR(2)) })
	}

	// A restart keeps the subnet and (vxlan) the VtepMAC; traffic flows.
	before := nodeAnnotations(t, admin, nodeName(0))
	procs[0].Stop()
	procs[0] = start(0)
	waitFile(t, procs[0], filepath.Join(h1.Dir, "subnet.env"))
	after := nodeAnnotations(t, admin, nodeName(0))
	if after["flannel.alpha.coreos.com/backend-data"] != before["flannel.alpha.coreos.com/backend-data"] {
		t.Errorf("restart changed backend-data: %s -> %s", before["flannel.alpha.coreos.com/backend-data"], after["flannel.alpha.coreos.com/backend-data"])
	}
	pingAll([]*lab.Host{h1, h2})
	for _, p := range procs[:2] {
		if p.Exited() {
			t.Errorf("weft exited:\n%s", p.Log())
		}
	}
}

func nodeName(i int) string { return fmt.Sprintf("h%d", i+1) }
func podCIDR(i int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(i + 1), 0}), 24)
}

// podCIDR6 is host i's IPv6 podCIDR on a dual-stack lab: fd00:10:244:<i+1>::/64.
func podCIDR6(i int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfd, 0, 0, 0x10, 0x02, 0x44, 0, byte(i + 1)}), 64)
}

func nodeNetworkAvailable(n *v1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == v1.NodeNetworkUnavailable {
			return c.Status == v1.ConditionFalse && c.Reason == "FlannelIsUp"
		}
	}
	return false
}

func nodeAnnotations(t *testing.T, c kubernetes.Interface, name string) map[string]string {
	t.Helper()
	n, err := c.CoreV1().Nodes().Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return n.Annotations
}

// linkMAC is a link's MAC address in a namespace.
func linkMAC(t *testing.T, ns, link string) string {
	t.Helper()
	out, err := exec.Command("ip", "-n", ns, "-j", "link", "show", link).Output()
	if err != nil {
		t.Fatalf("ip -n %s link show %s: %v", ns, link, err)
	}
	var links []struct {
		Address string `json:"address"`
	}
	if err := json.Unmarshal(out, &links); err != nil || len(links) != 1 {
		t.Fatalf("ip -j link show %s: %v\n%s", link, err, out)
	}
	return links[0].Address
}

// waitPeers waits until h's daemon reports peers ok accepts.
func waitPeers(t *testing.T, l *lab.Lab, h *lab.Host, exe string, ok func([]netip.Prefix) bool) {
	t.Helper()
	var got []netip.Prefix
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		out, err := l.Exec(h.Name, exe, "status", "--json", "--debug-socket", filepath.Join(h.Dir, "debug.sock"))
		var r daemon.StatusReport
		if err != nil || json.Unmarshal(out, &r) != nil {
			continue
		}
		got = got[:0]
		for _, p := range r.Peers {
			got = append(got, p.Subnet)
		}
		if ok(got) {
			return
		}
	}
	t.Fatalf("%s: peers %v", h.Name, got)
}

// TestKubeAPIServerOutage: the API server killed for 30 s costs no
// packet (the data path does not depend on it), no daemon exits, and
// the watch resumes when it is back: a Node deleted then reaches every
// host.
func TestKubeAPIServerOutage(t *testing.T) {
	k := newKubeLab(t, "vxlan")
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	procs := make([]*lab.Proc, 3)
	for i, h := range k.l.Hosts {
		procs[i] = k.start(t, i)
		waitFile(t, procs[i], filepath.Join(h.Dir, "subnet.env"))
		if err := h.AttachPod(podCIDR(i)); err != nil {
			t.Fatal(err)
		}
	}
	h1, h2, h3 := k.l.Hosts[0], k.l.Hosts[1], k.l.Hosts[2]
	k.pingAll(ctx, t, k.l.Hosts)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("h1's weft:\n%s", procs[0].Log())
		}
	})

	if err := k.api.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	k.api.WaitContext(ctx)
	// 30 s of pings, 10 a second, while the API server is gone.
	const n = 300
	res, err := lab.Ping(ctx, h1.Pod, h3.PodIP, n, 100*time.Millisecond, time.Second)
	if err != nil || res.Received != n {
		t.Errorf("h1 -> h3 during the outage: %d of %d (%v)", res.Received, n, err)
	}
	for i, p := range procs {
		if p.Exited() {
			t.Fatalf("weft on %s exited during the outage:\n%s", k.l.Hosts[i].Name, p.Log())
		}
	}
	k.startAPI(t)
	if err := k.admin.CoreV1().Nodes().Delete(ctx, nodeName(2), metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, h := range []*lab.Host{h1, h2} {
		waitPeers(t, k.l, h, k.exe, func(p []netip.Prefix) bool { return len(p) == 1 && !slices.Contains(p, podCIDR(2)) })
	}
	k.pingAll(ctx, t, []*lab.Host{h1, h2})
	// The outage and the recovery are in the log.
	if log := procs[0].Log(); !strings.Contains(log, "Nodes; the data path keeps the last known peers") || !strings.Contains(log, "Kubernetes API reachable again") {
		t.Errorf("h1's log does not tell of the outage and the recovery:\n%s", log)
	}
}
