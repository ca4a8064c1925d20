package kube

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/netip"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/weft-net/weft/lease"
	"github.com/weft-net/weft/lease/internal/excerpt"
)

// PublicIPOverride is the public IP an operator gave this host's Node:
// the public-ip-overwrite annotation, else node-public-ip; invalid when
// neither is set. It takes precedence over --public-ip, as in flanneld,
// and is read before the interface is chosen.
func (s *Store) PublicIPOverride(ctx context.Context) (netip.Addr, error) {
	return s.publicOverride(ctx, false)
}

// PublicIPv6Override is PublicIPOverride for IPv6: the
// public-ipv6-overwrite annotation, else node-public-ipv6; invalid when
// neither is set or the network has no IPv6 (flanneld reads
// node-public-ipv6 in place of --public-ipv6).
func (s *Store) PublicIPv6Override(ctx context.Context) (netip.Addr, error) {
	return s.publicOverride(ctx, true)
}

func (s *Store) publicOverride(ctx context.Context, v6 bool) (netip.Addr, error) {
	if err := s.start(ctx); err != nil {
		return netip.Addr{}, err
	}
	if v6 && !s.conf.EnableIPv6 || !v6 && !s.conf.EnableIPv4 {
		return netip.Addr{}, nil
	}
	n, err := s.ownNode(ctx)
	if err != nil {
		return netip.Addr{}, err
	}
	keys := []string{s.ann.BackendPublicIPOverwrite, s.ann.BackendNodePublicIP}
	if v6 {
		keys = []string{s.ann.BackendPublicIPv6Overwrite, s.ann.BackendNodePublicIPv6}
	}
	for _, k := range keys {
		ip, err := overrideAnnotation(n, k, v6)
		if err != nil || ip.IsValid() {
			if ip.IsValid() {
				s.log.Info("public IP from the Node's annotation", "annotation", k, "public-ip", ip)
			}
			return ip, err
		}
	}
	return netip.Addr{}, nil
}

// overrideAnnotation reads the address an operator set in annotation k of
// n (the zero Addr when unset), refusing one other hosts cannot send to.
func overrideAnnotation(n *node, k string, v6 bool) (netip.Addr, error) {
	v := n.Annotations[k]
	if v == "" {
		return netip.Addr{}, nil
	}
	ip, err := netip.ParseAddr(v)
	if v6 {
		if err != nil || !ip.Is6() || ip.Is4In6() {
			return netip.Addr{}, fmt.Errorf("node %q: annotation %s: %s is not an IPv6 address", n.Name, k, excerpt.Quote(v, annotationExcerpt))
		}
		if err := lease.CheckPublicIPv6(ip); err != nil {
			return netip.Addr{}, fmt.Errorf("node %q: annotation %s: %v", n.Name, k, err)
		}
		return ip, nil
	}
	if err != nil || !ip.Is4() {
		return netip.Addr{}, fmt.Errorf("node %q: annotation %s: %s is not an IPv4 address", n.Name, k, excerpt.Quote(v, annotationExcerpt))
	}
	if err := lease.CheckPublicIP(ip); err != nil {
		return netip.Addr{}, fmt.Errorf("node %q: annotation %s: %v", n.Name, k, err)
	}
	return ip, nil
}

// PreviousAttrs are the lease attributes this host's Node carries from an
// earlier run (its annotations), if it has them: a vxlan backend reuses
// the VtepMAC of BackendData, as flanneld does, so peers' neighbour and
// FDB entries stay valid across a restart that lost the device.
func (s *Store) PreviousAttrs(ctx context.Context) (lease.Attrs, bool, error) {
	if err := s.start(ctx); err != nil {
		return lease.Attrs{}, false, err
	}
	n, err := s.ownNode(ctx)
	if err != nil {
		return lease.Attrs{}, false, err
	}
	if n.Annotations[s.ann.SubnetKubeManaged] != "true" {
		return lease.Attrs{}, false, nil
	}
	nl, err := s.nodeToLease(n)
	if err != nil {
		return lease.Attrs{}, false, nil
	}
	return nl.lease.Attrs, true, nil
}

