package kube

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"
)

// The Node watch's protocol where a real API server will not go on
// demand (the real one is under every other test here): pages joined by
// continue tokens; a watch from the list's resourceVersion, resumed from
// the last bookmark's when the server ends it; a 410 ERROR event (the
// version compacted away) answered by a new list, which drops the Nodes
// gone meanwhile (the real server's own ERROR event, from a compacted
// etcd, is TestProtobufWatchExpired's); a watch refused with 410
// likewise; a 500 retried from the same version. The server here replays one scripted answer per
// request and records the requests; it answers in JSON (as a server or
// proxy that does not speak protobuf would) and in protobuf
// (apimachinery's encoding of the same objects).
func TestListWatchProtocol(t *testing.T) {
	t.Run("json", func(t *testing.T) { listWatchProtocol(t, false) })
	t.Run("protobuf", func(t *testing.T) { listWatchProtocol(t, true) })
}

// asProtobuf is a scripted JSON answer in protobuf: a NodeList, a
// Status, or a watch's events.
func asProtobuf(t *testing.T, body string, code int, watch bool) []byte {
	if code != 200 {
		var st metav1.Status
		if err := json.Unmarshal([]byte(body), &st); err != nil {
			t.Fatal(err)
		}
		return pbEncode(t, &st, "Status")
	}
	if !watch {
		var l v1.NodeList
		if err := json.Unmarshal([]byte(body), &l); err != nil {
			t.Fatal(err)
		}
		return pbEncode(t, &l, "NodeList")
	}
	var out []byte
	dec := json.NewDecoder(strings.NewReader(body))
	for dec.More() {
		var e struct {
			Type   string
			Object json.RawMessage
		}
		if err := dec.Decode(&e); err != nil {
			t.Fatal(err)
		}
		var obj runtime.Object = new(v1.Node)
		kind := "Node"
		if e.Type == "ERROR" {
			obj, kind = new(metav1.Status), "Status"
		}
		if err := json.Unmarshal(e.Object, obj); err != nil {
			t.Fatal(err)
		}
		out = append(out, pbFrame(t, e.Type, pbEncode(t, obj, kind))...)
	}
	return out
}

