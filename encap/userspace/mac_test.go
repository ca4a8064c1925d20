package userspace

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The VtepMAC is made once, kept in the state directory and reused; a
// damaged file is refused by name rather than replaced, since a new MAC
// would strand the peers' entries for this host.
func TestVtepMACFile(t *testing.T) {
	path := VtepMACFile(filepath.Join(t.TempDir(), "run"), 1)
	mac, created, err := loadVtepMAC(path)
	if err != nil || !created || mac[0]&1 != 0 || mac[0]&2 == 0 {
		t.Fatalf("first: %s created %v: %v", mac, created, err)
	}
	again, created, err := loadVtepMAC(path)
	if err != nil || created || again.String() != mac.String() {
		t.Fatalf("second: %s (was %s) created %v: %v", again, mac, created, err)
	}
	os.WriteFile(path, []byte("01:00:5e:00:00:01\n"), 0o644) // multicast
	if _, _, err := loadVtepMAC(path); err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("a multicast MAC in %s: %v", path, err)
	}
}
