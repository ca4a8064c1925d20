package firewall

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// The networks of the fixtures' dual-stack and IPv6-only etcd runs: h1's
// leases in dualstack/vxlan (10.5.77.0/24, fd00:10:5:21::/64),
// dualstack/host-gw (10.5.83.0/24, fd00:10:5:62::/64) and ipv6only/vxlan
// (fd00:10:5:12::/64).
var (
	dsNetwork     = netip.MustParsePrefix("10.5.0.0/16")
	dsNetwork6    = netip.MustParsePrefix("fd00:10:5::/56")
	vxlanSubnet   = netip.MustParsePrefix("10.5.77.0/24")
	vxlanSubnet6  = netip.MustParsePrefix("fd00:10:5:21::/64")
	hostgwSubnet  = netip.MustParsePrefix("10.5.83.0/24")
	hostgwSubnet6 = netip.MustParsePrefix("fd00:10:5:62::/64")
	// The subnet file holds the first address (FLANNEL_IPV6_SUBNET=
	// fd00:10:5:12::1/64); the rules use the subnet.
	v6onlySubnet6 = netip.MustParsePrefix("fd00:10:5:12::1/64")
)

// dualStack is dualstack/vxlan h1's config: flanneld ran with --ip-masq
// and the default --iptables-forward-rules.
func dualStack() Config {
	return Config{Network: dsNetwork, Subnet: vxlanSubnet, IPv6Network: dsNetwork6, IPv6Subnet: vxlanSubnet6, Masquerade: true, Forward: true}
}

