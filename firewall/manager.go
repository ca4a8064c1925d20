package firewall

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/coreos/go-iptables/iptables"
	"sigs.k8s.io/knftables"
)

// iptManager is the iptables mode (flannel v0.28.9
// pkg/trafficmngr/iptables/iptables.go).
type iptManager struct {
	log *slog.Logger
	v4  *ipt

	mu sync.Mutex
	v6 *ipt // made by Setup when cfg has IPv6
}

var _ Manager = (*iptManager)(nil)

func (m *iptManager) Mode() Mode { return IPTables }

func (m *iptManager) Setup(ctx context.Context, cfg Config) error {
	if err := cfg.validate(); err != nil {
		return err
	}
	// ip6tables is checked before anything changes, so a host without
	// it keeps what it had and the error names what is missing.
	// (flanneld logs the failure and runs on without IPv6 rules.)
	var v6 *ipt
	if cfg.IPv6Network.IsValid() {
		t, err := newIPT(iptables.ProtocolIPv6)
		if err != nil {
			return fmt.Errorf("firewall: IPv6 network %s: %w", cfg.IPv6Network, err)
		}
		v6 = t
	}
	// flanneld: "Cleaning-up unused traffic manager rules".
	if err := cleanupNFT(ctx); err != nil {
		m.log.Warn("could not remove flanneld's nftables tables (nftables mode)", "err", err)
	}
	if v6 == nil {
		if t, err := newIPT(iptables.ProtocolIPv6); err == nil {
			// A previous dual-stack run's rules.
			if err := t.remove(); err != nil {
				m.log.Warn("could not remove stale ip6tables rules", "err", err)
			}
		}
	}
	m.mu.Lock()
	m.v6 = v6
	m.mu.Unlock()

	logPrevious(m.log, cfg.Network, cfg.Subnet, cfg.PrevNetwork, cfg.PrevSubnet)
	logPrevious(m.log, cfg.IPv6Network, cfg.IPv6Subnet, cfg.PrevIPv6Network, cfg.PrevIPv6Subnet)
	for _, f := range []struct {
		t               *ipt
		network, subnet netip.Prefix
	}{{m.v4, cfg.Network, cfg.Subnet}, {v6, cfg.IPv6Network, cfg.IPv6Subnet}} {
		if f.t == nil {
			continue
		}
		var rules []Rule
		if f.network.IsValid() {
			if cfg.Masquerade {
				rules = append(rules, MasqRules(f.network.Masked(), f.subnet.Masked(), f.t.ipt.HasRandomFully() && !cfg.NoRandomFully)...)
			}
			if cfg.Forward {
				rules = append(rules, ForwardRules(f.network.Masked())...)
			}
		}
		// The rebuild removes every rule of flanneld's first, in the
		// same transaction: those of an earlier network, and the chain
		// of a feature now off.
		f.t.set(rules)
		if _, err := f.t.ensure(true); err != nil {
			return err
		}
	}
	return nil
}

func (m *iptManager) Resync(context.Context) (bool, error) {
	m.mu.Lock()
	v6 := m.v6
	m.mu.Unlock()
	var repaired bool
	var errs []error
	for _, t := range []*ipt{m.v4, v6} {
		if t == nil {
			continue
		}
		r, err := t.ensure(false)
		repaired = repaired || r
		errs = append(errs, err)
	}
	return repaired, errors.Join(errs...)
}

func (m *iptManager) Run(ctx context.Context, period time.Duration) { run(ctx, m, period, m.log) }

func (m *iptManager) Cleanup(context.Context) error { return cleanupIPT() }

// nftManager is the nftables mode (flannel v0.28.9
// pkg/trafficmngr/nftables/nftables.go).
type nftManager struct {
	log    *slog.Logger
	v4, v6 *nftTable
}

var _ Manager = (*nftManager)(nil)

func (m *nftManager) Mode() Mode { return NFTables }

func (m *nftManager) Setup(ctx context.Context, cfg Config) error {
	if err := cfg.validate(); err != nil {
		return err
	}
	// flanneld: "Cleaning-up unused traffic manager rules" (weft also
	// deletes the jumps, which flanneld's iptables CleanUp leaves).
	if err := cleanupIPT(); err != nil {
		m.log.Warn("could not remove flanneld's iptables rules (iptables mode)", "err", err)
	}
	logPrevious(m.log, cfg.Network, cfg.Subnet, cfg.PrevNetwork, cfg.PrevSubnet)
	logPrevious(m.log, cfg.IPv6Network, cfg.IPv6Subnet, cfg.PrevIPv6Network, cfg.PrevIPv6Subnet)
	// flanneld checks fully-random in the IPv4 table, for both families.
	randomFully := cfg.Masquerade && !cfg.NoRandomFully && m.v4.randomFully(ctx)
	// flanneld creates both tables, also for one family.
	for _, f := range []struct {
		t               *nftTable
		network, subnet netip.Prefix
	}{{m.v4, cfg.Network, cfg.Subnet}, {m.v6, cfg.IPv6Network, cfg.IPv6Subnet}} {
		network, subnet := f.network.Masked(), f.subnet.Masked()
		f.t.set(func(tx *knftables.Transaction) {
			if !network.IsValid() {
				return
			}
			if cfg.Masquerade {
				nftMasq(tx, network, subnet, randomFully)
			}
			if cfg.Forward {
				nftForwardRules(tx, network)
			}
		})
		if _, err := f.t.ensure(ctx, true); err != nil {
			return err
		}
	}
	return nil
}

func (m *nftManager) Resync(ctx context.Context) (bool, error) {
	var repaired bool
	var errs []error
	for _, t := range []*nftTable{m.v4, m.v6} {
		r, err := t.ensure(ctx, false)
		repaired = repaired || r
		errs = append(errs, err)
	}
	return repaired, errors.Join(errs...)
}

func (m *nftManager) Run(ctx context.Context, period time.Duration) { run(ctx, m, period, m.log) }

func (m *nftManager) Cleanup(ctx context.Context) error {
	return errors.Join(m.v4.remove(ctx), m.v6.remove(ctx))
}
