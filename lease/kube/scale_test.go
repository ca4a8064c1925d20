package kube

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/weft-net/weft/lease"
	"github.com/weft-net/weft/lease/kube/kubetest"
)

// TestStoreScale measures the store alone against a real API server
// holding WEFT_KUBE_SCALE kubelet-shaped Nodes: the Go heap the store
// keeps once all are peers, and the time from start to the first full
// snapshot. Figures only; it runs only with WEFT_KUBE_SCALE set.
func TestStoreScale(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("WEFT_KUBE_SCALE"))
	if n <= 0 {
		t.Skip("a measurement: WEFT_KUBE_SCALE=5000")
	}
	srv := kubetest.Start(t)
	admin := srv.Client(t, kubetest.Admin)
	grantDeployRBAC(t, admin, nil)
	ctx := kubetest.Ctx(t, 10*time.Minute)
	createNode(t, admin, "h1", []string{"10.244.1.0/24"}, map[string]string{})
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += 8 {
				node := scaleNode(i)
				if _, err := admin.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	start := time.Now()
	s := newTestStore(t, srv, storeOpts{netConf: "net-conf-vxlan.json"})
	s.log = s.log.WithGroup("quiet")
	snaps := startWatch(t, s)
	watchUntil(t, snaps, "all peers", func(ls []lease.Lease) bool { return len(ls) == n })
	took := time.Since(start)
	var after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&after)
	t.Logf("FIGURE %d Nodes: start to full snapshot %v; store heap %.1f MiB (HeapInuse %d -> %d)", n, took.Round(time.Millisecond),
		float64(after.HeapInuse-before.HeapInuse)/(1<<20), before.HeapInuse, after.HeapInuse)
}

func scaleNode(i int) *v1.Node {
	name := fmt.Sprintf("node-%05d", i)
	n := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"kubernetes.io/hostname": name},
		Annotations: peerAnnotations(fmt.Sprintf("198.18.%d.%d", i/250, 1+i%250), "vxlan", fmt.Sprintf(`{"VNI":1,"VtepMAC":"0a:58:%02x:%02x:00:01"}`, i>>8, i&255))},
		Spec: v1.NodeSpec{PodCIDR: fmt.Sprintf("10.%d.%d.0/24", 1+i/256, i%256)}}
	n.Spec.PodCIDRs = []string{n.Spec.PodCIDR}
	for j := range 30 {
		n.Status.Images = append(n.Status.Images, v1.ContainerImage{Names: []string{fmt.Sprintf("registry.example.com/app%d@sha256:%064x", j, i*31+j)}, SizeBytes: 1 << 26})
	}
	return n
}
