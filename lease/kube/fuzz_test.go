package kube

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// FuzzNodeToLease feeds hostile podCIDRs and annotations to the parser of
// a peer Node, on an IPv4 and a dual-stack network: it never panics, and
// a lease it makes has an IPv4 subnet and public IP, IPv6 parts only
// together (subnet and public IPv6 both IPv6), and attributes that survive
// the lease JSON round trip.
func FuzzNodeToLease(f *testing.F) {
	f.Add("10.244.2.0/24", "fd00:10:244:2::/64", "192.0.2.2", "2001:db8::2", "vxlan", `{"VNI":1,"VtepMAC":"f2:e4:5a:b9:9e:20"}`, `{"VNI":1,"VtepMAC":"22:c7:df:57:c8:cb"}`)
	f.Add("fd00:10:244:2::/64", "", "192.0.2.2", "", "host-gw", "null", "null")
	f.Add("10.244.2.0/24", "10.244.3.0/24", "192.0.2.2", "::ffff:1.2.3.4", "", "", "{")
	f.Add("10.244.2.7/33", "fe80::%eth0/64", "", "fe80::1%eth0", "vxlan", `"x"`, `[]`)
	stores := map[string]*Store{"net-conf-vxlan.json": testStore(f), dualNetConf: testStore(f, dualNetConf)}
	f.Fuzz(func(t *testing.T, cidr4, cidr6, ip, ip6, typ, data, data6 string) {
		for conf, s := range stores {
			n := nodeWith("p", []string{cidr4, cidr6}, map[string]string{
				s.ann.SubnetKubeManaged: "true", s.ann.BackendPublicIP: ip, s.ann.BackendPublicIPv6: ip6,
				s.ann.BackendType: typ, s.ann.BackendData: data, s.ann.BackendV6Data: data6,
			})
			if cidr6 == "" {
				n.Spec.PodCIDRs = n.Spec.PodCIDRs[:1]
			}
			s.update(asNode(n), false)
			nl, err := s.nodeToLease(asNode(n))
			if err != nil {
				if _, ok := s.leases["p"]; ok {
					t.Fatalf("%v: a lease despite %v", conf, err)
				}
				continue
			}
			l, a := nl.lease, nl.lease.Attrs
			if !l.Subnet.IsValid() || !l.Subnet.Addr().Is4() || !a.PublicIP.Is4() {
				t.Fatalf("%s: lease %+v", conf, l)
			}
			if l.IPv6Subnet.IsValid() != a.PublicIPv6.IsValid() || l.IPv6Subnet.IsValid() && (!l.IPv6Subnet.Addr().Is6() || !a.PublicIPv6.Is6()) {
				t.Fatalf("%s: IPv6 parts %v, %v", conf, l.IPv6Subnet, a.PublicIPv6)
			}
			if conf != dualNetConf && (l.IPv6Subnet.IsValid() || a.BackendV6Data != nil) {
				t.Fatalf("IPv4 network: IPv6 parts %+v", l)
			}
			if !l.IPv6Subnet.IsValid() && a.BackendV6Data != nil {
				t.Fatalf("%s: BackendV6Data without an IPv6 subnet", conf)
			}
			b, err := json.Marshal(a)
			if err != nil {
				t.Fatal(err)
			}
			var back = a
			if err := json.Unmarshal(b, &back); err != nil {
				t.Fatalf("%s: %s does not read back: %v", conf, b, err)
			}
		}
	})
}

// FuzzProtobufNodes feeds hostile bytes to the protobuf readers of the
// Node list and watch, seeded with what a real API server sent
// (testdata/protobuf: a list page, a watch's events, its ERROR event)
// and with apimachinery's encoding of the events it would not send on
// demand (a bookmark, a Status with causes): none panics, a Node keeps only the
// annotations under the prefix, and where apimachinery's own generated
// decoder reads the same bytes as a Node, both read the same fields.
func FuzzProtobufNodes(f *testing.F) {
	seeds, err := filepath.Glob(filepath.Join("testdata", "protobuf", "*.pb"))
	if err != nil || len(seeds) == 0 {
		f.Fatalf("no seeds in testdata/protobuf: %v", err)
	}
	for _, p := range seeds {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
		if _, raw, err := unwrap(b); err == nil {
			f.Add(bytes.Clone(raw))
		}
	}
	f.Add(pbFrame(f, "BOOKMARK", pbEncode(f, &v1.Node{ObjectMeta: metav1.ObjectMeta{ResourceVersion: "50"}}, "Node")))
	f.Add(pbFrame(f, "ERROR", pbEncode(f, &metav1.Status{Status: metav1.StatusFailure, Code: 410, Reason: metav1.StatusReasonExpired,
		Details: &metav1.StatusDetails{Causes: []metav1.StatusCause{{Type: metav1.CauseTypeResourceVersionTooLarge}}}}, "Status")))
	prefix := DefaultAnnotationPrefix + "/"
	checkKept := func(t *testing.T, n *node) {
		for k := range n.Annotations {
			if !strings.HasPrefix(k, prefix) {
				t.Fatalf("kept annotation %q", k)
			}
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		readNodeList(bytes.NewReader(b), prefix, func(n *node) error { checkKept(t, n); return nil })
		ev := newProtoEvents(bytes.NewReader(b), prefix)
		for {
			e, err := ev.next()
			if err != nil {
				break
			}
			if e.node != nil {
				checkKept(t, e.node)
			}
		}
		decodeStatusObject(b)
		msgs := [][]byte{b}
		if _, raw, err := unwrap(b); err == nil {
			msgs = append(msgs, raw)
		}
		for _, m := range msgs {
			decodeStatus(m)
			got, err := decodeNode(m, prefix)
			if err != nil {
				continue
			}
			checkKept(t, got)
			var want v1.Node
			if want.Unmarshal(m) != nil {
				continue
			}
			w := &node{Name: want.Name, UID: string(want.UID), ResourceVersion: want.ResourceVersion, Created: got.Created,
				PodCIDR: want.Spec.PodCIDR, PodCIDRs: want.Spec.PodCIDRs, Annotations: keepAnnotations(want.Annotations, prefix)}
			if !got.Created.Equal(want.CreationTimestamp.Time) || !reflect.DeepEqual(got, w) {
				t.Fatalf("read\n %+v\napimachinery reads\n %+v (created %v)", got, w, want.CreationTimestamp.Time)
			}
		}
	})
}
