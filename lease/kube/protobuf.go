package kube

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// Nodes in the API server's protobuf encoding, read straight into what
// the store keeps (node), every other field skipped where it lies: the
// JSON decoder scans every byte of a Node's ~10 KiB (images, conditions,
// managedFields) to find its few hundred bytes, where protobuf's length
// prefixes step over them. The message layouts are those of
// k8s.io/api/core/v1 and k8s.io/apimachinery's generated.proto (field
// numbers below); nothing of their generated Go code is linked.
//
// An object body is the magic "k8s\x00" and a runtime.Unknown whose raw
// field holds the object (k8s.io/apimachinery/pkg/runtime/serializer/
// protobuf). Everything here comes from the API server, or whatever
// answers in its place: a length beyond what is left, a known field of
// the wrong wire type, a message that does not end where its length
// says, all are errors; unknown fields are skipped; nothing is allocated
// for what is skipped.

// protobufType is the API server's protobuf media type; a watch answers
// it with the parameter stream=watch.
const protobufType = "application/vnd.kubernetes.protobuf"

// acceptProtobuf is what the list and the watch of Nodes ask for:
// protobuf, else JSON (a proxy or server that answers JSON still works).
const acceptProtobuf = protobufType + ", application/json"

// maxObject bounds one object (a Node, a Status, a watch event's frame)
// in protobuf: the API server refuses objects of more than 3 MiB (etcd's
// default request limit is 1.5 MiB), so anything larger is not a Node
// but a broken or hostile answer, refused before it is allocated.
const maxObject = 8 << 20

var protobufMagic = []byte("k8s\x00")

// Field numbers (generated.proto).
const (
	unknownTypeMeta        = 1 // runtime.Unknown
	unknownRaw             = 2
	unknownContentEncoding = 3
	unknownContentType     = 4
	typeMetaKind           = 2 // runtime.TypeMeta (apiVersion = 1)

	listMetadata        = 1 // NodeList
	listItems           = 2
	listResourceVersion = 2 // ListMeta
	listContinue        = 3

	nodeMetadata = 1 // Node (status = 3)
	nodeSpec     = 2

	metaName              = 1 // ObjectMeta
	metaUID               = 5
	metaResourceVersion   = 6
	metaCreationTimestamp = 8
	metaAnnotations       = 12
	timeSeconds           = 1 // Time (nanos = 2: the API server's own decoder ignores them)
	mapKey                = 1 // a map<string, string> entry
	mapValue              = 2

	specPodCIDR  = 1 // NodeSpec
	specPodCIDRs = 7

	eventType   = 1 // WatchEvent
	eventObject = 2
	rawRaw      = 1 // RawExtension

	statusStatus  = 2 // Status
	statusMessage = 3
	statusReason  = 4
	statusDetails = 5
	statusCode    = 6

	detailsName       = 1 // StatusDetails
	detailsGroup      = 2
	detailsKind       = 3
	detailsCauses     = 4
	detailsRetryAfter = 5
	detailsUID        = 6
	causeReason       = 1 // StatusCause
	causeMessage      = 2
	causeField        = 3
)

// errTruncated is a message that ends inside a field.
var errTruncated = errors.New("protobuf: truncated or malformed field")

// field is one field of a message being read.
type field struct {
	num protowire.Number
	typ protowire.Type
	// val is the field's bytes for BytesType, else unset; v its varint
	// (VarintType).
	val []byte
	v   uint64
}

// nextField reads the field at the start of b and returns it and the
// rest of b; an unknown field's value is stepped over, whatever its type.
func nextField(b []byte) (field, []byte, error) {
	num, typ, n := protowire.ConsumeTag(b)
	if n < 0 {
		return field{}, nil, errTruncated
	}
	b = b[n:]
	f := field{num: num, typ: typ}
	switch typ {
	case protowire.BytesType:
		f.val, n = protowire.ConsumeBytes(b)
	case protowire.VarintType:
		f.v, n = protowire.ConsumeVarint(b)
	default:
		n = protowire.ConsumeFieldValue(num, typ, b)
	}
	if n < 0 {
		return field{}, nil, errTruncated
	}
	return f, b[n:], nil
}

// want checks that a known field has the wire type its message gives it.
func (f field) want(typ protowire.Type, msg string) error {
	if f.typ != typ {
		return fmt.Errorf("protobuf: %s field %d has wire type %d, want %d", msg, f.num, f.typ, typ)
	}
	return nil
}

