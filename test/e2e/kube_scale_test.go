package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/bench/lab"
	"github.com/weft-net/weft/bench/memcg"
	"github.com/weft-net/weft/bench/scale"
	"github.com/weft-net/weft/daemon"
)

// TestKubeScale measures weft in kube mode against a real API server
// holding WEFT_KUBE_SCALE Node objects shaped like a kubelet's (images,
// conditions, labels, and the server's managedFields): the daemon's RSS
// with each backend, how long the first list takes to reach the data
// path, and how long one Node's annotation change takes to reach it. It
// reports figures (docs/kubernetes.md), asserting none; it runs only when
// WEFT_KUBE_SCALE is set (make kube-scale).
//
// WEFT_KUBE_SCALE_MEMORY_MAX (a size: 50MiB, kube-flannel.yml's limit)
// runs weft run in a memory cgroup of that hard limit, as in a pod, and
// reports the cgroup's peak charge and OOM kills: VmRSS alone cannot tell
// whether weft lives in the limit, where the kernel reclaims the binary's
// pages before it kills. WEFT_KUBE_SCALE_BACKENDS (default vxlan,udp)
// picks the backends; WEFT_KUBE_SCALE_FLAGS adds weft run flags
// (--route-nexthops); WEFT_KUBE_SCALE_PROFILES names a directory for
// weft's heap profiles at the steady state and after the churn.
func TestKubeScale(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("WEFT_KUBE_SCALE"))
	if n <= 0 {
		t.Skip("a measurement: WEFT_KUBE_SCALE=5000 (make kube-scale)")
	}
	var memMax int64
	if s := os.Getenv("WEFT_KUBE_SCALE_MEMORY_MAX"); s != "" {
		var err error
		if memMax, err = memcg.ParseSize(s); err != nil || memMax < 16<<20 {
			t.Fatalf("WEFT_KUBE_SCALE_MEMORY_MAX=%q: want a size of at least 16MiB, such as 50MiB", s)
		}
	}
	backends := "vxlan,udp"
	if s := os.Getenv("WEFT_KUBE_SCALE_BACKENDS"); s != "" {
		backends = s
	}
	for _, backend := range strings.Split(backends, ",") {
		t.Run(backend, func(t *testing.T) { kubeScale(t, backend, n, memMax) })
	}
}

