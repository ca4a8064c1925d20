// Package daemon is `weft run`: one host of the overlay. It chooses the
// interface, builds the backend the network config asks for, takes this
// host's lease, brings the data path up, and then keeps it in step with
// the cluster: every lease snapshot passes admission and reaches the
// backend; the firewall rules are kept; health, status, captures and
// metrics are served. Options come in as a plain struct (cmd/weft turns
// flanneld's flags into it); nothing here reads flags.
package daemon

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/weft-net/weft/encap/userspace"
	"github.com/weft-net/weft/engine"
	"github.com/weft-net/weft/lease"
)

// Options configure Run. Field comments name the flag each comes from.
type Options struct {
	// Store is where the network config and the leases live.
	Store lease.Manager
	// StoreName says which store, for status ("etcd", "static").
	StoreName string

	Interface InterfaceOptions

	SubnetFile string // --subnet-file

	IPMasq          bool          // --ip-masq
	IPMasqNoRandom  bool          // --ip-masq-fully-random-disable
	IPTablesResync  time.Duration // --iptables-resync
	IPTablesForward bool          // --iptables-forward-rules
	// ForwardExplicit: --iptables-forward-rules was given, not defaulted,
	// so a host without iptables is refused rather than warned about.
	ForwardExplicit bool
	Blackhole       bool   // --ip-blackhole-route
	HealthzIP       string // --healthz-ip
	HealthzPort     int    // --healthz-port (0: off)

	// RouteNexthops makes the vxlan and host-gw backends add their IPv4
	// routes by nexthop object (--route-nexthops; kernel.Netlink.Nexthops).
	RouteNexthops bool

	// Datapath tunes the userspace backends (udp, vxlan from userspace).
	// Its StateDir and Log are filled in by Run.
	Datapath      userspace.Options
	NoKernelVXLAN bool // --no-kernel-vxlan

	DebugSocket string // --debug-socket ("": off)
	DebugAddr   string // --debug-addr ("": off)
	MetricsAddr string // --metrics-addr ("": off)

	Log *slog.Logger
}

// InterfaceOptions choose the interface that carries inter-host traffic.
type InterfaceOptions struct {
	Ifaces        []string   // --iface, names or addresses, in order
	IfaceRegex    []string   // --iface-regex
	IfaceCanReach []string   // --iface-can-reach
	PublicIP      netip.Addr // --public-ip (invalid: the interface's address)
	// PublicIPv6 is --public-ipv6 (invalid: the interface's IPv6
	// address); used on a network with IPv6 only. On an IPv6-only network
	// it also picks the interface when no --iface is given, as --public-ip
	// does otherwise.
	PublicIPv6 netip.Addr
}

// Validate checks what does not need the host.
func (o *Options) Validate() error {
	if o.Store == nil {
		return errors.New("no lease store")
	}
	if o.SubnetFile == "" {
		return errors.New("--subnet-file: empty")
	}
	if o.Datapath.BatchSize < 1 || o.Datapath.BatchSize > engine.MaxBatch {
		return fmt.Errorf("--batch-size: %d is outside 1..%d", o.Datapath.BatchSize, engine.MaxBatch)
	}
	if o.Datapath.TxQueueLen < 0 || o.Datapath.TxQueueLen > 1<<20 {
		return fmt.Errorf("--tun-txqueuelen: %d is outside 0..%d packets", o.Datapath.TxQueueLen, 1<<20)
	}
	if err := CheckQueues(o.Datapath.Queues); err != nil {
		return err
	}
	if p := o.Interface.PublicIP; p.IsValid() && !p.Is4() {
		return fmt.Errorf("--public-ip: %s is not an IPv4 address", p)
	}
	if p := o.Interface.PublicIPv6; p.IsValid() && !p.Is6() {
		return fmt.Errorf("--public-ipv6: %s is not an IPv6 address", p)
	}
	if err := CheckListenAddr("debug-addr", o.DebugAddr); err != nil {
		return err
	}
	if err := CheckListenAddr("metrics-addr", o.MetricsAddr); err != nil {
		return err
	}
	if o.HealthzPort < 0 || o.HealthzPort > 65535 {
		return fmt.Errorf("--healthz-port: %d is not a port", o.HealthzPort)
	}
	return nil
}

// CheckQueues checks --queues: 0 (the default, a function of the CPUs)
// or 1 to userspace.MaxQueues.
func CheckQueues(n int) error {
	if n < 0 || n > userspace.MaxQueues {
		return fmt.Errorf("--queues: %d is outside 1..%d (or 0: one queue per four CPUs, at most 8)", n, userspace.MaxQueues)
	}
	return nil
}
