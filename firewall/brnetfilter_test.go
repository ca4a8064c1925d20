package firewall

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestCheckBridgeNetfilter(t *testing.T) {
	root := t.TempDir()
	bridge := filepath.Join(root, "sys/net/bridge")
	if err := os.MkdirAll(bridge, 0o755); err != nil {
		t.Fatal(err)
	}
	// No module: flanneld's exact message (with /proc as the root).
	err := CheckBridgeNetfilter(root, true, false)
	if !errors.Is(err, ErrNoBridgeNetfilter) || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("without the files: %v; want ErrNoBridgeNetfilter", err)
	}
	want := "Failed to check br_netfilter: stat " + root + "/sys/net/bridge/bridge-nf-call-iptables: no such file or directory"
	if err.Error() != want {
		t.Errorf("error %q, want flanneld's %q", err, want)
	}
	if err := CheckBridgeNetfilter(root, false, false); err != nil {
		t.Errorf("no family to check: %v", err)
	}

	// IPv4 loaded; IPv6 checked only when asked for.
	if err := os.WriteFile(filepath.Join(bridge, "bridge-nf-call-iptables"), []byte("1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := CheckBridgeNetfilter(root, true, false); err != nil {
		t.Errorf("with bridge-nf-call-iptables: %v", err)
	}
	err = CheckBridgeNetfilter(root, true, true)
	if !errors.Is(err, ErrNoBridgeNetfilter) || filepath.Base(err.(*BridgeNetfilterError).Err.(*os.PathError).Path) != "bridge-nf-call-ip6tables" {
		t.Errorf("dual-stack without bridge-nf-call-ip6tables: %v", err)
	}
	if err := os.WriteFile(filepath.Join(bridge, "bridge-nf-call-ip6tables"), []byte("1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := CheckBridgeNetfilter(root, true, true); err != nil {
		t.Errorf("with both files: %v", err)
	}
}
