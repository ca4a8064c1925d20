package daemon

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/weft-net/weft/lease"
)

// Without br_netfilter, where flanneld refuses to start in iptables
// mode, weft warns once, naming the module, what bypasses iptables and
// the fix; with it loaded, it says nothing.
func TestWarnBridgeNetfilter(t *testing.T) {
	proc := t.TempDir()
	var logged strings.Builder
	log := slog.New(slog.NewTextHandler(&logged, nil))
	cfg := &lease.Config{EnableIPv4: true}
	warnBridgeNetfilter(proc, cfg, log)
	for _, want := range []string{"level=WARN", "br_netfilter is not loaded", "bypasses iptables", "modprobe br_netfilter", "bridge-nf-call-iptables"} {
		if !strings.Contains(logged.String(), want) {
			t.Errorf("the warning lacks %q: %s", want, logged.String())
		}
	}
	if n := strings.Count(logged.String(), "\n"); n != 1 {
		t.Errorf("%d lines, want one warning: %s", n, logged.String())
	}

	bridge := filepath.Join(proc, "sys/net/bridge")
	if err := os.MkdirAll(bridge, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bridge, "bridge-nf-call-iptables"), []byte("1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	logged.Reset()
	warnBridgeNetfilter(proc, cfg, log)
	if logged.Len() != 0 {
		t.Errorf("br_netfilter loaded, yet: %s", logged.String())
	}
}
