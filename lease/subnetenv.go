package lease

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/google/renameio/v2"
)

// DefaultSubnetFile is flanneld's --subnet-file default, read by the CNI
// flannel plugin and container runtimes.
const DefaultSubnetFile = "/run/flannel/subnet.env"

// SubnetEnv is the content of the subnet file.
type SubnetEnv struct {
	Network netip.Prefix // the cluster network, FLANNEL_NETWORK
	Subnet  netip.Prefix // this host's lease; FLANNEL_SUBNET is its first usable address
	MTU     int          // FLANNEL_MTU, the MTU pods should use
	IPMasq  bool         // FLANNEL_IPMASQ: whether weft masquerades pod traffic
}

// Bytes renders env in flanneld's exact format: four lines, each ending
// in "\n":
//
//	FLANNEL_NETWORK=10.5.0.0/16
//	FLANNEL_SUBNET=10.5.42.1/24
//	FLANNEL_MTU=1472
//	FLANNEL_IPMASQ=false
func (env SubnetEnv) Bytes() ([]byte, error) {
	if !env.Network.IsValid() || !env.Network.Addr().Is4() {
		return nil, fmt.Errorf("subnet file: network %s is not an IPv4 CIDR", env.Network)
	}
	if !env.Subnet.IsValid() || !env.Subnet.Addr().Is4() || env.Subnet.Bits() > 31 {
		return nil, fmt.Errorf("subnet file: subnet %s is not an IPv4 subnet with room for an address", env.Subnet)
	}
	if env.MTU <= 0 {
		return nil, fmt.Errorf("subnet file: MTU %d is not positive", env.MTU)
	}
	first := netip.PrefixFrom(env.Subnet.Masked().Addr().Next(), env.Subnet.Bits())
	var b bytes.Buffer
	fmt.Fprintf(&b, "FLANNEL_NETWORK=%s\n", env.Network.Masked())
	fmt.Fprintf(&b, "FLANNEL_SUBNET=%s\n", first)
	fmt.Fprintf(&b, "FLANNEL_MTU=%d\n", env.MTU)
	fmt.Fprintf(&b, "FLANNEL_IPMASQ=%s\n", strconv.FormatBool(env.IPMasq))
	return b.Bytes(), nil
}

// WriteSubnetFile writes env to path atomically (a temporary file in the
// same directory, then rename), so a reader sees the old file or the new
// one, never half of one. The directory is created if missing.
func WriteSubnetFile(path string, env SubnetEnv) error {
	data, err := env.Bytes()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("subnet file: %w", err)
	}
	if err := renameio.WriteFile(path, data, 0o644); err != nil {
		return fmt.Errorf("subnet file: %w", err)
	}
	return nil
}

// ReadSubnetFile returns the subnet named by FLANNEL_SUBNET in an existing
// subnet file (as its network, e.g. 10.5.42.0/24 for 10.5.42.1/24), which
// Acquire tries before picking a random one, as flanneld does. A missing
// file, or one without FLANNEL_SUBNET, gives the zero Prefix and no error.
func ReadSubnetFile(path string) (netip.Prefix, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return netip.Prefix{}, nil
	}
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("subnet file: %w", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		k, v, ok := strings.Cut(strings.TrimSpace(sc.Text()), "=")
		if !ok || strings.TrimSpace(k) != "FLANNEL_SUBNET" {
			continue
		}
		v = strings.Trim(strings.TrimSpace(v), `"'`)
		p, err := netip.ParsePrefix(v)
		if err != nil || !p.Addr().Is4() {
			return netip.Prefix{}, fmt.Errorf("subnet file %s: FLANNEL_SUBNET=%q is not an IPv4 CIDR", path, v)
		}
		return p.Masked(), nil
	}
	if err := sc.Err(); err != nil {
		return netip.Prefix{}, fmt.Errorf("subnet file %s: %w", path, err)
	}
	return netip.Prefix{}, nil
}
