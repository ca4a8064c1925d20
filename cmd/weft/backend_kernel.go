package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/weft-net/weft/encap"
	"github.com/weft-net/weft/encap/hostgw"
	"github.com/weft-net/weft/encap/kernel"
	"github.com/weft-net/weft/encap/vxlan"
	"github.com/weft-net/weft/lease"
)

func newVXLANBackend(_ *runFlags, host encap.Host, cfg *lease.Config, nl *kernel.Netlink, log *slog.Logger) (*vxlan.Backend, error) {
	c, err := vxlan.ParseConfig(cfg.Backend)
	if err != nil {
		return nil, err
	}
	return vxlan.New(vxlan.Options{Host: host, Config: c, NL: nl, Log: log})
}

func newHostGWBackend(host encap.Host, nl *kernel.Netlink, log *slog.Logger) (*hostgw.Backend, error) {
	return hostgw.New(hostgw.Options{Host: host, NL: nl, Log: log})
}

// autoPeersTimeout bounds how long auto waits for the current leases.
const autoPeersTimeout = 15 * time.Second

// chooseAuto picks the fastest backend that reaches every current peer:
// host-gw when all of them are on --iface's own subnets (no router in
// between), else the kernel's vxlan when the kernel really creates a vxlan
// device, else udp. The choice is made once, at startup; a host with no
// peers yet has nothing in the way of host-gw.
func chooseAuto(ctx context.Context, f *runFlags, host encap.Host, nl *kernel.Netlink, log *slog.Logger) (string, string) {
	var reason string
	peers, err := currentPeers(ctx, f, host)
	connected, cerr := nl.Connected(host.IfaceIndex)
	switch {
	case err != nil:
		reason = "the current leases could not be read (" + err.Error() + ")"
	case cerr != nil:
		reason = "the subnets of " + host.Iface + " could not be read (" + cerr.Error() + ")"
	default:
		var off []string
		for _, p := range peers {
			if !kernel.OnSegment(connected, p.Attrs.PublicIP) {
				off = append(off, fmt.Sprintf("%s (%s)", p.Subnet, p.Attrs.PublicIP))
			}
		}
		if len(off) == 0 {
			if len(peers) == 0 {
				return "host-gw", fmt.Sprintf("auto: no peers yet, so none is behind a router (%s is on %v)", host.Iface, connected)
			}
			return "host-gw", fmt.Sprintf("auto: all %d peers are on %s's segment %v", len(peers), host.Iface, connected)
		}
		reason = fmt.Sprintf("peer %s is not on %s's segment %v", strings.Join(off, ", "), host.Iface, connected)
	}
	if f.noKernelVXLAN {
		return "udp", "auto: " + reason + ", and --no-kernel-vxlan rules out the kernel's vxlan"
	}
	probe := fmt.Sprintf("weftprobe%d", os.Getpid()%100000)
	if err := nl.ProbeVXLAN(probe); err != nil {
		return "udp", "auto: " + reason + ", and the kernel cannot create a vxlan device: " + err.Error()
	}
	return "vxlan", "auto: " + reason + ", and the kernel creates vxlan devices"
}

// currentPeers reads the cluster's leases once, through a store of its own
// (the daemon's is not built for it yet), leaving out this host's own.
func currentPeers(ctx context.Context, f *runFlags, host encap.Host) ([]lease.Lease, error) {
	var mgr lease.Manager
	var err error
	if f.staticNetwork != "" {
		mgr, err = f.staticManager()
	} else {
		mgr, err = f.etcdManager()
	}
	if err != nil {
		return nil, err
	}
	if c, ok := mgr.(io.Closer); ok {
		defer c.Close()
	}
	ctx, cancel := context.WithTimeout(ctx, autoPeersTimeout)
	defer cancel()
	snaps := make(chan []lease.Lease, 1)
	go mgr.Watch(ctx, snaps)
	select {
	case snap := <-snaps:
		var own netip.Prefix
		if f.staticSubnet != "" {
			own, _ = netip.ParsePrefix(f.staticSubnet)
		}
		var peers []lease.Lease
		for _, l := range snap {
			if l.Subnet == own || !l.Attrs.PublicIP.IsValid() || l.Attrs.PublicIP == host.PublicIP {
				continue
			}
			peers = append(peers, l)
		}
		return peers, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("no lease snapshot within %s", autoPeersTimeout)
	}
}
