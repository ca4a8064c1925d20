package daemon

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/weft-net/weft/capture"
	"github.com/weft-net/weft/encap"
	"github.com/weft-net/weft/encap/admission"
	"github.com/weft-net/weft/encap/kernel"
	"github.com/weft-net/weft/lease"
)

// stage is one backend's life in the daemon: built, its lease attributes
// put in the lease, started, running and keeping the lease. A host runs
// one stage at a time; an auto host replaces it when the cluster changes
// (auto.go). Readers (status, metrics, the debug API) load the current
// stage through daemon.cur and never see one half made.
type stage struct {
	backend  encap.Backend
	why      string
	own      lease.Lease
	mtu      int
	gate     *admission.Gate
	hub      *capture.Hub // nil for backends with a kernel data path
	cancel   context.CancelFunc
	runDone  chan error    // Run's result, once
	keepDone chan struct{} // closed when Keep has returned
	ran      bool          // runDone has been read
	fed      bool          // the backend has had its first SetPeers
}

// startStage takes the lease for b's attributes, starts b and runs it and
// the lease keeper until ctx ends or the stage is stopped. fail ends the
// daemon (a lease lost for good).
func (d *daemon) startStage(ctx context.Context, b encap.Backend, why string, fail context.CancelCauseFunc) (*stage, error) {
	attrs, err := b.Attrs()
	if err != nil {
		return nil, err
	}
	if d.cfg.EnableIPv6 {
		// Every backend's lease advertises the IPv6 underlay address on a
		// network with IPv6 (host-gw routes to it; vxlan sends to it).
		attrs.PublicIPv6 = d.ext.PublicIPv6
	} else {
		attrs.PublicIPv6, attrs.BackendV6Data = netip.Addr{}, nil
	}
	if !d.cfg.EnableIPv4 {
		// flanneld writes "PublicIP":"0.0.0.0" and no BackendData.
		attrs.PublicIP, attrs.BackendData = netip.Addr{}, nil
	}
	// Acquire with this host's public IP finds the lease it holds and
	// re-puts it with the new attributes, same subnet (lease.Manager).
	own, err := d.o.Store.Acquire(ctx, attrs)
	if err != nil {
		return nil, err
	}
	if prev := d.cur.Load(); prev != nil && prev.own.Subnet != own.Subnet {
		return nil, fmt.Errorf("the lease moved from %s to %s while changing backend; pods would lose their addresses, so exiting (a restart leases again)", prev.own.Subnet, own.Subnet)
	}
	if d.cfg.EnableIPv6 && !own.IPv6Subnet.IsValid() {
		return nil, fmt.Errorf("the %s lease store gave this host no IPv6 subnet, but the network config has EnableIPv6", d.o.StoreName)
	}
	if d.cfg.EnableIPv4 != own.Subnet.IsValid() {
		return nil, fmt.Errorf("the %s lease store gave this host the lease %s, but the network config has EnableIPv4 %v", d.o.StoreName, own, d.cfg.EnableIPv4)
	}
	if prev := d.cur.Load(); prev != nil && prev.own.IPv6Subnet != own.IPv6Subnet {
		return nil, fmt.Errorf("the lease's IPv6 subnet moved from %s to %s while changing backend; pods would lose their addresses, so exiting (a restart leases again)", prev.own.IPv6Subnet, own.IPv6Subnet)
	}
	switch {
	case !own.Subnet.IsValid():
		d.log.Info("lease acquired", "ipv6-subnet", own.IPv6Subnet, "public-ipv6", own.Attrs.PublicIPv6, "backend", b.Type())
	case own.IPv6Subnet.IsValid():
		d.log.Info("lease acquired", "subnet", own.Subnet, "public-ip", own.Attrs.PublicIP,
			"ipv6-subnet", own.IPv6Subnet, "public-ipv6", own.Attrs.PublicIPv6, "backend", b.Type())
	default:
		d.log.Info("lease acquired", "subnet", own.Subnet, "public-ip", own.Attrs.PublicIP, "backend", b.Type())
	}
	st := &stage{backend: b, why: why, own: own, runDone: make(chan error, 1), keepDone: make(chan struct{})}
	rule := admission.FromConfig(d.cfg, own, b.Accept, acceptIPv6(b))
	if c, ok := b.(encap.Claimer); ok {
		rule.Claims = c.Claims
	}
	st.gate = admission.NewGate(rule, d.log)
	sctx, cancel := context.WithCancel(ctx)
	st.cancel = cancel
	if st.mtu, err = b.Start(sctx, own); err != nil {
		cancel()
		return nil, err
	}
	if dp, ok := b.(encap.Datapath); ok && dp.Datapath() != nil {
		st.hub = capture.NewHub(dp.Datapath().Engine)
		st.hub.SetIPv6(d.cfg.EnableIPv6)
	}
	go func() { st.runDone <- b.Run(sctx) }()
	go func() {
		defer close(st.keepDone)
		if err := d.o.Store.Keep(sctx, own); err != nil && sctx.Err() == nil {
			fail(fmt.Errorf("keeping lease %s: %w", own, err))
		}
	}()
	return st, nil
}

