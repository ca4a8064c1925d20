package kube

import (
	"bytes"
	"context"
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/weft-net/weft/lease"
	"github.com/weft-net/weft/lease/kube/kubetest"
)

// Tests against a real kube-apiserver (and etcd), as weft runs under
// deploy/'s ClusterRole. They skip without the binary outside CI (see
// kubetest.Binary).

var fixtureTime = regexp.MustCompile(`"20[0-9]{2}-[0-9]{2}-[0-9]{2}T[0-9:]{8}Z"`)

// auditPatches are the bodies of user's patches, as the API server
// recorded them, times replaced.
func auditPatches(t *testing.T, srv *kubetest.Server) []string {
	t.Helper()
	var out []string
	for _, e := range srv.Audit(t, kubetest.Weft) {
		if e.Verb != "patch" {
			continue
		}
		var b bytes.Buffer
		if err := json.Compact(&b, e.RequestObject); err != nil {
			t.Fatal(err)
		}
		out = append(out, e.ObjectRef.Resource+"/"+e.ObjectRef.Subresource+" "+e.ObjectRef.Name+" "+fixtureTime.ReplaceAllString(b.String(), `"T"`))
	}
	return out
}

func fixturePatches(t *testing.T, name string) []string {
	var out []string
	for _, b := range patchBodies(t, name) {
		out = append(out, "nodes/status h1 "+fixtureTime.ReplaceAllString(b, `"T"`))
	}
	return out
}

