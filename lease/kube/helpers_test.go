package kube

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	authzv1 "k8s.io/api/authorization/v1"
	v1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/weft-net/weft/lease"
	"github.com/weft-net/weft/lease/kube/kubetest"
)

func deployRBAC(t *testing.T) (*rbacv1.ClusterRole, *rbacv1.ClusterRoleBinding) {
	return kubetest.DeployRBAC(t, "../../deploy/kube-weft.yml")
}

// grantDeployRBAC applies deploy/'s ClusterRole (with edit applied to it)
// and binding, and waits until the authorizer sees the role.
func grantDeployRBAC(t *testing.T, admin kubernetes.Interface, edit func(*rbacv1.ClusterRole)) *rbacv1.ClusterRole {
	t.Helper()
	ctx := kubetest.Ctx(t, time.Minute)
	role, binding := deployRBAC(t)
	if edit != nil {
		edit(role)
	}
	if old, err := admin.RbacV1().ClusterRoles().Get(ctx, role.Name, metav1.GetOptions{}); err == nil {
		role.ResourceVersion = old.ResourceVersion
		if _, err := admin.RbacV1().ClusterRoles().Update(ctx, role, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	} else if _, err := admin.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.RbacV1().ClusterRoleBindings().Get(ctx, binding.Name, metav1.GetOptions{}); err != nil {
		if _, err := admin.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// The RBAC authorizer reads roles through its own informer.
	for _, p := range append(slices.Clone(Needed), Permission{Verb: "get", Resource: "pods"}) {
		want := allows(role, p)
		for deadline := time.Now().Add(10 * time.Second); ; {
			r, err := admin.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authzv1.SubjectAccessReview{Spec: authzv1.SubjectAccessReviewSpec{
				User: kubetest.Weft, Groups: []string{"system:serviceaccounts", "system:serviceaccounts:kube-flannel", "system:authenticated"},
				ResourceAttributes: &authzv1.ResourceAttributes{Verb: p.Verb, Resource: p.Resource, Subresource: p.Subresource, Namespace: "kube-flannel"},
			}}, metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if r.Status.Allowed == want {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("RBAC: %s allowed=%v, want %v", p, r.Status.Allowed, want)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return role
}

func allows(role *rbacv1.ClusterRole, p Permission) bool {
	res := p.Resource
	if p.Subresource != "" {
		res += "/" + p.Subresource
	}
	for _, r := range role.Rules {
		if slices.Contains(r.Resources, res) && slices.Contains(r.Verbs, p.Verb) {
			return true
		}
	}
	return false
}

// createNode creates a Node as a kubelet registers it (with the
// kubelet's annotation), with podCIDRs as the node IPAM controller sets
// them, plus annotations.
func createNode(t *testing.T, admin kubernetes.Interface, name string, podCIDRs []string, annotations map[string]string) *v1.Node {
	t.Helper()
	n := &v1.Node{ObjectMeta: metav1.ObjectMeta{
		Name:        name,
		Labels:      map[string]string{"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"},
		Annotations: map[string]string{"volumes.kubernetes.io/controller-managed-attach-detach": "true"},
	}}
	if annotations == nil {
		n.Annotations = nil // as a Node with no annotations at all
	}
	for k, v := range annotations {
		n.Annotations[k] = v
	}
	if len(podCIDRs) > 0 {
		n.Spec.PodCIDR, n.Spec.PodCIDRs = podCIDRs[0], podCIDRs
	}
	out, err := admin.CoreV1().Nodes().Create(kubetest.Ctx(t, time.Minute), n, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// peerAnnotations are the annotations a kube-mode daemon writes.
func peerAnnotations(ip, backendType, data string) map[string]string {
	return map[string]string{
		"flannel.alpha.coreos.com/kube-subnet-manager": "true",
		"flannel.alpha.coreos.com/public-ip":           ip,
		"flannel.alpha.coreos.com/backend-type":        backendType,
		"flannel.alpha.coreos.com/backend-data":        data,
	}
}

type storeOpts struct {
	user, node, netConf string
	getenv              map[string]string
}

// newTestStore is a Store of this test's API server as user (default
// kubetest.Weft) for node (default h1), with the vxlan net-conf.
func newTestStore(t *testing.T, srv *kubetest.Server, so storeOpts) *Store {
	t.Helper()
	if so.user == "" {
		so.user = kubetest.Weft
	}
	if so.netConf == "" {
		so.netConf = "net-conf-vxlan.json"
	}
	env := so.getenv
	if env == nil && so.node == "" {
		env = map[string]string{"NODE_NAME": "h1"}
	}
	s, err := New(Options{
		REST:                      srv.Config(so.user),
		NetConfPath:               filepath.Join("testdata", so.netConf),
		SetNodeNetworkUnavailable: true,
		NodeName:                  so.node,
		Getenv:                    func(k string) string { return env[k] },
		OwnNodeWait:               5 * time.Second,
		Logger:                    slog.New(slog.NewTextHandler(testWriter{t}, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

// watchUntil reads snapshots until ok says one is the one wanted.
func watchUntil(t *testing.T, snaps <-chan []lease.Lease, what string, ok func([]lease.Lease) bool) []lease.Lease {
	t.Helper()
	timeout := time.After(20 * time.Second)
	var last []lease.Lease
	for {
		select {
		case s := <-snaps:
			if ok(s) {
				return s
			}
			last = s
		case <-timeout:
			t.Fatalf("no snapshot with %s within 20 s; last: %v", what, last)
		}
	}
}

func startWatch(t *testing.T, s *Store) <-chan []lease.Lease {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	snaps := make(chan []lease.Lease, 1)
	go s.Watch(ctx, snaps)
	return snaps
}

func subnets(ls []lease.Lease) []string {
	var out []string
	for _, l := range ls {
		out = append(out, l.Subnet.String()+"="+l.Attrs.PublicIP.String())
	}
	return out
}

func vxlanAttrs(ip, mac string) lease.Attrs {
	return lease.Attrs{PublicIP: netip.MustParseAddr(ip), BackendType: "vxlan", BackendData: json.RawMessage(`{"VNI":1,"VtepMAC":"` + mac + `"}`)}
}

// asNode is what the store reads of n (node), every annotation kept: the
// Node watch's decoding is tested on its own (node_test.go).
func asNode(n *v1.Node) *node {
	return &node{Name: n.Name, UID: string(n.UID), ResourceVersion: n.ResourceVersion, Created: n.CreationTimestamp.Time,
		PodCIDR: n.Spec.PodCIDR, PodCIDRs: n.Spec.PodCIDRs, Annotations: n.Annotations}
}
