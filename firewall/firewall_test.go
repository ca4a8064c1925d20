package firewall

import (
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/coreos/go-iptables/iptables"

	"github.com/weft-net/weft/bench/lab"
	"github.com/weft-net/weft/bench/lab/labtest"
)

var (
	network = netip.MustParsePrefix("10.5.0.0/16")
	subnet  = netip.MustParsePrefix("10.5.42.0/24")
)

// TestMasqRulesAreFlanneld's pins the rules to flanneld v0.28's text.
func TestMasqRulesAreFlanneld(t *testing.T) {
	var got []string
	for _, r := range MasqRules(network, subnet, true) {
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

// TestEnsureRepairsAndCleanupRemoves runs in a fresh namespace: install,
// delete a rule by hand, see it restored, clean up, see nothing left.
func TestEnsureRepairsAndCleanupRemoves(t *testing.T) {
	l := labtest.New(t, lab.Options{Hosts: 1})
	// fn runs on another goroutine (locked to a thread in the namespace):
	// it reports failures by returning them, never with t.Fatal.
	err := lab.InNamespace(l.Hosts[0].Name, func() error {
		m, err := New(slog.New(slog.DiscardHandler))
		if err != nil {
			return err
		}
		m.Add(MasqRules(network, subnet, m.HasRandomFully()))
		m.Add(ForwardRules(network))
		if repaired, err := m.Ensure(); err != nil || !repaired {
			return fmt.Errorf("first Ensure: repaired %v, %v", repaired, err)
		}
		if repaired, err := m.Ensure(); err != nil || repaired {
			return fmt.Errorf("second Ensure: repaired %v, %v; want nothing to do", repaired, err)
		}
		ipt, _ := iptables.New()
		victim := m.rules[3]
		if err := ipt.Delete(victim.Table, victim.Chain, victim.Spec...); err != nil {
			return err
		}
		if repaired, err := m.Ensure(); err != nil || !repaired {
			return fmt.Errorf("Ensure after a deletion: repaired %v, %v", repaired, err)
		}
		if ok, _ := ipt.Exists(victim.Table, victim.Chain, victim.Spec...); !ok {
			return fmt.Errorf("deleted rule not restored")
		}
		if err := Cleanup(); err != nil {
			return err
		}
		for _, c := range [][2]string{{"nat", MasqChain}, {"filter", ForwardChain}} {
			if ok, _ := ipt.ChainExists(c[0], c[1]); ok {
				t.Errorf("chain %s/%s left after Cleanup", c[0], c[1])
			}
		}
		for _, c := range [][2]string{{"nat", "POSTROUTING"}, {"filter", "FORWARD"}} {
			rules, _ := ipt.List(c[0], c[1])
			for _, r := range rules {
				if strings.Contains(r, "flanneld") {
					t.Errorf("rule left after Cleanup: %s", r)
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
