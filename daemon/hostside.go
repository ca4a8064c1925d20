package daemon

import (
	"context"
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
)

// setupFirewall installs flanneld's masquerade (--ip-masq) and forward
// (--iptables-forward-rules) rules and keeps them in place every
// --iptables-resync seconds. Masquerading the user asked for is required:
// without iptables the host is refused. The forward rules are on by
// default, so their absence only warns, as in flanneld.
func setupFirewall(ctx context.Context, f *Options, network, subnet netip.Prefix, log *slog.Logger) error {
	fwdExplicit := f.ForwardExplicit
	if !f.IPMasq && !f.IPTablesForward {
		return nil
	}
	m, err := firewall.New(log)
	if err != nil {
		if f.IPMasq {
			return fmt.Errorf("--ip-masq: %v", err)
		}
		if fwdExplicit {
			return fmt.Errorf("--iptables-forward-rules: %v", err)
		}
		log.Warn("no FORWARD accept rules installed (--iptables-forward-rules)", "err", err)
		return nil
	}
	if f.IPMasq {
		m.Add(firewall.MasqRules(network, subnet, m.HasRandomFully() && !f.IPMasqNoRandom))
	}
	if f.IPTablesForward {
		m.Add(firewall.ForwardRules(network))
	}
	if _, err := m.Ensure(); err != nil {
		return err
	}
	log.Info("iptables rules in place", "masquerade", f.IPMasq, "forward", f.IPTablesForward, "resync", f.IPTablesResync)
	period := max(f.IPTablesResync, time.Second)
	go m.Run(ctx, period)
	return nil
}

// setupBlackhole adds flanneld's --ip-blackhole-route: a blackhole route
// for this host's whole subnet, so packets to its unassigned addresses are
// dropped here instead of following the default route out.
func setupBlackhole(subnet netip.Prefix) error {
	r := &netlink.Route{
		Dst:      &net.IPNet{IP: subnet.Addr().AsSlice(), Mask: net.CIDRMask(subnet.Bits(), 32)},
		Type:     unix.RTN_BLACKHOLE,
		Protocol: 87, // weft's route tag (encap/kernel): weft cleanup removes it
	}
	if err := netlink.RouteReplace(r); err != nil {
		return fmt.Errorf("--ip-blackhole-route: %v", err)
	}
	return nil
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
