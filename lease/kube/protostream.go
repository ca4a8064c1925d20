package kube

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"

	"google.golang.org/protobuf/encoding/protowire"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The list and the watch of Nodes in protobuf, read from the answer's
// stream: a list page is one NodeList message of megabytes, read field
// by field with one Node in memory at a time (as the JSON list is read);
// a watch is a stream of length-delimited WatchEvent frames, read one
// frame at a time into a buffer reused for the next.

// wireReader reads protobuf fields from a stream, within the bytes left
// of the message being read.
type wireReader struct {
	br   *bufio.Reader
	left int64
	// top is the top level: the message ends where the stream does
	// (left is then unbounded).
	top bool
}

// more tells whether the message has another field.
func (r *wireReader) more() (bool, error) {
	if !r.top {
		return r.left > 0, nil
	}
	if _, err := r.br.Peek(1); err != nil {
		if errors.Is(err, io.EOF) {
			return false, nil
		}
		return false, err
	}
	return true, nil
}

func (r *wireReader) varint() (uint64, error) {
	var v uint64
	for i := 0; ; i++ {
		if r.left <= 0 || i == 10 {
			return 0, errTruncated
		}
		c, err := r.br.ReadByte()
		if err != nil {
			return 0, unexpectedEOF(err)
		}
		r.left--
		v |= uint64(c&0x7f) << (7 * i)
		if c < 0x80 {
			if i == 9 && c > 1 {
				return 0, errTruncated // beyond 64 bits
			}
			return v, nil
		}
	}
}

func (r *wireReader) tag() (protowire.Number, protowire.Type, error) {
	v, err := r.varint()
	if err != nil {
		return 0, 0, err
	}
	num, typ := protowire.DecodeTag(v)
	if num < protowire.MinValidNumber || num > protowire.MaxValidNumber {
		return 0, 0, errTruncated
	}
	return num, typ, nil
}

// length reads a length prefix, which must fit in what is left.
func (r *wireReader) length() (int64, error) {
	v, err := r.varint()
	if err != nil {
		return 0, err
	}
	if v > uint64(r.left) {
		return 0, errTruncated
	}
	return int64(v), nil
}

// discard steps over n bytes of the stream.
func (r *wireReader) discard(n int64) error {
	if n > r.left {
		return errTruncated
	}
	for n > 0 {
		step := int(min(n, 1<<20))
		d, err := r.br.Discard(step)
		n -= int64(d)
		r.left -= int64(d)
		if err != nil {
			return unexpectedEOF(err)
		}
	}
	return nil
}

// skip steps over the value of a field of wire type typ.
func (r *wireReader) skip(typ protowire.Type) error {
	switch typ {
	case protowire.VarintType:
		_, err := r.varint()
		return err
	case protowire.Fixed32Type:
		return r.discard(4)
	case protowire.Fixed64Type:
		return r.discard(8)
	case protowire.BytesType:
		n, err := r.length()
		if err != nil {
			return err
		}
		return r.discard(n)
	}
	// Groups: no Kubernetes message has one.
	return fmt.Errorf("protobuf: a field of wire type %d", typ)
}

// bytes reads a length-delimited value of at most maxObject bytes into
// *buf (grown as needed, reused by the caller) and returns it.
func (r *wireReader) bytes(buf *[]byte) ([]byte, error) {
	n, err := r.length()
	if err != nil {
		return nil, err
	}
	if n > maxObject {
		return nil, fmt.Errorf("protobuf: an object of %d bytes (at most %d)", n, maxObject)
	}
	b, err := readFull(r.br, buf, int(n))
	r.left -= n
	return b, err
}

// readFull reads n bytes into *buf, growing it as needed.
func readFull(rd io.Reader, buf *[]byte, n int) ([]byte, error) {
	if cap(*buf) < n {
		*buf = make([]byte, n)
	}
	b := (*buf)[:n]
	if _, err := io.ReadFull(rd, b); err != nil {
		return nil, unexpectedEOF(err)
	}
	return b, nil
}

// unexpectedEOF is err, an end of the stream inside a message being one.
func unexpectedEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// readNodeList reads a list page's protobuf body (the magic, then a
// runtime.Unknown holding the NodeList), calling put for each Node as it
// is read, and returns the list's metadata.
func readNodeList(body io.Reader, prefix string, put func(*node) error) (listMeta, error) {
	var meta listMeta
	br := bufio.NewReaderSize(body, 64<<10)
	var buf []byte
	magic, err := readFull(br, &buf, len(protobufMagic))
	if err != nil || string(magic) != string(protobufMagic) {
		return meta, errors.New("protobuf: a list without the k8s magic")
	}
	top := wireReader{br: br, left: math.MaxInt64, top: true}
	var kind string
	listed := false
	for {
		more, err := top.more()
		if err != nil || !more {
			if err == nil && !listed {
				err = errors.New("protobuf: a list without its NodeList")
			}
			return meta, err
		}
		num, typ, err := top.tag()
		if err != nil {
			return meta, err
		}
		switch num {
		case unknownTypeMeta, unknownRaw, unknownContentEncoding, unknownContentType:
			if typ != protowire.BytesType {
				return meta, fmt.Errorf("protobuf: Unknown field %d has wire type %d, want %d", num, typ, protowire.BytesType)
			}
		default:
			if err := top.skip(typ); err != nil {
				return meta, err
			}
			continue
		}
		if num == unknownRaw {
			if kind != "NodeList" {
				return meta, fmt.Errorf("protobuf: a list of kind %.64q", kind)
			}
			n, err := top.length()
			if err != nil {
				return meta, err
			}
			list := wireReader{br: br, left: n}
			if err := readNodeListMessage(&list, &buf, prefix, &meta, put); err != nil {
				return meta, err
			}
			top.left -= n
			listed = true
			continue
		}
		b, err := top.bytes(&buf)
		if err != nil {
			return meta, err
		}
		if num == unknownTypeMeta {
			k, err := typeMetaKindOf(b)
			if err != nil {
				return meta, err
			}
			kind = string(k)
		} else if err := checkUnknownEncoding(field{num: num, val: b}); err != nil {
			return meta, err
		}
	}
}