// unwrap reads an object body: the magic, then a runtime.Unknown. It
// returns the object's kind and its raw bytes (both aliasing b).
func unwrap(b []byte) (kind, raw []byte, err error) {
	if !bytes.HasPrefix(b, protobufMagic) {
		return nil, nil, errors.New("protobuf: an object without the k8s magic")
	}
	b = b[len(protobufMagic):]
	for len(b) > 0 {
		var f field
		if f, b, err = nextField(b); err != nil {
			return nil, nil, err
		}
		switch f.num {
		case unknownTypeMeta:
			if err := f.want(protowire.BytesType, "Unknown"); err != nil {
				return nil, nil, err
			}
			if kind, err = typeMetaKindOf(f.val); err != nil {
				return nil, nil, err
			}
		case unknownRaw:
			if err := f.want(protowire.BytesType, "Unknown"); err != nil {
				return nil, nil, err
			}
			raw = f.val
		case unknownContentEncoding, unknownContentType:
			if err := f.want(protowire.BytesType, "Unknown"); err != nil {
				return nil, nil, err
			}
			if err := checkUnknownEncoding(f); err != nil {
				return nil, nil, err
			}
		}
	}
	return kind, raw, nil
}

// checkUnknownEncoding refuses a runtime.Unknown whose raw is compressed
// or not protobuf (the API server never sends either).
func checkUnknownEncoding(f field) error {
	if len(f.val) == 0 || f.num == unknownContentType && string(f.val) == protobufType {
		return nil
	}
	what := "content encoding"
	if f.num == unknownContentType {
		what = "content type"
	}
	return fmt.Errorf("protobuf: an object of %s %.64q", what, f.val)
}

// typeMetaKindOf is the kind of a runtime.TypeMeta (aliasing b).
func typeMetaKindOf(b []byte) ([]byte, error) {
	var kind []byte
	for len(b) > 0 {
		f, rest, err := nextField(b)
		if err != nil {
			return nil, err
		}
		b = rest
		if f.num == typeMetaKind || f.num == 1 {
			if err := f.want(protowire.BytesType, "TypeMeta"); err != nil {
				return nil, err
			}
			if f.num == typeMetaKind {
				kind = f.val
			}
		}
	}
	return kind, nil
}

// decodeNode reads a Node message (the raw of its Unknown) into a node,
// keeping the annotations under prefix. As in protobuf, a message field
// that comes twice is merged.
func decodeNode(b []byte, prefix string) (*node, error) {
	n := new(node)
	for len(b) > 0 {
		f, rest, err := nextField(b)
		if err != nil {
			return nil, err
		}
		b = rest
		switch f.num {
		case nodeMetadata:
			if err := f.want(protowire.BytesType, "Node"); err != nil {
				return nil, err
			}
			if err := decodeObjectMeta(f.val, n, prefix); err != nil {
				return nil, err
			}
		case nodeSpec:
			if err := f.want(protowire.BytesType, "Node"); err != nil {
				return nil, err
			}
			if err := decodeNodeSpec(f.val, n); err != nil {
				return nil, err
			}
		}
	}
	return n, nil
}

func decodeObjectMeta(b []byte, n *node, prefix string) error {
	for len(b) > 0 {
		f, rest, err := nextField(b)
		if err != nil {
			return err
		}
		b = rest
		switch f.num {
		case metaName, metaUID, metaResourceVersion, metaCreationTimestamp, metaAnnotations:
			if err := f.want(protowire.BytesType, "ObjectMeta"); err != nil {
				return err
			}
		default:
			continue
		}
		switch f.num {
		case metaName:
			n.Name = string(f.val)
		case metaUID:
			n.UID = string(f.val)
		case metaResourceVersion:
			n.ResourceVersion = string(f.val)
		case metaCreationTimestamp:
			if n.Created, err = decodeTime(f.val); err != nil {
				return err
			}
		case metaAnnotations:
			k, v, err := decodeMapEntry(f.val)
			if err != nil {
				return err
			}
			if bytes.HasPrefix(k, []byte(prefix)) {
				if n.Annotations == nil {
					n.Annotations = make(map[string]string, 8)
				}
				n.Annotations[string(k)] = string(v)
			}
		}
	}
	return nil
}

// decodeTime reads a metav1.Time as its own Unmarshal does: empty is the
// zero time, else whole seconds (nanos are ignored), in UTC as JSON's
// RFC 3339 "Z" reads.
func decodeTime(b []byte) (time.Time, error) {
	if len(b) == 0 {
		return time.Time{}, nil
	}
	var sec int64
	for len(b) > 0 {
		f, rest, err := nextField(b)
		if err != nil {
			return time.Time{}, err
		}
		b = rest
		switch f.num {
		case timeSeconds, 2:
			if err := f.want(protowire.VarintType, "Time"); err != nil {
				return time.Time{}, err
			}
			if f.num == timeSeconds {
				sec = int64(f.v)
			}
		}
	}
	return time.Unix(sec, 0).UTC(), nil
}

