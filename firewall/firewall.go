// Package firewall installs flanneld's host firewall rules: masquerading of
// pod traffic that leaves the cluster network (--ip-masq) and acceptance of
// forwarded cluster traffic (--iptables-forward-rules), in either of
// flanneld's two modes: iptables (chains FLANNEL-POSTRTG and FLANNEL-FWD,
// through the iptables binary, as flanneld does with
// github.com/coreos/go-iptables) or nftables (tables flannel-ipv4 and
// flannel-ipv6, through sigs.k8s.io/knftables, flanneld's choice too), the
// latter when the network config has "EnableNFTables": true.
//
// The rules are flanneld v0.28.9's, rule for rule and in its order, so a
// host moved from flanneld to weft or back keeps a working firewall and
// either daemon cleans up after the other. A Manager re-checks them every
// resync period and, when anything is missing or out of order, rebuilds
// the whole set at once. See docs/firewall.md.
package firewall

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os/exec"
	"time"

	"github.com/coreos/go-iptables/iptables"
	"sigs.k8s.io/knftables"
)

// Mode is flanneld's traffic manager: iptables, or nftables when the
// network config says "EnableNFTables": true.
type Mode string

const (
	IPTables Mode = "iptables"
	NFTables Mode = "nftables"
)

// ModeFor is the mode of a network config's EnableNFTables.
func ModeFor(enableNFTables bool) Mode {
	if enableNFTables {
		return NFTables
	}
	return IPTables
}

// Config is what a Manager installs. A zero IPv4 or IPv6 network means no
// rules for that family: an IPv4-only config leaves ip6tables untouched
// (but for removing an earlier run's IPv6 rules), an IPv6-only one
// iptables. At least one network must be set.
type Config struct {
	// Network and Subnet are the cluster network and this host's lease
	// (FLANNEL_NETWORK, FLANNEL_SUBNET; the subnet is masked, so the
	// subnet file's first address will do); IPv6Network and IPv6Subnet
	// their IPv6 counterparts (FLANNEL_IPV6_NETWORK,
	// FLANNEL_IPV6_SUBNET), set when the network config has EnableIPv6.
	Network, Subnet         netip.Prefix
	IPv6Network, IPv6Subnet netip.Prefix
	// PrevNetwork and PrevSubnet (and IPv6) are the values of the subnet
	// file an earlier run left, zero if none. Setup removes every rule of
	// flanneld's anyway; these only name what was replaced in the log, as
	// flanneld does.
	PrevNetwork, PrevSubnet         netip.Prefix
	PrevIPv6Network, PrevIPv6Subnet netip.Prefix
	// Masquerade is --ip-masq; NoRandomFully is
	// --ip-masq-fully-random-disable (the kernel's support is checked
	// too); Forward is --iptables-forward-rules.
	Masquerade, NoRandomFully, Forward bool
}

func (c Config) validate() error {
	for _, p := range []struct {
		name            string
		network, subnet netip.Prefix
		v6              bool
	}{{"IPv4", c.Network, c.Subnet, false}, {"IPv6", c.IPv6Network, c.IPv6Subnet, true}} {
		if !p.network.IsValid() {
			continue
		}
		if p.network.Addr().Is6() != p.v6 {
			return fmt.Errorf("firewall: %s network %s is of the other family", p.name, p.network)
		}
		if c.Masquerade && (!p.subnet.IsValid() || !p.network.Contains(p.subnet.Addr())) {
			return fmt.Errorf("firewall: %s subnet %v is not inside network %s", p.name, p.subnet, p.network)
		}
	}
	if !c.Network.IsValid() && !c.IPv6Network.IsValid() {
		return errors.New("firewall: no network")
	}
	return nil
}

// Manager keeps flanneld's rules of one mode installed.
type Manager interface {
	// Mode is the manager's mode.
	Mode() Mode
	// Setup is the start of a run. It removes the other mode's rules
	// (as flanneld does with its "unused traffic manager"), then builds
	// this mode's from scratch: every rule of flanneld's is removed,
	// whatever network it was for, and cfg's are installed in order.
	// Features cfg leaves off end up with no rules at all.
	Setup(ctx context.Context, cfg Config) error
	// Resync checks the rules once and, when anything is missing,
	// added or out of order, rebuilds the whole set in order in one
	// transaction per table. It reports whether it rebuilt.
	Resync(ctx context.Context) (repaired bool, err error)
	// Run calls Resync every period until ctx ends, logging repairs.
	Run(ctx context.Context, period time.Duration)
	// Cleanup removes all of this mode's rules, chains and tables.
	Cleanup(ctx context.Context) error
}