func kubeScale(t *testing.T, backend string, n int, memMax int64) {
	var cg *memcg.Cgroup
	if memMax > 0 {
		var err error
		if cg, err = memcg.New(memMax, fmt.Sprintf("weft-kubescale-%d-%s", os.Getpid(), backend)); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(cg.Remove) // registered before the lab's, so it runs after the lab stopped weft
	}
	k := newKubeLabNetwork(t, backend, "10.0.0.0/8")
	k.env = []string{"GODEBUG=gctrace=1"} // the heap at each GC, in the log
	// weft run from a binary of its own, out of the page cache: the lab's
	// weft etcd runs the same file (memcg.ColdCopy says why that matters).
	cold := filepath.Join(k.l.Dir, "weft-run")
	bin, err := memcg.ColdCopy(k.exe, cold)
	if err == nil && cg != nil {
		bin, err = cg.Wrap(bin)
	}
	if err != nil {
		t.Fatal(err)
	}
	k.runExe = bin
	k.runFlags = strings.Fields(os.Getenv("WEFT_KUBE_SCALE_FLAGS")) // e.g. --route-nexthops
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	created := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += 8 {
				if _, err := k.admin.CoreV1().Nodes().Create(ctx, fakeKubeletNode(i, backend), metav1.CreateOptions{}); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	figure(t, "%d Nodes created in %v", n, time.Since(created).Round(time.Millisecond))

	h := k.l.Hosts[0]
	start := time.Now()
	p := k.start(t, 0)
	if cg != nil {
		if err := cg.Join(p.Pid()); err != nil {
			t.Fatal(err)
		}
		// Also when the run fails midway: an OOM kill is a result.
		defer func() {
			peak, ooms := cg.Peak()
			state := "running"
			if p.Exited() {
				state = fmt.Sprintf("exited (%v)", p.Wait())
			}
			figure(t, "%s: in a memory cgroup limited to %s: charged at most %s, OOM kills %d; weft run %s", backend, mib(memMax), mib(int64(peak)), ooms, state)
		}()
	}
	waitFile(t, p, filepath.Join(h.Dir, "subnet.env"))
	if l := grepLine(fullLog(p), "Go memory limit"); l != "" {
		figure(t, "%s: log: %s", backend, l)
	}
	alive := func() {
		t.Helper()
		if p.Exited() {
			t.Fatalf("weft run exited: %v:\n%s", p.Wait(), p.Log())
		}
	}
	// weft status may time out while the backend applies thousands of
	// peers: a failed poll counts as "not yet".
	failedPolls := 0
	status := func() daemon.StatusReport {
		out, err := k.l.Exec(h.Name, k.exe, "status", "--json", "--debug-socket", filepath.Join(h.Dir, "debug.sock"))
		var r daemon.StatusReport
		if err != nil || json.Unmarshal(out, &r) != nil {
			failedPolls++
			return daemon.StatusReport{}
		}
		return r
	}
	// The data path's peers: for vxlan the kernel's FDB entries (weft
	// status can time out while thousands are programmed), for udp the
	// engine's table as status shows it.
	// The FDB is read over netlink from this process (a dump of 5,000
	// entries takes a few ms): `bridge fdb show`, a process per poll,
	// took tens of ms of the CPUs the start shares, and its 100 ms
	// period made the start's figure coarse.
	var nlh *netlink.Handle
	if backend == "vxlan" {
		ns, err := netns.GetFromName(h.Name)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ns.Close() })
		if nlh, err = netlink.NewHandleAt(ns); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nlh.Close)
	}
	peerIPs := func() map[string]bool {
		ips := map[string]bool{}
		if backend == "vxlan" {
			link, err := nlh.LinkByName("flannel.1")
			if err != nil {
				return ips // not made yet
			}
			fdb, _ := nlh.NeighList(link.Attrs().Index, unix.AF_BRIDGE) // interrupted: partial, "not yet"
			for _, f := range fdb {
				if f.IP != nil && f.LinkIndex == link.Attrs().Index {
					ips[f.IP.String()] = true
				}
			}
			return ips
		}
		for _, pe := range status().Peers {
			ips[pe.PublicIP.String()] = true
		}
		return ips
	}
	poll := 100 * time.Millisecond // a status of every peer per poll for udp
	if backend == "vxlan" {
		poll = 20 * time.Millisecond
	}
	for deadline := time.Now().Add(5 * time.Minute); len(peerIPs()) < n; time.Sleep(poll) {
		alive()
		if time.Now().After(deadline) {
			t.Fatalf("%d peers after 5 min, want %d", len(peerIPs()), n)
		}
	}
	figure(t, "%s: weft run to all %d peers in the data path: %v", backend, n, time.Since(start).Round(time.Millisecond))
	if synced, applied := logGap(fullLog(p), "Nodes listed", "lease acquired"); synced != "" {
		figure(t, "%s: log: Nodes listed at %s, lease acquired at %s", backend, synced, applied)
	}
	// The steady state: the daemon hands back start-up's garbage and the
	// binary's pages start-up touched 3 s after the full change.
	time.Sleep(5 * time.Second)
	rss, anon := memKiB(t, p.Pid())
	figure(t, "%s: RSS with %d Nodes: %d KiB (RssAnon %d KiB); major page faults since start: %d", backend, n, rss, anon, majFaults(t, p.Pid()))
	charged(t, cg, backend, "at the steady state")
	saveProfile(t, h.Dir, "heap?gc=1", backend+"-steady.heap")

	// One Node's public IP changes: how long until h1's data path has it.
	i := n / 2
	ip := fmt.Sprintf("198.19.%d.%d", i/250, 1+i%250)
	patch := fmt.Sprintf(`{"metadata":{"annotations":{"flannel.alpha.coreos.com/public-ip":%q}}}`, ip)
	changed := time.Now()
	if _, err := k.admin.CoreV1().Nodes().Patch(ctx, fakeName(i), types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(20 * time.Millisecond) {
		alive()
		if peerIPs()[ip] {
			break
		}
		if time.Now().After(deadline) {
			t.Error("the changed public IP never reached the data path")
			break
		}
	}
	figure(t, "%s: one Node's annotation change to h1's data path at %d Nodes: %v (including polls of %d peers' state)", backend, n, time.Since(changed).Round(time.Millisecond), n)
	rss, anon = memKiB(t, p.Pid())
	figure(t, "%s: RSS after: %d KiB (RssAnon %d KiB); weft status polls that timed out: %d", backend, rss, anon, failedPolls)

	// Churn: 100 other Nodes' public IPs change at 50/s. The daemon's CPU
	// over the 2 s of events and 1 s after (no status polls meanwhile;
	// the idle CPU of as long a window before, for comparison), then how
	// long after the last event h1's data path has them all.
	const events, rate = 100, 50
	idle0 := cpuTime(t, p.Pid())
	time.Sleep(3 * time.Second)
	cpu0, maj0, run0 := cpuTime(t, p.Pid()), majFaults(t, p.Pid()), onCPU(p.Pid())
	// The most VmRSS and RssAnon while the events arrive and are applied.
	sampled := make(chan [2]int)
	stopSampling := make(chan struct{})
	go func() {
		var most [2]int
		for tick := time.NewTicker(50 * time.Millisecond); ; {
			if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.Pid())); err == nil {
				most[0] = max(most[0], statusKiB(b, "VmRSS:"))
				most[1] = max(most[1], statusKiB(b, "RssAnon:"))
			}
			select {
			case <-tick.C:
			case <-stopSampling:
				tick.Stop()
				sampled <- most
				return
			}
		}
	}()
	// Where the CPU goes from the first event on (events, convergence).
	profiled := make(chan struct{})
	go func() {
		defer close(profiled)
		saveProfile(t, h.Dir, "profile?seconds=20", backend+"-churn.cpu")
	}()
	defer func() { <-profiled }() // it logs through t: done before the test is
	want := make([]string, 0, events)
	churn := time.Now()
	for j := range events {
		i := (n/4 + j*37) % n
		ip := fmt.Sprintf("198.19.%d.%d", 100+j/250, 1+j%250)
		want = append(want, ip)
		patch := fmt.Sprintf(`{"metadata":{"annotations":{"flannel.alpha.coreos.com/public-ip":%q}}}`, ip)
		if _, err := k.admin.CoreV1().Nodes().Patch(ctx, fakeName(i), types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Until(churn.Add(time.Duration(j+1) * time.Second / rate)))
	}
	lastEvent := time.Now()
	time.Sleep(time.Until(churn.Add(3 * time.Second)))
	cpu, maj, run := cpuTime(t, p.Pid())-cpu0, majFaults(t, p.Pid())-maj0, onCPU(p.Pid())-run0
	figure(t, "%s: churn of %d Node events at %d/s, %d Nodes: CPU %v per event (%v from the first event to 3 s after it; idle 3 s before: %v); major page faults meanwhile: %d", backend, events, rate, n,
		(cpu / events).Round(10*time.Microsecond), cpu, cpu0-idle0, maj)
	figure(t, "%s: churn: on-CPU time by schedstat %v per event (%v in the window)", backend, (run / events).Round(time.Microsecond), run.Round(time.Microsecond))
	close(stopSampling)
	most := <-sampled
	figure(t, "%s: during the churn: VmRSS at most %d KiB, RssAnon at most %d KiB", backend, most[0], most[1])
	charged(t, cg, backend, "after the churn")
	firstCheck := time.Since(lastEvent)
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(20 * time.Millisecond) {
		alive()
		have := peerIPs()
		missing := 0
		for _, ip := range want {
			if !have[ip] {
				missing++
			}
		}
		if missing == 0 {
			figure(t, "%s: churn: all in h1's data path %v after the last event (first checked %v after it; polls included)", backend, time.Since(lastEvent).Round(time.Millisecond), firstCheck.Round(time.Millisecond))
			break
		}
		if time.Now().After(deadline) {
			// A result, not the end of the run: the memory figures follow.
			t.Errorf("churn: %d of %d changed public IPs never reached the data path", missing, events)
			figure(t, "%s: churn: %d of %d changed public IPs not in h1's data path %v after the last event", backend, missing, events, time.Since(lastEvent).Round(time.Millisecond))
			break
		}
	}
	<-profiled
	// Go gives freed heap back to the kernel over minutes, not at once.
	time.Sleep(30 * time.Second)
	alive()
	figure(t, "%s: RSS 30 s later: %d KiB (%s); major page faults since start: %d", backend, rssKiB(t, p.Pid()), rssSplit(p.Pid()), majFaults(t, p.Pid()))
	// What weft read of its binary: where the file-backed part goes.
	if parts, err := cachedByPart(cold, 14); err == nil {
		figure(t, "%s: weft's binary in the page cache: %s", backend, parts)
	} else {
		t.Logf("the binary's page cache: %v", err)
	}
	saveProfile(t, h.Dir, "heap?gc=1", backend+"-after-churn.heap")
	var lastGC string
	for _, l := range strings.Split(p.Log(), "\n") {
		if strings.HasPrefix(l, "gc ") {
			lastGC = l
		}
	}
	figure(t, "%s: last GC: %s", backend, lastGC)
}

