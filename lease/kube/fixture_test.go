package kube

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/weft-net/weft/lease"
)

// patchBodies reads a fixture's patch-requests file: every body, in order.
func patchBodies(t *testing.T, name string) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	for i := 0; i+1 < len(lines); i += 2 {
		if !strings.Contains(lines[i], " PATCH /api/v1/nodes/h1/status -> 200") {
			t.Fatalf("%s: line %d: %q", name, i+1, lines[i])
		}
		out = append(out, lines[i+1])
	}
	return out
}

// fixtureAttrs are h1's lease attributes in each recording.
var fixtureAttrs = map[string]lease.Attrs{
	"vxlan":   {PublicIP: netip.MustParseAddr("192.0.2.1"), BackendType: "vxlan", BackendData: json.RawMessage(`{"VNI":1,"VtepMAC":"52:21:cc:9e:cb:54"}`)},
	"udp":     {PublicIP: netip.MustParseAddr("192.0.2.1")},
	"host-gw": {PublicIP: netip.MustParseAddr("192.0.2.1"), BackendType: "host-gw"},
	// flannel.1's MAC in BackendData, flannel-v6.1's in BackendV6Data.
	"dualstack-vxlan": {PublicIP: netip.MustParseAddr("192.0.2.1"), PublicIPv6: netip.MustParseAddr("2001:db8::1"), BackendType: "vxlan",
		BackendData: json.RawMessage(`{"VNI":1,"VtepMAC":"ce:92:7b:87:2e:36"}`), BackendV6Data: json.RawMessage(`{"VNI":1,"VtepMAC":"52:dd:99:5a:64:d2"}`)},
}

// testStore is a Store with no API server, for its pure parts, with the
// recorded vxlan net-conf (or netConf, a file in testdata).
func testStore(t testing.TB, netConf ...string) *Store {
	t.Helper()
	ann, err := newAnnotations(DefaultAnnotationPrefix)
	if err != nil {
		t.Fatal(err)
	}
	name := "net-conf-vxlan.json"
	if len(netConf) > 0 {
		name = netConf[0]
	}
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	conf, err := lease.ParseConfig(b)
	if err != nil {
		t.Fatal(err)
	}
	return &Store{ann: ann, conf: conf, log: slog.New(slog.DiscardHandler), changed: make(chan struct{})}
}

// The annotation patch of a fresh Node (the kubelet's annotation only) is
// flanneld's first request body, byte for byte, for each backend: the
// JSON-string backend-data of vxlan, the literal null of host-gw and udp,
// udp's empty backend-type.
func TestAnnotationPatchMatchesFlanneld(t *testing.T) {
	s := testStore(t)
	for backend, attrs := range fixtureAttrs {
		t.Run(backend, func(t *testing.T) {
			want := patchBodies(t, "patch-requests-"+backend+"-h1.txt")[0]
			n := &v1.Node{}
			n.Name = "h1"
			n.Annotations = map[string]string{"volumes.kubernetes.io/controller-managed-attach-detach": "true"}
			ann, err := s.wantAnnotations(n.Annotations, attrs)
			if err != nil {
				t.Fatal(err)
			}
			got, err := annotationPatch(asNode(n), ann)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != want {
				t.Errorf("patch body\n got %s\nwant %s", got, want)
			}
			// The annotations it leaves are the recorded ones.
			rec := fixtureAnnotations(t, backend, "h1")
			for k, v := range rec {
				if ann[k] != v {
					t.Errorf("annotation %s = %q, flanneld wrote %q", k, ann[k], v)
				}
			}
			// Applied, nothing is left to patch: a restart sends none.
			if again, _ := s.wantAnnotations(ann, attrs); true {
				n.Annotations = ann
				if p, _ := annotationPatch(asNode(n), again); p != nil {
					t.Errorf("a second Acquire patches %s", p)
				}
			}
		})
	}
}

func fixtureAnnotations(t *testing.T, backend, node string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "node-annotations-"+backend+".tsv"))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, l := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
		f := strings.SplitN(l, "\t", 3)
		if len(f) == 3 && f[0] == node {
			out[f[1]] = f[2]
		}
	}
	return out
}

