package firewall

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"sync"

	"sigs.k8s.io/knftables"
)

// flanneld's nftables objects (flannel v0.28.9
// pkg/trafficmngr/nftables/nftables.go): one table per family, created
// (both of them) at start, a base chain for masquerading and one for
// forwarding. The names must stay flanneld's: flanneld in iptables mode
// deletes these two tables at start, and weft deletes them in iptables
// mode, so a host moved either way is cleaned up.
const (
	NFTableIPv4    = "flannel-ipv4"
	NFTableIPv6    = "flannel-ipv6"
	nftForward     = "forward"
	nftPostrouting = "postrtg"
	nftMasqTest    = "masqueradeTest"
)

// nftTable keeps one of flanneld's tables in place.
//
// flanneld builds each chain with "add chain; flush chain; add rule..." in
// one transaction and never checks again (its resync period is unused in
// nftables mode). weft replaces the whole table in one transaction ("add
// table; delete table; add table ..."), which leaves the same objects in
// the kernel and also drops anything stale (a chain of a feature now
// off), and its resync compares `nft list table` with the listing right
// after the last rebuild, rebuilding when they differ.
type nftTable struct {
	nft    knftables.Interface
	path   string // the nft binary
	family knftables.Family
	name   string

	mu     sync.Mutex
	build  func(tx *knftables.Transaction) // the chains and rules
	listed string
}

func newNFTTable(family knftables.Family, name string) (*nftTable, error) {
	nft, err := knftables.New(family, name)
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	path, err := exec.LookPath("nft")
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	return &nftTable{nft: nft, path: path, family: family, name: name}, nil
}

// set replaces what the table holds; the next ensure rebuilds.
func (t *nftTable) set(build func(tx *knftables.Transaction)) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.build, t.listed = build, ""
}

func (t *nftTable) ensure(ctx context.Context, force bool) (bool, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !force && t.listed != "" {
		got, err := t.list(ctx)
		if err != nil {
			return false, err
		}
		if got == t.listed {
			return false, nil
		}
	}
	tx := t.nft.NewTransaction()
	tx.Add(&knftables.Table{Comment: knftables.PtrTo("rules for " + t.name)})
	tx.Delete(&knftables.Table{})
	tx.Add(&knftables.Table{Comment: knftables.PtrTo("rules for " + t.name)})
	if t.build != nil {
		t.build(tx)
	}
	if err := t.nft.Run(ctx, tx); err != nil {
		return true, fmt.Errorf("nftables: table %s %s: %w", t.family, t.name, err)
	}
	l, err := t.list(ctx)
	if err != nil {
		return true, err
	}
	t.listed = l
	return true, nil
}

// list is `nft list table`, or "" when the table is missing.
func (t *nftTable) list(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, t.path, "list", "table", string(t.family), t.name).CombinedOutput()
	if err != nil {
		if strings.Contains(string(out), "No such file or directory") {
			return "", nil // the table is gone
		}
		return "", fmt.Errorf("nft list table %s %s: %v: %s", t.family, t.name, err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

// remove deletes the table if it exists.
func (t *nftTable) remove(ctx context.Context) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.build, t.listed = nil, ""
	return deleteNFTable(ctx, t.nft)
}

func deleteNFTable(ctx context.Context, nft knftables.Interface) error {
	tx := nft.NewTransaction()
	tx.Delete(&knftables.Table{})
	if err := nft.Run(ctx, tx); err != nil && !knftables.IsNotFound(err) {
		return fmt.Errorf("nftables: delete table: %w", err)
	}
	return nil
}

// randomFully reports whether the kernel takes "masquerade fully-random",
// checked as flanneld does (utils.go checkRandomfully: nft --check of a
// chain "masqueradeTest" with such a rule, never committed).
func (t *nftTable) randomFully(ctx context.Context) bool {
	tx := t.nft.NewTransaction()
	tx.Add(&knftables.Table{})
	tx.Add(&knftables.Chain{
		Name:     nftMasqTest,
		Comment:  knftables.PtrTo("chain to test if masquerade random fully is supported"),
		Type:     knftables.PtrTo(knftables.NATType),
		Hook:     knftables.PtrTo(knftables.PostroutingHook),
		Priority: knftables.PtrTo(knftables.SNATPriority),
	})
	tx.Flush(&knftables.Chain{Name: nftMasqTest})
	tx.Add(&knftables.Rule{Chain: nftMasqTest, Rule: knftables.Concat("ip saddr", "!=", "127.0.0.1", "masquerade fully-random")})
	return t.nft.Check(ctx, tx) == nil
}

// nftFamily is the rule keyword of a prefix's family.
func nftFamily(p netip.Prefix) string {
	if p.Addr().Is6() {
		return "ip6"
	}
	return "ip"
}

// nftMasq adds flanneld's masquerade chain and rules (nftables.go
// SetupAndEnsureMasqRules and addMasqRules), word for word. Two of them
// differ from the iptables set, and weft keeps flanneld's text so that
// both daemons leave the same ruleset: the kube-proxy mark is matched
// exactly ("meta mark 0x4000", not under the mask 0x4000), and the
// fourth rule returns on "saddr != <subnet> daddr <network>" where
// iptables has "! -s <network> -d <subnet>".
func nftMasq(tx *knftables.Transaction, network, subnet netip.Prefix, randomFully bool) {
	f, cluster, pod := nftFamily(network), network.String(), subnet.String()
	masq := "masquerade"
	if randomFully {
		masq = "masquerade fully-random"
	}
	tx.Add(&knftables.Chain{
		Name:     nftPostrouting,
		Comment:  knftables.PtrTo("chain to manage traffic masquerading by flannel"),
		Type:     knftables.PtrTo(knftables.NATType),
		Hook:     knftables.PtrTo(knftables.PostroutingHook),
		Priority: knftables.PtrTo(knftables.SNATPriority),
	})
	for _, r := range []string{
		knftables.Concat("meta mark", "0x4000", "return"),
		knftables.Concat(f, "saddr", pod, f, "daddr", cluster, "return"),
		knftables.Concat(f, "saddr", cluster, f, "daddr", pod, "return"),
		knftables.Concat(f, "saddr", "!=", pod, f, "daddr", cluster, "return"),
		knftables.Concat(f, "saddr", cluster, f, "daddr", "!=", multicast(network), masq),
		knftables.Concat(f, "saddr", "!=", cluster, f, "daddr", cluster, masq),
	} {
		tx.Add(&knftables.Rule{Chain: nftPostrouting, Rule: r})
	}
}

// nftForwardRules adds flanneld's forward chain (SetupAndEnsureForwardRules):
// a filter base chain with policy accept that accepts the cluster network
// both ways.
func nftForwardRules(tx *knftables.Transaction, network netip.Prefix) {
	f, n := nftFamily(network), network.String()
	tx.Add(&knftables.Chain{
		Name:     nftForward,
		Comment:  knftables.PtrTo("chain to accept flannel traffic"),
		Type:     knftables.PtrTo(knftables.FilterType),
		Hook:     knftables.PtrTo(knftables.ForwardHook),
		Priority: knftables.PtrTo(knftables.FilterPriority),
	})
	tx.Add(&knftables.Rule{Chain: nftForward, Rule: knftables.Concat(f, "saddr", n, "accept")})
	tx.Add(&knftables.Rule{Chain: nftForward, Rule: knftables.Concat(f, "daddr", n, "accept")})
}