// apply hands a change of the leases, through admission, to the stage's
// backend: the change of the admitted peers to a backend that takes
// changes (encap.PeerUpdater), else, and for a full change or the
// backend's first, every admitted peer (SetPeers).
func (d *daemon) apply(st *stage, c lease.Changes) {
	put, removed := st.gate.Update(c)
	u, incremental := st.backend.(encap.PeerUpdater)
	if c.Full || !incremental || !st.fed {
		peers := st.gate.Peers()
		d.obs.sawPeers(true, peers, nil)
		st.backend.SetPeers(peers)
		st.fed = true
		return
	}
	d.obs.sawPeers(false, put, removed)
	if len(put) > 0 || len(removed) > 0 {
		u.UpdatePeers(put, removed)
	}
}

// stop ends the stage's Run and lease keeper and waits for both; the
// lease stays in the store. It returns Run's error.
func (st *stage) stop() error {
	st.cancel()
	var err error
	if !st.ran {
		err = <-st.runDone
		st.ran = true
	}
	<-st.keepDone
	if st.hub != nil {
		st.hub.Close()
	}
	return err
}

// removeKernelState deletes what a stopped stage's backend left in the
// kernel so the next backend starts clean: host-gw's and vxlan's tagged
// routes, the vxlan device (its neighbours and FDB entries go with it),
// a userspace backend's TUN (it goes when the engine closes it; this makes
// sure before the next backend wants the name or the route).
func (d *daemon) removeKernelState(st *stage) {
	nl, err := kernel.Current()
	if err != nil {
		d.log.Warn("cannot remove the previous backend's kernel state", "err", err)
		return
	}
	defer nl.Close()
	var r kernel.Removed
	if err := nl.RemoveTaggedRoutes(&r); err != nil {
		d.log.Warn("removing the previous backend's routes", "err", err)
	}
	if d.o.Blackhole {
		// Tagged too, but not the backend's: put it back at once rather
		// than at the next resync.
		for _, s := range ownSubnets(st.own) {
			if err := ensureBlackhole(nl.H.RouteAdd, s); err != nil {
				d.log.Warn("cannot put the blackhole route back", "subnet", s, "err", err)
			}
		}
	}
	if err := nl.RemoveVXLANDevices("", &r); err != nil {
		d.log.Warn("removing the previous backend's vxlan device", "err", err)
	}
	if dp, ok := st.backend.(encap.Datapath); ok {
		if info := dp.Datapath(); info != nil && info.TUN != nil {
			if err := nl.RemoveTUN(info.TUN.Name, &r); err != nil {
				d.log.Warn("removing the previous backend's TUN", "err", err)
			}
		}
	}
	d.log.Info("removed the previous backend's kernel state", "backend", st.backend.Type(), "devices", r.Links, "routes", len(r.Routes))
}

// acceptIPv6 is b's check of a lease's IPv6 part, nil when it has none.
func acceptIPv6(b encap.Backend) func(lease.Attrs) error {
	if a, ok := b.(encap.IPv6Acceptor); ok {
		return a.AcceptIPv6
	}
	return nil
}
