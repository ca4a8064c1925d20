package kube

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"time"

	"github.com/weft-net/weft/lease"
	"github.com/weft-net/weft/lease/internal/excerpt"
)

// nodeLease is one annotated Node's lease.
type nodeLease struct {
	lease   lease.Lease
	created time.Time
}

// update applies one event of the Node watch to the lease set. A Node
// that is not annotated kube-subnet-manager=true, or whose annotations
// make no valid lease, has no lease (a change that makes it invalid
// removes it).
func (s *Store) update(n *node, deleted bool) {
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
		if !had {
			s.log.Info("peer Node added", leaseLog(n.Name, nl.lease)...)
		} else {
			s.log.Info("peer Node changed", leaseLog(n.Name, nl.lease)...)
			s.unclaim(n.Name, old.lease.ID())
		}
		s.leases[n.Name] = nl
		s.claim(n.Name, nl.lease.ID())
		if had && old.lease.ID() != nl.lease.ID() {
			s.settle(old.lease.ID())
		}
		s.settle(nl.lease.ID())
		notify = true
	case had:
		s.unclaim(n.Name, old.lease.ID())
		delete(s.shadowed, n.Name)
		s.settle(old.lease.ID())
		delete(s.leases, n.Name)
		notify = true
		switch {
		case deleted:
			s.log.Info("peer Node deleted", "node", n.Name, "subnet", old.lease)
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
		if _, was := s.refused[n.Name]; !was {
			s.unreadable.Add(1)
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

// leaseLog are the log attributes of a Node's lease: its IPv4 and IPv6
// parts only when it has them.
func leaseLog(node string, l lease.Lease) []any {
	out := []any{"node", node}
	if l.Subnet.IsValid() {
		out = append(out, "subnet", l.Subnet, "public-ip", l.Attrs.PublicIP)
	}
	if l.IPv6Subnet.IsValid() {
		out = append(out, "ipv6-subnet", l.IPv6Subnet, "public-ipv6", l.Attrs.PublicIPv6)
	}
	return out
}

func sameLease(a, b lease.Lease) bool {
	return a.Subnet == b.Subnet && a.IPv6Subnet == b.IPv6Subnet &&
		a.Attrs.PublicIP == b.Attrs.PublicIP && a.Attrs.PublicIPv6 == b.Attrs.PublicIPv6 && a.Attrs.BackendType == b.Attrs.BackendType &&
		string(a.Attrs.BackendData) == string(b.Attrs.BackendData) && string(a.Attrs.BackendV6Data) == string(b.Attrs.BackendV6Data) &&
		a.CreateRevision == b.CreateRevision
}

// nodeToLease reads a Node's lease as flanneld does: the IPv4 entry of
// spec.podCIDRs (or spec.podCIDR), public-ip, backend-type and
// backend-data ("null" meaning none); on a network with IPv6, also the
// IPv6 entry with public-ipv6 and backend-v6-data.
//
// Unlike flanneld, which ignores a Node of a dual-stack network that has
// no IPv6 podCIDR or no public-ipv6 annotation, weft takes such a Node
// as an IPv4 peer (a host whose daemon runs without IPv6 still reaches
// and is reached over IPv4). IPv6 annotations that are present but
// unreadable make no lease at all, as unreadable IPv4 ones do: the Node
// is refused, logged and counted. Admission checks the ranges.
func (s *Store) nodeToLease(n *node) (nodeLease, error) {
	v4, v6, err := podSubnets(n)
	if err != nil {
		return nodeLease{}, err
	}
	a := lease.Attrs{BackendType: n.Annotations[s.ann.BackendType]}
	var l lease.Lease
	if s.conf.EnableIPv4 {
		if !v4.IsValid() {
			return nodeLease{}, fmt.Errorf("node %q has no IPv4 pod CIDR (spec.podCIDRs %v): missing IPv4 address on n.Spec.PodCIDRs", n.Name, n.PodCIDRs)
		}
		ip, err := netip.ParseAddr(n.Annotations[s.ann.BackendPublicIP])
		if err != nil || !ip.Is4() {
			return nodeLease{}, fmt.Errorf("annotation %s: %s is not an IPv4 address", s.ann.BackendPublicIP, excerpt.Quote(n.Annotations[s.ann.BackendPublicIP], annotationExcerpt))
		}
		a.PublicIP, l.Subnet = ip, v4
		if a.BackendData, err = annotationJSON(n.Annotations, s.ann.BackendData); err != nil {
			return nodeLease{}, err
		}
	}
	if s.conf.EnableIPv6 {
		ip6, data6, err := s.ipv6Annotations(n)
		if err != nil {
			return nodeLease{}, err
		}
		switch {
		case v6.IsValid() && ip6.IsValid():
			l.IPv6Subnet, a.PublicIPv6, a.BackendV6Data = v6, ip6, data6
		case !s.conf.EnableIPv4 && !v6.IsValid():
			return nodeLease{}, fmt.Errorf("node %q has no IPv6 pod CIDR (spec.podCIDRs %v): missing IPv6 address on n.Spec.PodCIDRs", n.Name, n.PodCIDRs)
		case !s.conf.EnableIPv4:
			return nodeLease{}, fmt.Errorf("node %q has no annotation %s", n.Name, s.ann.BackendPublicIPv6)
		}
	}
	// Admission checks the rest (public IPs, backend type, sizes); a
	// JSON round trip applies the same checks etcd leases get.
	b, err := json.Marshal(a)
	if err != nil {
		return nodeLease{}, err
	}
	if err := json.Unmarshal(b, &a); err != nil {
		return nodeLease{}, err
	}
	rv, _ := strconv.ParseInt(n.ResourceVersion, 10, 64)
	created := n.Created
	l.Attrs, l.Revision, l.CreateRevision = a, rv, max(created.Unix(), 1)
	return nodeLease{lease: l, created: created}, nil
}

// annotationExcerpt bounds how much of an annotation's value an error
// quotes: a Node's annotations come from whoever may edit Nodes.
const annotationExcerpt = 64

// ipv6Annotations reads public-ipv6 (the zero Addr when absent or empty) and
// backend-v6-data (nil when absent or "null"), refusing either when it
// is present but unreadable.
func (s *Store) ipv6Annotations(n *node) (netip.Addr, json.RawMessage, error) {
	var ip netip.Addr
	if v := n.Annotations[s.ann.BackendPublicIPv6]; v != "" {
		var err error
		if ip, err = netip.ParseAddr(v); err != nil || !ip.Is6() || ip.Is4In6() {
			return netip.Addr{}, nil, fmt.Errorf("annotation %s: %s is not an IPv6 address", s.ann.BackendPublicIPv6, excerpt.Quote(v, annotationExcerpt))
		}
	}
	data, err := annotationJSON(n.Annotations, s.ann.BackendV6Data)
	if err != nil {
		return netip.Addr{}, nil, err
	}
	return ip, data, nil
}

// annotationJSON is a backend-data annotation's JSON: nil when absent or
// "null" (what flanneld writes for none), an error when not JSON.
func annotationJSON(ann map[string]string, key string) (json.RawMessage, error) {
	d := ann[key]
	if d == "" || d == "null" {
		return nil, nil
	}
	if !json.Valid([]byte(d)) {
		return nil, fmt.Errorf("annotation %s is not JSON", key)
	}
	return json.RawMessage(d), nil
}

// podSubnets are a Node's pod subnets: the first IPv4 and the first IPv6
// entry of spec.podCIDRs, or spec.podCIDR when podCIDRs is empty; either
// is the zero Prefix when the Node has none. No CIDR at all, or more
// than two, is refused as flanneld refuses it.
func podSubnets(n *node) (v4, v6 netip.Prefix, err error) {
	cidrs := n.PodCIDRs
	if len(cidrs) == 0 && n.PodCIDR != "" {
		cidrs = []string{n.PodCIDR}
	}
	switch {
	case len(cidrs) == 0:
		return v4, v6, fmt.Errorf("node %q pod cidr not assigned", n.Name)
	case len(cidrs) > 2:
		return v4, v6, fmt.Errorf("node %q pod cidrs should be IPv4/IPv6 only or dualstack, not %d CIDRs", n.Name, len(cidrs))
	}
	for _, c := range cidrs {
		p, err := netip.ParsePrefix(c)
		if err != nil || p.Addr().Zone() != "" {
			return netip.Prefix{}, netip.Prefix{}, fmt.Errorf("node %q: pod CIDR %s is not a CIDR", n.Name, excerpt.Quote(c, annotationExcerpt))
		}
		switch {
		case p.Addr().Is4() && !v4.IsValid():
			v4 = p.Masked()
		case p.Addr().Is6() && !p.Addr().Is4In6() && !v6.IsValid():
			v6 = p.Masked()
		}
	}
	return v4, v6, nil
}

// ownNode waits (up to OwnNodeWait) for this host's Node in the cache.
func (s *Store) ownNode(ctx context.Context) (*node, error) {
	ctx, cancel := context.WithTimeout(ctx, s.o.OwnNodeWait)
	defer cancel()
	logged := false
	for {
		s.mu.Lock()
		ch := s.changed
		s.mu.Unlock()
		if n, ok := s.nodes.ownNode(); ok {
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

// ownSubnets checks this host's podCIDRs as flanneld does: assigned, at
// most two CIDRs, the IPv4 one inside Network and, when the network has
// IPv6, the IPv6 one inside IPv6Network. Where flanneld would go on with
// no IPv6 subnet (and fail later, or run IPv4 alone), weft refuses a
// Node of a dual-stack network that has no IPv6 podCIDR.
func (s *Store) ownSubnets(n *node) (v4, v6 netip.Prefix, err error) {
	v4, v6, err = podSubnets(n)
	if err != nil {
		return v4, v6, fmt.Errorf("kube subnet manager: %w", err)
	}
	if s.conf.EnableIPv4 {
		if !v4.IsValid() {
			return v4, v6, fmt.Errorf("kube subnet manager: node %q has no IPv4 pod CIDR (spec.podCIDRs %v), but the network config has IPv4 (Network %s)", n.Name, n.PodCIDRs, s.conf.Network)
		}
		if nw := s.conf.Network; v4.Bits() < nw.Bits() || !nw.Contains(v4.Addr()) {
			return v4, v6, fmt.Errorf("kube subnet manager: subnet %q specified in the flannel net config doesn't contain %q PodCIDR of the %q node", nw, v4, n.Name)
		}
	} else {
		v4 = netip.Prefix{}
	}
	if s.conf.EnableIPv6 {
		if !v6.IsValid() {
			return v4, v6, fmt.Errorf("kube subnet manager: node %q has no IPv6 pod CIDR (spec.podCIDRs %v), but the network config has \"EnableIPv6\": true (IPv6Network %s): give the Node an IPv6 podCIDR (a dual-stack cluster: kube-controller-manager --cluster-cidr with an IPv4 and an IPv6 range), or turn EnableIPv6 off", n.Name, n.PodCIDRs, s.conf.IPv6Network)
		}
		if nw := s.conf.IPv6Network; v6.Bits() < nw.Bits() || !nw.Contains(v6.Addr()) {
			return v4, v6, fmt.Errorf("kube subnet manager: subnet %q specified in the flannel net config doesn't contain %q IPv6 PodCIDR of the %q node", nw, v6, n.Name)
		}
	} else {
		v6 = netip.Prefix{}
	}
	return v4, v6, nil
}

// snapshot is the current lease set, one lease per ID (of two Nodes
// claiming one subnet, this host's, else the older), sorted by ID
// (lease.CompareID). It decides that rule over the whole set, as the
// reference for claims, which decides it per event and logs and counts
// the Nodes left out (Duplicates).
func (s *Store) snapshot() ([]lease.Lease, chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	names := make([]string, 0, len(s.leases))
	for n := range s.leases {
		names = append(names, n)
	}
	slices.SortFunc(names, s.standsBefore)
	seen := make(map[netip.Prefix]bool, len(names))
	out := make([]lease.Lease, 0, len(names))
	for _, n := range names {
		l := s.leases[n].lease
		if seen[l.ID()] {
			continue
		}
		seen[l.ID()] = true
		out = append(out, l)
	}
	slices.SortFunc(out, lease.CompareID)
	return out, s.changed
}

// Duplicates returns how many times a Node's lease was left out because
// another Node (this host's, or an older one) holds its subnet: refusals
// for overlap that admission never sees.
func (s *Store) Duplicates() uint64 { return s.duplicates.Load() }

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

// StatusDetails are the store's own details for status.
func (s *Store) StatusDetails() map[string]string {
	return map[string]string{"node": s.NodeName(), "annotation-prefix": s.AnnotationPrefix()}
}
