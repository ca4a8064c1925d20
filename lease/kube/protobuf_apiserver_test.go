package kube

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/weft-net/weft/lease/kube/kubetest"
)

// The real API server's protobuf and JSON read alike: the same Nodes of
// a paged list, the same events of a watch (changes, a deletion), the
// same Forbidden. (This server's watch cache answers a watch from a
// version etcd compacted away with events, not a 410, so ERROR events
// are tested with apimachinery's encoding, protobuf_test.go.) The
// bodies it sent are the fuzz seeds in testdata/protobuf
// (WEFT_KUBE_CAPTURE_TESTDATA=1 writes them anew).
func TestProtobufMatchesJSON(t *testing.T) {
	srv := kubetest.Start(t)
	admin := srv.Client(t, kubetest.Admin)
	ctx := kubetest.Ctx(t, 2*time.Minute)
	prefix := DefaultAnnotationPrefix + "/"
	for i := range 5 {
		n := kubeletNode(fmt.Sprintf("k%d", i))
		n.UID, n.ResourceVersion, n.CreationTimestamp = "", "", metav1.Time{}
		n.Annotations["example.com/other"] = "not the store's"
		if i == 3 {
			n.Annotations, n.Spec.PodCIDR, n.Spec.PodCIDRs = nil, "", nil
		}
		if _, err := admin.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	api, err := newAPIClient(srv.Config(kubetest.Admin))
	if err != nil {
		t.Fatal(err)
	}
	capture := os.Getenv("WEFT_KUBE_CAPTURE_TESTDATA") != ""
	save := func(name string, b []byte) {
		if capture {
			if err := os.WriteFile(filepath.Join("testdata", "protobuf", name), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	get := func(accept string, q url.Values) (io.ReadCloser, string) {
		t.Helper()
		body, ctype, err := api.open(ctx, request{method: http.MethodGet, path: "/api/v1/nodes", query: q, accept: accept, resource: "nodes"})
		if err != nil {
			t.Fatal(err)
		}
		if isProtobuf(ctype) != (accept == acceptProtobuf) {
			t.Fatalf("Accept %q answered %q", accept, ctype)
		}
		return body, ctype
	}

	// The list, in pages of 2.
	type listed struct {
		metas []listMeta
		nodes []*node
	}
	list := func(accept string) listed {
		var l listed
		for cont := ""; ; {
			q := url.Values{"limit": {"2"}}
			if cont != "" {
				q.Set("continue", cont)
			}
			body, _ := get(accept, q)
			var raw bytes.Buffer
			read := readNodeListJSON
			if accept == acceptProtobuf {
				read = readNodeList
			}
			meta, err := read(io.TeeReader(body, &raw), prefix, func(n *node) error { l.nodes = append(l.nodes, n); return nil })
			body.Close()
			if err != nil {
				t.Fatal(err)
			}
			if accept == acceptProtobuf && cont == "" {
				save("list-page.pb", raw.Bytes())
			}
			l.metas = append(l.metas, meta)
			if cont = meta.Continue; cont == "" {
				return l
			}
		}
	}
	pl, jl := list(acceptProtobuf), list("application/json")
	if len(pl.nodes) != 5 || len(pl.metas) != 3 || !reflect.DeepEqual(pl, jl) {
		t.Fatalf("the list in protobuf\n %+v\nin JSON\n %+v", pl, jl)
	}
	for _, n := range pl.nodes {
		if _, ok := n.Annotations["example.com/other"]; ok || n.Created.IsZero() || n.UID == "" {
			t.Errorf("listed %+v", n)
		}
	}

	// The watch from the list's version: both see the same events.
	type stream struct {
		next func() (event, error)
		raw  *bytes.Buffer
		body io.ReadCloser
	}
	watch := func(accept, rv string) stream {
		body, _ := get(accept, url.Values{"watch": {"true"}, "allowWatchBookmarks": {"true"}, "resourceVersion": {rv}})
		s := stream{raw: new(bytes.Buffer), body: body}
		in := io.TeeReader(body, s.raw)
		if accept == acceptProtobuf {
			s.next = newProtoEvents(in, prefix).next
		} else {
			s.next = (&jsonEvents{dec: json.NewDecoder(in), prefix: prefix}).next
		}
		return s
	}
	rv := pl.metas[0].ResourceVersion
	ps, js := watch(acceptProtobuf, rv), watch("application/json", rv)
	defer ps.body.Close()
	defer js.body.Close()
	patch := func(name, ann string) {
		p := fmt.Sprintf(`{"metadata":{"annotations":{%q:%q}}}`, prefix+"public-ip", ann)
		if _, err := admin.CoreV1().Nodes().Patch(ctx, name, types.StrategicMergePatchType, []byte(p), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	patch("k1", "192.0.2.11")
	patch("k3", "192.0.2.13")
	if err := admin.CoreV1().Nodes().Delete(ctx, "k4", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	events := func(s stream) []event {
		var out []event
		for len(out) < 3 {
			e, err := s.next()
			if err != nil {
				t.Fatalf("after %d events: %v", len(out), err)
			}
			if e.typ != "BOOKMARK" {
				out = append(out, e)
			}
		}
		return out
	}
	pe, je := events(ps), events(js)
	save("watch-events.pb", ps.raw.Bytes())
	if !reflect.DeepEqual(pe, je) {
		t.Errorf("the watch in protobuf\n %+v\nin JSON\n %+v", pe, je)
	}
	if pe[0].typ != "MODIFIED" || pe[0].node.Annotations[prefix+"public-ip"] != "192.0.2.11" || pe[2].typ != "DELETED" || pe[2].node.Name != "k4" {
		t.Errorf("events %+v", pe)
	}

	// A refused request: the same StatusError either way.
	other, err := newAPIClient(srv.Config(kubetest.Other))
	if err != nil {
		t.Fatal(err)
	}
	refused := func(accept string) *apierrors.StatusError {
		_, _, err := other.open(ctx, request{method: http.MethodGet, path: "/api/v1/nodes", accept: accept, resource: "nodes"})
		var se *apierrors.StatusError
		if !errors.As(err, &se) || !apierrors.IsForbidden(err) {
			t.Fatalf("%s: %v", accept, err)
		}
		return se
	}
	if p, j := refused(acceptProtobuf), refused("application/json"); !reflect.DeepEqual(p.ErrStatus, j.ErrStatus) {
		t.Errorf("Forbidden in protobuf %+v, in JSON %+v", p.ErrStatus, j.ErrStatus)
	}
	if capture {
		// A refused GET and a Node, as they came.
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, api.base.String()+"/api/v1/nodes/k0", nil)
		req.Header.Set("Accept", acceptProtobuf)
		resp, err := other.http.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		save("status-forbidden.pb", b)
		if resp, err = api.http.Do(req); err != nil {
			t.Fatal(err)
		}
		b, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		save("node.pb", b)
		t.Log("captured into testdata/protobuf")
	}
}
