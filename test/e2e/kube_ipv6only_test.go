package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/weft-net/weft/bench/lab"
	"github.com/weft-net/weft/daemon"
)

// TestKubeIPv6Only runs `weft run --kube-subnet-mgr` on three hosts of
// an IPv6-only network ("EnableIPv4": false) whose Nodes have one IPv6
// podCIDR each, with kernel vxlan and host-gw. Each host's subnet is its
// Node's podCIDR (subnet.env: IPv6 lines only); the annotations are
// flanneld's rule's (vxlan: no public-ip or backend-data; host-gw:
// public-ip "0.0.0.0", backend-data "null"); pods ping6 every other; a
// deleted Node is dropped by the others; a restart keeps the subnet and
// the VtepMAC of flannel-v6.1.
func TestKubeIPv6Only(t *testing.T) {
	for _, backend := range []string{"vxlan", "host-gw"} {
		t.Run(backend, func(t *testing.T) { testKubeIPv6Only(t, backend) })
	}
}

func testKubeIPv6Only(t *testing.T, backend string) {
	const network6 = "fd00:10:244::/56"
	k := newKubeLabPods(t, fmt.Sprintf(`{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":%q,"Backend":{"Type":%q}}`, network6, backend), kubePodsIPv6Only)
	l, admin := k.l, k.admin
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	procs := make([]*lab.Proc, len(l.Hosts))
	t.Cleanup(func() {
		if t.Failed() {
			for i, p := range procs {
				if p != nil {
					t.Logf("%s's weft:\n%s", nodeName(i), p.Log())
				}
			}
		}
	})
	mtu := map[string]int{"vxlan": 1430, "host-gw": 1500}[backend]
	for i, h := range l.Hosts {
		procs[i] = k.start(t, i)
		env := string(waitFile(t, procs[i], filepath.Join(h.Dir, "subnet.env")))
		want := fmt.Sprintf("FLANNEL_IPV6_NETWORK=%s\nFLANNEL_IPV6_SUBNET=%s/64\nFLANNEL_MTU=%d\nFLANNEL_IPMASQ=true\n", network6, podCIDR6(i).Addr().Next(), mtu)
		if env != want {
			t.Fatalf("%s subnet.env:\n%s\nwant\n%s", h.Name, env, want)
		}
		if err := h.AttachPod6(podCIDR6(i)); err != nil {
			t.Fatal(err)
		}
	}

	// The annotations: flanneld's rule (lease/kube's
	// TestIPv6OnlyAnnotationsMatchFlanneldRule) with each host's address.
	const p = "flannel.alpha.coreos.com/"
	for i, h := range l.Hosts {
		n, err := admin.CoreV1().Nodes().Get(ctx, nodeName(i), metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]string{
			"volumes.kubernetes.io/controller-managed-attach-detach": "true",
			p + "kube-subnet-manager":                                "true", p + "backend-type": backend, p + "public-ipv6": h.IP6.String(),
		}
		if backend == "vxlan" {
			want[p+"backend-v6-data"] = fmt.Sprintf(`{"VNI":1,"VtepMAC":"%s"}`, linkMAC(t, h.Name, "flannel-v6.1"))
		} else {
			want[p+"backend-v6-data"], want[p+"backend-data"], want[p+"public-ip"] = "null", "null", "0.0.0.0"
		}
		if fmt.Sprint(n.Annotations) != fmt.Sprint(want) {
			t.Errorf("%s annotations\n%v\nwant\n%v", nodeName(i), n.Annotations, want)
		}
		if !nodeNetworkAvailable(n) {
			t.Errorf("%s: no NetworkUnavailable=False (FlannelIsUp): %+v", nodeName(i), n.Status.Conditions)
		}
	}

	k.ping6All(ctx, t, l.Hosts)
	h1, h2 := l.Hosts[0], l.Hosts[1]
	if l := kubeSh(t, k, 0, "ip", "-4", "route"); strings.Contains(l, "proto 87") || strings.Contains(l, "flannel") {
		t.Errorf("h1: IPv4 routes of weft's on an IPv6-only network:\n%s", l)
	}
	if backend == "vxlan" {
		if links := kubeSh(t, k, 0, "ip", "link"); strings.Contains(links, "flannel.1") || !strings.Contains(links, "flannel-v6.1") {
			t.Errorf("h1 devices:\n%s", links)
		}
	}
	for i, h := range l.Hosts {
		waitPeers6(t, k, h, func(p []netip.Prefix) bool { return len(p) == 2 && !slices.Contains(p, podCIDR6(i)) })
	}
	// flannel-v6.1 deleted under a running daemon: weft recreates it
	// with the MAC of backend-v6-data and every peer's entries (flanneld
	// v0.28.9 watches only flannel.1, which an IPv6-only host lacks).
	if backend == "vxlan" {
		mac := linkMAC(t, h1.Name, "flannel-v6.1")
		kubeSh(t, k, 0, "ip", "link", "del", "flannel-v6.1")
		k.ping6All(ctx, t, l.Hosts)
		if got := linkMAC(t, h1.Name, "flannel-v6.1"); got != mac {
			t.Errorf("flannel-v6.1 came back with MAC %s, not the lease's %s", got, mac)
		}
	}

	// A deleted Node is no peer of the others.
	if err := admin.CoreV1().Nodes().Delete(ctx, nodeName(2), metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	procs[2].Stop()
	for _, h := range []*lab.Host{h1, h2} {
		waitPeers6(t, k, h, func(p []netip.Prefix) bool { return len(p) == 1 && !slices.Contains(p, podCIDR6(2)) })
	}

	// A restart keeps the subnet and (vxlan) flannel-v6.1's MAC.
	before := nodeAnnotations(t, admin, nodeName(0))
	procs[0].Stop()
	procs[0] = k.start(t, 0)
	waitFile(t, procs[0], filepath.Join(h1.Dir, "subnet.env"))
	after := nodeAnnotations(t, admin, nodeName(0))
	if after[p+"backend-v6-data"] != before[p+"backend-v6-data"] {
		t.Errorf("restart changed backend-v6-data: %s -> %s", before[p+"backend-v6-data"], after[p+"backend-v6-data"])
	}
	k.ping6All(ctx, t, []*lab.Host{h1, h2})
	for i, p := range procs[:2] {
		if p.Exited() {
			t.Errorf("weft on %s exited:\n%s", nodeName(i), p.Log())
		}
	}
}

// ping6All waits until every pod reaches every other over IPv6.
func (k *kubeLab) ping6All(ctx context.Context, t *testing.T, hosts []*lab.Host) {
	t.Helper()
	for _, a := range hosts {
		for _, b := range hosts {
			if a == b {
				continue
			}
			for deadline := time.Now().Add(20 * time.Second); ; {
				res, err := lab.Ping(ctx, a.Pod, b.PodIP6, 1, 0, time.Second)
				if err == nil && res.Received == 1 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("no IPv6 path %s -> %s (%s -> %s) within 20 s: %v", a.Name, b.Name, a.PodIP6, b.PodIP6, err)
				}
			}
		}
	}
}

