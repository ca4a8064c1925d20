package kube

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/weft-net/weft/lease"
	"github.com/weft-net/weft/lease/kube/kubetest"
)

// captureTestdata writes b, a body the real API server sent, to
// testdata/protobuf/name when WEFT_KUBE_CAPTURE_TESTDATA is set.
func captureTestdata(t *testing.T, name string, b []byte) {
	t.Helper()
	if os.Getenv("WEFT_KUBE_CAPTURE_TESTDATA") == "" {
		return
	}
	if err := os.WriteFile(filepath.Join("testdata", "protobuf", name), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// The real API server's protobuf and JSON read alike: the same Nodes of
// a paged list, the same events of a watch (changes, a deletion), the
// same Forbidden. (This server's watch cache answers a watch from a
// version etcd compacted away with events, not a 410: the ERROR event
// is TestProtobufWatchExpired's, on a server without a Node watch
// cache.) The bodies it sent are the fuzz seeds in testdata/protobuf
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
	save := func(name string, b []byte) { captureTestdata(t, name, b) }
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

// A watch's ERROR event as the real API server sends it. Without a watch
// cache for Nodes (--watch-cache-sizes=nodes#0) a watch goes to etcd,
// and one from a resourceVersion etcd compacted away is answered 200
// with one ERROR event, a Status (Failure, 410, Expired, "The
// resourceVersion for the provided watch is too old."), then the end of
// the stream: not an HTTP 410. Protobuf and JSON read the same Status,
// the one apimachinery's generated code reads of the same bytes (the
// fuzz seed testdata/protobuf/watch-expired.pb). Then the store's Node
// watch, as weft run has it, in either encoding: its connection is cut,
// Nodes change and etcd is compacted meanwhile, and the watch it resumes
// from its last resourceVersion gets that ERROR event; it lists anew and
// ends with the Nodes as they are (the one deleted meanwhile gone,
// though its DELETED event was compacted away).
func TestProtobufWatchExpired(t *testing.T) {
	srv := kubetest.StartWith(t, kubetest.Options{Flags: []string{"--watch-cache-sizes=nodes#0"}})
	admin := srv.Client(t, kubetest.Admin)
	ctx := kubetest.Ctx(t, 3*time.Minute)
	etcd, err := clientv3.New(clientv3.Config{Endpoints: srv.Etcd, DialTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { etcd.Close() })
	// compact compacts etcd at its current revision, which it returns:
	// every resourceVersion before it is gone.
	compact := func() int64 {
		t.Helper()
		r, err := etcd.Get(ctx, "/registry/minions/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := etcd.Compact(ctx, r.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
			t.Fatal(err)
		}
		return r.Header.Revision
	}
	prefix := DefaultAnnotationPrefix + "/"
	api, err := newAPIClient(srv.Config(kubetest.Admin))
	if err != nil {
		t.Fatal(err)
	}

	// A watch from a version compacted away, in both encodings.
	createNode(t, admin, "e1", []string{"10.244.1.0/24"}, peerAnnotations("192.0.2.1", "vxlan", `{"VNI":1,"VtepMAC":"0a:58:00:00:00:01"}`))
	createNode(t, admin, "e2", []string{"10.244.2.0/24"}, peerAnnotations("192.0.2.2", "vxlan", `{"VNI":1,"VtepMAC":"0a:58:00:00:00:02"}`))
	body, _, err := api.open(ctx, request{method: http.MethodGet, path: "/api/v1/nodes", resource: "nodes"})
	if err != nil {
		t.Fatal(err)
	}
	meta, err := readNodeListJSON(body, prefix, func(*node) error { return nil })
	body.Close()
	if err != nil || meta.ResourceVersion == "" {
		t.Fatalf("list: %+v, %v", meta, err)
	}
	patchPublicIP(t, admin, "e1", "192.0.2.101")
	if err := admin.CoreV1().Nodes().Delete(ctx, "e2", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	compacted := compact()
	watchExpired := func(accept string) (event, []byte) {
		t.Helper()
		q := url.Values{"watch": {"true"}, "allowWatchBookmarks": {"true"}, "resourceVersion": {meta.ResourceVersion}, "timeoutSeconds": {"30"}}
		body, ctype, err := api.open(ctx, request{method: http.MethodGet, path: "/api/v1/nodes", query: q, accept: accept, resource: "nodes"})
		if err != nil {
			t.Fatalf("%s: the watch from %s (compacted at %d) refused: %v", accept, meta.ResourceVersion, compacted, err)
		}
		defer body.Close()
		if isProtobuf(ctype) != (accept == acceptProtobuf) {
			t.Fatalf("Accept %q answered %q", accept, ctype)
		}
		var raw bytes.Buffer
		in := io.TeeReader(body, &raw)
		next := (&jsonEvents{dec: json.NewDecoder(in), prefix: prefix}).next
		if accept == acceptProtobuf {
			next = newProtoEvents(in, prefix).next
		}
		e, err := next()
		if err != nil || e.typ != "ERROR" {
			t.Fatalf("%s: the watch from %s (compacted at %d): %+v, %v; want an ERROR event", accept, meta.ResourceVersion, compacted, e, err)
		}
		if after, err := next(); !errors.Is(err, io.EOF) {
			t.Errorf("%s: after the ERROR event %+v, %v; want the stream's end", accept, after, err)
		}
		return e, raw.Bytes()
	}
	pe, pb := watchExpired(acceptProtobuf)
	je, _ := watchExpired("application/json")
	captureTestdata(t, "watch-expired.pb", pb)
	if !reflect.DeepEqual(pe.status, je.status) {
		t.Errorf("the ERROR event's Status in protobuf\n %+v\nin JSON\n %+v", pe.status, je.status)
	}
	st := pe.status
	if serr := error(&apierrors.StatusError{ErrStatus: st}); st.Status != metav1.StatusFailure || st.Code != http.StatusGone ||
		st.Reason != metav1.StatusReasonExpired || st.Message == "" || !apierrors.IsResourceExpired(serr) || !gone(serr) {
		t.Errorf("the ERROR event's Status %+v", st)
	}
	// apimachinery's generated code reads the same of the same frame.
	var we metav1.WatchEvent
	if len(pb) < 4 || int(binary.BigEndian.Uint32(pb)) != len(pb)-4 || we.Unmarshal(pb[4:]) != nil || we.Type != "ERROR" {
		t.Fatalf("not one WatchEvent frame: %q", pb)
	}
	var want metav1.Status
	if kind, raw, err := unwrap(we.Object.Raw); err != nil || string(kind) != "Status" || want.Unmarshal(raw) != nil {
		t.Fatalf("the ERROR event's object: %q, %v", kind, err)
	}
	if want.ListMeta != (metav1.ListMeta{}) || !reflect.DeepEqual(st, want) {
		t.Errorf("the ERROR event's Status reads\n %+v\napimachinery reads\n %+v", st, want)
	}

	grantDeployRBAC(t, admin, nil)
	for i, enc := range []string{"protobuf", "json"} {
		t.Run(enc, func(t *testing.T) { storeWatchExpired(t, srv, admin, enc, 10*(i+1), compact) })
	}
}

// patchPublicIP sets Node name's public-ip annotation; it returns the
// Node's new resourceVersion.
func patchPublicIP(t *testing.T, admin kubernetes.Interface, name, ip string) string {
	t.Helper()
	p := fmt.Sprintf(`{"metadata":{"annotations":{%q:%q}}}`, DefaultAnnotationPrefix+"/public-ip", ip)
	n, err := admin.CoreV1().Nodes().Patch(kubetest.Ctx(t, time.Minute), name, types.StrategicMergePatchType, []byte(p), metav1.PatchOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return n.ResourceVersion
}

// storeWatchExpired: the store's Node watch (encoding enc) resumes from
// a version compact took away; its Nodes' podCIDRs are 10.244.base+i.
func storeWatchExpired(t *testing.T, srv *kubetest.Server, admin kubernetes.Interface, enc string, base int, compact func() int64) {
	ctx := kubetest.Ctx(t, 2*time.Minute)
	name := func(s string) string { return enc[:1] + "-" + s }
	cidr := func(i int) string { return fmt.Sprintf("10.244.%d.0/24", base+i) }
	ip := func(i int) string { return fmt.Sprintf("192.0.2.%d", base+i) }
	create := func(s string, i int) {
		createNode(t, admin, name(s), []string{cidr(i)}, peerAnnotations(ip(i), "vxlan", fmt.Sprintf(`{"VNI":1,"VtepMAC":"0a:58:00:00:00:%02x"}`, base+i)))
	}
	// mine are the leases of this run's Nodes.
	mine := func(ls []lease.Lease) []string {
		var out []string
		for _, l := range subnets(ls) {
			for i := 1; i <= 3; i++ {
				if strings.HasPrefix(l, cidr(i)+"=") {
					out = append(out, l)
				}
			}
		}
		return out
	}
	create("a", 1)
	create("b", 2)

	d := &cutDialer{}
	cfg := srv.Config(kubetest.Weft)
	cfg.Dial = d.dial
	cfg.UserAgent = "weft-test-" + enc // its requests in the audit log
	logs := &logRecorder{h: slog.NewTextHandler(testWriter{t}, nil)}
	s, err := New(Options{REST: cfg, NetConfPath: filepath.Join("testdata", "net-conf-vxlan.json"), NodeName: name("a"),
		Getenv: func(string) string { return "" }, Logger: slog.New(logs)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	if enc == "json" {
		s.api.nodesAccept = "application/json"
	}
	snaps := startWatch(t, s)
	watchUntil(t, snaps, "a and b", func(ls []lease.Lease) bool {
		return slices.Equal(mine(ls), []string{cidr(1) + "=" + ip(1), cidr(2) + "=" + ip(2)})
	})
	// A change the watch (not a list) brings: the watch is up.
	patchPublicIP(t, admin, name("a"), "198.51.100.1")
	watchUntil(t, snaps, "a's change", func(ls []lease.Lease) bool { return slices.Contains(mine(ls), cidr(1)+"=198.51.100.1") })

	// The connection cut, and new ones held, while a changes, b goes, c
	// comes and etcd forgets how.
	release := d.cut()
	defer release()
	patchPublicIP(t, admin, name("a"), "198.51.100.2")
	if err := admin.CoreV1().Nodes().Delete(ctx, name("b"), metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	create("c", 3)
	compacted := compact()
	release()
	watchUntil(t, snaps, "a changed, b gone, c in", func(ls []lease.Lease) bool {
		return slices.Equal(mine(ls), []string{cidr(1) + "=198.51.100.2", cidr(3) + "=" + ip(3)})
	})

	// The store saw the ERROR event's Status and listed anew.
	var expired *apierrors.StatusError
	for _, r := range logs.records() {
		if r.Message != "the Node watch's resourceVersion is gone; listing the Nodes again" {
			continue
		}
		r.Attrs(func(a slog.Attr) bool {
			if err, ok := a.Value.Any().(error); ok && a.Key == "err" {
				errors.As(err, &expired)
			}
			return true
		})
	}
	if expired == nil || expired.ErrStatus.Code != http.StatusGone || expired.ErrStatus.Reason != metav1.StatusReasonExpired {
		t.Errorf("no relist for a 410 Expired: %v", expired)
	}
	// Its cache holds the Nodes there are.
	l, err := admin.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var want, got []string
	for _, n := range l.Items {
		want = append(want, n.Name)
	}
	s.nodes.mu.Lock()
	for n := range s.nodes.names {
		got = append(got, n)
	}
	s.nodes.mu.Unlock()
	slices.Sort(want)
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Errorf("the store's Nodes %v, the server's %v", got, want)
	}
	// The server answered each of the store's watches 200 (the 410 came
	// as an event); two that ended were from before the compaction (the
	// one cut, the one resumed), and the store listed twice: first, and
	// after the ERROR event.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		var lists, stale int
		var bad []string
		for _, e := range srv.Audit(t, kubetest.Weft) {
			u, err := url.Parse(e.RequestURI)
			if err != nil || u.Path != "/api/v1/nodes" || e.UserAgent != cfg.UserAgent {
				continue
			}
			q := u.Query()
			switch {
			case q.Get("watch") == "true":
				rv, _ := strconv.ParseInt(q.Get("resourceVersion"), 10, 64)
				if e.ResponseStatus.Code != http.StatusOK {
					bad = append(bad, fmt.Sprintf("%s -> %d", e.RequestURI, e.ResponseStatus.Code))
				} else if rv < compacted {
					stale++
				}
			case q.Get("continue") == "":
				lists++
			}
		}
		if len(bad) > 0 {
			t.Fatalf("watches refused: %q", bad)
		}
		if lists == 2 && stale == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("audit: %d lists, %d watches from before %d", lists, stale, compacted)
		}
	}
}

// cutDialer dials TCP, and cuts: closes the connections it made and
// holds new ones until released.
type cutDialer struct {
	mu    sync.Mutex
	conns []net.Conn
	held  chan struct{} // non-nil while cut
}

func (d *cutDialer) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	d.mu.Lock()
	held := d.held
	d.mu.Unlock()
	if held != nil {
		select {
		case <-held:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	c, err := new(net.Dialer).DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.held != nil && d.held != held {
		c.Close() // cut while dialling
		return nil, errors.New("cut")
	}
	d.conns = append(d.conns, c)
	return c, nil
}

// cut closes the connections and holds new ones until release is
// called (once or more).
func (d *cutDialer) cut() (release func()) {
	d.mu.Lock()
	defer d.mu.Unlock()
	held := make(chan struct{})
	d.held = held
	for _, c := range d.conns {
		c.Close()
	}
	d.conns = nil
	var once sync.Once
	return func() {
		once.Do(func() {
			d.mu.Lock()
			d.held = nil
			d.mu.Unlock()
			close(held)
		})
	}
}

// logRecorder keeps the records it writes to h. The store logs with no
// attributes or groups of its own (slog.Logger.With), so WithAttrs and
// WithGroup keep none.
type logRecorder struct {
	h    slog.Handler
	mu   sync.Mutex
	recs []slog.Record
}

func (l *logRecorder) Enabled(context.Context, slog.Level) bool { return true }

func (l *logRecorder) Handle(ctx context.Context, r slog.Record) error {
	l.mu.Lock()
	l.recs = append(l.recs, r.Clone())
	l.mu.Unlock()
	return l.h.Handle(ctx, r)
}

func (l *logRecorder) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logRecorder) WithGroup(string) slog.Handler      { return l }

func (l *logRecorder) records() []slog.Record {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.recs)
}