func fakeName(i int) string { return fmt.Sprintf("node-%05d", i) }

// fakeKubeletNode is Node i as a kubelet registers and reports it, with
// podCIDR 10.(1+i/256).(i%256).0/24 and the annotations of a kube-mode
// daemon of backend (public IP in 198.18.0.0/15, no traffic goes there).
func fakeKubeletNode(i int, backend string) *v1.Node {
	name := fakeName(i)
	backendType, backendData := "", "null" // udp, as flanneld writes it
	if backend == "vxlan" {
		backendType, backendData = "vxlan", fmt.Sprintf(`{"VNI":1,"VtepMAC":"0a:58:%02x:%02x:%02x:01"}`, i>>8, i&255, i%7)
	}
	n := &v1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name,
			Labels: map[string]string{"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
				"beta.kubernetes.io/os": "linux", "beta.kubernetes.io/arch": "amd64", "node.kubernetes.io/instance-type": "m5.xlarge",
				"topology.kubernetes.io/region": "eu-west-1", "topology.kubernetes.io/zone": "eu-west-1a"},
			Annotations: map[string]string{
				"volumes.kubernetes.io/controller-managed-attach-detach": "true",
				"node.alpha.kubernetes.io/ttl":                           "0",
				"flannel.alpha.coreos.com/kube-subnet-manager":           "true",
				"flannel.alpha.coreos.com/backend-type":                  backendType,
				"flannel.alpha.coreos.com/backend-data":                  backendData,
				"flannel.alpha.coreos.com/public-ip":                     fmt.Sprintf("198.18.%d.%d", i/250, 1+i%250),
			}},
		Spec: v1.NodeSpec{PodCIDR: fmt.Sprintf("10.%d.%d.0/24", 1+i/256, i%256)},
	}
	n.Spec.PodCIDRs = []string{n.Spec.PodCIDR}
	now := metav1.Now()
	for _, c := range []v1.NodeConditionType{"MemoryPressure", "DiskPressure", "PIDPressure", "Ready"} {
		n.Status.Conditions = append(n.Status.Conditions, v1.NodeCondition{Type: c, Status: "False", LastHeartbeatTime: now, LastTransitionTime: now,
			Reason: "Kubelet" + string(c), Message: "kubelet has sufficient " + strings.ToLower(string(c))})
	}
	for j := range 30 {
		n.Status.Images = append(n.Status.Images, v1.ContainerImage{
			Names:     []string{fmt.Sprintf("registry.example.com/team%d/app%d@sha256:%064x", j%5, j, i*31+j), fmt.Sprintf("registry.example.com/team%d/app%d:v1.%d.0", j%5, j, j)},
			SizeBytes: int64(50+j) << 20})
	}
	n.Status.Capacity = v1.ResourceList{v1.ResourceCPU: resource.MustParse("4"), v1.ResourceMemory: resource.MustParse("16Gi"), v1.ResourcePods: resource.MustParse("110")}
	n.Status.Allocatable = n.Status.Capacity
	n.Status.NodeInfo = v1.NodeSystemInfo{KernelVersion: "6.1.0-28-amd64", OSImage: "Debian GNU/Linux 12 (bookworm)", ContainerRuntimeVersion: "containerd://1.7.24",
		KubeletVersion: "v1.37.2", OperatingSystem: "linux", Architecture: "amd64", MachineID: fmt.Sprintf("%032x", i), SystemUUID: fmt.Sprintf("%032x", i+1), BootID: fmt.Sprintf("%032x", i+2)}
	n.Status.Addresses = []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: fmt.Sprintf("198.18.%d.%d", i/250, 1+i%250)}, {Type: v1.NodeHostName, Address: name}}
	return n
}

