package firewall

import (
	"context"
	"log/slog"
	"time"

	"github.com/coreos/go-iptables/iptables"
)

// Rules keeps a set of iptables rules installed: the interface of weft's
// daemon before Manager. It rebuilds the set in order as Manager does.
//
// Deprecated: use NewManager.
type Rules struct {
	t   *ipt
	all []Rule
	log *slog.Logger
}

// New returns a Rules for IPv4; it fails if iptables is missing.
//
// Deprecated: use NewManager.
func New(log *slog.Logger) (*Rules, error) {
	t, err := newIPT(iptables.ProtocolIPv4)
	if err != nil {
		return nil, err
	}
	return &Rules{t: t, log: log}, nil
}

// HasRandomFully reports whether iptables supports --random-fully.
func (m *Rules) HasRandomFully() bool { return m.t.ipt.HasRandomFully() }

// Add adds rules to the set Ensure keeps installed.
func (m *Rules) Add(rules []Rule) {
	m.all = append(m.all, rules...)
	m.t.set(m.all)
}

// Ensure rebuilds the rules in order unless they are intact. It reports
// whether it rebuilt.
func (m *Rules) Ensure() (repaired bool, err error) { return m.t.ensure(false) }

// Run re-ensures the rules every period until ctx ends.
func (m *Rules) Run(ctx context.Context, period time.Duration) {
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
			m.log.Warn("iptables rules were missing or out of order; rebuilt them in order")
		}
	}
}

// Cleanup removes every rule, chain and table of flanneld's, both modes,
// whatever network they were made for (`weft cleanup`). When iptables is
// missing it still removes the nftables tables, then returns
// ErrNoIPTables.
//
// Deprecated: use CleanupAll.
func Cleanup() error {
	if _, err := newIPT(iptables.ProtocolIPv4); err != nil {
		if nerr := cleanupNFT(context.Background()); nerr != nil {
			return nerr
		}
		return err
	}
	return CleanupAll(context.Background())
}
