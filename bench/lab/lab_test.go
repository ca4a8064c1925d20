package lab_test

import (
	"context"
	"net/netip"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/weft-net/weft/bench/lab"
	"github.com/weft-net/weft/bench/lab/labtest"
)

func ping(t *testing.T, ns string, dst netip.Addr) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := lab.Ping(ctx, ns, dst, 2, 50*time.Millisecond, 2*time.Second)
	if err != nil {
		t.Fatalf("ping %s from %s: %v", dst, ns, err)
	}
	if r.Received != 2 {
		t.Fatalf("ping %s from %s: %d of %d replies", dst, ns, r.Received, r.Sent)
	}
}

// leftovers lists namespaces, root links and registrations of prefix.
func leftovers(t *testing.T, prefix string) []string {
	t.Helper()
	var left []string
	ents, _ := os.ReadDir("/run/netns")
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), prefix+"-") {
			left = append(left, "netns "+e.Name())
		}
	}
	links, err := netlink.LinkList()
	if err != nil {
		t.Fatalf("LinkList: %v", err)
	}
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, prefix) {
			left = append(left, "link "+l.Attrs().Name)
		}
	}
	if _, err := os.Stat("/run/weft-lab/" + prefix); err == nil {
		left = append(left, "registration "+prefix)
	}
	return left
}

func TestThreeHosts(t *testing.T) {
	l := labtest.New(t, lab.Options{Hosts: 3})
	if len(l.Hosts) != 3 || !lab.GeneratedPrefix.MatchString(l.Prefix) {
		t.Fatalf("hosts %d prefix %q", len(l.Hosts), l.Prefix)
	}
	for i, h := range l.Hosts {
		want := netip.AddrFrom4([4]byte{192, 0, 2, byte(i + 2)})
		if h.IP != want || h.Index != i+1 || l.Host(i+1) != h {
			t.Fatalf("host %d: IP %s index %d", i, h.IP, h.Index)
		}
		if len(h.Underlay) > 15 || len(h.PodVeth) > 15 {
			t.Fatalf("link names too long: %q %q", h.Underlay, h.PodVeth)
		}
		if err := h.AttachPod(netip.MustParsePrefix("10.99." + string(rune('1'+i)) + ".0/24")); err != nil {
			t.Fatal(err)
		}
		if st, err := os.Stat(h.Dir); err != nil || !st.IsDir() {
			t.Fatalf("host dir %s: %v", h.Dir, err)
		}
	}
	if got := l.Host(2).PodIP; got != netip.MustParseAddr("10.99.2.2") {
		t.Fatalf("PodIP = %s", got)
	}
	// Underlay: every host reaches every other host and the switch.
	for _, a := range l.Hosts {
		for _, b := range l.Hosts {
			if a != b {
				ping(t, a.Name, b.IP)
			}
		}
		ping(t, a.Name, lab.SwitchIP)
	}
	// Pod <-> its host, and the pod's default route leads to the host's
	// underlay address.
	for _, h := range l.Hosts {
		gw := h.PodSubnet.Addr().Next()
		ping(t, h.Pod, gw)
		ping(t, h.Name, h.PodIP)
		ping(t, h.Pod, h.IP)
	}
	// Pods of different hosts are not connected without an overlay.
	ctx := context.Background()
	if _, err := lab.Ping(ctx, l.Host(1).Pod, l.Host(2).PodIP, 1, 0, 200*time.Millisecond); err == nil {
		t.Fatal("pod 1 reached pod 2 with no overlay")
	}
	out, err := l.Exec(l.Host(1).Name, "cat", "/proc/sys/net/ipv4/ip_forward")
	if err != nil || strings.TrimSpace(string(out)) != "1" {
		t.Fatalf("ip_forward in host ns = %q, %v", out, err)
	}
	if err := h1MTU(l); err != nil {
		t.Fatal(err)
	}
}

func h1MTU(l *lab.Lab) error {
	h := l.Host(1)
	if err := h.SetPodMTU(1400); err != nil {
		return err
	}
	out, err := l.Exec(h.Pod, "ip", "-o", "link", "show", h.PodPeer)
	if err != nil {
		return err
	}
	if !strings.Contains(string(out), "mtu 1400") {
		return &mismatch{string(out)}
	}
	return nil
}

type mismatch struct{ s string }

func (m *mismatch) Error() string { return "pod MTU not set: " + m.s }