func listWatchProtocol(t *testing.T, protobuf bool) {
	peer := func(name, rv, cidr, ip string) string {
		ann, _ := json.Marshal(peerAnnotations(ip, "vxlan", `{"VNI":1,"VtepMAC":"0a:58:00:00:00:01"}`))
		return fmt.Sprintf(`{"kind":"Node","metadata":{"name":%q,"uid":"u-%s","resourceVersion":%q,"creationTimestamp":"2026-11-30T04:00:00Z","annotations":%s,"managedFields":[{"manager":"kubelet"}]},"spec":{"podCIDR":%q,"podCIDRs":[%[5]q]},"status":{"images":[{"names":["x"],"sizeBytes":1}]}}`,
			name, name, rv, ann, cidr)
	}
	event := func(typ, obj string) string { return fmt.Sprintf(`{"type":%q,"object":%s}`+"\n", typ, obj) }
	list := func(rv, cont string, items ...string) string {
		return fmt.Sprintf(`{"kind":"NodeList","apiVersion":"v1","metadata":{"resourceVersion":%q,"continue":%q},"items":[%s]}`, rv, cont, strings.Join(items, ","))
	}
	expired := `{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"too old resource version: 15 (30)","reason":"Expired","code":410}`
	type answer struct {
		want   string // the request's path and query
		code   int
		body   string
		linger bool // keep the watch open until the client goes
	}
	script := []answer{
		{want: "/api/v1/nodes?limit=500", code: 200, body: list("10", "c1", peer("a", "5", "10.244.1.0/24", "192.0.2.1"))},
		{want: "/api/v1/nodes?continue=c1&limit=500", code: 200, body: list("10", "", peer("b", "6", "10.244.2.0/24", "192.0.2.2"))},
		{want: "/api/v1/nodes?allowWatchBookmarks=true&resourceVersion=10&watch=true", code: 200,
			body: event("ADDED", peer("c", "11", "10.244.3.0/24", "192.0.2.3")) + event("BOOKMARK", `{"kind":"Node","metadata":{"resourceVersion":"15"}}`)},
		{want: "/api/v1/nodes?allowWatchBookmarks=true&resourceVersion=15&watch=true", code: 200, body: event("ERROR", expired)},
		{want: "/api/v1/nodes?limit=500", code: 200, body: list("30", "", peer("a", "5", "10.244.1.0/24", "192.0.2.1"), peer("c", "25", "10.244.3.0/24", "192.0.2.33"))},
		{want: "/api/v1/nodes?allowWatchBookmarks=true&resourceVersion=30&watch=true", code: 500, body: `{"kind":"Status","status":"Failure","message":"etcd is down","reason":"InternalError","code":500}`},
		{want: "/api/v1/nodes?allowWatchBookmarks=true&resourceVersion=30&watch=true", code: 410, body: expired},
		{want: "/api/v1/nodes?limit=500", code: 200, body: list("40", "", peer("a", "5", "10.244.1.0/24", "192.0.2.1"), peer("c", "25", "10.244.3.0/24", "192.0.2.33"))},
		{want: "/api/v1/nodes?allowWatchBookmarks=true&resourceVersion=40&watch=true", code: 200,
			body: event("MODIFIED", peer("a", "41", "10.244.1.0/24", "192.0.2.11")) + event("DELETED", peer("c", "42", "10.244.3.0/24", "192.0.2.33")), linger: true},
	}
	var mu sync.Mutex
	var got []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		if q.Get("watch") == "true" && q.Get("timeoutSeconds") == "" {
			t.Errorf("a watch without timeoutSeconds: %s", r.URL)
		}
		q.Del("timeoutSeconds")
		mu.Lock()
		i := len(got)
		got = append(got, r.URL.Path+"?"+q.Encode())
		mu.Unlock()
		if r.Header.Get("Accept") != acceptProtobuf {
			t.Errorf("Accept %q", r.Header.Get("Accept"))
		}
		if i >= len(script) {
			<-r.Context().Done()
			return
		}
		a := script[i]
		if protobuf {
			ctype := protobufType
			if q.Get("watch") == "true" && a.code == 200 {
				ctype += ";stream=watch"
			}
			w.Header().Set("Content-Type", ctype)
			w.WriteHeader(a.code)
			w.Write(asProtobuf(t, a.body, a.code, q.Get("watch") == "true"))
		} else {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(a.code)
			fmt.Fprint(w, a.body)
		}
		if a.linger {
			w.(http.Flusher).Flush()
			<-r.Context().Done()
		}
	}))
	defer srv.Close()

	s := testStore(t)
	api, err := newAPIClient(&rest.Config{Host: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	s.api, s.node = api, "a"
	s.nodes = newNodeCache(s, "a")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.nodes.run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		mu.Lock()
		n := len(got)
		mu.Unlock()
		if n >= len(script) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %d requests, stuck: %q", n, got)
		}
	}
	// The last watch's events are in once its requests are: wait for them.
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if own, ok := s.nodes.ownNode(); ok && own.ResourceVersion == "41" && s.nodes.len() == 1 {
			break
		}
	}
	mu.Lock()
	for i, a := range script {
		if got[i] != a.want {
			t.Errorf("request %d: %s, want %s", i, got[i], a.want)
		}
	}
	mu.Unlock()
	snap, _ := s.snapshot()
	if got := subnets(snap); !slices.Equal(got, []string{"10.244.1.0/24=192.0.2.11"}) {
		t.Errorf("leases %v, want a's changed one alone (b gone in the relist, c deleted)", got)
	}
	if own, ok := s.nodes.ownNode(); !ok || own.UID != "u-a" || own.ResourceVersion != "41" || s.nodes.len() != 1 {
		t.Errorf("cache: own %+v, %d names", own, s.nodes.len())
	}
}
