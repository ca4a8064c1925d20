package firewall

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
)

// There is no nftables recording of flanneld (the fixtures ran it in
// iptables mode), so testdata/flannel-v0.28.9-nftables.nft is the
// transaction flanneld v0.28.9's nftables.go hands to knftables (Init,
// SetupAndEnsureMasqRules, SetupAndEnsureForwardRules, in main.go's
// order), written out by hand from the source, and
// testdata/flannel-v0.28.9-nft-list-*.txt what `nft list table` shows
// after it.

func nftList(t *testing.T, ns, family, table string) string {
	t.Helper()
	return sh(t, ns, "nft", "list", "table", family, table)
}

func nftTables(t *testing.T, ns string) string {
	t.Helper()
	return sh(t, ns, "nft", "list", "tables")
}

// TestNFTablesMatchesFlanneld sets up weft in one namespace and replays
// flanneld's transaction with the real nft in another: both tables must
// list the same, and as recorded in testdata.
func TestNFTablesMatchesFlanneld(t *testing.T) {
	needTool(t, "nft", "nftables")
	hosts := netnsHosts(t, 2)
	weft, flanneld := hosts[0], hosts[1]
	in(t, weft, func() error {
		m, err := newManager(NFTables)
		if err != nil {
			return err
		}
		return m.Setup(bg, Config{Network: kubeNetwork, Subnet: kubeSubnet, Masquerade: true, Forward: true})
	})
	shIn(t, flanneld, golden(t, "flannel-v0.28.9-nftables.nft"), "nft", "-f", "-")
	for _, c := range []struct{ family, table, file string }{
		{"ip", NFTableIPv4, "flannel-v0.28.9-nft-list-ipv4.txt"},
		{"ip6", NFTableIPv6, "flannel-v0.28.9-nft-list-ipv6.txt"},
	} {
		got, want := nftList(t, weft, c.family, c.table), nftList(t, flanneld, c.family, c.table)
		if got != want {
			t.Errorf("weft's %s %s:\n%s\nflanneld's:\n%s", c.family, c.table, got, want)
		}
		if rec := golden(t, c.file); want != rec {
			t.Errorf("flanneld's %s %s:\n%s\nrecorded in %s:\n%s", c.family, c.table, want, c.file, rec)
		}
	}
}

// TestNFTablesResync: a rule deleted or added behind weft's back, or the
// whole table deleted, is back to flanneld's ruleset after one Resync;
// Cleanup deletes both tables.
func TestNFTablesResync(t *testing.T) {
	needTool(t, "nft", "nftables")
	ns := netnsHosts(t, 1)[0]
	want := golden(t, "flannel-v0.28.9-nft-list-ipv4.txt")
	var m Manager
	in(t, ns, func() (err error) {
		if m, err = newManager(NFTables); err != nil {
			return err
		}
		return m.Setup(bg, Config{Network: kubeNetwork, Subnet: kubeSubnet, Masquerade: true, Forward: true})
	})
	resync := func(wantRepair bool) {
		t.Helper()
		in(t, ns, func() error {
			repaired, err := m.Resync(bg)
			if err != nil || repaired != wantRepair {
				return fmt.Errorf("Resync: repaired %v, %v; want repaired %v", repaired, err, wantRepair)
			}
			return nil
		})
		if got := nftList(t, ns, "ip", NFTableIPv4); got != want {
			t.Fatalf("after Resync:\n%s\nwant (flanneld's):\n%s", got, want)
		}
	}
	resync(false)

	// The kube-proxy-mark rule, then the forward chain's second rule.
	for _, r := range []struct{ chain, text string }{
		{nftPostrouting, "meta mark 0x00004000 return"},
		{nftPostrouting, "ip saddr != 10.244.1.0/24 ip daddr 10.244.0.0/16 return"},
		{nftForward, "ip daddr 10.244.0.0/16 accept"},
	} {
		listing := sh(t, ns, "nft", "-a", "list", "chain", "ip", NFTableIPv4, r.chain)
		m := regexp.MustCompile(regexp.QuoteMeta(r.text) + ` # handle (\d+)`).FindStringSubmatch(listing)
		if m == nil {
			t.Fatalf("no %q in\n%s", r.text, listing)
		}
		sh(t, ns, "nft", "delete", "rule", "ip", NFTableIPv4, r.chain, "handle", m[1])
		resync(true)
	}
	sh(t, ns, "nft", "insert", "rule", "ip", NFTableIPv4, nftPostrouting, "ip", "saddr", "192.0.2.0/24", "accept")
	resync(true)
	sh(t, ns, "nft", "add", "chain", "ip", NFTableIPv4, "stray")
	resync(true)
	sh(t, ns, "nft", "delete", "table", "ip", NFTableIPv4)
	resync(true)

	in(t, ns, func() error { return m.Cleanup(bg) })
	if got := nftTables(t, ns); strings.Contains(got, "flannel") {
		t.Errorf("tables left after Cleanup:\n%s", got)
	}
}

// TestModeSwitch moves a host between the modes both ways: each mode's
// Setup removes the other's state, whether weft or flanneld left it.
func TestModeSwitch(t *testing.T) {
	needTool(t, "nft", "nftables")
	needTool(t, "iptables", "iptables")
	ns := netnsHosts(t, 1)[0]
	cfg := Config{Network: kubeNetwork, Subnet: kubeSubnet, Masquerade: true, Forward: true}
	setup := func(mode Mode) {
		t.Helper()
		in(t, ns, func() error {
			m, err := newManager(mode)
			if err != nil {
				return err
			}
			return m.Setup(bg, cfg)
		})
	}
	noIPTables := func() {
		t.Helper()
		if got := save(t, ns, "iptables-save"); strings.Contains(got, "FLANNEL") || strings.Contains(got, "flanneld") {
			t.Errorf("iptables rules left in nftables mode:\n%s", got)
		}
	}
	noNFTables := func() {
		t.Helper()
		if got := nftTables(t, ns); strings.Contains(got, "flannel") {
			t.Errorf("nftables tables left in iptables mode:\n%s", got)
		}
	}

	// flanneld in iptables mode was here (its recorded rules), then
	// weft in nftables mode.
	shIn(t, ns, golden(t, "flannel-v0.28.9-kube-vxlan-iptables-save-h1.txt"), "iptables-restore")
	setup(NFTables)
	noIPTables()
	if got, want := nftList(t, ns, "ip", NFTableIPv4), golden(t, "flannel-v0.28.9-nft-list-ipv4.txt"); got != want {
		t.Errorf("nftables mode:\n%s\nwant:\n%s", got, want)
	}
	// Back to iptables mode.
	setup(IPTables)
	noNFTables()
	if got, want := save(t, ns, "iptables-save"), stripComments(golden(t, "flannel-v0.28.9-kube-vxlan-iptables-save-h1.txt")); got != want {
		t.Errorf("iptables mode:\n%s\nwant:\n%s", got, want)
	}
	// flanneld in nftables mode was here, then weft in iptables mode.
	shIn(t, ns, golden(t, "flannel-v0.28.9-nftables.nft"), "nft", "-f", "-")
	setup(IPTables)
	noNFTables()
	// Both at once (a host flanneld and weft both ran on), then
	// CleanupAll, as `weft cleanup` calls it.
	shIn(t, ns, golden(t, "flannel-v0.28.9-nftables.nft"), "nft", "-f", "-")
	in(t, ns, func() error { return CleanupAll(bg) })
	noIPTables()
	noNFTables()
}
