package admission

import (
	"log/slog"
	"maps"
	"net/netip"
	"sync"

	"github.com/weft-net/weft/lease"
)

// Gate applies a Rule to each snapshot, logs each refusal once (and again
// only when its reason changes), counts refusals by reason, and keeps the
// current ones for status. Admit is called from one goroutine; the
// readers may be called from any.
type Gate struct {
	rule Rule
	log  *slog.Logger

	mu      sync.Mutex
	refused map[netip.Prefix]*Refused // by lease ID
	peers   []lease.Lease             // admitted, by ID: every ID once (they do not overlap)
	counts  map[string]uint64
}

// NewGate returns a gate for rule.
func NewGate(rule Rule, log *slog.Logger) *Gate {
	if log == nil {
		log = slog.Default()
	}
	return &Gate{rule: rule, log: log, refused: map[netip.Prefix]*Refused{}, counts: map[string]uint64{}}
}

// Admit returns the admitted peers of snap (this host's lease left out),
// sorted by ID (lease.CompareID).
func (g *Gate) Admit(snap []lease.Lease) []lease.Lease {
	ds := Admit(g.rule, snap)
	peers := make([]lease.Lease, 0, len(ds))
	refused := make(map[netip.Prefix]*Refused)
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, d := range ds {
		s := d.Lease.ID()
		if d.Refused == nil {
			peers = append(peers, d.Lease)
			continue
		}
		refused[s] = d.Refused
		if old := g.refused[s]; old == nil || old.Reason != d.Refused.Reason {
			g.counts[d.Refused.Reason]++
			g.log.Warn("peer lease refused", append(logAttrs(d.Lease), "reason", d.Refused.Reason, "why", d.Refused.Detail)...)
		}
	}
	// Both lists are in ID order with every ID once: a merge finds what
	// came and went without a map of 5,000 leases per snapshot.
	old := g.peers
	i, j := 0, 0
	for i < len(old) || j < len(peers) {
		switch {
		case j == len(peers) || i < len(old) && lease.CompareID(old[i], peers[j]) < 0:
			g.log.Info("subnet removed", logAttrs(old[i])...)
			i++
		case i == len(old) || lease.CompareID(peers[j], old[i]) < 0:
			g.log.Info("subnet added", append(logAttrs(peers[j]), "backend", BackendName(peers[j].Attrs))...)
			j++
		default:
			if old[i].Attrs.PublicIP != peers[j].Attrs.PublicIP || old[i].Attrs.PublicIPv6 != peers[j].Attrs.PublicIPv6 {
				g.log.Info("subnet added", append(logAttrs(peers[j]), "backend", BackendName(peers[j].Attrs))...)
			}
			i++
			j++
		}
	}
	g.refused, g.peers = refused, peers
	return peers
}

// logAttrs names a lease in logs: its ID and the public address of that
// family.
func logAttrs(l lease.Lease) []any {
	if l.Subnet.IsValid() {
		return []any{"subnet", l.Subnet, "public-ip", l.Attrs.PublicIP}
	}
	return []any{"subnet", l.IPv6Subnet, "public-ipv6", l.Attrs.PublicIPv6}
}

// Refused returns the leases of the last snapshot that were refused, by
// ID, as "reason: detail".
func (g *Gate) Refused() map[string]string {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := make(map[string]string, len(g.refused))
	for s, r := range g.refused {
		out[s.String()] = r.Error()
	}
	return out
}

// Counts returns how many refusals each reason has seen since start (a
// lease refused in many snapshots for one reason counts once).
func (g *Gate) Counts() map[string]uint64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return maps.Clone(g.counts)
}
