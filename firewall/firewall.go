// Package firewall installs flanneld's iptables rules: masquerading of pod
// traffic that leaves the cluster network (--ip-masq, chain
// FLANNEL-POSTRTG in the nat table) and acceptance of forwarded cluster
// traffic (--iptables-forward-rules, chain FLANNEL-FWD in the filter
// table). The rules are flanneld v0.28's, rule for rule, so a host moved
// from flanneld to weft keeps its firewall, and they are re-checked every
// resync period in case something else flushed them.
//
// It drives the iptables binary through github.com/coreos/go-iptables, as
// flanneld does, so the rules land in whichever backend (nft or legacy)
// the host's iptables uses.
package firewall

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/coreos/go-iptables/iptables"
)

const (
	// Chain names and comments are flanneld's.
	MasqChain    = "FLANNEL-POSTRTG"
	ForwardChain = "FLANNEL-FWD"
	masqComment  = "flanneld masq"
	fwdComment   = "flanneld forward"
	// kubeProxyMark is kube-proxy's masquerade mark: such traffic is NATed
	// by kube-proxy already and must not be twice.
	kubeProxyMark = "0x4000/0x4000"
)

// Rule is one iptables rule.
type Rule struct {
	Table, Chain string
	Spec         []string
}

// spec is match, then flanneld's comment, then target.
func spec(comment string, match []string, target ...string) []string {
	out := append([]string{}, match...)
	out = append(out, "-m", "comment", "--comment", comment)
	return append(out, target...)
}

// MasqRules are flanneld's masquerade rules for a cluster network and this
// host's lease, in flanneld's order.
func MasqRules(network, subnet netip.Prefix, randomFully bool) []Rule {
	cluster, pod := network.String(), subnet.String()
	masq := []string{"-j", "MASQUERADE"}
	if randomFully {
		masq = append(masq, "--random-fully")
	}
	ret := []string{"-j", "RETURN"}
	r := func(match []string, target ...string) Rule {
		return Rule{"nat", MasqChain, spec(masqComment, match, target...)}
	}
	return []Rule{
		{"nat", "POSTROUTING", spec(masqComment, nil, "-j", MasqChain)},
		r([]string{"-m", "mark", "--mark", kubeProxyMark}, ret...),
		// No NAT inside the overlay.
		r([]string{"-s", pod, "-d", cluster}, ret...),
		r([]string{"-s", cluster, "-d", pod}, ret...),
		// Traffic from outside to a local pod keeps its source.
		r([]string{"!", "-s", cluster, "-d", pod}, ret...),
		// Pods to the world (not multicast): masquerade.
		r([]string{"-s", cluster, "!", "-d", "224.0.0.0/4"}, masq...),
		// The host to the overlay: masquerade, so replies come back.
		r([]string{"!", "-s", cluster, "-d", cluster}, masq...),
	}
}

// ForwardRules are flanneld's forward rules for a cluster network.
func ForwardRules(network netip.Prefix) []Rule {
	n := network.String()
	return []Rule{
		{"filter", "FORWARD", spec(fwdComment, nil, "-j", ForwardChain)},
		{"filter", ForwardChain, spec(fwdComment, []string{"-s", n}, "-j", "ACCEPT")},
		{"filter", ForwardChain, spec(fwdComment, []string{"-d", n}, "-j", "ACCEPT")},
	}
}

// Manager keeps a set of rules installed.
type Manager struct {
	ipt   *iptables.IPTables
	rules []Rule
	log   *slog.Logger
}

// ErrNoIPTables says the iptables binary is missing.
var ErrNoIPTables = errors.New("the iptables binary was not found (install iptables)")

// New returns a manager for rules; it fails if iptables is missing.
func New(log *slog.Logger) (*Manager, error) {
	ipt, err := iptables.New()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNoIPTables, err)
	}
	return &Manager{ipt: ipt, log: log}, nil
}

// HasRandomFully reports whether iptables supports --random-fully.
func (m *Manager) HasRandomFully() bool { return m.ipt.HasRandomFully() }

// Add adds rules to the set Ensure keeps installed.
func (m *Manager) Add(rules []Rule) { m.rules = append(m.rules, rules...) }

// Ensure installs every rule that is missing, in order: a jump rule's
// chain is created before it. It reports whether anything was missing.
func (m *Manager) Ensure() (repaired bool, err error) {
	for _, r := range m.rules {
		// A chain of ours must exist before a rule in it or a jump to it.
		for _, c := range []string{r.Chain, r.Spec[len(r.Spec)-1]} {
			if c != MasqChain && c != ForwardChain {
				continue
			}
			ok, err := m.ipt.ChainExists(r.Table, c)
			if err != nil {
				return repaired, err
			}
			if !ok {
				if err := m.ipt.NewChain(r.Table, c); err != nil {
					return repaired, fmt.Errorf("iptables: create chain %s/%s: %w", r.Table, c, err)
				}
			}
		}
		ok, err := m.ipt.Exists(r.Table, r.Chain, r.Spec...)
		if err != nil {
			return repaired, fmt.Errorf("iptables: check %s/%s %v: %w", r.Table, r.Chain, r.Spec, err)
		}
		if !ok {
			repaired = true
			if err := m.ipt.Append(r.Table, r.Chain, r.Spec...); err != nil {
				return repaired, fmt.Errorf("iptables: add %s/%s %v: %w", r.Table, r.Chain, r.Spec, err)
			}
		}
	}
	return repaired, nil
}

// Run re-ensures the rules every period until ctx ends.
func (m *Manager) Run(ctx context.Context, period time.Duration) {
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if repaired, err := m.Ensure(); err != nil {
			m.log.Error("iptables rules could not be restored", "err", err)
		} else if repaired {
			m.log.Warn("iptables rules were missing and have been restored")
		}
	}
}

// Cleanup removes every rule and chain flanneld's rules use, whatever
// network they were made for (`weft cleanup`).
func Cleanup() error {
	ipt, err := iptables.New()
	if err != nil {
		return fmt.Errorf("%w: %v", ErrNoIPTables, err)
	}
	var errs []error
	// A jump can only exist while its target chain does, and iptables -C
	// of a jump to a missing chain fails (exit 2) instead of answering
	// "no such rule": look at the chain first, so a host that had only
	// one of the two chains (the default: forward rules, no masquerade)
	// is cleaned without error.
	for _, j := range []Rule{
		{"nat", "POSTROUTING", spec(masqComment, nil, "-j", MasqChain)},
		{"filter", "FORWARD", spec(fwdComment, nil, "-j", ForwardChain)},
	} {
		target := j.Spec[len(j.Spec)-1]
		ok, err := ipt.ChainExists(j.Table, target)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if !ok {
			continue
		}
		if err := ipt.DeleteIfExists(j.Table, j.Chain, j.Spec...); err != nil {
			errs = append(errs, err)
		}
		if err := ipt.ClearAndDeleteChain(j.Table, target); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
