package e2e

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/weft-net/weft/bench/lab"
)

// TestKubeFlanneldInterop runs a Kubernetes cluster of mixed hosts, as a
// rolling move from kube-flannel.yml to weft has them: flanneld v0.28.9
// with --kube-subnet-mgr on h2, weft on h1 and h3, one API server, one
// RBAC role (deploy/kube-weft.yml's, which is flannel's), IPv4 and
// dual-stack. Each side reads the other's Node annotations, and every pod
// reaches every other over every family.
func TestKubeFlanneldInterop(t *testing.T) {
	flanneld := flanneldBinary(t)
	for _, tc := range []struct {
		backend string
		dual    bool
	}{{"vxlan", false}, {"host-gw", false}, {"vxlan", true}, {"host-gw", true}} {
		name := tc.backend
		conf := `{"Network":"10.244.0.0/16","Backend":{"Type":"` + tc.backend + `"}}`
		if tc.dual {
			name += "-dualstack"
			conf = `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"` + tc.backend + `"}}`
		}
		t.Run(name, func(t *testing.T) {
			k := newKubeLabConf(t, conf, tc.dual)
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
				if err := h.AttachPod(podCIDR(i)); err != nil {
					t.Fatal(err)
				}
				if tc.dual {
					if err := h.AttachPod6(podCIDR6(i)); err != nil {
						t.Fatal(err)
					}
				}
			}
			k.pingAll(ctx, t, k.l.Hosts)
			if tc.dual {
				for _, a := range k.l.Hosts {
					for _, b := range k.l.Hosts {
						if a == b {
							continue
						}
						if res, err := lab.Ping(ctx, a.Pod, b.PodIP6, 3, 20*time.Millisecond, 2*time.Second); err != nil || res.Received == 0 {
							t.Fatalf("ping6 %s -> %s (%s): %v", a.Name, b.Name, b.PodIP6, err)
						}
					}
				}
			}
		})
	}
}

// startFlanneld starts flanneld --kube-subnet-mgr on host i as Node
// h<i+1>, with weft's kubeconfig and net-conf, as kube-flannel.yml runs it.
func (k *kubeLab) startFlanneld(t *testing.T, flanneld string, i int) *lab.Proc {
	t.Helper()
	h := k.l.Hosts[i]
	os.Remove(filepath.Join(h.Dir, "subnet.env"))
	p, err := k.l.Start(h.Name, "flanneld-"+nodeName(i), "env", "NODE_NAME="+nodeName(i), flanneld, "--kube-subnet-mgr",
		"--kubeconfig-file", k.kubeconfig, "--net-config-path", k.netConf, "--iface", h.Underlay, "--ip-masq",
		"--subnet-file", filepath.Join(h.Dir, "subnet.env"), "--healthz-port=0")
	if err != nil {
		t.Fatal(err)
	}
	return p
}
