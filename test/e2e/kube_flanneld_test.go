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
// RBAC role (deploy/kube-weft.yml's, which is flannel's). Each side reads
// the other's Node annotations, and every pod reaches every other.
func TestKubeFlanneldInterop(t *testing.T) {
	flanneld := flanneldBinary(t)
	for _, backend := range []string{"vxlan", "host-gw"} {
		t.Run(backend, func(t *testing.T) {
			k := newKubeLab(t, backend)
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
			}
			k.pingAll(ctx, t, k.l.Hosts)
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
