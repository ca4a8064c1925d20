package kube

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/netip"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/strategicpatch"

	"github.com/weft-net/weft/lease"
)

// PublicIPOverride is the public IP an operator gave this host's Node:
// the public-ip-overwrite annotation, else node-public-ip; invalid when
// neither is set. It takes precedence over --public-ip, as in flanneld,
// and is read before the interface is chosen.
func (s *Store) PublicIPOverride(ctx context.Context) (netip.Addr, error) {
	if err := s.start(ctx); err != nil {
		return netip.Addr{}, err
	}
	n, err := s.ownNode(ctx)
	if err != nil {
		return netip.Addr{}, err
	}
	for _, k := range []string{s.ann.BackendPublicIPOverwrite, s.ann.BackendNodePublicIP} {
		v := n.Annotations[k]
		if v == "" {
			continue
		}
		ip, err := netip.ParseAddr(v)
		if err != nil || !ip.Is4() {
			return netip.Addr{}, fmt.Errorf("node %q: annotation %s: %q is not an IPv4 address", n.Name, k, v)
		}
		if err := lease.CheckPublicIP(ip); err != nil {
			return netip.Addr{}, fmt.Errorf("node %q: annotation %s: %v", n.Name, k, err)
		}
		s.log.Info("public IP from the Node's annotation", "annotation", k, "public-ip", ip)
		return ip, nil
	}
	return netip.Addr{}, nil
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

// Acquire checks this host's Node's podCIDR (assigned, inside Network)
// and writes the lease's annotations when they differ from the Node's,
// as flanneld: one strategic-merge patch of nodes/<name>/status holding
// only the changed annotations. The lease is the podCIDR; it never
// expires.
func (s *Store) Acquire(ctx context.Context, attrs lease.Attrs) (lease.Lease, error) {
	if err := s.start(ctx); err != nil {
		return lease.Lease{}, err
	}
	n, err := s.ownNode(ctx)
	if err != nil {
		return lease.Lease{}, err
	}
	subnet, err := s.ownSubnet(n)
	if err != nil {
		return lease.Lease{}, err
	}
	want, err := s.wantAnnotations(n.Annotations, attrs)
	if err != nil {
		return lease.Lease{}, err
	}
	if err := s.patchAnnotations(ctx, n, want); err != nil {
		return lease.Lease{}, err
	}
	ip, _ := netip.ParseAddr(want[s.ann.BackendPublicIP])
	attrs.PublicIP = ip
	own := lease.Lease{Subnet: subnet, Attrs: attrs, CreateRevision: max(n.CreationTimestamp.Unix(), 1)}
	s.mu.Lock()
	s.ownAttrs, s.actedRV = attrs, n.ResourceVersion
	s.mu.Unlock()
	return own, nil
}

// wantAnnotations are the Node's annotations with this host's lease
// written in, flanneld's rules: backend-type always; backend-data
// ("null" for none) and public-ip unless a vxlan backend has no data;
// public-ip-overwrite, when set, wins over attrs.PublicIP;
// kube-subnet-manager "true". The result is nil when nothing changes.
func (s *Store) wantAnnotations(have map[string]string, attrs lease.Attrs) (map[string]string, error) {
	bd, err := backendData(attrs.BackendData)
	if err != nil {
		return nil, err
	}
	ip := attrs.PublicIP.String()
	over := have[s.ann.BackendPublicIPOverwrite]
	if have[s.ann.BackendData] == bd && have[s.ann.BackendType] == attrs.BackendType &&
		have[s.ann.BackendPublicIP] == ip && have[s.ann.SubnetKubeManaged] == "true" &&
		(over == "" || over == ip) {
		return maps.Clone(have), nil
	}
	want := maps.Clone(have)
	if want == nil {
		want = map[string]string{}
	}
	want[s.ann.BackendType] = attrs.BackendType
	if attrs.BackendType != "vxlan" || bd != "null" {
		want[s.ann.BackendData] = bd
		if over != "" {
			if want[s.ann.BackendPublicIP] != over {
				s.log.Info("overriding the public IP with the Node's annotation", "annotation", s.ann.BackendPublicIPOverwrite, "public-ip", over)
				want[s.ann.BackendPublicIP] = over
			}
		} else {
			want[s.ann.BackendPublicIP] = ip
		}
	}
	want[s.ann.SubnetKubeManaged] = "true"
	return want, nil
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
// annotations, so only changed keys are sent, sorted
// ({"metadata":{"annotations":{...}}}). nil when nothing changes.
func annotationPatch(n *v1.Node, want map[string]string) ([]byte, error) {
	if maps.Equal(n.Annotations, want) {
		return nil, nil
	}
	oldData, err := json.Marshal(&v1.Node{ObjectMeta: metav1.ObjectMeta{Annotations: n.Annotations}})
	if err != nil {
		return nil, err
	}
	newData, err := json.Marshal(&v1.Node{ObjectMeta: metav1.ObjectMeta{Annotations: want}})
	if err != nil {
		return nil, err
	}
	return strategicpatch.CreateTwoWayMergePatch(oldData, newData, v1.Node{})
}

func (s *Store) patchAnnotations(ctx context.Context, n *v1.Node, want map[string]string) error {
	body, err := annotationPatch(n, want)
	if err != nil {
		return fmt.Errorf("failed to create patch for node %q: %v", n.Name, err)
	}
	if body == nil {
		s.log.Info("the Node's annotations already hold this lease", "node", n.Name)
		return nil
	}
	if _, err := s.cli.CoreV1().Nodes().Patch(ctx, n.Name, types.StrategicMergePatchType, body, metav1.PatchOptions{}, "status"); err != nil {
		return fmt.Errorf("kube subnet manager: annotating Node %q: %w%s", n.Name, err, forbiddenHint(err, "patch", "nodes/status"))
	}
	s.log.Info("Node annotated with this host's lease", "node", n.Name)
	return nil
}

// conditionPatch is flanneld's patch setting NetworkUnavailable=False.
func conditionPatch(now time.Time) ([]byte, error) {
	t := metav1.NewTime(now)
	raw, err := json.Marshal(&[]v1.NodeCondition{{
		Type:               v1.NodeNetworkUnavailable,
		Status:             v1.ConditionFalse,
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
	if _, err := s.cli.CoreV1().Nodes().PatchStatus(ctx, s.node, body); err != nil {
		return fmt.Errorf("kube subnet manager: setting NetworkUnavailable=False on Node %q: %w%s", s.node, err, forbiddenHint(err, "patch", "nodes/status"))
	}
	s.log.Info("Node condition NetworkUnavailable set to False", "node", s.node)
	return nil
}