// The condition patch is flanneld's second body, byte for byte, with its
// time.
func TestConditionPatchMatchesFlanneld(t *testing.T) {
	for _, name := range []string{"patch-requests-vxlan-h1.txt", "patch-requests-udp-h1.txt", "patch-requests-host-gw-h1.txt", "patch-requests-vxlan-h1-restart.txt",
		"patch-requests-dualstack-vxlan-h1.txt", "patch-requests-dualstack-vxlan-h1-restart.txt"} {
		bodies := patchBodies(t, name)
		want := bodies[len(bodies)-1]
		ts := regexp.MustCompile(`"lastHeartbeatTime":"([^"]+)"`).FindStringSubmatch(want)
		if ts == nil {
			t.Fatalf("%s: no time in %s", name, want)
		}
		now, err := time.Parse(time.RFC3339, ts[1])
		if err != nil {
			t.Fatal(err)
		}
		got, err := conditionPatch(now.Add(300 * time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, []byte(want)) {
			t.Errorf("%s:\n got %s\nwant %s", name, got, want)
		}
	}
}

// public-ip-overwrite wins over the interface's address, as in flanneld;
// a changed overwrite is written again.
func TestPublicIPOverwrite(t *testing.T) {
	s := testStore(t)
	attrs := fixtureAttrs["host-gw"]
	have := map[string]string{"flannel.alpha.coreos.com/public-ip-overwrite": "198.51.100.7"}
	want, err := s.wantAnnotations(have, attrs)
	if err != nil {
		t.Fatal(err)
	}
	if got := want["flannel.alpha.coreos.com/public-ip"]; got != "198.51.100.7" {
		t.Errorf("public-ip %q, want the overwrite 198.51.100.7", got)
	}
}

func TestAnnotationPrefix(t *testing.T) {
	for _, c := range []struct {
		prefix, managed string // managed "": refused
	}{
		{"flannel.alpha.coreos.com", "flannel.alpha.coreos.com/kube-subnet-manager"},
		{"flannel.alpha.coreos.com/", "flannel.alpha.coreos.com/kube-subnet-manager"},
		{"example.com/net", "example.com/net-kube-subnet-manager"},
		{"example.com/net-", "example.com/net-kube-subnet-manager"},
		{"weft.example.org/a_b", "weft.example.org/a_b-kube-subnet-manager"},
		{"example.com/a/b", ""},
		{"Example.com", ""},
		{"nodots", ""},
		{"", ""},
		{"example.com/a.b", ""},
	} {
		a, err := newAnnotations(c.prefix)
		switch {
		case c.managed == "" && err == nil:
			t.Errorf("%q: accepted (%s), want refused", c.prefix, a.SubnetKubeManaged)
		case c.managed != "" && err != nil:
			t.Errorf("%q: %v", c.prefix, err)
		case c.managed != "" && a.SubnetKubeManaged != c.managed:
			t.Errorf("%q: %s, want %s", c.prefix, a.SubnetKubeManaged, c.managed)
		}
	}
}

func TestPodSubnets(t *testing.T) {
	node := func(cidr string, cidrs ...string) *v1.Node {
		n := &v1.Node{}
		n.Name = "h1"
		n.Spec.PodCIDR, n.Spec.PodCIDRs = cidr, cidrs
		return n
	}
	for _, c := range []struct {
		n       *v1.Node
		v4, v6  string
		errLike string
	}{
		{node("10.244.1.0/24"), "10.244.1.0/24", "invalid Prefix", ""},
		{node("10.244.1.0/24", "10.244.1.0/24"), "10.244.1.0/24", "invalid Prefix", ""},
		{node("10.244.1.0/24", "10.244.1.0/24", "fd00:10:244:1::/64"), "10.244.1.0/24", "fd00:10:244:1::/64", ""},
		{node("fd00:10:244:1::/64", "fd00:10:244:1::/64", "10.244.1.0/24"), "10.244.1.0/24", "fd00:10:244:1::/64", ""},
		{node("fd00::/64", "fd00::/64"), "invalid Prefix", "fd00::/64", ""},
		{node("fd00::/64"), "invalid Prefix", "fd00::/64", ""},
		{node("10.244.1.7/24"), "10.244.1.0/24", "invalid Prefix", ""},
		{node(""), "", "", "pod cidr not assigned"},
		{node("10.244.1.0/24", "10.244.1.0/24", "fd00::/64", "10.244.9.0/24"), "", "", "dualstack"},
		{node("10.244.1.0/33"), "", "", "pod CIDR"},
		{node("10.244.1.0/24", "10.244.1.0/24", "fe80::%eth0/64"), "", "", "pod CIDR"},
	} {
		v4, v6, err := podSubnets(asNode(c.n))
		if c.errLike != "" {
			if err == nil || !strings.Contains(err.Error(), c.errLike) {
				t.Errorf("%v: err %v, want one saying %q", c.n.Spec, err, c.errLike)
			}
			continue
		}
		if err != nil || v4.String() != c.v4 || v6.String() != c.v6 {
			t.Errorf("%v: %v, %v, %v; want %s, %s", c.n.Spec, v4, v6, err, c.v4, c.v6)
		}
	}
}

// A Node with no annotations at all (nil map) is no peer and no crash
// (flanneld panics on it).
func TestNodeWithoutAnnotations(t *testing.T) {
	s := testStore(t)
	n := &v1.Node{}
	n.Name = "bare"
	n.Spec.PodCIDR = "10.244.3.0/24"
	s.changed = make(chan struct{})
	s.update(asNode(n), false)
	if _, ok := s.leases["bare"]; ok {
		t.Error("a Node without annotations became a peer")
	}
	if keepAnnotations(n.Annotations, s.ann.prefix()) != nil {
		t.Error("keepAnnotations made annotations")
	}
	if _, err := s.wantAnnotations(nil, fixtureAttrs["vxlan"]); err != nil {
		t.Error(err)
	}
}

// Two Nodes with one podCIDR (an edited Node, or a hostile one) give one
// lease, the older Node's; the other is logged and counted once while it
// lasts (status counts it as admission's overlap, as it counts the etcd
// store's second key for a subnet). This host's own Node keeps its
// subnet whatever the other's age.
func TestSecondNodeForASubnetCounted(t *testing.T) {
	s := testStore(t)
	var logs bytes.Buffer
	s.log = slog.New(slog.NewTextHandler(&logs, nil))
	s.node = "h1"
	data := `{"VNI":1,"VtepMAC":"4e:86:bf:e9:21:6b"}`
	node := func(name, cidr, ip string, created int64) *v1.Node {
		n := nodeWith(name, []string{cidr}, peerAnnotations(ip, "vxlan", data))
		n.CreationTimestamp = metav1.NewTime(time.Unix(created, 0))
		return n
	}
	young := node("x", "10.244.2.0/24", "192.0.2.66", 2000)
	s.update(asNode(young), false)
	s.update(asNode(node("h2", "10.244.2.0/24", "192.0.2.2", 1000)), false)
	s.update(asNode(node("h1", "10.244.1.0/24", "192.0.2.1", 3000)), false)
	s.update(asNode(node("y", "10.244.1.0/24", "192.0.2.67", 500)), false) // older than this host's Node
	for range 3 {
		snap, _ := s.snapshot()
		if got := subnets(snap); !slices.Equal(got, []string{"10.244.1.0/24=192.0.2.1", "10.244.2.0/24=192.0.2.2"}) {
			t.Fatalf("snapshot %v", got)
		}
	}
	if s.Duplicates() != 2 || strings.Count(logs.String(), "ignoring a second Node") != 2 {
		t.Errorf("%d duplicates counted, want 2; log:\n%s", s.Duplicates(), logs.String())
	}
	if o := s.Origin(netip.MustParsePrefix("10.244.2.0/24")); o != "node/h2" {
		t.Errorf("origin %q, want node/h2", o)
	}
	// Gone, it is not counted again; back, it is.
	s.update(asNode(young), true)
	s.snapshot()
	s.update(asNode(young), false)
	s.snapshot()
	if s.Duplicates() != 3 {
		t.Errorf("%d duplicates counted, want 3", s.Duplicates())
	}
}
