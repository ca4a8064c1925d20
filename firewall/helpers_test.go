package firewall

import (
	"context"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"github.com/weft-net/weft/bench/lab"
	"github.com/weft-net/weft/bench/lab/labtest"
)

// The network of the kube/ fixtures, whose iptables dumps the tests
// compare with.
var (
	kubeNetwork = netip.MustParsePrefix("10.244.0.0/16")
	kubeSubnet  = netip.MustParsePrefix("10.244.1.0/24")
)

// needTool fails under CI=true when a binary the test needs is missing
// (.ci/run installs it) and skips elsewhere.
func needTool(t *testing.T, name, pkg string) {
	t.Helper()
	if _, err := exec.LookPath(name); err == nil {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s is missing: .ci/run must install the %s package", name, pkg)
	}
	t.Skipf("%s is missing (apt-get install %s)", name, pkg)
}

// netnsHosts builds a lab of n hosts (namespaces, removed by t.Cleanup)
// and returns their namespace names.
func netnsHosts(t *testing.T, n int) []string {
	t.Helper()
	l := labtest.New(t, lab.Options{Hosts: n})
	var names []string
	for _, h := range l.Hosts {
		names = append(names, h.Name)
	}
	return names
}

// in runs fn in namespace ns; fn reports failures by returning them.
func in(t *testing.T, ns string, fn func() error) {
	t.Helper()
	if err := lab.InNamespace(ns, fn); err != nil {
		t.Fatal(err)
	}
}

// sh runs a command in namespace ns and returns its output.
func sh(t *testing.T, ns string, args ...string) string {
	t.Helper()
	out, err := exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// shIn feeds stdin to a command in namespace ns.
func shIn(t *testing.T, ns, stdin string, args ...string) {
	t.Helper()
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// save is iptables-save (or ip6tables-save) without its comment lines,
// which carry dates.
func save(t *testing.T, ns, cmd string) string {
	t.Helper()
	return stripComments(sh(t, ns, cmd))
}

// stripComments drops the dated comment lines of an iptables-save dump
// and zeroes its counters (a stray packet in the namespace counts too).
func stripComments(s string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if !strings.HasPrefix(l, "#") {
			out = append(out, counters.ReplaceAllString(l, "[0:0]"))
		}
	}
	return strings.Join(out, "\n")
}

var counters = regexp.MustCompile(`\[\d+:\d+\]$`)

func golden(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func newManager(mode Mode) (Manager, error) {
	return NewManager(mode, slog.New(slog.DiscardHandler))
}

var bg = context.Background()
