package kube

import (
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"reflect"
	"strconv"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/strategicpatch"
)

// kubeletNode is a Node as a kubelet registers and reports it (labels,
// conditions, images, managedFields), annotated as a peer.
func kubeletNode(name string) *v1.Node {
	ann := peerAnnotations("192.0.2.7", "vxlan", `{"VNI":1,"VtepMAC":"0a:58:00:00:00:07"}`)
	ann["node.alpha.kubernetes.io/ttl"] = "0"
	ann["volumes.kubernetes.io/controller-managed-attach-detach"] = "true"
	n := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, UID: "4a1c1f4e-9d7b-4f0e-8a7e-2f4b7c3e9d11", ResourceVersion: "4711",
		CreationTimestamp: metav1.NewTime(time.Date(2026, 11, 30, 4, 5, 6, 0, time.UTC)),
		Labels:            map[string]string{"kubernetes.io/hostname": name}, Annotations: ann,
		ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubelet", Operation: metav1.ManagedFieldsOperationUpdate,
			FieldsType: "FieldsV1", FieldsV1: metav1.NewFieldsV1(`{"f:status":{"f:images":{}}}`)}}},
		Spec: v1.NodeSpec{PodCIDR: "10.244.7.0/24", PodCIDRs: []string{"10.244.7.0/24", "fd00:10:244:7::/64"}},
	}
	for j := range 30 {
		n.Status.Images = append(n.Status.Images, v1.ContainerImage{Names: []string{fmt.Sprintf("registry.example.com/app%d@sha256:%064x", j, j)}, SizeBytes: 1 << 26})
	}
	n.Status.Conditions = []v1.NodeCondition{{Type: v1.NodeReady, Status: v1.ConditionTrue, Reason: "KubeletReady"}}
	return n
}

// A Node's JSON, as the API server sends it, reads into what the store
// keeps: name, uid, resourceVersion, creation time, podCIDR(s) and the
// annotations under the prefix, nothing else.
func TestNodeFromJSON(t *testing.T) {
	s := testStore(t)
	b, err := json.Marshal(kubeletNode("h7"))
	if err != nil {
		t.Fatal(err)
	}
	var w wireNode
	if err := json.Unmarshal(b, &w); err != nil {
		t.Fatal(err)
	}
	got := w.node(s.ann.prefix())
	want := &node{Name: "h7", UID: "4a1c1f4e-9d7b-4f0e-8a7e-2f4b7c3e9d11", ResourceVersion: "4711",
		Created: time.Date(2026, 11, 30, 4, 5, 6, 0, time.UTC), PodCIDR: "10.244.7.0/24", PodCIDRs: []string{"10.244.7.0/24", "fd00:10:244:7::/64"},
		Annotations: peerAnnotations("192.0.2.7", "vxlan", `{"VNI":1,"VtepMAC":"0a:58:00:00:00:07"}`)}
	if !got.Created.Equal(want.Created) {
		t.Errorf("created %v, want %v", got.Created, want.Created)
	}
	got.Created = want.Created
	if !reflect.DeepEqual(got, want) {
		t.Errorf("read\n %+v\nwant\n %+v", got, want)
	}
	// A Node without annotations or podCIDRs reads as one without.
	var bare wireNode
	if err := json.Unmarshal([]byte(`{"metadata":{"name":"bare","creationTimestamp":null,"annotations":{"a.example.com/x":"y"}},"spec":{},"status":{}}`), &bare); err != nil {
		t.Fatal(err)
	}
	if n := bare.node(s.ann.prefix()); n.Name != "bare" || n.Annotations != nil || n.PodCIDRs != nil || !n.Created.IsZero() {
		t.Errorf("bare Node reads as %+v", n)
	}
}

// annotationPatch is what flanneld's strategicpatch.CreateTwoWayMergePatch
// makes of the same two annotation maps, byte for byte: random maps with
// keys kept, changed, added and removed, empty and nil ones.
func TestAnnotationPatchMatchesStrategicPatch(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	randomMap := func() map[string]string {
		switch r.IntN(6) {
		case 0:
			return nil
		case 1:
			return map[string]string{}
		}
		m := map[string]string{}
		for range r.IntN(6) {
			m["flannel.alpha.coreos.com/k"+strconv.Itoa(r.IntN(8))] = []string{"", "true", "192.0.2.1", `{"VNI":1}`, "<&>\"", "null"}[r.IntN(6)]
		}
		return m
	}
	for i := range 2000 {
		have, want := randomMap(), randomMap()
		if r.IntN(3) == 0 && have != nil {
			want = maps.Clone(have)
			want["flannel.alpha.coreos.com/k"+strconv.Itoa(r.IntN(8))] = "changed"
		}
		got, err := annotationPatch(&node{Name: "h1", Annotations: have}, want)
		if err != nil {
			t.Fatal(err)
		}
		oldData, _ := json.Marshal(&v1.Node{ObjectMeta: metav1.ObjectMeta{Annotations: have}})
		newData, _ := json.Marshal(&v1.Node{ObjectMeta: metav1.ObjectMeta{Annotations: want}})
		ref, err := strategicpatch.CreateTwoWayMergePatch(oldData, newData, v1.Node{})
		if err != nil {
			t.Fatal(err)
		}
		if maps.Equal(have, want) {
			if got != nil || string(ref) != "{}" {
				t.Fatalf("%d: %v to %v: patch %s, strategicpatch %s", i, have, want, got, ref)
			}
			continue
		}
		if string(got) != string(ref) {
			t.Fatalf("%d: %v to %v:\n got %s\nwant %s", i, have, want, got, ref)
		}
	}
}
