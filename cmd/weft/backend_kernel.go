package main

import (
	"context"
	"errors"
	"fmt"
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
func chooseAuto(ctx context.Context, f *runFlags, host encap.Host, mgr lease.Manager, nl *kernel.Netlink, log *slog.Logger) (string, string) {
	probe := func() error { return nl.ProbeVXLAN(fmt.Sprintf("weftprobe%d", os.Getpid()%100000)) }
	if f.noKernelVXLAN {
		probe = func() error { return errors.New("--no-kernel-vxlan rules out the kernel's vxlan") }
	}
	peers, err := currentPeers(ctx, mgr, f, host)
	if err != nil {
		return autoChoice(nil, nil, "the current leases could not be read ("+err.Error()+")", probe)
	}
	connected, err := nl.Connected(host.IfaceIndex)
	if err != nil {
		return autoChoice(nil, nil, "the subnets of "+host.Iface+" could not be read ("+err.Error()+")", probe)
	}
	return autoChoice(peers, connected, "", probe)
}

// autoChoice is auto's rule. Peers that all run one backend this host can
// run too are joined on it: backends do not talk to each other, so a
// cluster that is already vxlan (or udp) stays so. Otherwise: host-gw when
// every peer is on a connected prefix, vxlan when probe succeeds, udp. A
// non-empty unknown says why the peers are unknown, which rules host-gw out.
func autoChoice(peers []lease.Lease, connected []netip.Prefix, unknown string, probe func() error) (string, string) {
	var off []string
	types := map[string]int{}
	for _, p := range peers {
		if !kernel.OnSegment(connected, p.Attrs.PublicIP) {
			off = append(off, fmt.Sprintf("%s (%s)", p.Subnet, p.Attrs.PublicIP))
		}
		t := p.Attrs.BackendType
		if t == "" {
			t = "udp"
		}
		types[t]++
	}
	reason := unknown
	switch {
	case unknown != "":
	case len(off) > 0:
		reason = fmt.Sprintf("peer %s is not on this host's segment %v", strings.Join(off, ", "), connected)
	case len(peers) == 0:
		return "host-gw", fmt.Sprintf("auto: no peers yet, so none is behind a router (this host is on %v)", connected)
	}
	if len(types) == 1 {
		switch {
		case types["host-gw"] > 0 && reason == "":
			return "host-gw", fmt.Sprintf("auto: all %d peers run host-gw on this host's segment %v", len(peers), connected)
		case types["vxlan"] > 0:
			err := probe()
			if err == nil {
				return "vxlan", fmt.Sprintf("auto: all %d peers run vxlan, and the kernel creates vxlan devices", len(peers))
			}
			// Userspace VXLAN joins them where the kernel cannot.
			return "vxlan", fmt.Sprintf("auto: all %d peers run vxlan, and the kernel cannot create vxlan devices (%v)", len(peers), err)
		case types["udp"] > 0:
			return "udp", fmt.Sprintf("auto: all %d peers run udp", len(peers))
		}
	}
	if reason == "" {
		return "host-gw", fmt.Sprintf("auto: all %d peers are on this host's segment %v", len(peers), connected)
	}
	if err := probe(); err != nil {
		return "udp", "auto: " + reason + ", and the kernel cannot create a vxlan device: " + err.Error()
	}
	return "vxlan", "auto: " + reason + ", and the kernel creates vxlan devices"
}

// currentPeers reads the cluster's leases once, from the daemon's own
// store (a watch of its own, ended as soon as the first snapshot is in),
// leaving out this host's own.
func currentPeers(ctx context.Context, mgr lease.Manager, f *runFlags, host encap.Host) ([]lease.Lease, error) {
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
