package kube

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/weft-net/weft/lease"
)

// nodeLease is one annotated Node's lease.
type nodeLease struct {
	lease   lease.Lease
	created time.Time
}

// strip keeps of a Node only its name, resourceVersion, creation time,
// the annotations under the store's prefix, and spec.podCIDR(s): a Node
// object of a real cluster carries kilobytes of images, conditions and
// managedFields, which in a large cluster would be most of the daemon's
// memory (kube-flannel.yml's 50 MiB limit is what OOM-kills flanneld).
func (s *Store) strip(obj any) (any, error) {
	n, ok := obj.(*v1.Node)
	if !ok {
		return obj, nil // a DeletedFinalStateUnknown: its Node was stripped
	}
	out := &v1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name: n.Name, UID: n.UID, ResourceVersion: n.ResourceVersion, CreationTimestamp: n.CreationTimestamp,
		},
		Spec: v1.NodeSpec{PodCIDR: n.Spec.PodCIDR, PodCIDRs: n.Spec.PodCIDRs},
	}
	p := s.ann.prefix()
	for k, v := range n.Annotations {
		if strings.HasPrefix(k, p) {
			if out.Annotations == nil {
				out.Annotations = make(map[string]string, 8)
			}
			out.Annotations[k] = v
		}
	}
	return out, nil
}

// update applies one informer event to the lease set. A Node that is not
// annotated kube-subnet-manager=true, or whose annotations make no valid
// lease, has no lease (a change that makes it invalid removes it).
func (s *Store) update(obj any, deleted bool) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	n, ok := obj.(*v1.Node)
	if !ok {
		return
	}
	var nl nodeLease
	var have bool
	var why error
	if !deleted && n.Annotations[s.ann.SubnetKubeManaged] == "true" {
		nl, why = s.nodeToLease(n)
		have = why == nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.leases == nil {
		s.leases = map[string]nodeLease{}
	}
	// Waiters are woken when the lease set changes, and on every event of
	// this host's own Node (Keep and Acquire watch it); not on the
	// heartbeats of thousands of other Nodes.
	notify := n.Name == s.node
	old, had := s.leases[n.Name]
	switch {
	case have && had && sameLease(old.lease, nl.lease):
	case have:
		s.leases[n.Name] = nl
		notify = true
		if !had {
			s.log.Info("peer Node added", "node", n.Name, "subnet", nl.lease.Subnet, "public-ip", nl.lease.Attrs.PublicIP)
		} else {
			s.log.Info("peer Node changed", "node", n.Name, "subnet", nl.lease.Subnet, "public-ip", nl.lease.Attrs.PublicIP)
		}
	case had:
		delete(s.leases, n.Name)
		notify = true
		switch {
		case deleted:
			s.log.Info("peer Node deleted", "node", n.Name, "subnet", old.lease.Subnet)
		case why != nil:
			s.log.Warn("peer Node's lease is no longer valid; removed", "node", n.Name, "err", why)
		default:
			s.log.Info("peer Node is no longer annotated by a kube subnet manager; removed", "node", n.Name)
		}
	case why != nil:
		// Once per Node and reason, not on every update of the Node.
		if s.refused[n.Name] != why.Error() {
			s.log.Warn("Node has no valid lease; ignored", "node", n.Name, "err", why)
		}
	}
	if why != nil {
		if s.refused == nil {
			s.refused = map[string]string{}
		}
		s.refused[n.Name] = why.Error()
	} else {
		delete(s.refused, n.Name)
	}
	if notify {
		close(s.changed)
		s.changed = make(chan struct{})
	}
}

func sameLease(a, b lease.Lease) bool {
	return a.Subnet == b.Subnet && a.Attrs.PublicIP == b.Attrs.PublicIP && a.Attrs.BackendType == b.Attrs.BackendType &&
		string(a.Attrs.BackendData) == string(b.Attrs.BackendData) && a.CreateRevision == b.CreateRevision
}

// nodeToLease reads a Node's lease as flanneld does: the IPv4 entry of
// spec.podCIDRs (or spec.podCIDR), public-ip, backend-type and
// backend-data ("null" meaning none).
func (s *Store) nodeToLease(n *v1.Node) (nodeLease, error) {
	subnet, err := podSubnet(n)
	if err != nil {
		return nodeLease{}, err
	}
	ip, err := netip.ParseAddr(n.Annotations[s.ann.BackendPublicIP])
	if err != nil || !ip.Is4() {
		return nodeLease{}, fmt.Errorf("annotation %s: %q is not an IPv4 address", s.ann.BackendPublicIP, n.Annotations[s.ann.BackendPublicIP])
	}
	a := lease.Attrs{PublicIP: ip, BackendType: n.Annotations[s.ann.BackendType]}
	if d := n.Annotations[s.ann.BackendData]; d != "" && d != "null" {
		if !json.Valid([]byte(d)) {
			return nodeLease{}, fmt.Errorf("annotation %s is not JSON", s.ann.BackendData)
		}
		a.BackendData = json.RawMessage(d)
	}
	// Admission checks the rest (public IP, backend type, sizes); a
	// JSON round trip applies the same checks etcd leases get.
	b, err := json.Marshal(a)
	if err != nil {
		return nodeLease{}, err
	}
	if err := json.Unmarshal(b, &a); err != nil {
		return nodeLease{}, err
	}
	rv, _ := strconv.ParseInt(n.ResourceVersion, 10, 64)
	created := n.CreationTimestamp.Time
	return nodeLease{
		lease:   lease.Lease{Subnet: subnet, Attrs: a, Revision: rv, CreateRevision: max(created.Unix(), 1)},
		created: created,
	}, nil
}

