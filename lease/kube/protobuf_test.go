package kube

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer/protobuf"
	"k8s.io/client-go/kubernetes/scheme"
)

// pbEncode is obj as the API server encodes it in protobuf: the magic
// and a runtime.Unknown (apimachinery's own serializer).
func pbEncode(t testing.TB, obj runtime.Object, kind string) []byte {
	t.Helper()
	obj.GetObjectKind().SetGroupVersionKind(v1.SchemeGroupVersion.WithKind(kind))
	var b bytes.Buffer
	if err := protobuf.NewSerializer(scheme.Scheme, scheme.Scheme).Encode(obj, &b); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// pbFrame is a watch stream's frame of an event of type typ and object
// obj (an encoded object).
func pbFrame(t testing.TB, typ string, obj []byte) []byte {
	t.Helper()
	e := metav1.WatchEvent{Type: typ, Object: runtime.RawExtension{Raw: obj}}
	b, err := e.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return append(binary.BigEndian.AppendUint32(nil, uint32(len(b))), b...)
}

// jsonNode is what the JSON path reads of n.
func jsonNode(t testing.TB, n *v1.Node, prefix string) *node {
	t.Helper()
	b, err := json.Marshal(n)
	if err != nil {
		t.Fatal(err)
	}
	var w wireNode
	if err := json.Unmarshal(b, &w); err != nil {
		t.Fatal(err)
	}
	return w.node(prefix)
}

// A Node in protobuf reads into what the JSON path reads of it: the same
// fields, the annotations under the prefix alone.
func TestNodeFromProtobuf(t *testing.T) {
	s := testStore(t)
	prefix := s.ann.prefix()
	bare := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "bare", Annotations: map[string]string{"a.example.com/x": "y"}}}
	for _, n := range []*v1.Node{kubeletNode("h7"), bare} {
		kind, raw, err := unwrap(pbEncode(t, n, "Node"))
		if err != nil || string(kind) != "Node" {
			t.Fatalf("unwrap: %q, %v", kind, err)
		}
		got, err := decodeNode(raw, prefix)
		if err != nil {
			t.Fatal(err)
		}
		if want := jsonNode(t, n, prefix); !reflect.DeepEqual(got, want) {
			t.Errorf("protobuf reads\n %+v\nJSON\n %+v", got, want)
		}
	}
}

// A list page and a watch stream in protobuf read as their JSON does.
func TestListAndWatchFromProtobuf(t *testing.T) {
	prefix := testStore(t).ann.prefix()
	a, b := kubeletNode("a"), kubeletNode("b")
	b.Annotations = nil
	list := &v1.NodeList{ListMeta: metav1.ListMeta{ResourceVersion: "42", Continue: "c1"}, Items: []v1.Node{*a, *b}}
	var got []*node
	meta, err := readNodeList(bytes.NewReader(pbEncode(t, list, "NodeList")), prefix, func(n *node) error { got = append(got, n); return nil })
	if err != nil || meta != (listMeta{ResourceVersion: "42", Continue: "c1"}) {
		t.Fatalf("list: %+v, %v", meta, err)
	}
	if want := []*node{jsonNode(t, a, prefix), jsonNode(t, b, prefix)}; !reflect.DeepEqual(got, want) {
		t.Errorf("list reads\n %+v\nwant\n %+v", got, want)
	}

	expired := &metav1.Status{Status: metav1.StatusFailure, Code: 410, Reason: metav1.StatusReasonExpired, Message: "too old resource version: 1 (42)",
		Details: &metav1.StatusDetails{Causes: []metav1.StatusCause{{Type: metav1.CauseTypeResourceVersionTooLarge, Message: "m"}}}}
	var stream []byte
	stream = append(stream, pbFrame(t, "ADDED", pbEncode(t, a, "Node"))...)
	stream = append(stream, pbFrame(t, "BOOKMARK", pbEncode(t, &v1.Node{ObjectMeta: metav1.ObjectMeta{ResourceVersion: "50"}}, "Node"))...)
	stream = append(stream, pbFrame(t, "DELETED", pbEncode(t, b, "Node"))...)
	stream = append(stream, pbFrame(t, "ERROR", pbEncode(t, expired, "Status"))...)
	ev := newProtoEvents(bytes.NewReader(stream), prefix)
	var types []string
	for {
		e, err := ev.next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		types = append(types, e.typ)
		switch e.typ {
		case "ADDED":
			if !reflect.DeepEqual(e.node, jsonNode(t, a, prefix)) {
				t.Errorf("ADDED %+v", e.node)
			}
		case "BOOKMARK":
			if e.node.ResourceVersion != "50" || e.node.Name != "" {
				t.Errorf("BOOKMARK %+v", e.node)
			}
		case "DELETED":
			if !reflect.DeepEqual(e.node, jsonNode(t, b, prefix)) {
				t.Errorf("DELETED %+v", e.node)
			}
		case "ERROR":
			err := error(&apierrors.StatusError{ErrStatus: e.status})
			if !gone(err) || !apierrors.IsResourceExpired(err) || e.status.Message != expired.Message || e.status.Code != 410 {
				t.Errorf("ERROR %+v", e.status)
			}
		}
	}
	if strings.Join(types, " ") != "ADDED BOOKMARK DELETED ERROR" {
		t.Errorf("events %v", types)
	}
}

