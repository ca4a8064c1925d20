package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/firewall"
	"github.com/weft-net/weft/lease"
)

// setupFirewall installs flanneld's masquerade (--ip-masq) and forward
// (--iptables-forward-rules) rules, with iptables or, when the network
// config says EnableNFTables, nftables, and keeps them in place every
// --iptables-resync seconds. Setup runs even with both off: it removes
// the rules of an earlier run (another network or subnet). Masquerading
// the user asked for is required: without the firewall tool the host is
// refused. The forward rules are on by default, so their absence only
// warns, as in flanneld.
//
// On a dual-stack network the same rules are installed for IPv6
// (ip6tables, or nftables' ip6 table). Without usable ip6tables, a host
// that asked for --ip-masq is refused; one with only the default forward
// rules warns and keeps its IPv4 rules, as flanneld runs on then. On an
// IPv6-only network only the IPv6 rules are installed (the fixtures'
// ipv6only run: ip6tables rules, an empty iptables).
func setupFirewall(ctx context.Context, f *Options, cfg *lease.Config, own lease.Lease, prev, prev6 netip.Prefix, log *slog.Logger) error {
	mode := firewall.ModeFor(cfg.EnableNFTables)
	if mode == firewall.IPTables {
		warnBridgeNetfilter("/proc", cfg, log)
	}
	m, err := firewall.NewManager(mode, log)
	if err != nil {
		switch {
		case f.IPMasq:
			return fmt.Errorf("--ip-masq: %v", err)
		case f.ForwardExplicit:
			return fmt.Errorf("--iptables-forward-rules: %v", err)
		case f.IPTablesForward:
			log.Warn("no FORWARD accept rules installed (--iptables-forward-rules)", "err", err)
		}
		return nil
	}
	fc := firewall.Config{Network: cfg.Network, Subnet: own.Subnet, PrevSubnet: prev, PrevIPv6Subnet: prev6,
		Masquerade: f.IPMasq, NoRandomFully: f.IPMasqNoRandom, Forward: f.IPTablesForward}
	if cfg.EnableIPv6 {
		fc.IPv6Network, fc.IPv6Subnet = cfg.IPv6Network, own.IPv6Subnet
	}
	err = m.Setup(ctx, fc)
	if errors.Is(err, firewall.ErrNoIP6Tables) && !f.IPMasq && !f.ForwardExplicit && !cfg.EnableIPv4 {
		log.Warn("no FORWARD accept rules installed (--iptables-forward-rules): the network is IPv6-only and ip6tables is not usable", "err", err)
		return nil
	}
	if errors.Is(err, firewall.ErrNoIP6Tables) && !f.IPMasq && !f.ForwardExplicit {
		log.Warn("no IPv6 FORWARD accept rules installed (--iptables-forward-rules); the IPv4 rules are in place", "err", err)
		fc.IPv6Network, fc.IPv6Subnet = netip.Prefix{}, netip.Prefix{}
		err = m.Setup(ctx, fc)
	}
	if err != nil {
		return err
	}
	log.Info("firewall rules in place", "mode", mode, "masquerade", f.IPMasq, "forward", f.IPTablesForward, "resync", f.IPTablesResync)
	if f.IPMasq || f.IPTablesForward {
		// With neither there is no rule to keep (Setup removed
		// flanneld's chains), and flanneld runs no resync either; the
		// check would list the chains every period for nothing.
		go m.Run(ctx, max(f.IPTablesResync, time.Second))
	}
	return nil
}

// warnBridgeNetfilter warns, naming the module and what bypasses
// iptables without it, when br_netfilter is not loaded (procRoot is
// "/proc" on a host). flanneld refuses to start in iptables mode then
// (main.go); weft runs, since a host whose pods do not sit behind a Linux
// bridge works without it.
func warnBridgeNetfilter(procRoot string, cfg *lease.Config, log *slog.Logger) {
	if err := firewall.CheckBridgeNetfilter(procRoot, cfg.EnableIPv4, cfg.EnableIPv6); err != nil {
		log.Warn("br_netfilter is not loaded: traffic between pods on one bridge bypasses iptables, so --ip-masq and network policies do not see it (flanneld refuses to start here; modprobe br_netfilter)", "err", err)
	}
}

// keepBlackhole adds flanneld's --ip-blackhole-route, a blackhole route
// for each of this host's subnets (packets to its unassigned addresses
// are dropped here instead of following the default route out): IPv4,
// IPv6 or both, as flanneld adds AddBlackholeV4Route and
// AddBlackholeV6Route per family the network has. It puts them back every
// period, as flanneld's resync does.
func keepBlackhole(ctx context.Context, subnets []netip.Prefix, period time.Duration, log *slog.Logger) error {
	for _, s := range subnets {
		if err := ensureBlackhole(netlink.RouteAdd, s); err != nil {
			return fmt.Errorf("--ip-blackhole-route %s: %v", s, err)
		}
	}
	go func() {
		t := time.NewTicker(max(period, time.Second))
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				for _, s := range subnets {
					if err := ensureBlackhole(netlink.RouteAdd, s); err != nil {
						log.Warn("cannot put the blackhole route back", "subnet", s, "err", err)
					}
				}
			}
		}
	}()
	return nil
}

// ownSubnets are the lease's subnets: its IPv4 one, its IPv6 one, or both.
func ownSubnets(l lease.Lease) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range []netip.Prefix{l.Subnet, l.IPv6Subnet} {
		if s.IsValid() {
			out = append(out, s)
		}
	}
	return out
}

// ensureBlackhole adds the blackhole route unless it is there. It never
// replaces a route: it is added with the highest metric, beside (and so
// behind) any route to the subnet, such as the pods' bridge's connected
// route, which a blackhole of metric 0 added first would shadow (the kernel
// keeps the earlier of two routes of one metric first).
func ensureBlackhole(add func(*netlink.Route) error, subnet netip.Prefix) error {
	err := add(blackholeRoute(subnet))
	if errors.Is(err, unix.EEXIST) {
		return nil
	}
	return err
}

// serveHealthz answers flanneld's /healthz on --healthz-ip:--healthz-port
// (0 disables it) while the daemon runs, and /readyz once it is ready.
func serveHealthz(ctx context.Context, ip string, port int, ready *atomic.Bool, log *slog.Logger) error {
	if port == 0 {
		return nil
	}
	addr := net.JoinHostPort(ip, strconv.Itoa(port))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("--healthz-port: %v", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Write([]byte("weft is running\n"))
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !ready.Load() {
			http.Error(w, "not ready: no lease, subnet file or data path yet", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ready\n"))
	})
	// On the host network in the DaemonSet: bounded like the debug API.
	stop := serve(ln, mux, "healthz", log)
	go func() {
		<-ctx.Done()
		stop()
	}()
	log.Info("healthz listening", "addr", ln.Addr())
	return nil
}

// blackholeMetric puts the blackhole behind every other route to the
// subnet.
const blackholeMetric = 1<<32 - 1

// blackholeRoute is --ip-blackhole-route's route for subnet.
func blackholeRoute(subnet netip.Prefix) *netlink.Route {
	return &netlink.Route{
		Dst:      &net.IPNet{IP: subnet.Addr().AsSlice(), Mask: net.CIDRMask(subnet.Bits(), subnet.Addr().BitLen())},
		Type:     unix.RTN_BLACKHOLE,
		Protocol: 87, // weft's route tag (encap/kernel): weft cleanup removes it
		Priority: blackholeMetric,
	}
}