// podSubnet is a Node's IPv4 pod subnet: the IPv4 entry of
// spec.podCIDRs, or spec.podCIDR when podCIDRs is empty. More than two
// CIDRs is refused as flanneld refuses it.
func podSubnet(n *v1.Node) (netip.Prefix, error) {
	cidrs := n.Spec.PodCIDRs
	if len(cidrs) == 0 && n.Spec.PodCIDR != "" {
		cidrs = []string{n.Spec.PodCIDR}
	}
	switch {
	case len(cidrs) == 0:
		return netip.Prefix{}, fmt.Errorf("node %q pod cidr not assigned", n.Name)
	case len(cidrs) > 2:
		return netip.Prefix{}, fmt.Errorf("node %q pod cidrs should be IPv4/IPv6 only or dualstack, not %d CIDRs", n.Name, len(cidrs))
	}
	var v6 netip.Prefix
	for _, c := range cidrs {
		p, err := netip.ParsePrefix(c)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("node %q: pod CIDR %q: %v", n.Name, c, err)
		}
		if p.Addr().Is4() {
			return p.Masked(), nil
		}
		v6 = p
	}
	return netip.Prefix{}, fmt.Errorf("node %q has only the IPv6 pod CIDR %s: IPv6 is not supported yet", n.Name, v6)
}

// ownNode waits (up to OwnNodeWait) for this host's Node in the cache.
func (s *Store) ownNode(ctx context.Context) (*v1.Node, error) {
	ctx, cancel := context.WithTimeout(ctx, s.o.OwnNodeWait)
	defer cancel()
	logged := false
	for {
		s.mu.Lock()
		ch := s.changed
		s.mu.Unlock()
		if n, ok := s.nodes.get(s.node); ok {
			return n, nil
		}
		if !logged {
			s.log.Info("waiting for this host's Node", "node", s.node, "timeout", s.o.OwnNodeWait)
			logged = true
		}
		select {
		case <-ch:
		case <-time.After(time.Second):
		case <-ctx.Done():
			return nil, fmt.Errorf("kube subnet manager: Node %q not found within %s (is NODE_NAME right, and is the node registered?)", s.node, s.o.OwnNodeWait)
		}
	}
}

// ownSubnet checks this host's podCIDR as flanneld does: assigned, at
// most two CIDRs, inside Network.
func (s *Store) ownSubnet(n *v1.Node) (netip.Prefix, error) {
	p, err := podSubnet(n)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("kube subnet manager: %w", err)
	}
	if nw := s.conf.Network; p.Bits() < nw.Bits() || !nw.Contains(p.Addr()) {
		return netip.Prefix{}, fmt.Errorf("kube subnet manager: subnet %q specified in the flannel net config doesn't contain %q PodCIDR of the %q node", nw, p, n.Name)
	}
	return p, nil
}

// snapshot is the current lease set, one lease per subnet (of two Nodes
// claiming one subnet, the older), sorted by subnet.
func (s *Store) snapshot() ([]lease.Lease, chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	names := make([]string, 0, len(s.leases))
	for n := range s.leases {
		names = append(names, n)
	}
	slices.SortFunc(names, func(a, b string) int {
		if c := s.leases[a].created.Compare(s.leases[b].created); c != 0 {
			return c
		}
		return strings.Compare(a, b)
	})
	s.origin = make(map[netip.Prefix]string, len(names))
	out := make([]lease.Lease, 0, len(names))
	for _, n := range names {
		l := s.leases[n].lease
		if _, dup := s.origin[l.Subnet]; dup {
			continue
		}
		s.origin[l.Subnet] = n
		out = append(out, l)
	}
	slices.SortFunc(out, func(a, b lease.Lease) int { return a.Subnet.Addr().Compare(b.Subnet.Addr()) })
	return out, s.changed
}

// Watch sends the current leases, then a new snapshot after every
// change, coalescing changes that come faster than they are taken.
func (s *Store) Watch(ctx context.Context, out chan<- []lease.Lease) error {
	if err := s.start(ctx); err != nil {
		return err
	}
	var last []lease.Lease
	first := true
	for {
		snap, ch := s.snapshot()
		if first || !slices.EqualFunc(snap, last, sameLease) {
			select {
			case out <- snap:
			case <-ctx.Done():
				return ctx.Err()
			}
			last, first = snap, false
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Origin names the Node a subnet's lease comes from, for status.
func (s *Store) Origin(subnet netip.Prefix) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if n, ok := s.origin[subnet]; ok {
		return "node/" + n
	}
	return ""
}

// StatusDetails are the store's own details for status.
func (s *Store) StatusDetails() map[string]string {
	return map[string]string{"node": s.NodeName(), "annotation-prefix": s.AnnotationPrefix()}
}