// NewManager returns the manager of a mode. In iptables mode it fails with
// ErrNoIPTables when iptables or iptables-restore is missing or the kernel
// has no IPv4 nat or filter table (ip6tables is checked by Setup, when the
// config has IPv6: ErrNoIP6Tables); in nftables mode with ErrNoNFTables
// when nft is missing or unusable, for either table.
func NewManager(mode Mode, log *slog.Logger) (Manager, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	switch mode {
	case IPTables:
		v4, err := newIPT(iptables.ProtocolIPv4)
		if err != nil {
			return nil, err
		}
		return &iptManager{v4: v4, log: log}, nil
	case NFTables:
		v4, err := newNFTTable(knftables.IPv4Family, NFTableIPv4)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrNoNFTables, err)
		}
		// flanneld creates both tables whatever the families (its Init
		// fails without either), and so does weft.
		v6, err := newNFTTable(knftables.IPv6Family, NFTableIPv6)
		if err != nil {
			return nil, fmt.Errorf("%w: table ip6 %s (the ip table works: is IPv6 disabled in the kernel, as by ipv6.disable=1?): %v", ErrNoNFTables, NFTableIPv6, err)
		}
		return &nftManager{v4: v4, v6: v6, log: log}, nil
	}
	return nil, fmt.Errorf("firewall: unknown mode %q", mode)
}

// ErrNoNFTables says nft is missing or cannot be used.
var ErrNoNFTables = errors.New("nftables cannot be used (install nftables; it needs nft 1.0.1 or later)")

// run is the resync loop both managers share.
func run(ctx context.Context, m Manager, period time.Duration, log *slog.Logger) {
	t := time.NewTicker(max(period, time.Second))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if repaired, err := m.Resync(ctx); err != nil {
			log.Error("firewall rules could not be restored", "mode", m.Mode(), "err", err)
		} else if repaired {
			log.Warn("firewall rules were missing or out of order; rebuilt them in order", "mode", m.Mode())
		}
	}
}

// logPrevious says, as flanneld does, that the rules of a previous network
// or subnet are being replaced.
func logPrevious(log *slog.Logger, network, subnet, prevNetwork, prevSubnet netip.Prefix) {
	if !network.IsValid() || !prevNetwork.IsValid() && !prevSubnet.IsValid() {
		return
	}
	if prevNetwork.Masked() != network.Masked() || prevSubnet.Masked() != subnet.Masked() {
		log.Info("current network or subnet differs from the previous one; removing the old rules",
			"network", network, "subnet", subnet, "previous_network", prevNetwork, "previous_subnet", prevSubnet)
	}
}

// CleanupAll removes the rules of both modes and both families, whatever
// network they were made for (`weft cleanup`). Tools that are missing are
// skipped: without iptables there are no iptables rules of ours either.
func CleanupAll(ctx context.Context) error {
	var errs []error
	for _, proto := range []iptables.Protocol{iptables.ProtocolIPv4, iptables.ProtocolIPv6} {
		t, err := newIPT(proto)
		if errors.Is(err, ErrNoIPTables) {
			continue
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		errs = append(errs, t.remove())
	}
	errs = append(errs, cleanupNFT(ctx))
	return errors.Join(errs...)
}

// cleanupNFT deletes flanneld's two nftables tables if nft is there.
func cleanupNFT(ctx context.Context) error {
	if _, err := exec.LookPath("nft"); err != nil {
		return nil
	}
	var errs []error
	for _, t := range []struct {
		family knftables.Family
		name   string
	}{{knftables.IPv4Family, NFTableIPv4}, {knftables.IPv6Family, NFTableIPv6}} {
		nft, err := knftables.New(t.family, t.name)
		if err != nil {
			// nft too old or no nf_tables in the kernel: then there is
			// no table of ours either.
			continue
		}
		errs = append(errs, deleteNFTable(ctx, nft))
	}
	return errors.Join(errs...)
}

// cleanupIPT removes iptables and ip6tables rules where those tools exist.
func cleanupIPT() error {
	var errs []error
	for _, proto := range []iptables.Protocol{iptables.ProtocolIPv4, iptables.ProtocolIPv6} {
		t, err := newIPT(proto)
		if err != nil {
			continue // no binary, so no rules
		}
		errs = append(errs, t.remove())
	}
	return errors.Join(errs...)
}