// Hostile protobuf: each is refused with an error, none panics or
// allocates what a length claims.
func TestProtobufHostile(t *testing.T) {
	prefix := DefaultAnnotationPrefix + "/"
	nodeBody := pbEncode(t, kubeletNode("h"), "Node")
	_, raw, _ := unwrap(nodeBody)
	tag := func(num protowire.Number, typ protowire.Type) []byte { return protowire.AppendTag(nil, num, typ) }
	meta := func(inner []byte) []byte { return protowire.AppendBytes(tag(nodeMetadata, protowire.BytesType), inner) }
	nodes := map[string][]byte{
		"truncated":             raw[:len(raw)/2],
		"name as a varint":      meta(protowire.AppendVarint(tag(metaName, protowire.VarintType), 7)),
		"spec as a fixed32":     append(tag(nodeSpec, protowire.Fixed32Type), 1, 2, 3, 4),
		"length beyond the end": append(tag(nodeMetadata, protowire.BytesType), 0xff, 0xff, 0xff, 0xff, 0x0f),
		"time as bytes":         meta(protowire.AppendBytes(tag(metaCreationTimestamp, protowire.BytesType), protowire.AppendBytes(tag(timeSeconds, protowire.BytesType), []byte("x")))),
		"annotation value varint": meta(protowire.AppendBytes(tag(metaAnnotations, protowire.BytesType),
			protowire.AppendVarint(protowire.AppendBytes(tag(mapKey, protowire.BytesType), []byte(prefix+"x")), 0x10))),
		"a group without its end": append(tag(9, protowire.StartGroupType), 1),
		"field number 0":          {0x02, 0x00},
	}
	for what, b := range nodes {
		if n, err := decodeNode(b, prefix); err == nil {
			t.Errorf("%s: read as %+v", what, n)
		}
	}
	// Unknown fields, of every wire type, are stepped over.
	var unknown []byte
	unknown = protowire.AppendVarint(append(unknown, tag(100, protowire.VarintType)...), 1)
	unknown = protowire.AppendFixed32(append(unknown, tag(101, protowire.Fixed32Type)...), 1)
	unknown = protowire.AppendFixed64(append(unknown, tag(102, protowire.Fixed64Type)...), 1)
	unknown = protowire.AppendBytes(append(unknown, tag(103, protowire.BytesType)...), []byte("x"))
	if n, err := decodeNode(append(unknown, raw...), prefix); err != nil || n.Name != "h" {
		t.Errorf("unknown fields: %+v, %v", n, err)
	}

	objects := map[string][]byte{
		"no magic":     raw,
		"gzip":         append(bytes.Clone(nodeBody), protowire.AppendBytes(tag(unknownContentEncoding, protowire.BytesType), []byte("gzip"))...),
		"json in raw":  append(bytes.Clone(nodeBody), protowire.AppendBytes(tag(unknownContentType, protowire.BytesType), []byte("application/json"))...),
		"raw a varint": append(bytes.Clone(protobufMagic), protowire.AppendVarint(tag(unknownRaw, protowire.VarintType), 1)...),
	}
	for what, b := range objects {
		if _, _, err := unwrap(b); err == nil {
			t.Errorf("object %s: unwrapped", what)
		}
	}
	if _, err := decodeStatusObject(nodeBody); err == nil {
		t.Error("a Node read as a Status")
	}

	frames := map[string][]byte{
		"a frame of 4 GiB":     {0xff, 0xff, 0xff, 0xff},
		"a frame beyond":       {0, 0, 0, 9, 1},
		"a half header":        {0, 0},
		"an unknown type":      pbFrame(t, "UPDATED", nodeBody),
		"a Status as ADDED":    pbFrame(t, "ADDED", pbEncode(t, &metav1.Status{Status: "Failure"}, "Status")),
		"a Node as ERROR":      pbFrame(t, "ERROR", nodeBody),
		"an object not framed": pbFrame(t, "ADDED", raw),
	}
	for what, b := range frames {
		if e, err := newProtoEvents(bytes.NewReader(b), prefix).next(); err == nil || errors.Is(err, io.EOF) {
			t.Errorf("frame %s: %+v, %v", what, e, err)
		}
	}

	list := pbEncode(t, &v1.NodeList{Items: []v1.Node{*kubeletNode("a")}}, "NodeList")
	// head is a NodeList's start, its raw claiming n bytes.
	head := func(n uint64) []byte {
		b := append(bytes.Clone(protobufMagic), protowire.AppendBytes(tag(unknownTypeMeta, protowire.BytesType),
			protowire.AppendBytes(tag(typeMetaKind, protowire.BytesType), []byte("NodeList")))...)
		return protowire.AppendVarint(append(b, tag(unknownRaw, protowire.BytesType)...), n)
	}
	lists := map[string][]byte{
		"empty":               nil,
		"truncated":           list[:len(list)-10],
		"no NodeList":         list[:8],
		"a NodeList of 1 TiB": head(1 << 40),
		"a Node of 100 MiB":   protowire.AppendVarint(append(head(1<<30), tag(listItems, protowire.BytesType)...), 100<<20),
		"items as a varint":   protowire.AppendVarint(append(head(2), tag(listItems, protowire.VarintType)...), 1),
		"a list of Pods":      pbEncode(t, &v1.PodList{}, "PodList"),
	}
	for what, b := range lists {
		if _, err := readNodeList(bytes.NewReader(b), prefix, func(*node) error { return nil }); err == nil {
			t.Errorf("list %s: read", what)
		}
	}
}