// decodeMapEntry reads a map<string, string> entry (aliasing b).
func decodeMapEntry(b []byte) (k, v []byte, err error) {
	for len(b) > 0 {
		var f field
		if f, b, err = nextField(b); err != nil {
			return nil, nil, err
		}
		switch f.num {
		case mapKey, mapValue:
			if err := f.want(protowire.BytesType, "map entry"); err != nil {
				return nil, nil, err
			}
			if f.num == mapKey {
				k = f.val
			} else {
				v = f.val
			}
		}
	}
	return k, v, nil
}

func decodeNodeSpec(b []byte, n *node) error {
	for len(b) > 0 {
		f, rest, err := nextField(b)
		if err != nil {
			return err
		}
		b = rest
		switch f.num {
		case specPodCIDR, specPodCIDRs:
			if err := f.want(protowire.BytesType, "NodeSpec"); err != nil {
				return err
			}
			if f.num == specPodCIDR {
				n.PodCIDR = string(f.val)
			} else {
				n.PodCIDRs = append(n.PodCIDRs, string(f.val))
			}
		}
	}
	return nil
}

// decodeStatus reads a Status message (the raw of its Unknown).
func decodeStatus(b []byte) (metav1.Status, error) {
	var st metav1.Status
	for len(b) > 0 {
		f, rest, err := nextField(b)
		if err != nil {
			return st, err
		}
		b = rest
		switch f.num {
		case statusStatus, statusMessage, statusReason, statusDetails:
			if err := f.want(protowire.BytesType, "Status"); err != nil {
				return st, err
			}
		case statusCode:
			if err := f.want(protowire.VarintType, "Status"); err != nil {
				return st, err
			}
		}
		switch f.num {
		case statusStatus:
			st.Status = string(f.val)
		case statusMessage:
			st.Message = string(f.val)
		case statusReason:
			st.Reason = metav1.StatusReason(f.val)
		case statusCode:
			st.Code = int32(f.v)
		case statusDetails:
			if st.Details == nil {
				st.Details = new(metav1.StatusDetails)
			}
			if err := decodeStatusDetails(f.val, st.Details); err != nil {
				return st, err
			}
		}
	}
	return st, nil
}

func decodeStatusDetails(b []byte, d *metav1.StatusDetails) error {
	for len(b) > 0 {
		f, rest, err := nextField(b)
		if err != nil {
			return err
		}
		b = rest
		switch f.num {
		case detailsRetryAfter:
			if err := f.want(protowire.VarintType, "StatusDetails"); err != nil {
				return err
			}
			d.RetryAfterSeconds = int32(f.v)
			continue
		case detailsName, detailsGroup, detailsKind, detailsCauses, detailsUID:
			if err := f.want(protowire.BytesType, "StatusDetails"); err != nil {
				return err
			}
		default:
			continue
		}
		switch f.num {
		case detailsName:
			d.Name = string(f.val)
		case detailsGroup:
			d.Group = string(f.val)
		case detailsKind:
			d.Kind = string(f.val)
		case detailsUID:
			d.UID = types.UID(f.val)
		case detailsCauses:
			if len(d.Causes) >= maxCauses {
				continue // a Status is an error message; its tail can go
			}
			var c metav1.StatusCause
			for cb := f.val; len(cb) > 0; {
				var cf field
				if cf, cb, err = nextField(cb); err != nil {
					return err
				}
				switch cf.num {
				case causeReason, causeMessage, causeField:
					if err := cf.want(protowire.BytesType, "StatusCause"); err != nil {
						return err
					}
				}
				switch cf.num {
				case causeReason:
					c.Type = metav1.CauseType(cf.val)
				case causeMessage:
					c.Message = string(cf.val)
				case causeField:
					c.Field = string(cf.val)
				}
			}
			d.Causes = append(d.Causes, c)
		}
	}
	return nil
}

// maxCauses bounds the causes kept of a Status.
const maxCauses = 16

// decodeStatusObject reads a Status body (magic and Unknown), as the API
// server sends one for a refused request or a watch's ERROR event.
func decodeStatusObject(b []byte) (metav1.Status, error) {
	kind, raw, err := unwrap(b)
	if err != nil {
		return metav1.Status{}, err
	}
	if string(kind) != "Status" {
		return metav1.Status{}, fmt.Errorf("protobuf: a %.64q where a Status belongs", kind)
	}
	st, err := decodeStatus(raw)
	st.Kind, st.APIVersion = "Status", "v1" // as a JSON Status reads
	return st, err
}

// isProtobuf tells a protobuf answer by its Content-Type.
func isProtobuf(contentType string) bool {
	mt, _, _ := strings.Cut(contentType, ";")
	return strings.EqualFold(strings.TrimSpace(mt), protobufType)
}