// Acquire checks this host's Node's podCIDRs (assigned, inside Network
// and, with IPv6, inside IPv6Network) and writes the lease's annotations
// when they differ from the Node's, as flanneld: one strategic-merge
// patch of nodes/<name>/status holding only the changed annotations. The
// lease is the podCIDRs; it never expires. On a network with IPv6,
// attrs must carry PublicIPv6 (and, for vxlan, BackendV6Data): a host
// whose lease has no IPv6 annotations would be an IPv4-only peer to
// every other host, so weft refuses rather than write one.
func (s *Store) Acquire(ctx context.Context, attrs lease.Attrs) (lease.Lease, error) {
	if err := s.start(ctx); err != nil {
		return lease.Lease{}, err
	}
	n, err := s.ownNode(ctx)
	if err != nil {
		return lease.Lease{}, err
	}
	subnet, subnet6, err := s.ownSubnets(n)
	if err != nil {
		return lease.Lease{}, err
	}
	for _, k := range []string{s.ann.BackendPublicIPOverwrite, s.ann.BackendPublicIPv6Overwrite} {
		if k == s.ann.BackendPublicIPv6Overwrite && !s.conf.EnableIPv6 || k == s.ann.BackendPublicIPOverwrite && !s.conf.EnableIPv4 {
			continue
		}
		if _, err := overrideAnnotation(n, k, k == s.ann.BackendPublicIPv6Overwrite); err != nil {
			return lease.Lease{}, fmt.Errorf("kube subnet manager: %w", err)
		}
	}
	if !s.conf.EnableIPv4 {
		// An IPv6-only host has no IPv4 lease, whatever the backend
		// says: public-ip is written "0.0.0.0", as flanneld's zero
		// ip.IP4 (wantAnnotations).
		attrs.PublicIP, attrs.BackendData = netip.Addr{}, nil
	}
	if !s.conf.EnableIPv6 {
		attrs.PublicIPv6, attrs.BackendV6Data = netip.Addr{}, nil
	} else if why := s.noIPv6Annotations(attrs); why != "" {
		return lease.Lease{}, fmt.Errorf("kube subnet manager: the network config has \"EnableIPv6\": true, but %s: the Node would carry no IPv6 lease", why)
	}
	want, err := s.wantAnnotations(n.Annotations, attrs)
	if err != nil {
		return lease.Lease{}, err
	}
	if err := s.patchAnnotations(ctx, n, want); err != nil {
		return lease.Lease{}, err
	}
	// The public addresses as written: an operator's overwrite wins.
	if s.conf.EnableIPv4 {
		attrs.PublicIP, _ = netip.ParseAddr(want[s.ann.BackendPublicIP])
	}
	if s.conf.EnableIPv6 {
		attrs.PublicIPv6, _ = netip.ParseAddr(want[s.ann.BackendPublicIPv6])
	}
	own := lease.Lease{Subnet: subnet, IPv6Subnet: subnet6, Attrs: attrs, CreateRevision: max(n.Created.Unix(), 1)}
	s.mu.Lock()
	s.ownAttrs, s.acquired, s.actedRV = attrs, true, n.ResourceVersion
	s.mu.Unlock()
	return own, nil
}

// writesIPv6 is flanneld's rule for writing backend-v6-data and
// public-ipv6: vxlan with IPv6 backend data, host-gw with a public IPv6
// address. flanneld's udp backend never carried IPv6 and writes none;
// weft's does (IPv6 inside flannel's UDP format, between weft hosts), so
// it writes them as host-gw does: an addition flanneld's udp backend,
// which reads no IPv6 annotation, never sees.
func writesIPv6(attrs lease.Attrs) bool {
	switch attrs.BackendType {
	case "vxlan":
		return len(attrs.BackendV6Data) > 0
	case "host-gw", "":
		return attrs.PublicIPv6.IsValid()
	}
	return false
}