func TestProcesses(t *testing.T) {
	l := labtest.New(t, lab.Options{Hosts: 1})
	h := l.Host(1)
	p, err := l.Start(h.Name, "echo", "sh", "-c", "echo hello from $(ip -o -4 addr show "+h.Underlay+" | wc -l) && exit 3")
	if err != nil {
		t.Fatal(err)
	}
	err = p.Wait()
	var ee interface{ ExitCode() int }
	if err == nil || !asExit(err, &ee) || ee.ExitCode() != 3 {
		t.Fatalf("Wait = %v, want exit status 3", err)
	}
	if !strings.Contains(p.Log(), "hello from 1") {
		t.Fatalf("log %q lacks output run in the host namespace", p.Log())
	}
	long, err := l.Start(h.Pod, "sleeper", "sleep", "600")
	if err != nil {
		t.Fatal(err)
	}
	if err := long.Stop(); err != nil {
		t.Fatal(err)
	}
	if !long.Exited() {
		t.Fatal("Stop returned with the process running")
	}
	// A process still running at Close is killed by it.
	stay, err := l.Start(h.Name, "stay", "sleep", "600")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(l.Logs(), "stay in "+h.Name) {
		t.Fatalf("Logs lacks the running process:\n%s", l.Logs())
	}
	if _, err := l.Exec(h.Name, "false"); err == nil {
		t.Fatal("Exec of false succeeded")
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if !stay.Exited() || syscall.Kill(stay.Pid(), 0) == nil {
		t.Fatal("Close left a process running")
	}
	if left := leftovers(t, l.Prefix); len(left) > 0 {
		t.Fatalf("Close left %v", left)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := l.Start(h.Name, "late", "true"); err == nil {
		t.Fatal("Start after Close succeeded")
	}
}

func asExit(err error, target *interface{ ExitCode() int }) bool {
	e, ok := err.(interface{ ExitCode() int })
	if ok {
		*target = e
	}
	return ok
}

func TestCloseRemovesEverything(t *testing.T) {
	labtest.RequireRoot(t)
	l, err := lab.New(lab.Options{Hosts: 3})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	dir := l.Dir
	if len(leftovers(t, l.Prefix)) == 0 {
		t.Fatal("lab has no namespaces before Close")
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if left := leftovers(t, l.Prefix); len(left) > 0 {
		t.Fatalf("Close left %v", left)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("generated state dir %s still there: %v", dir, err)
	}
}

func TestCleanupAfterCrash(t *testing.T) {
	labtest.RequireRoot(t)
	l, err := lab.New(lab.Options{Hosts: 2, KeepDir: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close(); os.RemoveAll(l.Dir) })
	if _, err := l.Start(l.Host(1).Name, "orphan", "sleep", "600"); err != nil {
		t.Fatal(err)
	}
	// Another run's lab of a live owner (this process) must survive
	// Cleanup(""): only dead owners' labs are leftovers.
	removed, err := lab.Cleanup("")
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range removed {
		if strings.HasPrefix(n, l.Prefix+"-") {
			t.Fatalf("Cleanup(\"\") removed %s of a live lab", n)
		}
	}
	// As if the owner had crashed: clean up by prefix.
	removed, err = lab.Cleanup(l.Prefix)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{l.Prefix + "-h1", l.Prefix + "-h2", l.Prefix + "-p1", l.Prefix + "-p2", l.Prefix + "-sw"}
	slices.Sort(removed)
	if !slices.Equal(removed, want) {
		t.Fatalf("Cleanup removed %v, want %v", removed, want)
	}
	if left := leftovers(t, l.Prefix); len(left) > 0 {
		t.Fatalf("Cleanup left %v", left)
	}
}

func TestBadOptions(t *testing.T) {
	labtest.RequireRoot(t)
	for _, o := range []lab.Options{{Hosts: -1}, {Hosts: lab.MaxHosts + 1}, {Prefix: "Bad-Prefix"}, {Prefix: "toolongprefix"}, {UnderlayMTU: 100}} {
		if l, err := lab.New(o); err == nil {
			l.Close()
			t.Errorf("New(%+v) succeeded", o)
		}
	}
	// A prefix already in use is refused and the existing lab untouched.
	l := labtest.New(t, lab.Options{Prefix: "wlt" + strings.ToLower(strings.TrimPrefix(t.Name(), "Test"))[:3]})
	if _, err := lab.New(lab.Options{Prefix: l.Prefix}); err == nil {
		t.Fatal("second lab with the same prefix succeeded")
	}
	ping(t, l.Host(1).Name, lab.SwitchIP)
}

// TestIPv6 builds a lab with IPv6: hosts reach each other and the switch
// over the IPv6 underlay, a pod reaches its host over IPv6.
func TestIPv6(t *testing.T) {
	l, err := lab.New(lab.Options{Hosts: 2, IPv6: true})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	h1, h2 := l.Host(1), l.Host(2)
	if h1.IP6 != netip.MustParseAddr("2001:db8::2") || h2.IP6 != netip.MustParseAddr("2001:db8::3") {
		t.Fatalf("IPv6 underlay addresses %s %s", h1.IP6, h2.IP6)
	}
	ping(t, h1.Name, h2.IP6)
	ping(t, h2.Name, lab.SwitchIP6)
	ping(t, h1.Name, h2.IP) // IPv4 still works
	if err := h1.AttachPod6(netip.MustParsePrefix("fd00:10:5:1::/64")); err != nil {
		t.Fatal(err)
	}
	ping(t, h1.Pod, netip.MustParseAddr("fd00:10:5:1::1"))
	if err := h1.AttachPod6(netip.MustParsePrefix("10.5.1.0/24")); err == nil {
		t.Error("AttachPod6 took an IPv4 subnet")
	}
}
