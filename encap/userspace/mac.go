package userspace

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/google/renameio/v2"

	"github.com/weft-net/weft/encap/vxlan"
)

// VtepMACFile is where userspace vxlan keeps its VtepMAC across restarts,
// in dir (next to the subnet file, which flanneld also rereads on restart
// to keep its lease). The kernel's device keeps flanneld's MAC the same
// way until a reboot, which /run/flannel does not survive either.
func VtepMACFile(dir string, vni int) string {
	return filepath.Join(dir, fmt.Sprintf("weft-vxlan.%d.mac", vni))
}

// VtepMACFile6 is VtepMACFile for the IPv6 VtepMAC (BackendV6Data) of a
// dual-stack network.
func VtepMACFile6(dir string, vni int) string {
	return filepath.Join(dir, fmt.Sprintf("weft-vxlan-v6.%d.mac", vni))
}

// loadVtepMAC reads the kept MAC or makes and keeps a new one (random,
// locally administered, unicast, as the kernel's and weft's vxlan use).
// A damaged file is refused by name rather than replaced: a new MAC would
// cut the host off from peers until they saw its new lease.
func loadVtepMAC(path string) (net.HardwareAddr, bool, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		mac, perr := net.ParseMAC(strings.TrimSpace(string(b)))
		if perr == nil && len(mac) == 6 && mac[0]&1 == 0 {
			return mac, false, nil
		}
		return nil, false, fmt.Errorf("vxlan: %s does not hold a unicast Ethernet address (remove it to get a new VtepMAC): %q", path, b)
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, false, fmt.Errorf("vxlan: VtepMAC file: %w", err)
	}
	mac, err := vxlan.RandomMAC()
	if err != nil {
		return nil, false, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, false, fmt.Errorf("vxlan: VtepMAC file: %w", err)
	}
	if err := renameio.WriteFile(path, []byte(mac.String()+"\n"), 0o644); err != nil {
		return nil, false, fmt.Errorf("vxlan: VtepMAC file: %w", err)
	}
	return mac, true, nil
}