// majFaults is how many pages the process faulted in from disk so far
// (/proc/<pid>/stat): in a memory cgroup too small for its working set,
// the kernel drops the binary's pages and the process reads them again.
func majFaults(t *testing.T, pid int) uint64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	n, err := strconv.ParseUint(f[9], 10, 64) // field 12, majflt
	if err != nil {
		t.Fatalf("/proc/%d/stat: %q", pid, b)
	}
	return n
}

// fullLog is the whole log of p (Log is its tail, which at thousands of
// peers no longer holds the start).
func fullLog(p *lab.Proc) string {
	b, _ := os.ReadFile(p.LogPath)
	return string(b)
}

// onCPU is the time the process's threads have run so far, in
// nanoseconds (scale.OnCPU): cpuTime counts 10 ms ticks, too coarse for
// 100 events of well under a millisecond each.
func onCPU(pid int) time.Duration {
	d, _ := scale.OnCPU(pid)
	return d
}

// cpuTime is the process's user+system CPU time so far
// (/proc/<pid>/stat, in USER_HZ ticks: 100 on Linux).
func cpuTime(t *testing.T, pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	ut, err1 := strconv.ParseUint(f[11], 10, 64) // field 14, utime
	st, err2 := strconv.ParseUint(f[12], 10, 64) // field 15, stime
	if err1 != nil || err2 != nil {
		t.Fatalf("/proc/%d/stat: %q", pid, b)
	}
	return time.Duration(ut+st) * time.Second / 100
}

