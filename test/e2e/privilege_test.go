package e2e

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/bench/harness"
	"github.com/weft-net/weft/bench/lab"
)

// onlyCaps runs argv with exactly caps (e.g. "net_admin,net_raw") in its
// bounding, inheritable, ambient, permitted and effective sets.
func onlyCaps(caps string, argv ...string) []string {
	set := "-all"
	if caps != "" {
		set = "-all,+" + strings.ReplaceAll(caps, ",", ",+")
	}
	return append([]string{"setpriv", "--inh-caps=" + set, "--ambient-caps=" + set, "--bounding-set=" + set, "--"}, argv...)
}

// TestLeastPrivilege: weft run needs CAP_NET_ADMIN and CAP_NET_RAW and
// nothing else. With only those it leases, forwards and answers on its
// debug socket (mode 0600); with none it fails at once. Asked for realtime
// loops without CAP_SYS_NICE, it forwards at normal priority and says why.
func TestLeastPrivilege(t *testing.T) {
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Fatal("setpriv (util-linux) is needed:", err)
	}
	f := newFLab(t, 2, udpNetconf)
	h1, h2 := f.Lab.Host(1), f.Lab.Host(2)
	argv := func(h *lab.Host) []string {
		return []string{f.Binary, "run", "--etcd-endpoints=" + harness.EtcdEndpoint(), "--iface=" + h.Underlay,
			"--subnet-file=" + harness.SubnetFile(h), "--debug-socket=" + harness.DebugSocket(h)}
	}

	// No capabilities: refused, with nothing left behind.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := f.Lab.ExecContext(ctx, h1.Name, onlyCaps("", argv(h1)...)...)
	if err == nil || ctx.Err() != nil {
		t.Fatalf("weft run with no capabilities did not fail (%v):\n%s", err, out)
	}
	if left := leftovers(f.Lab, h1.Name); len(left) > 0 {
		t.Errorf("a start without capabilities left: %v", left)
	}

	// CAP_NET_ADMIN and CAP_NET_RAW only.
	p, err := f.Lab.Start(h1.Name, "weft-1", onlyCaps("net_admin,net_raw", append(argv(h1), "--realtime-priority=1")...)...)
	if err != nil {
		t.Fatal(err)
	}
	f.Runs[0] = p
	f.start(2)
	wctx, wcancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer wcancel()
	if err := f.WaitSubnets(wctx); err != nil {
		t.Fatal(err)
	}
	if eff := procStatus(p.Pid(), "CapEff"); eff != "0000000000003000" {
		t.Errorf("weft's effective capabilities are %s, want exactly CAP_NET_ADMIN|CAP_NET_RAW (0000000000003000)", eff)
	}
	for _, c := range [][2]*lab.Host{{h1, h2}, {h2, h1}} {
		if _, err := harness.WaitPath(context.Background(), c[0].Pod, c[1].PodIP, 20*time.Second); err != nil {
			t.Fatalf("%s -> %s with weft on h1 under least privilege: %v", c[0].Pod, c[1].PodIP, err)
		}
	}
	if u, ok := f.udpStats(1); !ok {
		t.Error("weft stats does not answer from the least-privilege engine")
	} else if e := u.Engine; e.RealtimeLoops != 0 || !strings.Contains(e.RealtimeError, "operation not permitted") {
		t.Errorf("--realtime-priority without CAP_SYS_NICE: %d realtime loops, error %q; want 0 and EPERM", e.RealtimeLoops, e.RealtimeError)
	}
	if logs := f.Lab.Logs(); !strings.Contains(logs, "forwarding loops stay at normal priority") {
		t.Errorf("no warning that the loops stay at normal priority in the log:\n%s", logs)
	}
	st, err := os.Stat(harness.DebugSocket(h1))
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode()&os.ModeSocket == 0 || st.Mode().Perm() != 0o600 {
		t.Errorf("debug socket mode %v, want a socket with 0600", st.Mode())
	}
	if out := f.exec(h1.Name, "iptables-save"); !strings.Contains(out, "FLANNEL-FWD") {
		t.Errorf("forward rules not installed under least privilege:\n%s", out)
	}
	figure(t, "weft run with only CAP_NET_ADMIN+CAP_NET_RAW (CapEff %s): leased, forwarded both ways, iptables rules in place; with none: refused", procStatus(p.Pid(), "CapEff"))
	f.stopAndClean()
}
