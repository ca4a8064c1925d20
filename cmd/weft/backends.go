package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"

	"github.com/weft-net/weft/encap"
	"github.com/weft-net/weft/encap/kernel"
	"github.com/weft-net/weft/lease"
)

// selectBackend builds the backend the network config asks for, and says
// why it was chosen (for the log and `weft status`). Whatever it picks, it
// first removes what another backend of an earlier run left in the kernel,
// so switching Backend.Type between runs converges.
func selectBackend(ctx context.Context, f *runFlags, host encap.Host, cfg *lease.Config, mgr lease.Manager, log *slog.Logger) (encap.Backend, string, error) {
	nl, err := kernel.Current()
	if err != nil {
		return nil, "", err
	}
	typ, why := cfg.BackendType, "the network config's Backend.Type is "+cfg.BackendType
	if typ == "auto" {
		typ, why = chooseAuto(ctx, f, host, mgr, nl, log)
		log.Info("auto: backend chosen", "backend", typ, "why", why)
	}
	switch typ {
	case "udp":
		removeOtherBackends(nl, "", true, log)
		b, err := newUDPBackend(f, host, cfg, log)
		return b, why, err
	case "vxlan":
		if noKernel := kernelVXLANMissing(f, nl); noKernel != "" {
			// A kernel flannel.<VNI> of an earlier run would hold the TUN's
			// name, and host-gw's routes would shadow the TUN's route.
			removeOtherBackends(nl, "", true, log)
			b, err := newUVXLANBackend(f, host, cfg, log)
			return b, why + "; VXLAN from userspace, since " + noKernel, err
		}
		b, err := newVXLANBackend(f, host, cfg, nl, log)
		if err != nil {
			return nil, "", err
		}
		removeOtherBackends(nl, b.Device(), false, log)
		return b, why, nil
	case "host-gw":
		removeOtherBackends(nl, "", false, log)
		b, err := newHostGWBackend(host, nl, log)
		return b, why, err
	default:
		return nil, "", fmt.Errorf("network config: \"Backend.Type\": %q is not one of udp, vxlan, host-gw, auto", cfg.BackendType)
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
func kernelVXLANMissing(f *runFlags, nl *kernel.Netlink) string {
	if f.noKernelVXLAN {
		return "--no-kernel-vxlan rules out the kernel's vxlan"
	}
	if err := nl.ProbeVXLAN(fmt.Sprintf("weftprobe%d", os.Getpid()%100000)); err != nil {
		return "the kernel cannot create a vxlan device (" + err.Error() + ")"
	}
	return ""
}
