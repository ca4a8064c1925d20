package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/bench/harness"
	"github.com/weft-net/weft/bench/lab"
	"github.com/weft-net/weft/bench/traffic"
)

// autoNetconf is an auto cluster's network config.
const autoNetconf = `{"Network":"10.7.0.0/16","SubnetLen":24,"Backend":{"Type":"auto"}}`

// newAutoCluster is three hosts: h1 and h2 on one segment, h3 behind a
// router on another.
func newAutoCluster(t *testing.T) *kcluster {
	return newKCluster(t, 3, autoNetconf, func(l *lab.Lab) {
		if err := l.MoveBehindRouter(l.Host(3)); err != nil {
			t.Fatal(err)
		}
	})
}

// converged waits until every running host in hosts runs backend (and
// its lease says so, so flanneld-style watchers follow).
func (k *kcluster) converged(backend string, hosts ...int) {
	k.t.Helper()
	for _, i := range hosts {
		k.eventually(fmt.Sprintf("h%d on %s", i, backend), 40*time.Second, func() (bool, string) {
			s := k.stats(i)
			v := k.leaseValue(i)
			return s.Backend == backend && s.Ready && strings.Contains(v, `"BackendType":"`+backend+`"`),
				fmt.Sprintf("status: %s (%s), ready %v, moves %d; lease %s", s.Backend, s.Why, s.Ready, s.Moves, v)
		})
	}
}

// allPairs pings and sends a verified TCP stream between the pods of
// every ordered pair of hosts.
func (k *kcluster) allPairs(hosts ...int) {
	k.t.Helper()
	for _, a := range hosts {
		for _, b := range hosts {
			if a != b {
				k.ping(a, b)
				k.tcp(a, b, 2<<20)
			}
		}
	}
}

// tcpAcross starts a verified TCP stream of duration d from host a's pod
// to host b's and returns where its outcome will come.
func (k *kcluster) tcpAcross(a, b int, d time.Duration) <-chan error {
	k.t.Helper()
	hb := k.Lab.Host(b)
	srv, err := k.Lab.Start(hb.Pod, fmt.Sprintf("traffic-across-h%d", b), k.Binary, "traffic", "server")
	if err != nil {
		k.t.Fatal(err)
	}
	k.t.Cleanup(func() { srv.Stop() })
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), d+30*time.Second)
		defer cancel()
		out, err := k.Lab.ExecContext(ctx, k.Lab.Host(a).Pod, k.Binary, "traffic", "tcp", "--to", hb.PodIP.String(),
			"--duration", d.String(), "--verify", "sha256")
		var res traffic.Result
		switch {
		case err != nil:
			done <- fmt.Errorf("h%d -> h%d: %v\n%s", a, b, err, out)
		case json.Unmarshal(out, &res) != nil || res.Bytes == 0:
			done <- fmt.Errorf("h%d -> h%d: nothing verified: %s", a, b, out)
		default:
			done <- nil
		}
	}()
	return done
}

// cleanedUp stops every host, runs weft cleanup on each and checks that
// nothing is left: no tagged route, no flannel device (its neighbours and
// FDB entries go with it), no firewall chain or table. The forward rules
// (--iptables-forward-rules, on by default) were there until then.
func (k *kcluster) cleanedUp(hosts ...int) {
	k.t.Helper()
	k.stop(hosts...)
	for _, i := range hosts {
		if fw := k.sh(i, "iptables-save"); !strings.Contains(fw, "FLANNEL-FWD") {
			k.t.Errorf("h%d ran without flanneld's forward rules:\n%s", i, fw)
		}
		k.sh(i, k.Binary, "cleanup", "--debug-socket", harness.DebugSocket(k.Lab.Host(i)))
		r, l := k.sh(i, "ip", "route"), k.sh(i, "ip", "link")
		fw, nft := k.sh(i, "iptables-save"), k.sh(i, "nft", "list", "tables")
		if strings.Contains(r, "proto 87") || strings.Contains(l, "flannel") || strings.Contains(fw, "FLANNEL") || strings.Contains(nft, "flannel") {
			k.t.Errorf("h%d after weft cleanup:\n%s%s%s%s", i, r, l, fw, nft)
		}
	}
}

// leftovers describes what host i still has of a backend it moved away
// from ("": nothing): with vxlan, host-gw's routes (tagged, through the
// underlay); without, a flannel device.
func (k *kcluster) leftovers(i int, vxlan bool) string {
	k.t.Helper()
	r, l := k.sh(i, "ip", "route"), k.sh(i, "ip", "link")
	var bad []string
	for _, line := range lines(r) {
		if strings.Contains(line, "proto 87") && strings.Contains(line, "dev "+k.Lab.Host(i).Underlay) && vxlan {
			bad = append(bad, line)
		}
	}
	if !vxlan && strings.Contains(l, "flannel") {
		bad = append(bad, "a flannel device")
	}
	if strings.Contains(l, "weftprobe") {
		bad = append(bad, "a probe device")
	}
	if len(bad) == 0 {
		return ""
	}
	return strings.Join(bad, "\n") + "\n" + r + l
}

