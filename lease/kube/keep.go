package kube

import (
	"context"
	"fmt"
	"maps"
	"time"

	"github.com/weft-net/weft/lease"
)

// Keep sets the Node's NetworkUnavailable condition to False (with
// SetNodeNetworkUnavailable), then keeps this host's annotations on its
// Node until ctx ends: a Node re-created without them (a kubelet
// re-registering) or stripped of them gets them back, and a re-created
// Node gets the condition again. flanneld ignores such a Node until it is
// restarted, so peers lose this host meanwhile. A podCIDR changed to
// another subnet is a lost lease: Keep returns, and the daemon stops
// rather than route a subnet that is no longer its own.
func (s *Store) Keep(ctx context.Context, own lease.Lease) error {
	if err := s.start(ctx); err != nil {
		return err
	}
	s.mu.Lock()
	attrs, acquired, actedRV := s.ownAttrs, s.acquired, s.actedRV
	s.mu.Unlock()
	if !acquired {
		// Not by this store's Acquire: own's attributes (an IPv6-only
		// lease has no PublicIP, so that is no test of it).
		attrs = own.Attrs
	}
	var uid string
	conditionSet := !s.o.SetNodeNetworkUnavailable
	missing := false
	const retryEvery = 5 * time.Second
	for {
		s.mu.Lock()
		ch := s.changed
		s.mu.Unlock()
		retry := false
		n, ok := s.nodes.ownNode()
		switch {
		case ok:
			if missing {
				s.log.Info("this host's Node is back", "node", s.node)
				missing = false
			}
			if uid != "" && n.UID != uid {
				conditionSet = !s.o.SetNodeNetworkUnavailable
			}
			uid = n.UID
			if sub, sub6, err := podSubnets(n); err == nil && (s.conf.EnableIPv4 && sub != own.Subnet || s.conf.EnableIPv6 && sub6 != own.IPv6Subnet) {
				return fmt.Errorf("kube subnet manager: Node %q's podCIDRs are now %v, not this host's lease %s: restart to take it", s.node, n.PodCIDRs, own)
			}
			// Only act on a version of the Node not acted on yet: the
			// cache may not have seen the last patch.
			if n.ResourceVersion != actedRV {
				want, err := s.wantAnnotations(n.Annotations, attrs)
				if err != nil {
					return err
				}
				if !maps.Equal(want, n.Annotations) {
					s.log.Warn("this host's Node lacks its lease annotations (re-created or edited); writing them again", "node", s.node)
					if err := s.patchAnnotations(ctx, n, want); err != nil {
						s.log.Warn("cannot annotate the Node; retrying", "node", s.node, "err", err)
						retry = true
					} else {
						actedRV = n.ResourceVersion
					}
				}
			}
			if !conditionSet {
				if err := s.setNetworkAvailable(ctx); err != nil {
					s.log.Warn("cannot set the Node's NetworkUnavailable condition; retrying", "err", err)
					retry = true
				} else {
					conditionSet = true
				}
			}
		case !missing:
			s.log.Warn("this host's Node is gone; its annotations are written again when it is back", "node", s.node)
			missing = true
		}
		var tick <-chan time.Time
		if retry {
			tick = time.After(retryEvery)
		}
		select {
		case <-ch:
		case <-tick:
			actedRV = ""
		case <-ctx.Done():
			return nil
		}
	}
}