// readNodeListMessage reads a NodeList message from r, one Node at a
// time into buf.
func readNodeListMessage(r *wireReader, buf *[]byte, prefix string, meta *listMeta, put func(*node) error) error {
	for r.left > 0 {
		num, typ, err := r.tag()
		if err != nil {
			return err
		}
		if num != listMetadata && num != listItems {
			if err := r.skip(typ); err != nil {
				return err
			}
			continue
		}
		if typ != protowire.BytesType {
			return fmt.Errorf("protobuf: NodeList field %d has wire type %d, want %d", num, typ, protowire.BytesType)
		}
		b, err := r.bytes(buf)
		if err != nil {
			return err
		}
		if num == listMetadata {
			if err := decodeListMeta(b, meta); err != nil {
				return err
			}
			continue
		}
		n, err := decodeNode(b, prefix)
		if err != nil {
			return err
		}
		if err := put(n); err != nil {
			return err
		}
	}
	return nil
}

func decodeListMeta(b []byte, meta *listMeta) error {
	for len(b) > 0 {
		f, rest, err := nextField(b)
		if err != nil {
			return err
		}
		b = rest
		switch f.num {
		case listResourceVersion, listContinue:
			if err := f.want(protowire.BytesType, "ListMeta"); err != nil {
				return err
			}
			if f.num == listResourceVersion {
				meta.ResourceVersion = string(f.val)
			} else {
				meta.Continue = string(f.val)
			}
		}
	}
	return nil
}

// protoEvents reads a protobuf watch stream: frames of a 4-byte
// big-endian length and a WatchEvent.
type protoEvents struct {
	br     *bufio.Reader
	prefix string
	buf    []byte
}

func newProtoEvents(body io.Reader, prefix string) *protoEvents {
	return &protoEvents{br: bufio.NewReaderSize(body, 32<<10), prefix: prefix}
}

// next reads the next event; io.EOF when the stream ends between frames.
func (p *protoEvents) next() (event, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(p.br, hdr[:]); err != nil {
		return event{}, err // io.EOF between frames: the server ended the watch
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n > maxObject {
		return event{}, fmt.Errorf("protobuf: a watch event of %d bytes (at most %d)", n, maxObject)
	}
	b, err := readFull(p.br, &p.buf, int(n))
	if err != nil {
		return event{}, err
	}
	return decodeWatchEvent(b, p.prefix)
}

// event is one event of a watch of Nodes, however encoded.
type event struct {
	typ string // ADDED, MODIFIED, DELETED, BOOKMARK, ERROR
	// node is the Node of ADDED, MODIFIED and DELETED; BOOKMARK's holds
	// only the resourceVersion.
	node   *node
	status metav1.Status // ERROR's
}

// eventTypes are the watch event types, so that reading one allocates
// no string.
var eventTypes = []string{"ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR"}

// decodeWatchEvent reads a WatchEvent message whose object is a Node, or
// a Status for ERROR.
func decodeWatchEvent(b []byte, prefix string) (event, error) {
	var typ, obj []byte
	for len(b) > 0 {
		f, rest, err := nextField(b)
		if err != nil {
			return event{}, err
		}
		b = rest
		switch f.num {
		case eventType:
			if err := f.want(protowire.BytesType, "WatchEvent"); err != nil {
				return event{}, err
			}
			typ = f.val
		case eventObject:
			if err := f.want(protowire.BytesType, "WatchEvent"); err != nil {
				return event{}, err
			}
			for rb := f.val; len(rb) > 0; {
				var rf field
				if rf, rb, err = nextField(rb); err != nil {
					return event{}, err
				}
				if rf.num == rawRaw {
					if err := rf.want(protowire.BytesType, "RawExtension"); err != nil {
						return event{}, err
					}
					obj = rf.val
				}
			}
		}
	}
	var e event
	for _, t := range eventTypes {
		if string(typ) == t {
			e.typ = t
		}
	}
	if e.typ == "" {
		return event{}, fmt.Errorf("watch of Nodes: an event of unknown type %.64q", typ)
	}
	kind, raw, err := unwrap(obj)
	if err != nil {
		return event{}, fmt.Errorf("watch of Nodes: a %s event: %w", e.typ, err)
	}
	want := "Node"
	if e.typ == "ERROR" {
		want = "Status"
	}
	if string(kind) != want {
		return event{}, fmt.Errorf("watch of Nodes: a %s event of a %.64q", e.typ, kind)
	}
	if e.typ == "ERROR" {
		e.status, err = decodeStatus(raw)
	} else {
		e.node, err = decodeNode(raw, prefix)
	}
	if err != nil {
		return event{}, fmt.Errorf("watch of Nodes: a %s event: %w", e.typ, err)
	}
	return e, nil
}
