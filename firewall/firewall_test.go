package firewall

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// TestMasqRulesAreFlanneld pins the rules to flanneld v0.28's text.
func TestMasqRulesAreFlanneld(t *testing.T) {
	var got []string
	for _, r := range MasqRules(netip.MustParsePrefix("10.5.0.0/16"), netip.MustParsePrefix("10.5.42.0/24"), true) {
		got = append(got, r.Table+" "+r.Chain+" "+strings.Join(r.Spec, " "))
	}
	want := []string{
		`nat POSTROUTING -m comment --comment flanneld masq -j FLANNEL-POSTRTG`,
		`nat FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment flanneld masq -j RETURN`,
		`nat FLANNEL-POSTRTG -s 10.5.42.0/24 -d 10.5.0.0/16 -m comment --comment flanneld masq -j RETURN`,
		`nat FLANNEL-POSTRTG -s 10.5.0.0/16 -d 10.5.42.0/24 -m comment --comment flanneld masq -j RETURN`,
		`nat FLANNEL-POSTRTG ! -s 10.5.0.0/16 -d 10.5.42.0/24 -m comment --comment flanneld masq -j RETURN`,
		`nat FLANNEL-POSTRTG -s 10.5.0.0/16 ! -d 224.0.0.0/4 -m comment --comment flanneld masq -j MASQUERADE --random-fully`,
		`nat FLANNEL-POSTRTG ! -s 10.5.0.0/16 -d 10.5.0.0/16 -m comment --comment flanneld masq -j MASQUERADE --random-fully`,
	}
	if !slices.Equal(got, want) {
		t.Errorf("rules:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestIPTablesResyncRestoresOrder: whatever rule goes missing (or comes
// back in the wrong place, as the kube-proxy-mark RETURN did when it was
// re-appended after MASQUERADE), one Resync leaves exactly what flanneld
// v0.28.9 wrote (kube/vxlan/iptables-save-h1.txt of the fixtures).
func TestIPTablesResyncRestoresOrder(t *testing.T) {
	needTool(t, "iptables", "iptables")
	ns := netnsHosts(t, 1)[0]
	want := stripComments(golden(t, "flannel-v0.28.9-kube-vxlan-iptables-save-h1.txt"))
	var m Manager
	in(t, ns, func() (err error) {
		if m, err = newManager(IPTables); err != nil {
			return err
		}
		return m.Setup(bg, Config{Network: kubeNetwork, Subnet: kubeSubnet, Masquerade: true, Forward: true})
	})
	if got := save(t, ns, "iptables-save"); got != want {
		t.Fatalf("after Setup:\n%s\nwant (flanneld's):\n%s", got, want)
	}
	resync := func(wantRepair bool) {
		t.Helper()
		in(t, ns, func() error {
			repaired, err := m.Resync(bg)
			if err != nil || repaired != wantRepair {
				return fmt.Errorf("Resync: repaired %v, %v; want repaired %v", repaired, err, wantRepair)
			}
			return nil
		})
		if got := save(t, ns, "iptables-save"); got != want {
			t.Fatalf("after Resync:\n%s\nwant (flanneld's):\n%s", got, want)
		}
	}
	resync(false)

	all := append(MasqRules(kubeNetwork, kubeSubnet, true), ForwardRules(kubeNetwork)...)
	for i, r := range all {
		t.Logf("deleting rule %d: %s %s", i, r.Chain, strings.Join(r.Spec, " "))
		sh(t, ns, append([]string{"iptables", "-t", r.Table, "-D", r.Chain}, r.Spec...)...)
		resync(true)
	}

	// What the old repair did: the mark rule deleted and appended again,
	// so every rule exists but MASQUERADE comes first.
	mark := all[1]
	sh(t, ns, append([]string{"iptables", "-t", "nat", "-D", mark.Chain}, mark.Spec...)...)
	sh(t, ns, append([]string{"iptables", "-t", "nat", "-A", mark.Chain}, mark.Spec...)...)
	resync(true)

	// A foreign rule in flanneld's chain; a duplicate jump; the chain
	// flushed and deleted by hand.
	sh(t, ns, "iptables", "-t", "nat", "-I", MasqChain, "1", "-s", "192.0.2.0/24", "-j", "ACCEPT")
	resync(true)
	sh(t, ns, append([]string{"iptables", "-t", "nat", "-A", "POSTROUTING"}, all[0].Spec...)...)
	resync(true)
	sh(t, ns, append([]string{"iptables", "-t", "nat", "-D", "POSTROUTING"}, all[0].Spec...)...)
	sh(t, ns, "iptables", "-t", "nat", "-F", MasqChain)
	sh(t, ns, "iptables", "-t", "nat", "-X", MasqChain)
	resync(true)
}

// TestIPTablesSetupRemovesPreviousNetwork starts on a host that holds
// flanneld's rules for another network and subnet (those of the fixtures'
// dualstack/vxlan run, 10.5.0.0/16 and 10.5.77.0/24), an older flanneld's
// rule written straight into POSTROUTING, and a rule of someone else's:
// after Setup only the new network's rules and the foreign one are left.
// With masquerading then switched off, its chain goes too.
func TestIPTablesSetupRemovesPreviousNetwork(t *testing.T) {
	needTool(t, "iptables", "iptables")
	ns := netnsHosts(t, 1)[0]
	shIn(t, ns, golden(t, "flannel-v0.28.9-dualstack-vxlan-iptables-save-h1.txt"), "iptables-restore")
	foreign := "-A POSTROUTING -s 192.0.2.0/24 -j MASQUERADE"
	sh(t, ns, "iptables", "-t", "nat", "-A", "POSTROUTING", "-s", "10.5.0.0/16", "-d", "10.5.0.0/16", "-m", "comment", "--comment", masqComment, "-j", "RETURN")
	sh(t, ns, append([]string{"iptables", "-t", "nat"}, strings.Fields(foreign)...)...)

	var m Manager
	in(t, ns, func() (err error) {
		if m, err = newManager(IPTables); err != nil {
			return err
		}
		return m.Setup(bg, Config{
			Network: kubeNetwork, Subnet: kubeSubnet,
			PrevNetwork: netip.MustParsePrefix("10.5.0.0/16"), PrevSubnet: netip.MustParsePrefix("10.5.77.0/24"),
			Masquerade: true, Forward: true,
		})
	})
	// The foreign rule keeps its place; flanneld's jump is appended
	// after it, as flanneld appends it.
	jump := `-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG`
	want := strings.Replace(stripComments(golden(t, "flannel-v0.28.9-kube-vxlan-iptables-save-h1.txt")), jump, foreign+"\n"+jump, 1)
	if got := save(t, ns, "iptables-save"); got != want {
		t.Fatalf("after Setup:\n%s\nwant:\n%s", got, want)
	}

	in(t, ns, func() error {
		return m.Setup(bg, Config{Network: kubeNetwork, Subnet: kubeSubnet, Forward: true})
	})
	got := save(t, ns, "iptables-save")
	if strings.Contains(got, masqComment) || strings.Contains(got, MasqChain) || !strings.Contains(got, foreign) || !strings.Contains(got, ForwardChain) {
		t.Fatalf("after Setup without --ip-masq:\n%s\nwant the forward rules and the foreign rule only", got)
	}
}