// TestMasqRulesIPv6AreFlanneld pins the IPv6 set to flanneld v0.28.9's
// masqIP6Rules: the IPv4 set with ff00::/8 for the multicast range.
func TestMasqRulesIPv6AreFlanneld(t *testing.T) {
	var got []string
	for _, r := range MasqRules(dsNetwork6, vxlanSubnet6, false) {
		got = append(got, r.Table+" "+r.Chain+" "+strings.Join(r.Spec, " "))
	}
	want := []string{
		`nat POSTROUTING -m comment --comment flanneld masq -j FLANNEL-POSTRTG`,
		`nat FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment flanneld masq -j RETURN`,
		`nat FLANNEL-POSTRTG -s fd00:10:5:21::/64 -d fd00:10:5::/56 -m comment --comment flanneld masq -j RETURN`,
		`nat FLANNEL-POSTRTG -s fd00:10:5::/56 -d fd00:10:5:21::/64 -m comment --comment flanneld masq -j RETURN`,
		`nat FLANNEL-POSTRTG ! -s fd00:10:5::/56 -d fd00:10:5:21::/64 -m comment --comment flanneld masq -j RETURN`,
		`nat FLANNEL-POSTRTG -s fd00:10:5::/56 ! -d ff00::/8 -m comment --comment flanneld masq -j MASQUERADE`,
		`nat FLANNEL-POSTRTG ! -s fd00:10:5::/56 -d fd00:10:5::/56 -m comment --comment flanneld masq -j MASQUERADE`,
	}
	if !slices.Equal(got, want) {
		t.Errorf("rules:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// noFlannel fails when a dump still holds anything of flanneld's.
func noFlannel(t *testing.T, what, dump string) {
	t.Helper()
	for _, w := range []string{"FLANNEL", "flanneld", "flannel-ipv"} {
		if strings.Contains(dump, w) {
			t.Errorf("%s still holds %q:\n%s", what, w, dump)
			return
		}
	}
}

// TestIP6TablesResync installs a dual-stack host's rules and compares
// both families with flanneld's (dualstack/vxlan h1); then, whatever IPv6
// rule is deleted, moved, duplicated or added behind weft's back, one
// Resync puts flanneld's set back in order, leaving the IPv4 rules as
// they were. Cleanup leaves nothing of flanneld's in either family.
func TestIP6TablesResync(t *testing.T) {
	needTool(t, "ip6tables", "iptables")
	ns := netnsHosts(t, 1)[0]
	want4 := stripComments(golden(t, "flannel-v0.28.9-dualstack-vxlan-iptables-save-h1.txt"))
	want6 := stripComments(golden(t, "flannel-v0.28.9-dualstack-vxlan-ip6tables-save-h1.txt"))
	var m Manager
	in(t, ns, func() (err error) {
		if m, err = newManager(IPTables); err != nil {
			return err
		}
		return m.Setup(bg, dualStack())
	})
	check := func(when string) {
		t.Helper()
		if got := save(t, ns, "iptables-save"); got != want4 {
			t.Fatalf("iptables-save %s:\n%s\nwant (flanneld's):\n%s", when, got, want4)
		}
		if got := save(t, ns, "ip6tables-save"); got != want6 {
			t.Fatalf("ip6tables-save %s:\n%s\nwant (flanneld's):\n%s", when, got, want6)
		}
	}
	check("after Setup")
	resync := func(wantRepair bool) {
		t.Helper()
		in(t, ns, func() error {
			repaired, err := m.Resync(bg)
			if err != nil || repaired != wantRepair {
				return fmt.Errorf("Resync: repaired %v, %v; want repaired %v", repaired, err, wantRepair)
			}
			return nil
		})
		check("after Resync")
	}
	resync(false)

	all := append(MasqRules(dsNetwork6, vxlanSubnet6, true), ForwardRules(dsNetwork6)...)
	ip6t := func(table, op, chain string, spec ...string) {
		t.Helper()
		sh(t, ns, append([]string{"ip6tables", "-t", table, op, chain}, spec...)...)
	}
	for i, r := range all {
		t.Logf("deleting IPv6 rule %d: %s %s", i, r.Chain, strings.Join(r.Spec, " "))
		ip6t(r.Table, "-D", r.Chain, r.Spec...)
		resync(true)
	}
	// The kube-proxy-mark RETURN re-appended after MASQUERADE.
	mark := all[1]
	ip6t("nat", "-D", mark.Chain, mark.Spec...)
	ip6t("nat", "-A", mark.Chain, mark.Spec...)
	resync(true)
	// A foreign rule in flanneld's chain, a duplicated jump, the chain
	// flushed and deleted by hand.
	ip6t("nat", "-I", MasqChain, "1", "-s", "2001:db8:99::/64", "-j", "ACCEPT")
	resync(true)
	ip6t("nat", "-A", "POSTROUTING", all[0].Spec...)
	resync(true)
	ip6t("nat", "-D", "POSTROUTING", all[0].Spec...)
	ip6t("nat", "-F", MasqChain)
	ip6t("nat", "-X", MasqChain)
	resync(true)
	ip6t("filter", "-D", "FORWARD", ForwardRules(dsNetwork6)[0].Spec...)
	ip6t("filter", "-F", ForwardChain)
	ip6t("filter", "-X", ForwardChain)
	resync(true)

	in(t, ns, func() error { return m.Cleanup(bg) })
	noFlannel(t, "iptables-save after Cleanup", save(t, ns, "iptables-save"))
	noFlannel(t, "ip6tables-save after Cleanup", save(t, ns, "ip6tables-save"))
	noFlannel(t, "nft list ruleset after Cleanup", sh(t, ns, "nft", "list", "ruleset"))
}

// TestIP6TablesIPv6Only is the fixtures' ipv6only/vxlan h1: flanneld's
// IPv6 rules, and no IPv4 table at all (iptables-save prints nothing).
func TestIP6TablesIPv6Only(t *testing.T) {
	needTool(t, "ip6tables", "iptables")
	ns := netnsHosts(t, 1)[0]
	var m Manager
	in(t, ns, func() (err error) {
		if m, err = newManager(IPTables); err != nil {
			return err
		}
		if err := m.Setup(bg, Config{IPv6Network: dsNetwork6, IPv6Subnet: v6onlySubnet6, Masquerade: true, Forward: true}); err != nil {
			return err
		}
		if repaired, err := m.Resync(bg); err != nil || repaired {
			return fmt.Errorf("Resync right after Setup: repaired %v, %v", repaired, err)
		}
		return nil
	})
	for _, c := range []struct{ cmd, file string }{
		{"iptables-save", "flannel-v0.28.9-ipv6only-vxlan-iptables-save-h1.txt"},
		{"ip6tables-save", "flannel-v0.28.9-ipv6only-vxlan-ip6tables-save-h1.txt"},
	} {
		if got, want := save(t, ns, c.cmd), stripComments(golden(t, c.file)); got != want {
			t.Errorf("%s:\n%s\nwant (flanneld's):\n%s", c.cmd, got, want)
		}
	}
	in(t, ns, func() error { return CleanupAll(bg) })
	noFlannel(t, "ip6tables-save after CleanupAll", save(t, ns, "ip6tables-save"))
}

// TestIPv4OnlyLeavesIP6TablesAlone: as flanneld ("IPv4-only runs never
// touch ip6tables"), an IPv4-only Setup creates no IPv6 table.
func TestIPv4OnlyLeavesIP6TablesAlone(t *testing.T) {
	needTool(t, "ip6tables", "iptables")
	ns := netnsHosts(t, 1)[0]
	in(t, ns, func() error {
		m, err := newManager(IPTables)
		if err != nil {
			return err
		}
		return m.Setup(bg, Config{Network: kubeNetwork, Subnet: kubeSubnet, Masquerade: true, Forward: true})
	})
	if got := save(t, ns, "ip6tables-save"); got != "" {
		t.Errorf("ip6tables-save after an IPv4-only Setup:\n%s\nwant nothing", got)
	}
}

// TestIP6TablesPreviousSubnet starts where flanneld's dualstack/vxlan h1
// left the host and moves it to the lease of dualstack/host-gw h1 (the
// subnet file names the old subnets as Prev*): both families end up as
// flanneld left host-gw's h1, with nothing of the old subnets. Then the
// network loses IPv6: the IPv6 rules and chains go.
func TestIP6TablesPreviousSubnet(t *testing.T) {
	needTool(t, "ip6tables", "iptables")
	ns := netnsHosts(t, 1)[0]
	shIn(t, ns, golden(t, "flannel-v0.28.9-dualstack-vxlan-iptables-save-h1.txt"), "iptables-restore")
	shIn(t, ns, golden(t, "flannel-v0.28.9-dualstack-vxlan-ip6tables-save-h1.txt"), "ip6tables-restore")
	var m Manager
	in(t, ns, func() (err error) {
		if m, err = newManager(IPTables); err != nil {
			return err
		}
		return m.Setup(bg, Config{
			Network: dsNetwork, Subnet: hostgwSubnet, IPv6Network: dsNetwork6, IPv6Subnet: hostgwSubnet6,
			PrevNetwork: dsNetwork, PrevSubnet: vxlanSubnet, PrevIPv6Network: dsNetwork6, PrevIPv6Subnet: vxlanSubnet6,
			Masquerade: true, Forward: true,
		})
	})
	for _, c := range []struct{ cmd, file string }{
		{"iptables-save", "flannel-v0.28.9-dualstack-host-gw-iptables-save-h1.txt"},
		{"ip6tables-save", "flannel-v0.28.9-dualstack-host-gw-ip6tables-save-h1.txt"},
	} {
		if got, want := save(t, ns, c.cmd), stripComments(golden(t, c.file)); got != want {
			t.Errorf("%s:\n%s\nwant (flanneld's host-gw h1):\n%s", c.cmd, got, want)
		}
	}

	in(t, ns, func() error {
		return m.Setup(bg, Config{Network: dsNetwork, Subnet: hostgwSubnet, PrevNetwork: dsNetwork, PrevSubnet: hostgwSubnet,
			PrevIPv6Network: dsNetwork6, PrevIPv6Subnet: hostgwSubnet6, Masquerade: true, Forward: true})
	})
	noFlannel(t, "ip6tables-save after an IPv4-only Setup", save(t, ns, "ip6tables-save"))
	if got, want := save(t, ns, "iptables-save"), stripComments(golden(t, "flannel-v0.28.9-dualstack-host-gw-iptables-save-h1.txt")); got != want {
		t.Errorf("iptables-save after an IPv4-only Setup:\n%s\nwant:\n%s", got, want)
	}
}

// fakePath makes a directory of links to the real iptables binaries
// (IPv4 only, nft, and ip for sh) and puts it alone on PATH for the rest
// of the test.
func fakePath(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, name := range []string{"iptables", "iptables-restore", "iptables-save", "nft", "ip"} {
		p, err := exec.LookPath(name)
		if err != nil {
			t.Skipf("%s: %v", name, err)
		}
		if err := os.Symlink(p, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("PATH", dir)
	return dir
}

// TestIP6TablesMissing: a dual-stack config on a host with iptables but
// without ip6tables, then with an ip6tables whose kernel has no IPv6
// tables (what a kernel booted with ipv6.disable=1 answers), fails Setup
// with an error naming what is missing, before any rule is touched.
func TestIP6TablesMissing(t *testing.T) {
	needTool(t, "ip6tables", "iptables")
	ns := netnsHosts(t, 1)[0]
	dir := fakePath(t)
	setup := func() error {
		var err error
		in(t, ns, func() error {
			m, nerr := newManager(IPTables)
			if nerr != nil {
				return fmt.Errorf("NewManager without ip6tables: %v", nerr)
			}
			err = m.Setup(bg, dualStack())
			return nil
		})
		return err
	}
	for _, c := range []struct {
		name, script string
		want         []string
	}{
		{name: "no ip6tables", want: []string{"IPv6 network fd00:10:5::/56", "ip6tables cannot be used", "ip6tables not found"}},
		{
			name: "no IPv6 in the kernel",
			script: "#!/bin/sh\n[ \"$1\" = --version ] && { echo 'ip6tables v1.8.9 (legacy)'; exit 0; }\n" +
				"echo \"ip6tables v1.8.9 (legacy): can't initialize ip6tables table \\`nat': Address family not supported by protocol\" >&2\nexit 3\n",
			want: []string{"ip6tables cannot be used", "the kernel gives ip6tables no IPv6 nat table", "ip6table_nat", "Address family not supported"},
		},
	} {
		if c.script != "" {
			for _, name := range []string{"ip6tables", "ip6tables-restore"} {
				if err := os.WriteFile(filepath.Join(dir, name), []byte(c.script), 0o755); err != nil {
					t.Fatal(err)
				}
			}
		}
		err := setup()
		if !errors.Is(err, ErrNoIP6Tables) || !errors.Is(err, ErrNoIPTables) {
			t.Fatalf("%s: Setup: %v; want ErrNoIP6Tables", c.name, err)
		}
		for _, w := range c.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %q does not say %q", c.name, err, w)
			}
		}
		t.Logf("%s: %v", c.name, err)
		if got := save(t, ns, "iptables-save"); got != "" {
			t.Errorf("%s: IPv4 rules installed although Setup failed:\n%s", c.name, got)
		}
	}
	// CleanupAll (weft cleanup) skips the family it cannot use.
	in(t, ns, func() error { return CleanupAll(bg) })
}

// nftDeleteRule deletes the rule of a chain whose text is text, by its
// handle.
func nftDeleteRule(t *testing.T, ns, family, table, chain, text string) {
	t.Helper()
	listing := sh(t, ns, "nft", "-a", "list", "chain", family, table, chain)
	m := regexp.MustCompile(regexp.QuoteMeta(text) + ` # handle (\d+)`).FindStringSubmatch(listing)
	if m == nil {
		t.Fatalf("no %q in\n%s", text, listing)
	}
	sh(t, ns, "nft", "delete", "rule", family, table, chain, "handle", m[1])
}

// TestNFTablesIPv6 sets up a dual-stack host in nftables mode and replays
// flanneld's dual-stack transaction (written out from its nftables.go, in
// main.go's order) in another namespace: both tables must list the same,
// the IPv6 one as recorded in testdata. A change to the IPv6 table behind
// weft's back is undone by one Resync; Cleanup and CleanupAll leave no
// table.
func TestNFTablesIPv6(t *testing.T) {
	needTool(t, "nft", "nftables")
	hosts := netnsHosts(t, 2)
	weft, flanneld := hosts[0], hosts[1]
	var m Manager
	in(t, weft, func() (err error) {
		if m, err = newManager(NFTables); err != nil {
			return err
		}
		return m.Setup(bg, dualStack())
	})
	shIn(t, flanneld, golden(t, "flannel-v0.28.9-nftables-dualstack.nft"), "nft", "-f", "-")
	for _, c := range []struct{ family, table string }{{"ip", NFTableIPv4}, {"ip6", NFTableIPv6}} {
		if got, want := nftList(t, weft, c.family, c.table), nftList(t, flanneld, c.family, c.table); got != want {
			t.Errorf("weft's %s %s:\n%s\nflanneld's:\n%s", c.family, c.table, got, want)
		}
	}
	want6 := golden(t, "flannel-v0.28.9-nft-list-dualstack-ipv6.txt")
	if got := nftList(t, flanneld, "ip6", NFTableIPv6); got != want6 {
		t.Errorf("flanneld's ip6 table:\n%s\nrecorded:\n%s", got, want6)
	}
	want4 := nftList(t, weft, "ip", NFTableIPv4)

	resync := func(wantRepair bool) {
		t.Helper()
		in(t, weft, func() error {
			repaired, err := m.Resync(bg)
			if err != nil || repaired != wantRepair {
				return fmt.Errorf("Resync: repaired %v, %v; want repaired %v", repaired, err, wantRepair)
			}
			return nil
		})
		if got := nftList(t, weft, "ip6", NFTableIPv6); got != want6 {
			t.Fatalf("ip6 table after Resync:\n%s\nwant (flanneld's):\n%s", got, want6)
		}
		if got := nftList(t, weft, "ip", NFTableIPv4); got != want4 {
			t.Fatalf("ip table after Resync:\n%s\nwant:\n%s", got, want4)
		}
	}
	resync(false)
	nftDeleteRule(t, weft, "ip6", NFTableIPv6, nftPostrouting, "meta mark 0x00004000 return")
	resync(true)
	nftDeleteRule(t, weft, "ip6", NFTableIPv6, nftPostrouting, "ip6 saddr fd00:10:5::/56 ip6 daddr != ff00::/8 masquerade fully-random")
	resync(true)
	nftDeleteRule(t, weft, "ip6", NFTableIPv6, nftForward, "ip6 saddr fd00:10:5::/56 accept")
	resync(true)
	sh(t, weft, "nft", "insert", "rule", "ip6", NFTableIPv6, nftPostrouting, "ip6", "saddr", "2001:db8:99::/64", "accept")
	resync(true)
	sh(t, weft, "nft", "delete", "table", "ip6", NFTableIPv6)
	resync(true)

	in(t, weft, func() error { return m.Cleanup(bg) })
	noFlannel(t, "nft list ruleset after Cleanup", sh(t, weft, "nft", "list", "ruleset"))
	in(t, flanneld, func() error { return CleanupAll(bg) })
	noFlannel(t, "nft list ruleset after CleanupAll", sh(t, flanneld, "nft", "list", "ruleset"))
}

// TestNFTablesIPv6Only: flanneld creates both tables and fills only the
// IPv6 one; fully-random is still checked in the IPv4 table.
func TestNFTablesIPv6Only(t *testing.T) {
	needTool(t, "nft", "nftables")
	ns := netnsHosts(t, 1)[0]
	in(t, ns, func() error {
		m, err := newManager(NFTables)
		if err != nil {
			return err
		}
		return m.Setup(bg, Config{IPv6Network: dsNetwork6, IPv6Subnet: vxlanSubnet6, Masquerade: true, Forward: true})
	})
	if got, want := nftList(t, ns, "ip6", NFTableIPv6), golden(t, "flannel-v0.28.9-nft-list-dualstack-ipv6.txt"); got != want {
		t.Errorf("ip6 table:\n%s\nwant:\n%s", got, want)
	}
	if got, want := nftList(t, ns, "ip", NFTableIPv4), "table ip flannel-ipv4 {\n\tcomment \"rules for flannel-ipv4\"\n}\n"; got != want {
		t.Errorf("ip table:\n%s\nwant it empty, as flanneld leaves it:\n%s", got, want)
	}
}

// TestModeSwitchIPv6 moves a dual-stack host between the modes: each
// mode's Setup removes the other's IPv6 state too.
func TestModeSwitchIPv6(t *testing.T) {
	needTool(t, "nft", "nftables")
	needTool(t, "ip6tables", "iptables")
	ns := netnsHosts(t, 1)[0]
	setup := func(mode Mode) {
		t.Helper()
		in(t, ns, func() error {
			m, err := newManager(mode)
			if err != nil {
				return err
			}
			return m.Setup(bg, dualStack())
		})
	}
	// flanneld in iptables mode was here, then weft in nftables mode.
	shIn(t, ns, golden(t, "flannel-v0.28.9-dualstack-vxlan-ip6tables-save-h1.txt"), "ip6tables-restore")
	setup(NFTables)
	noFlannel(t, "ip6tables-save in nftables mode", save(t, ns, "ip6tables-save"))
	if got, want := nftList(t, ns, "ip6", NFTableIPv6), golden(t, "flannel-v0.28.9-nft-list-dualstack-ipv6.txt"); got != want {
		t.Errorf("nftables mode:\n%s\nwant:\n%s", got, want)
	}
	setup(IPTables)
	if got := sh(t, ns, "nft", "list", "tables"); strings.Contains(got, "flannel") {
		t.Errorf("nftables tables left in iptables mode:\n%s", got)
	}
	if got, want := save(t, ns, "ip6tables-save"), stripComments(golden(t, "flannel-v0.28.9-dualstack-vxlan-ip6tables-save-h1.txt")); got != want {
		t.Errorf("iptables mode:\n%s\nwant:\n%s", got, want)
	}
	// weft cleanup on a host both daemons ran on.
	shIn(t, ns, golden(t, "flannel-v0.28.9-nftables-dualstack.nft"), "nft", "-f", "-")
	in(t, ns, func() error { return CleanupAll(bg) })
	noFlannel(t, "ip6tables-save after CleanupAll", save(t, ns, "ip6tables-save"))
	noFlannel(t, "iptables-save after CleanupAll", save(t, ns, "iptables-save"))
	noFlannel(t, "nft list ruleset after CleanupAll", sh(t, ns, "nft", "list", "ruleset"))
}
