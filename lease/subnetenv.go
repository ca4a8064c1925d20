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
	Network netip.Prefix // the cluster network, FLANNEL_NETWORK; zero on an IPv6-only network
	Subnet  netip.Prefix // this host's lease; FLANNEL_SUBNET is its first usable address
	// IPv6Network and IPv6Subnet are FLANNEL_IPV6_NETWORK and (its first
	// usable address) FLANNEL_IPV6_SUBNET; zero without IPv6.
	IPv6Network netip.Prefix
	IPv6Subnet  netip.Prefix
	MTU         int  // FLANNEL_MTU, the MTU pods should use
	IPMasq      bool // FLANNEL_IPMASQ: whether weft masquerades pod traffic
}

// Bytes renders env in flanneld's exact format (pkg/subnet
// WriteSubnetFile), each line ending in "\n", the IPv4 lines only with an
// IPv4 network and the IPv6 lines only with an IPv6 one:
//
//	FLANNEL_NETWORK=10.5.0.0/16
//	FLANNEL_SUBNET=10.5.42.1/24
//	FLANNEL_IPV6_NETWORK=fd00:10:5::/56
//	FLANNEL_IPV6_SUBNET=fd00:10:5:21::1/64
//	FLANNEL_MTU=1472
//	FLANNEL_IPMASQ=false
func (env SubnetEnv) Bytes() ([]byte, error) {
	if !env.Network.IsValid() && !env.IPv6Network.IsValid() {
		return nil, fmt.Errorf("subnet file: neither an IPv4 nor an IPv6 network")
	}
	var b bytes.Buffer
	if env.Network.IsValid() {
		if !env.Network.Addr().Is4() {
			return nil, fmt.Errorf("subnet file: network %s is not an IPv4 CIDR", env.Network)
		}
		if !env.Subnet.IsValid() || !env.Subnet.Addr().Is4() || env.Subnet.Bits() > 31 {
			return nil, fmt.Errorf("subnet file: subnet %s is not an IPv4 subnet with room for an address", env.Subnet)
		}
		fmt.Fprintf(&b, "FLANNEL_NETWORK=%s\n", env.Network.Masked())
		fmt.Fprintf(&b, "FLANNEL_SUBNET=%s\n", netip.PrefixFrom(env.Subnet.Masked().Addr().Next(), env.Subnet.Bits()))
	}
	if env.IPv6Network.IsValid() {
		if !env.IPv6Network.Addr().Is6() || env.IPv6Network.Addr().Is4In6() {
			return nil, fmt.Errorf("subnet file: IPv6 network %s is not an IPv6 CIDR", env.IPv6Network)
		}
		if !env.IPv6Subnet.IsValid() || !env.IPv6Subnet.Addr().Is6() || env.IPv6Subnet.Bits() > 127 {
			return nil, fmt.Errorf("subnet file: IPv6 subnet %s is not an IPv6 subnet with room for an address", env.IPv6Subnet)
		}
		fmt.Fprintf(&b, "FLANNEL_IPV6_NETWORK=%s\n", env.IPv6Network.Masked())
		fmt.Fprintf(&b, "FLANNEL_IPV6_SUBNET=%s\n", netip.PrefixFrom(env.IPv6Subnet.Masked().Addr().Next(), env.IPv6Subnet.Bits()))
	}
	if env.MTU <= 0 {
		return nil, fmt.Errorf("subnet file: MTU %d is not positive", env.MTU)
	}
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

// ReadSubnetFile returns the subnets named by FLANNEL_SUBNET and
// FLANNEL_IPV6_SUBNET in an existing subnet file (as networks, e.g.
// 10.5.42.0/24 for 10.5.42.1/24), which Acquire tries before picking
// random ones, as flanneld does. A missing file, or a missing line, gives
// the zero Prefix and no error.
func ReadSubnetFile(path string) (v4, v6 netip.Prefix, err error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return netip.Prefix{}, netip.Prefix{}, nil
	}
	if err != nil {
		return netip.Prefix{}, netip.Prefix{}, fmt.Errorf("subnet file: %w", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		k, v, ok := strings.Cut(strings.TrimSpace(sc.Text()), "=")
		if !ok {
			continue
		}
		k, v = strings.TrimSpace(k), strings.Trim(strings.TrimSpace(v), `"'`)
		switch k {
		case "FLANNEL_SUBNET":
			p, err := netip.ParsePrefix(v)
			if err != nil || !p.Addr().Is4() {
				return netip.Prefix{}, netip.Prefix{}, fmt.Errorf("subnet file %s: FLANNEL_SUBNET=%q is not an IPv4 CIDR", path, v)
			}
			v4 = p.Masked()
		case "FLANNEL_IPV6_SUBNET":
			p, err := netip.ParsePrefix(v)
			if err != nil || !p.Addr().Is6() || p.Addr().Is4In6() {
				return netip.Prefix{}, netip.Prefix{}, fmt.Errorf("subnet file %s: FLANNEL_IPV6_SUBNET=%q is not an IPv6 CIDR", path, v)
			}
			v6 = p.Masked()
		}
	}
	if err := sc.Err(); err != nil {
		return netip.Prefix{}, netip.Prefix{}, fmt.Errorf("subnet file %s: %w", path, err)
	}
	return v4, v6, nil
}