// This host's lease comes from its Node's podCIDR; the API server
// records flanneld's two patch bodies, byte for byte; the annotations
// and condition are flanneld's; subnet.env is flanneld's. A restart
// reads the VtepMAC back and sends only the condition, as flanneld.
func TestOwnLeaseAgainstAPIServer(t *testing.T) {
	srv := kubetest.Start(t)
	admin := srv.Client(t, kubetest.Admin)
	grantDeployRBAC(t, admin, nil)
	createNode(t, admin, "h1", []string{"10.244.1.0/24"}, map[string]string{})
	ctx := kubetest.Ctx(t, 2*time.Minute)

	s := newTestStore(t, srv, storeOpts{})
	cfg, err := s.Config(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Network.String() != "10.244.0.0/16" || cfg.SubnetLen != 24 || cfg.BackendType != "vxlan" {
		t.Errorf("config %+v", cfg)
	}
	if _, ok, err := s.PreviousAttrs(ctx); ok || err != nil {
		t.Errorf("a fresh Node has previous attrs (%v, %v)", ok, err)
	}
	attrs := fixtureAttrs["vxlan"]
	own, err := s.Acquire(ctx, attrs)
	if err != nil {
		t.Fatal(err)
	}
	if own.Subnet.String() != "10.244.1.0/24" || own.Attrs.PublicIP != attrs.PublicIP {
		t.Errorf("own lease %+v", own)
	}
	keepCtx, stopKeep := context.WithCancel(ctx)
	keepDone := make(chan error, 1)
	go func() { keepDone <- s.Keep(keepCtx, own) }()
	n := waitNode(t, admin, "h1", "NetworkUnavailable=False", func(n *v1.Node) bool { return networkAvailable(n) })
	for k, v := range fixtureAnnotations(t, "vxlan", "h1") {
		if n.Annotations[k] != v {
			t.Errorf("annotation %s = %q, flanneld wrote %q", k, n.Annotations[k], v)
		}
	}
	if got, want := auditPatches(t, srv), fixturePatches(t, "patch-requests-vxlan-h1.txt"); !slices.Equal(got, want) {
		t.Errorf("patches as the API server recorded them:\n%s\nflanneld's:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// subnet.env as flanneld writes it (the MTU is the vxlan backend's).
	env := filepath.Join(t.TempDir(), "subnet.env")
	if err := lease.WriteSubnetFile(env, lease.SubnetEnv{Network: cfg.Network, Subnet: own.Subnet, MTU: 1450, IPMasq: true}); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(env)
	want, _ := os.ReadFile("testdata/subnet-vxlan-h1.env")
	if !bytes.Equal(got, want) {
		t.Errorf("subnet.env\n%s\nflanneld's\n%s", got, want)
	}
	// Own lease appears in the snapshots (admission leaves it out).
	snaps := startWatch(t, s)
	watchUntil(t, snaps, "h1's lease", func(ls []lease.Lease) bool {
		return slices.Equal(subnets(ls), []string{"10.244.1.0/24=192.0.2.1"}) && string(ls[0].Attrs.BackendData) == string(attrs.BackendData)
	})
	stopKeep()
	<-keepDone
	s.Close()

	// Restart: the VtepMAC is read back; no annotation patch, one
	// condition patch.
	s2 := newTestStore(t, srv, storeOpts{})
	prev, ok, err := s2.PreviousAttrs(ctx)
	if err != nil || !ok || string(prev.BackendData) != string(attrs.BackendData) {
		t.Fatalf("previous attrs after restart: %+v, %v, %v; want BackendData %s", prev, ok, err, attrs.BackendData)
	}
	own2, err := s2.Acquire(ctx, prev)
	if err != nil || own2.Subnet != own.Subnet {
		t.Fatalf("restart: %+v, %v", own2, err)
	}
	before := len(auditPatches(t, srv))
	go s2.Keep(ctx, own2)
	deadline := time.Now().Add(20 * time.Second)
	for len(auditPatches(t, srv)) == before && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(time.Second) // and nothing after it
	if got, want := auditPatches(t, srv)[before:], fixturePatches(t, "patch-requests-vxlan-h1-restart.txt"); !slices.Equal(got, want) {
		t.Errorf("restart patches:\n%s\nflanneld's:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// weft never GETs a Node (it reads its own from the watch): no
	// request outside deploy/'s ClusterRole.
	for _, e := range srv.Audit(t, kubetest.Weft) {
		if e.ObjectRef.Resource == "nodes" && e.Verb == "get" {
			t.Errorf("weft made a GET of a Node: %s", e.RequestURI)
		}
		if e.ResponseStatus.Code >= 400 {
			t.Errorf("request %s %s failed: %d", e.Verb, e.RequestURI, e.ResponseStatus.Code)
		}
	}
}

func networkAvailable(n *v1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == v1.NodeNetworkUnavailable {
			return c.Status == v1.ConditionFalse && c.Reason == "FlannelIsUp" && c.Message == "Flannel is running on this node"
		}
	}
	return false
}

func waitNode(t *testing.T, admin kubernetes.Interface, name, what string, ok func(*v1.Node) bool) *v1.Node {
	t.Helper()
	ctx := kubetest.Ctx(t, time.Minute)
	var n *v1.Node
	var err error
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if n, err = admin.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{}); err == nil && ok(n) {
			return n
		}
	}
	t.Fatalf("Node %s: no %s within 20 s (%v; %+v)", name, what, err, n)
	return nil
}

// Peers are the Nodes annotated kube-subnet-manager=true, followed as
// they are created, changed and deleted. A Node with no annotations at
// all, or with a bad lease, is skipped without harm (flanneld panics on
// the first).
func TestPeersFollowNodes(t *testing.T) {
	srv := kubetest.Start(t)
	admin := srv.Client(t, kubetest.Admin)
	grantDeployRBAC(t, admin, nil)
	ctx := kubetest.Ctx(t, 2*time.Minute)
	createNode(t, admin, "h1", []string{"10.244.1.0/24"}, map[string]string{})
	createNode(t, admin, "h2", []string{"10.244.2.0/24"}, peerAnnotations("192.0.2.2", "vxlan", `{"VNI":1,"VtepMAC":"4e:86:bf:e9:21:6b"}`))
	createNode(t, admin, "bare", []string{"10.244.3.0/24"}, nil)
	bad := peerAnnotations("not-an-ip", "vxlan", `{}`)
	createNode(t, admin, "bad", []string{"10.244.4.0/24"}, bad)
	createNode(t, admin, "other", []string{"10.244.5.0/24"}, map[string]string{"flannel.alpha.coreos.com/public-ip": "192.0.2.5"})

	s := newTestStore(t, srv, storeOpts{})
	snaps := startWatch(t, s)
	watchUntil(t, snaps, "h2 only", func(ls []lease.Lease) bool {
		return slices.Equal(subnets(ls), []string{"10.244.2.0/24=192.0.2.2"})
	})

	// Dual-stack Node: its IPv4 CIDR.
	createNode(t, admin, "h6", []string{"fd00:10:244:6::/64", "10.244.6.0/24"}, peerAnnotations("192.0.2.6", "", "null"))
	watchUntil(t, snaps, "h6", func(ls []lease.Lease) bool {
		return slices.Equal(subnets(ls), []string{"10.244.2.0/24=192.0.2.2", "10.244.6.0/24=192.0.2.6"}) && ls[1].Attrs.BackendData == nil
	})
	// The bare Node gets annotated: it becomes a peer.
	patchAnnotations(t, admin, "bare", peerAnnotations("192.0.2.3", "host-gw", "null"))
	watchUntil(t, snaps, "bare", func(ls []lease.Lease) bool { return len(ls) == 3 && ls[1].Attrs.BackendType == "host-gw" })
	// Status names each peer's Node, and the store's own details.
	if o := s.Origin(netip.MustParsePrefix("10.244.3.0/24")); o != "node/bare" {
		t.Errorf("origin of 10.244.3.0/24: %q, want node/bare", o)
	}
	if d := s.StatusDetails(); d["node"] != "h1" || d["annotation-prefix"] != "flannel.alpha.coreos.com/" {
		t.Errorf("status details %v", d)
	}
	// A changed public IP is a changed lease.
	patchAnnotations(t, admin, "h2", map[string]string{"flannel.alpha.coreos.com/public-ip": "192.0.2.22"})
	watchUntil(t, snaps, "h2's new IP", func(ls []lease.Lease) bool {
		return slices.Contains(subnets(ls), "10.244.2.0/24=192.0.2.22")
	})
	// A deleted Node is no peer.
	if err := admin.CoreV1().Nodes().Delete(ctx, "h2", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	watchUntil(t, snaps, "h2 gone", func(ls []lease.Lease) bool {
		return slices.Equal(subnets(ls), []string{"10.244.3.0/24=192.0.2.3", "10.244.6.0/24=192.0.2.6"})
	})
	// A Node whose lease turns invalid is dropped.
	patchAnnotations(t, admin, "h6", map[string]string{"flannel.alpha.coreos.com/public-ip": "nope"})
	watchUntil(t, snaps, "h6 gone", func(ls []lease.Lease) bool {
		return slices.Equal(subnets(ls), []string{"10.244.3.0/24=192.0.2.3"})
	})
	// Only what a lease needs stays cached: of the other Nodes their
	// names (h1, bare, bad, other, h6), of this host's its stripped Node.
	if n := s.nodes.len(); n != 5 {
		t.Errorf("%d Nodes cached, want 5", n)
	}
	n, ok := s.nodes.ownNode()
	if !ok {
		t.Fatal("Node h1 is not in the cache")
	}
	if n.Name != "h1" || len(n.Annotations) != 0 || n.PodCIDR == "" || n.UID == "" || n.Created.IsZero() {
		t.Errorf("cached Node keeps %+v", n)
	}
}

func patchAnnotations(t *testing.T, admin kubernetes.Interface, node string, ann map[string]string) {
	t.Helper()
	body, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": ann}})
	if _, err := admin.CoreV1().Nodes().Patch(kubetest.Ctx(t, time.Minute), node, "application/strategic-merge-patch+json", body, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
}

// A Node re-created without annotations (a kubelet re-registering) gets
// this host's annotations and condition back while the daemon runs;
// flanneld ignores it until restarted.
func TestKeepRestoresRecreatedNode(t *testing.T) {
	srv := kubetest.Start(t)
	admin := srv.Client(t, kubetest.Admin)
	grantDeployRBAC(t, admin, nil)
	ctx := kubetest.Ctx(t, 2*time.Minute)
	createNode(t, admin, "h1", []string{"10.244.1.0/24"}, map[string]string{})
	s := newTestStore(t, srv, storeOpts{})
	attrs := vxlanAttrs("192.0.2.1", "52:21:cc:9e:cb:54")
	own, err := s.Acquire(ctx, attrs)
	if err != nil {
		t.Fatal(err)
	}
	go s.Keep(ctx, own)
	waitNode(t, admin, "h1", "condition", networkAvailable)
	if err := admin.CoreV1().Nodes().Delete(ctx, "h1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	createNode(t, admin, "h1", []string{"10.244.1.0/24"}, map[string]string{})
	waitNode(t, admin, "h1", "annotations and condition back", func(n *v1.Node) bool {
		return n.Annotations["flannel.alpha.coreos.com/backend-data"] == string(attrs.BackendData) &&
			n.Annotations["flannel.alpha.coreos.com/kube-subnet-manager"] == "true" && networkAvailable(n)
	})
}

// The node name from POD_NAME/POD_NAMESPACE (get pods, as deploy/'s
// role allows); without NODE_NAME or a pod, a clear error.
func TestNodeNameFromPod(t *testing.T) {
	srv := kubetest.Start(t)
	admin := srv.Client(t, kubetest.Admin)
	grantDeployRBAC(t, admin, nil)
	ctx := kubetest.Ctx(t, 2*time.Minute)
	createNode(t, admin, "h2", []string{"10.244.2.0/24"}, map[string]string{})
	if _, err := admin.CoreV1().Namespaces().Create(ctx, &v1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "kube-flannel"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.CoreV1().ServiceAccounts("kube-flannel").Create(ctx, &v1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "weft"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	no := false
	if _, err := admin.CoreV1().Pods("kube-flannel").Create(ctx, &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "kube-weft-ds-h2"},
		Spec: v1.PodSpec{NodeName: "h2", HostNetwork: true, ServiceAccountName: "weft", AutomountServiceAccountToken: &no,
			Containers: []v1.Container{{Name: "weft", Image: "weft"}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	s := newTestStore(t, srv, storeOpts{getenv: map[string]string{"POD_NAME": "kube-weft-ds-h2", "POD_NAMESPACE": "kube-flannel"}})
	own, err := s.Acquire(ctx, fixtureAttrs["host-gw"])
	if err != nil {
		t.Fatal(err)
	}
	if s.NodeName() != "h2" || own.Subnet.String() != "10.244.2.0/24" {
		t.Errorf("node %q, lease %v; want h2's 10.244.2.0/24", s.NodeName(), own.Subnet)
	}
	s2 := newTestStore(t, srv, storeOpts{getenv: map[string]string{}})
	if _, err := s2.Config(ctx); err == nil || !strings.Contains(err.Error(), "NODE_NAME") {
		t.Errorf("no node name: %v", err)
	}
}

// Refusals at start, each naming the problem: a podCIDR missing, IPv6
// only, outside Network; no Node at all.
func TestOwnNodeRefusals(t *testing.T) {
	srv := kubetest.Start(t)
	admin := srv.Client(t, kubetest.Admin)
	grantDeployRBAC(t, admin, nil)
	ctx := kubetest.Ctx(t, 2*time.Minute)
	createNode(t, admin, "nocidr", nil, map[string]string{})
	createNode(t, admin, "v6", []string{"fd00:10:244:1::/64"}, map[string]string{})
	createNode(t, admin, "outside", []string{"10.99.1.0/24"}, map[string]string{})
	for node, want := range map[string]string{
		"nocidr":  "pod cidr not assigned",
		"v6":      `node "v6" has no IPv4 pod CIDR`,
		"outside": "doesn't contain",
		"absent":  `Node "absent" not found within`,
	} {
		s := newTestStore(t, srv, storeOpts{node: node})
		if _, err := s.Config(ctx); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Node %s: %v; want an error saying %q", node, err, want)
		}
	}
}

// deploy/'s ClusterRole is what weft needs: with it weft starts; with
// any one rule's verb taken away, weft fails at start naming it.
func TestRBAC(t *testing.T) {
	srv := kubetest.Start(t)
	admin := srv.Client(t, kubetest.Admin)
	ctx := kubetest.Ctx(t, 3*time.Minute)
	createNode(t, admin, "h1", []string{"10.244.1.0/24"}, map[string]string{})

	// With no role at all.
	s := newTestStore(t, srv, storeOpts{user: kubetest.Other})
	if _, err := s.Config(ctx); err == nil || !strings.Contains(err.Error(), "may not list nodes, watch nodes, patch nodes/status") ||
		!strings.Contains(err.Error(), kubetest.Other) {
		t.Errorf("no role: %v", err)
	}
	for _, p := range Needed {
		t.Run("without "+p.String(), func(t *testing.T) {
			grantDeployRBAC(t, admin, func(r *rbacv1.ClusterRole) { removeVerb(r, p) })
			s := newTestStore(t, srv, storeOpts{})
			_, err := s.Config(ctx)
			if err == nil || !strings.Contains(err.Error(), "may not "+p.String()+" (") {
				t.Errorf("%v; want an error naming %q", err, p)
			}
		})
	}
	t.Run("without get pods", func(t *testing.T) {
		grantDeployRBAC(t, admin, func(r *rbacv1.ClusterRole) { removeVerb(r, Permission{Verb: "get", Resource: "pods"}) })
		s := newTestStore(t, srv, storeOpts{getenv: map[string]string{"POD_NAME": "p", "POD_NAMESPACE": "kube-flannel"}})
		if _, err := s.Config(ctx); err == nil || !strings.Contains(err.Error(), "RBAC: the ClusterRole must allow get pods") {
			t.Errorf("%v; want an error naming get pods", err)
		}
	})
	t.Run("deploy role", func(t *testing.T) {
		grantDeployRBAC(t, admin, nil)
		s := newTestStore(t, srv, storeOpts{})
		own, err := s.Acquire(ctx, fixtureAttrs["udp"])
		if err != nil {
			t.Fatal(err)
		}
		kctx, cancel := context.WithCancel(ctx)
		defer cancel()
		go s.Keep(kctx, own)
		waitNode(t, admin, "h1", "condition", networkAvailable)
	})
}

func removeVerb(r *rbacv1.ClusterRole, p Permission) {
	res := p.Resource
	if p.Subresource != "" {
		res += "/" + p.Subresource
	}
	for i := range r.Rules {
		if slices.Contains(r.Rules[i].Resources, res) {
			r.Rules[i].Verbs = slices.DeleteFunc(r.Rules[i].Verbs, func(v string) bool { return v == p.Verb })
		}
	}
	r.Rules = slices.DeleteFunc(r.Rules, func(x rbacv1.PolicyRule) bool { return len(x.Verbs) == 0 })
}