// waitPeers6 waits until h's daemon reports peers (by IPv6 subnet, none
// with an IPv4 one) that ok accepts.
func waitPeers6(t *testing.T, k *kubeLab, h *lab.Host, ok func([]netip.Prefix) bool) {
	t.Helper()
	var got []netip.Prefix
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		out, err := k.l.Exec(h.Name, k.exe, "status", "--json", "--debug-socket", filepath.Join(h.Dir, "debug.sock"))
		var r daemon.StatusReport
		if err != nil || json.Unmarshal(out, &r) != nil {
			continue
		}
		got = got[:0]
		for _, p := range r.Peers {
			if p.Subnet.IsValid() || p.IPv6Subnet == nil || p.PublicIPv6 == nil {
				t.Fatalf("%s: a peer that is not IPv6-only: %+v", h.Name, p)
			}
			got = append(got, *p.IPv6Subnet)
		}
		if ok(got) {
			return
		}
	}
	t.Fatalf("%s: peers %v", h.Name, got)
}

// kubeSh runs a command in host i's namespace.
func kubeSh(t *testing.T, k *kubeLab, i int, argv ...string) string {
	t.Helper()
	out, err := k.l.Exec(k.l.Hosts[i].Name, argv...)
	if err != nil {
		t.Fatalf("%s: %v: %v\n%s", k.l.Hosts[i].Name, argv, err, out)
	}
	return string(out)
}

// TestKubeIPv6OnlyFlanneld: flanneld v0.28.9 --kube-subnet-mgr on h2,
// weft on h1 and h3, one IPv6-only network (Nodes with one IPv6
// podCIDR), vxlan and host-gw. flanneld's annotations are the ones weft
// writes (lease/kube's transcription of its rule agrees with the real
// thing), and every pod reaches every other over IPv6. Unlike etcd mode
// (docs/dualstack.md), flanneld's kube store marks IPv6-only leases
// IPv6-only, so it programs its peers.
func TestKubeIPv6OnlyFlanneld(t *testing.T) {
	flanneld := flanneldBinary(t)
	for _, backend := range []string{"vxlan", "host-gw"} {
		t.Run(backend, func(t *testing.T) {
			k := newKubeLabPods(t, fmt.Sprintf(`{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":%q}}`, backend), kubePodsIPv6Only)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			for i, h := range k.l.Hosts {
				var p *lab.Proc
				if i == 1 {
					p = k.startFlanneld(t, flanneld, i)
				} else {
					p = k.start(t, i)
				}
				waitFile(t, p, filepath.Join(h.Dir, "subnet.env"))
				if err := h.AttachPod6(podCIDR6(i)); err != nil {
					t.Fatal(err)
				}
			}
			k.ping6All(ctx, t, k.l.Hosts)
			// The same annotation keys on every Node, each host's own
			// values; host-gw's public-ip is "0.0.0.0" on all of them.
			const p = "flannel.alpha.coreos.com/"
			keys := func(a map[string]string) []string { return slices.Sorted(maps.Keys(a)) }
			weft := nodeAnnotations(t, k.admin, nodeName(0))
			for i, h := range k.l.Hosts {
				a := nodeAnnotations(t, k.admin, nodeName(i))
				if !slices.Equal(keys(a), keys(weft)) || a[p+"public-ipv6"] != h.IP6.String() || a[p+"backend-type"] != backend {
					t.Errorf("%s annotations %v; weft's h1: %v", nodeName(i), a, weft)
				}
				if backend == "host-gw" && (a[p+"public-ip"] != "0.0.0.0" || a[p+"backend-data"] != "null" || a[p+"backend-v6-data"] != "null") {
					t.Errorf("%s annotations %v", nodeName(i), a)
				}
			}
		})
	}
}