// noIPv6Annotations says why attrs, on a network with IPv6, would write
// no IPv6 annotations; "" when they do.
func (s *Store) noIPv6Annotations(attrs lease.Attrs) string {
	switch {
	case !attrs.PublicIPv6.IsValid():
		return "this host has no public IPv6 address (--public-ipv6, or an IPv6 address on --iface)"
	case attrs.BackendType == "vxlan" && len(attrs.BackendV6Data) == 0:
		return "the vxlan backend gave no IPv6 data (BackendV6Data)"
	case !writesIPv6(attrs):
		return fmt.Sprintf("the %s backend has no IPv6 lease annotations", attrs.BackendName())
	}
	return ""
}

// wantAnnotations are the Node's annotations with this host's lease
// written in, flanneld's rules: backend-type always; backend-data
// ("null" for none) and public-ip unless a vxlan backend has no data;
// public-ip-overwrite, when set, wins over attrs.PublicIP (on an
// IPv6-only network public-ip is "0.0.0.0", flanneld's zero IPv4
// address, and the overwrite is not applied); with
// attrs.PublicIPv6, backend-v6-data and public-ipv6 as writesIPv6 says,
// public-ipv6-overwrite winning over attrs.PublicIPv6;
// kube-subnet-manager "true". The result equals have when nothing
// changes.
func (s *Store) wantAnnotations(have map[string]string, attrs lease.Attrs) (map[string]string, error) {
	bd, err := backendData(attrs.BackendData)
	if err != nil {
		return nil, err
	}
	bd6, err := backendData(attrs.BackendV6Data)
	if err != nil {
		return nil, err
	}
	// writes4: whether backend-data and public-ip are written at all
	// (flanneld: not by a vxlan backend without IPv4 data, which is
	// what vxlan has on an IPv6-only network).
	writes4 := attrs.BackendType != "vxlan" || bd != "null"
	ip, over := "0.0.0.0", ""
	if s.conf.EnableIPv4 {
		ip, over = attrs.PublicIP.String(), have[s.ann.BackendPublicIPOverwrite]
	}
	unchanged := have[s.ann.BackendType] == attrs.BackendType && have[s.ann.SubnetKubeManaged] == "true"
	if writes4 || s.conf.EnableIPv4 {
		// flanneld compares public-ip even where it writes none, so it
		// patches (an empty patch) on every start of an IPv6-only vxlan
		// host; weft compares only what it writes.
		unchanged = unchanged && have[s.ann.BackendData] == bd && have[s.ann.BackendPublicIP] == ip &&
			(over == "" || over == ip)
	}
	ip6, over6 := "", ""
	if attrs.PublicIPv6.IsValid() {
		ip6, over6 = attrs.PublicIPv6.String(), have[s.ann.BackendPublicIPv6Overwrite]
		unchanged = unchanged && have[s.ann.BackendV6Data] == bd6 && have[s.ann.BackendPublicIPv6] == ip6 &&
			(over6 == "" || over6 == ip6)
	}
	if unchanged {
		return maps.Clone(have), nil
	}
	want := maps.Clone(have)
	if want == nil {
		want = map[string]string{}
	}
	want[s.ann.BackendType] = attrs.BackendType
	if writes4 {
		want[s.ann.BackendData] = bd
		if s.conf.EnableIPv4 {
			s.setPublicIP(want, s.ann.BackendPublicIP, s.ann.BackendPublicIPOverwrite, ip)
		} else {
			// flanneld writes public-ip-overwrite here too; weft
			// keeps "0.0.0.0" (no IPv4 lease) whatever it says.
			want[s.ann.BackendPublicIP] = ip
		}
	}
	if writesIPv6(attrs) {
		want[s.ann.BackendV6Data] = bd6
		s.setPublicIP(want, s.ann.BackendPublicIPv6, s.ann.BackendPublicIPv6Overwrite, ip6)
	}
	want[s.ann.SubnetKubeManaged] = "true"
	return want, nil
}

// setPublicIP writes ip to annotation key, or the overwrite annotation's
// value when an operator set one.
func (s *Store) setPublicIP(want map[string]string, key, overwrite, ip string) {
	over := want[overwrite]
	if over == "" {
		want[key] = ip
		return
	}
	if want[key] != over {
		s.log.Info("overriding the public IP with the Node's annotation", "annotation", overwrite, "public-ip", over)
		want[key] = over
	}
}