func rssKiB(t *testing.T, pid int) int {
	rss, _ := memKiB(t, pid)
	return rss
}

// memKiB is a process's VmRSS and RssAnon (its heap and stacks, which the
// kernel cannot reclaim without swap, unlike the binary's pages).
func memKiB(t *testing.T, pid int) (rss, anon int) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	return statusKiB(b, "VmRSS:"), statusKiB(b, "RssAnon:")
}

// statusKiB is the field key of /proc/<pid>/status, in KiB.
func statusKiB(status []byte, key string) int {
	for _, l := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(l, key); ok {
			kb, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			return kb
		}
	}
	return 0
}

// charged reports what the memory cgroup cg (if any) is charged now.
func charged(t *testing.T, cg *memcg.Cgroup, backend, when string) {
	t.Helper()
	if cg == nil {
		return
	}
	usage, anon, file := cg.Charge()
	figure(t, "%s: memory cgroup %s: charged %s (anonymous %s, page cache %s)", backend, when, mib(int64(usage)), mib(int64(anon)), mib(int64(file)))
}

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

// grepLine is the first line of log holding s.
func grepLine(log, s string) string {
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, s) {
			return l
		}
	}
	return ""
}

// saveProfile writes the profile /debug/pprof/<query> of the weft run
// whose debug socket is in dir to $WEFT_KUBE_SCALE_PROFILES, when that is
// set, as kube-<name>.pb.gz: the live heap (heap?gc=1), or where the CPU
// goes (profile?seconds=20), when weft does not fit its limit (go tool
// pprof -top).
func saveProfile(t *testing.T, dir, query, name string) {
	out := os.Getenv("WEFT_KUBE_SCALE_PROFILES")
	if out == "" {
		return
	}
	sock := filepath.Join(dir, "debug.sock")
	c := http.Client{Timeout: time.Minute, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	resp, err := c.Get("http://weft/debug/pprof/" + query)
	if err != nil {
		t.Logf("profile %s: %v", query, err)
		return
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("%s: %s", resp.Status, b)
	}
	if err == nil {
		err = os.WriteFile(filepath.Join(out, "kube-"+name+".pb.gz"), b, 0o644)
	}
	if err != nil {
		t.Logf("profile %s: %v", query, err)
	}
}

// logGap finds the times of the first lines holding a and b.
func logGap(log, a, b string) (string, string) {
	var ta, tb string
	for _, l := range strings.Split(log, "\n") {
		ts, _, _ := strings.Cut(strings.TrimPrefix(l, "time="), " ")
		if ta == "" && strings.Contains(l, a) {
			ta = ts
		}
		if tb == "" && strings.Contains(l, b) {
			tb = ts
		}
	}
	return ta, tb
}

// rssSplit says how much of a process's RSS is anonymous (heap, stacks)
// and how much file-backed (the binary's text and data).
func rssSplit(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return err.Error()
	}
	var parts []string
	for _, l := range strings.Split(string(b), "\n") {
		for _, k := range []string{"Rss:", "Anonymous:", "Shared_Clean:", "Private_Clean:"} {
			if v, ok := strings.CutPrefix(l, k); ok {
				parts = append(parts, k+" "+strings.Join(strings.Fields(v), " "))
			}
		}
	}
	return strings.Join(parts, ", ")
}
