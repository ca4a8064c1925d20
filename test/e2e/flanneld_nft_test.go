package e2e

import (
	"strings"
	"testing"

	"github.com/weft-net/weft/bench/harness"
	"github.com/weft-net/weft/bench/lab"
)

// TestFlanneldNFTables: with "EnableNFTables": true, --ip-masq and the
// forward rules, a real flanneld v0.28.9 and weft make the same nftables
// tables (each host's own subnet aside; the firewall package's tests
// compare with a transcription of flanneld's source, this with flanneld
// itself), and no iptables chain. The flanneld host then moves to weft:
// weft takes flanneld's tables over unchanged, the pods still talk, and
// weft cleanup leaves no table behind.
func TestFlanneldNFTables(t *testing.T) {
	flanneld := flanneldBinary(t)
	k := newKClusterOpts(t, lab.Options{Hosts: 2},
		`{"Network":"10.5.0.0/16","SubnetLen":24,"EnableNFTables":true,"Backend":{"Type":"vxlan"}}`, nil)
	k.Flanneld = flanneld
	k.start([]string{"--ip-masq"}, 1)
	if err := k.StartFlanneld(k.Lab.Host(2), "--ip-masq", "--iptables-forward-rules=true"); err != nil {
		t.Fatal(err)
	}
	k.waitSubnets()
	// tables lists host i's flannel tables with its own subnet as SUBNET.
	tables := func(i int) string {
		t.Helper()
		out := k.sh(i, "nft", "list", "table", "ip", "flannel-ipv4") + k.sh(i, "nft", "list", "table", "ip6", "flannel-ipv6")
		return strings.ReplaceAll(out, k.Envs[i-1].Subnet.String(), "SUBNET")
	}
	want := tables(2) // flanneld's
	if !strings.Contains(want, "masquerade") || !strings.Contains(want, "10.5.0.0/16") {
		t.Fatalf("flanneld's tables have no masquerade rule for the network:\n%s", want)
	}
	if got := tables(1); got != want {
		t.Errorf("weft's nftables tables:\n%s\nflanneld's:\n%s", got, want)
	}
	for i := 1; i <= 2; i++ {
		if fw := k.sh(i, "iptables-save"); strings.Contains(fw, "FLANNEL") {
			t.Errorf("h%d has iptables chains in nftables mode:\n%s", i, fw)
		}
	}
	k.ping(1, 2)
	k.ping(2, 1)

	// h2 moves from flanneld to weft.
	p := k.Runs[1]
	if p.Exited() {
		t.Fatalf("flanneld exited:\n%s", p.Log())
	}
	p.Stop()
	p.Wait()
	k.Runs[1] = nil
	subnet := k.Envs[1].Subnet
	k.start([]string{"--ip-masq"}, 2)
	if k.Envs[1].Subnet != subnet {
		t.Fatalf("h2's subnet moved %s -> %s", subnet, k.Envs[1].Subnet)
	}
	if got := tables(2); got != want {
		t.Errorf("h2's tables after moving to weft:\n%s\nflanneld's were:\n%s", got, want)
	}
	k.ping(1, 2)
	k.ping(2, 1)
	k.tcp(1, 2, 1<<20)

	k.stop(1, 2)
	for i := 1; i <= 2; i++ {
		k.sh(i, k.Binary, "cleanup", "--debug-socket", harness.DebugSocket(k.Lab.Host(i)))
		if nft := k.sh(i, "nft", "list", "tables"); strings.Contains(nft, "flannel") {
			t.Errorf("h%d after weft cleanup:\n%s", i, nft)
		}
	}
}