// repeatReader is a stream of b, again and again.
type repeatReader struct {
	b   []byte
	off int
}

func (r *repeatReader) Read(p []byte) (int, error) {
	n := copy(p, r.b[r.off:])
	r.off = (r.off + n) % len(r.b)
	return n, nil
}

// Reading the Node events of a watch, kubelet-shaped Nodes, as JSON and
// as protobuf: what each Node event costs the decoder (go test -bench
// NodeEvent).
func BenchmarkNodeEvent(b *testing.B) {
	prefix := DefaultAnnotationPrefix + "/"
	n := kubeletNode("h7")
	n.Status.Conditions = append(n.Status.Conditions, v1.NodeCondition{Type: "MemoryPressure", Status: "False", Reason: "KubeletHasSufficientMemory", Message: "kubelet has sufficient memory available"})
	n.Status.NodeInfo = v1.NodeSystemInfo{KernelVersion: "6.1.0-28-amd64", OSImage: "Debian GNU/Linux 12 (bookworm)", KubeletVersion: "v1.37.2"}
	js, err := json.Marshal(metav1.WatchEvent{Type: "MODIFIED", Object: runtime.RawExtension{Object: n}})
	if err != nil {
		b.Fatal(err)
	}
	pb := pbFrame(b, "MODIFIED", pbEncode(b, n, "Node"))
	b.Run("json", func(b *testing.B) {
		b.SetBytes(int64(len(js)))
		b.ReportAllocs()
		ev := jsonEvents{dec: json.NewDecoder(&repeatReader{b: js}), prefix: prefix}
		for b.Loop() {
			if e, err := ev.next(); err != nil || e.node.Name != "h7" {
				b.Fatal(e, err)
			}
		}
	})
	b.Run("protobuf", func(b *testing.B) {
		b.SetBytes(int64(len(pb)))
		b.ReportAllocs()
		ev := newProtoEvents(&repeatReader{b: pb}, prefix)
		for b.Loop() {
			if e, err := ev.next(); err != nil || e.node.Name != "h7" {
				b.Fatal(e, err)
			}
		}
	})
}
