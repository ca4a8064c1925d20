package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"

	"github.com/weft-net/weft/encap"
	"github.com/weft-net/weft/encap/hostgw"
	"github.com/weft-net/weft/encap/kernel"
	"github.com/weft-net/weft/encap/userspace"
	"github.com/weft-net/weft/encap/vxlan"
	"github.com/weft-net/weft/lease"
)

// selectBackend builds the backend the network config asks for (not
// auto: the daemon decides auto's type, see auto.go), and says why.
func selectBackend(ctx context.Context, o *Options, host encap.Host, cfg *lease.Config, log *slog.Logger) (encap.Backend, string, error) {
	return buildBackend(ctx, o, host, cfg, cfg.BackendType, "the network config's Backend.Type is "+cfg.BackendType, log)
}

// buildBackend builds a backend of type typ (udp, vxlan or host-gw); why
// is the reason it was chosen, completed with the vxlan flavour. Whatever
// it builds, it first removes what another backend of an earlier run (or
// of this run, before an auto move) left in the kernel, so switching
// Backend.Type between runs converges.
func buildBackend(ctx context.Context, o *Options, host encap.Host, cfg *lease.Config, typ, why string, log *slog.Logger) (encap.Backend, string, error) {
	nl, err := kernel.Current()
	if err != nil {
		return nil, "", err
	}
	nl.Nexthops = o.RouteNexthops
	switch typ {
	case "udp":
		if !cfg.EnableIPv4 {
			return nil, "", errors.New("network config: the udp backend does not run IPv6-only networks yet (\"EnableIPv4\": false); use vxlan or host-gw")
		}
		removeOtherBackends(nl, "", true, log)
		b, err := userspace.NewUDP(host, cfg, o.Datapath)
		return b, why, err
	case "vxlan":
		if noKernel := kernelVXLANMissing(o, nl); noKernel != "" {
			if !cfg.EnableIPv4 {
				return nil, "", fmt.Errorf("network config: vxlan on an IPv6-only network needs the kernel's vxlan, and %s (weft's userspace VXLAN does not run IPv6-only networks yet)", noKernel)
			}
			// A kernel flannel.<VNI> of an earlier run would hold the TUN's
			// name, and host-gw's routes would shadow the TUN's route.
			removeOtherBackends(nl, "", true, log)
			b, err := userspace.NewVXLAN(host, cfg, o.Datapath)
			return b, why + "; VXLAN from userspace, since " + noKernel, err
		}
		c, err := vxlan.ParseConfig(cfg.Backend)
		if err != nil {
			return nil, "", err
		}
		warnQueues(o, "vxlan (the kernel's)", log)
		mac, mac6 := previousVtepMACs(ctx, o.Store, log)
		b, err := vxlan.New(vxlan.Options{Host: host, Config: c, NL: nl, Log: log, PrevMAC: mac, PrevMAC6: mac6})
		if err != nil {
			return nil, "", err
		}
		removeOtherBackends(nl, b.Device(), false, log)
		return b, why, nil
	case "host-gw":
		warnQueues(o, "host-gw", log)
		removeOtherBackends(nl, "", false, log)
		b, err := hostgw.New(hostgw.Options{Host: host, NL: nl, Log: log})
		return b, why, err
	default:
		return nil, "", fmt.Errorf("network config: \"Backend.Type\": %q is not one of udp, vxlan, host-gw, auto", cfg.BackendType)
	}
}

// warnQueues says that --queues does nothing for a kernel backend, whose
// packets the kernel forwards on every CPU, as the other userspace data
// path flags (--batch-size, --busy-poll, ...) do nothing there; unlike
// them it is worth a line, since it names CPUs the operator meant to use.
func warnQueues(o *Options, backend string, log *slog.Logger) {
	if o.Datapath.Queues > 1 {
		log.Warn("--queues applies to the userspace data paths (udp, and vxlan without the kernel's); the kernel forwards for this backend and ignores it", "backend", backend, "queues", o.Datapath.Queues)
	}
}

// removeOtherBackends deletes vxlan devices other than keep and, when
// routes is set, every route weft tagged (the udp backend has no kernel
// routes of its own; vxlan and host-gw remove stale tagged routes in their
// first reconcile pass, once they know the peers). Failures are logged: a
// leftover of another backend is worth a warning, not a refusal to start.
func removeOtherBackends(nl *kernel.Netlink, keep string, routes bool, log *slog.Logger) {
	var r kernel.Removed
	if err := nl.RemoveVXLANDevices(keep, &r); err != nil {
		log.Warn("cannot remove a vxlan device of an earlier run", "err", err)
	}
	if routes {
		if err := nl.RemoveTaggedRoutes(&r); err != nil {
			log.Warn("cannot remove routes of an earlier run", "err", err)
		}
	}
	for _, l := range r.Links {
		log.Info("removed device of an earlier run's backend", "device", l)
	}
	if len(r.Routes) > 0 {
		log.Info("removed routes of an earlier run's backend", "routes", r.Routes)
	}
}

// kernelVXLANMissing says why the kernel's vxlan cannot be used ("" when
// it can): --no-kernel-vxlan, or a kernel that refuses to create a vxlan
// device (no module, a minimal or hardened kernel, some sandboxes).
func kernelVXLANMissing(o *Options, nl *kernel.Netlink) string {
	if err := probeVXLAN(o, nl)(); err != nil {
		return err.Error()
	}
	return ""
}

func probeVXLAN(o *Options, nl *kernel.Netlink) func() error {
	if o.NoKernelVXLAN {
		return func() error { return errors.New("--no-kernel-vxlan rules out the kernel's vxlan") }
	}
	return func() error {
		if err := nl.ProbeVXLAN(fmt.Sprintf("weftprobe%d", os.Getpid()%100000)); err != nil {
			return fmt.Errorf("the kernel cannot create a vxlan device (%v)", err)
		}
		return nil
	}
}

// previousAttrs is a lease.Manager that keeps this host's lease attributes
// across restarts (the Kubernetes store: the Node's annotations).
type previousAttrs interface {
	PreviousAttrs(ctx context.Context) (lease.Attrs, bool, error)
}

// previousVtepMACs are the VtepMACs (flannel.<VNI>, flannel-v6.<VNI>) of
// this host's previous vxlan lease, if the store has one.
func previousVtepMACs(ctx context.Context, store lease.Manager, log *slog.Logger) (v4, v6 net.HardwareAddr) {
	p, ok := store.(previousAttrs)
	if !ok {
		return nil, nil
	}
	a, ok, err := p.PreviousAttrs(ctx)
	if err != nil || !ok || a.BackendType != "vxlan" {
		return nil, nil
	}
	if len(a.BackendData) > 0 { // none on an IPv6-only network
		if _, v4, err = vxlan.ParseLeaseData(a.BackendData); err != nil {
			log.Warn("the previous lease's VtepMAC is not usable", "err", err)
			v4 = nil
		}
	}
	if len(a.BackendV6Data) > 0 {
		if _, v6, err = vxlan.ParseLeaseV6Data(a.BackendV6Data); err != nil {
			log.Warn("the previous lease's IPv6 VtepMAC is not usable", "err", err)
			v6 = nil
		}
	}
	return v4, v6
}
