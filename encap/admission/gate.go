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
	refused map[netip.Prefix]*Refused
	peers   []lease.Lease // admitted, by subnet: every subnet once (they do not overlap)
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
// sorted by subnet.
func (g *Gate) Admit(snap []lease.Lease) []lease.Lease {
	ds := Admit(g.rule, snap)
	peers := make([]lease.Lease, 0, len(ds))
	refused := make(map[netip.Prefix]*Refused)
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, d := range ds {
		s := d.Lease.Subnet
		if d.Refused == nil {
			peers = append(peers, d.Lease)
			continue
		}
		refused[s] = d.Refused
		if old := g.refused[s]; old == nil || old.Reason != d.Refused.Reason {
			g.counts[d.Refused.Reason]++
			g.log.Warn("peer lease refused", "subnet", s, "public-ip", d.Lease.Attrs.PublicIP, "reason", d.Refused.Reason, "why", d.Refused.Detail)
		}
	}
	// Both lists are in subnet order with every subnet once: a merge
	// finds what came and went without a map of 5,000 leases per snapshot.
	old := g.peers
	i, j := 0, 0
	for i < len(old) || j < len(peers) {
		switch {
		case j == len(peers) || i < len(old) && old[i].Subnet.Addr().Less(peers[j].Subnet.Addr()):
			g.log.Info("subnet removed", "subnet", old[i].Subnet, "public-ip", old[i].Attrs.PublicIP)
			i++
		case i == len(old) || peers[j].Subnet.Addr().Less(old[i].Subnet.Addr()):
			g.log.Info("subnet added", "subnet", peers[j].Subnet, "public-ip", peers[j].Attrs.PublicIP, "backend", BackendName(peers[j].Attrs))
			j++
		default:
			if old[i].Attrs.PublicIP != peers[j].Attrs.PublicIP {
				g.log.Info("subnet added", "subnet", peers[j].Subnet, "public-ip", peers[j].Attrs.PublicIP, "backend", BackendName(peers[j].Attrs))
			}
			i++
			j++
		}
	}
	g.refused, g.peers = refused, peers
	return peers
}

// Refused returns the leases of the last snapshot that were refused, by
// subnet, as "reason: detail".
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