// TestKernelAutoFlatFirstThenJoinAndLeave: two hosts on one segment run
// host-gw; a host behind a router joins and every host moves to vxlan (a
// downgrade, live, leases changed in place, host-gw's routes gone); it
// leaves and every host moves back to host-gw (vxlan devices gone). Pods
// keep their addresses throughout.
func TestKernelAutoFlatFirstThenJoinAndLeave(t *testing.T) {
	k := newAutoCluster(t)
	k.start(nil, 1, 2)
	k.converged("host-gw", 1, 2)
	k.allPairs(1, 2)
	subnets := []string{k.Envs[0].Subnet.String(), k.Envs[1].Subnet.String()}

	// A TCP stream from h1's pod to h2's runs across the move: pods keep
	// their addresses (and their host-gw MTU: PMTU discovery copes).
	stream := k.tcpAcross(1, 2, 15*time.Second)
	k.start(nil, 3)
	k.converged("vxlan", 1, 2, 3)
	if err := <-stream; err != nil {
		t.Fatalf("TCP stream across the move: %v", err)
	}
	for _, i := range []int{1, 2} {
		s := k.stats(i)
		if s.Moves != 1 || s.LastMove == nil || s.LastMove.From != "host-gw" || s.LastMove.To != "vxlan" || !strings.Contains(s.Why, k.Lab.Host(3).IP.String()) {
			t.Fatalf("h%d: moves %d, last %+v, why %q: want one move host-gw -> vxlan naming h3's %s", i, s.Moves, s.LastMove, s.Why, k.Lab.Host(3).IP)
		}
		if s.Subnet.String() != subnets[i-1] {
			t.Fatalf("h%d's subnet moved %s -> %s", i, subnets[i-1], s.Subnet)
		}
		if bad := k.leftovers(i, true); bad != "" {
			t.Fatalf("h%d after moving to vxlan still has host-gw's state:\n%s", i, bad)
		}
		if out := k.Runs[i-1].Log(); !strings.Contains(out, "auto: moving backend") {
			t.Fatalf("h%d did not log its move:\n%s", i, out)
		}
	}
	k.allPairs(1, 2, 3)

	// h3 leaves: its lease goes; h1 and h2 are alone on their segment.
	k.stop(3)
	k.deleteLease(3)
	k.converged("host-gw", 1, 2)
	for _, i := range []int{1, 2} {
		if s := k.stats(i); s.Moves != 2 || s.LastMove.To != "host-gw" || s.MTU != k.Lab.MTU {
			t.Fatalf("h%d: moves %d, last %+v, mtu %d", i, s.Moves, s.LastMove, s.MTU)
		}
		k.eventually(fmt.Sprintf("h%d's vxlan device gone", i), 10*time.Second, func() (bool, string) {
			bad := k.leftovers(i, false)
			return bad == "", bad
		})
	}
	k.allPairs(1, 2)
	k.cleanedUp(1, 2, 3)
}

// TestKernelAutoRoutedFirst: the host behind the router starts first and
// alone (host-gw: nothing is in the way yet); the hosts of the other
// segment join and every host ends on vxlan.
func TestKernelAutoRoutedFirst(t *testing.T) {
	k := newAutoCluster(t)
	k.start(nil, 3)
	k.converged("host-gw", 3)
	k.start(nil, 1, 2)
	k.converged("vxlan", 1, 2, 3)
	if s := k.stats(3); s.Moves != 1 || s.LastMove.From != "host-gw" {
		t.Fatalf("h3: moves %d, last %+v", s.Moves, s.LastMove)
	}
	k.allPairs(1, 2, 3)
	k.cleanedUp(1, 2, 3)
}

// TestKernelAutoNoKernelVXLANFirst is the report that opened this: the
// host behind a router starts first with --no-kernel-vxlan; the others
// join. All end on vxlan, the first from userspace (one wire format with
// the kernel's), and every pair talks.
func TestKernelAutoNoKernelVXLANFirst(t *testing.T) {
	k := newAutoCluster(t)
	k.start([]string{"--no-kernel-vxlan"}, 3)
	k.start(nil, 1, 2)
	k.converged("vxlan", 1, 2, 3)
	if s := k.stats(3); !strings.Contains(s.Why, "--no-kernel-vxlan") || s.Engine == nil {
		t.Fatalf("h3 runs vxlan as %q (engine %v): want VXLAN from userspace", s.Why, s.Engine != nil)
	}
	if s := k.stats(1); s.Engine != nil {
		t.Fatalf("h1 runs vxlan from userspace (%s); want the kernel's", s.Why)
	}
	k.allPairs(1, 2, 3)
	k.cleanedUp(1, 2, 3)
}