// backendData is the backend-data annotation's value: the JSON as given,
// "null" when there is none (flanneld's json.RawMessage.MarshalJSON).
func backendData(d json.RawMessage) (string, error) {
	if len(d) == 0 {
		return "null", nil
	}
	if !json.Valid(d) {
		return "", fmt.Errorf("kube subnet manager: BackendData is not valid JSON")
	}
	return string(d), nil
}

// annotationPatch is flanneld's patch body: the two-way strategic merge
// patch between the Node as it is and the Node with want as its
// annotations (flanneld's strategicpatch.CreateTwoWayMergePatch), which
// for a map of strings is the added and changed keys with their new
// values and the removed ones null, sorted
// ({"metadata":{"annotations":{...}}}); all annotations removed is
// "annotations":null. nil when nothing changes. (A test holds it to
// strategicpatch's answer; weft does not link that package, which
// brings the types of every Kubernetes object.)
func annotationPatch(n *node, want map[string]string) ([]byte, error) {
	if maps.Equal(n.Annotations, want) {
		return nil, nil
	}
	var ann any // nil: all removed
	if len(want) > 0 {
		diff := make(map[string]any, len(want))
		for k, v := range want {
			if have, ok := n.Annotations[k]; !ok || have != v {
				diff[k] = v
			}
		}
		for k := range n.Annotations {
			if _, ok := want[k]; !ok {
				diff[k] = nil
			}
		}
		ann = diff
	}
	return json.Marshal(map[string]any{"metadata": map[string]any{"annotations": ann}})
}

func (s *Store) patchAnnotations(ctx context.Context, n *node, want map[string]string) error {
	body, err := annotationPatch(n, want)
	if err != nil {
		return fmt.Errorf("failed to create patch for node %q: %v", n.Name, err)
	}
	if body == nil {
		s.log.Info("the Node's annotations already hold this lease", "node", n.Name)
		return nil
	}
	if err := s.api.patchNodeStatus(ctx, n.Name, body); err != nil {
		return fmt.Errorf("kube subnet manager: annotating Node %q: %w%s", n.Name, err, forbiddenHint(err, "patch", "nodes/status"))
	}
	s.log.Info("Node annotated with this host's lease", "node", n.Name)
	return nil
}

// nodeCondition is a v1.NodeCondition's JSON, fields in its order.
type nodeCondition struct {
	Type               string      `json:"type"`
	Status             string      `json:"status"`
	LastHeartbeatTime  metav1.Time `json:"lastHeartbeatTime,omitempty"`
	LastTransitionTime metav1.Time `json:"lastTransitionTime,omitempty"`
	Reason             string      `json:"reason,omitempty"`
	Message            string      `json:"message,omitempty"`
}

// conditionPatch is flanneld's patch setting NetworkUnavailable=False.
func conditionPatch(now time.Time) ([]byte, error) {
	t := metav1.NewTime(now)
	raw, err := json.Marshal(&[]nodeCondition{{
		Type:               "NetworkUnavailable",
		Status:             "False",
		Reason:             "FlannelIsUp",
		Message:            "Flannel is running on this node",
		LastTransitionTime: t,
		LastHeartbeatTime:  t,
	}})
	if err != nil {
		return nil, err
	}
	return fmt.Appendf(nil, `{"status":{"conditions":%s}}`, raw), nil
}

func (s *Store) setNetworkAvailable(ctx context.Context) error {
	body, err := conditionPatch(time.Now())
	if err != nil {
		return err
	}
	if err := s.api.patchNodeStatus(ctx, s.node, body); err != nil {
		return fmt.Errorf("kube subnet manager: setting NetworkUnavailable=False on Node %q: %w%s", s.node, err, forbiddenHint(err, "patch", "nodes/status"))
	}
	s.log.Info("Node condition NetworkUnavailable set to False", "node", s.node)
	return nil
}
