package lease

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// FuzzParseConfig: any bytes give either a *ConfigError that names a key
// flanneld's config has (or none, for JSON that is not an object), or a
// config every later step relies on: an IPv4 network, a subnet length in
// range, SubnetMin <= SubnetMax both inside the network on subnet
// boundaries, a backend weft has, and room for at least one subnet.
func FuzzParseConfig(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join("testdata", "config-*.json"))
	for _, name := range files {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	keys := []string{"", "Network", "SubnetLen", "SubnetMin", "SubnetMax", "Backend", "EnableIPv4", "EnableIPv6",
		"IPv6Network", "Networks", "IPv6Networks", "IPv6SubnetLen", "IPv6SubnetMin", "IPv6SubnetMax", "EnableNFTables"}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseConfig(data)
		if err != nil {
			var ce *ConfigError
			if !errors.As(err, &ce) {
				t.Fatalf("%q: error %v is not a *ConfigError", data, err)
			}
			if !slices.Contains(keys, ce.Key) && !strings.HasPrefix(ce.Key, "Backend") {
				t.Fatalf("%q: error names key %q, not one of flanneld's", data, ce.Key)
			}
			if !strings.HasPrefix(err.Error(), "network config: ") {
				t.Fatalf("%q: error %q does not say it is about the network config", data, err)
			}
			return
		}
		if !c.EnableIPv4 && !c.EnableIPv6 {
			t.Fatalf("%q: neither IPv4 nor IPv6", data)
		}
		if c.EnableIPv6 {
			checkIPv6Config(t, data, c)
		}
		if !slices.Contains(BackendTypes, c.BackendType) {
			t.Fatalf("%q: backend %q", data, c.BackendType)
		}
		if !c.EnableIPv4 {
			if c.Network.IsValid() {
				t.Fatalf("%q: IPv4 disabled but Network %v", data, c.Network)
			}
			return
		}
		if !c.Network.IsValid() || !c.Network.Addr().Is4() || c.Network != c.Network.Masked() {
			t.Fatalf("%q: Network %v", data, c.Network)
		}
		if c.SubnetLen < c.Network.Bits() || c.SubnetLen > 30 {
			t.Fatalf("%q: SubnetLen %d for %v", data, c.SubnetLen, c.Network)
		}
		lo, hi := addrU32(c.SubnetMin), addrU32(c.SubnetMax)
		mask := c.SubnetSize() - 1
		if lo > hi || lo&mask != 0 || hi&mask != 0 || !c.Network.Contains(c.SubnetMin) || !c.Network.Contains(c.SubnetMax) {
			t.Fatalf("%q: SubnetMin %v SubnetMax %v for %v/%d", data, c.SubnetMin, c.SubnetMax, c.Network, c.SubnetLen)
		}
		if !slices.Contains(BackendTypes, c.BackendType) {
			t.Fatalf("%q: backend %q", data, c.BackendType)
		}
	})
}

// checkIPv6Config: an IPv6 network, a subnet length in range, at most 2^63
// subnets, IPv6SubnetMin <= IPv6SubnetMax both inside it on subnet
// boundaries, and Subnet/Contains agreeing at both ends.
func checkIPv6Config(t *testing.T, data []byte, c *Config) {
	n := c.IPv6Network
	if !n.IsValid() || !n.Addr().Is6() || n.Addr().Is4In6() || n != n.Masked() {
		t.Fatalf("%q: IPv6Network %v", data, n)
	}
	if c.IPv6SubnetLen < n.Bits()+2 || c.IPv6SubnetLen > 126 || c.IPv6SubnetLen-n.Bits() > 63 {
		t.Fatalf("%q: IPv6SubnetLen %d for %v", data, c.IPv6SubnetLen, n)
	}
	lo, hi := netip.PrefixFrom(c.IPv6SubnetMin, c.IPv6SubnetLen), netip.PrefixFrom(c.IPv6SubnetMax, c.IPv6SubnetLen)
	if c.IPv6SubnetMin.Compare(c.IPv6SubnetMax) > 0 || lo.Masked() != lo || hi.Masked() != hi || !n.Contains(lo.Addr()) || !n.Contains(hi.Addr()) {
		t.Fatalf("%q: IPv6SubnetMin %v IPv6SubnetMax %v for %v/%d", data, c.IPv6SubnetMin, c.IPv6SubnetMax, n, c.IPv6SubnetLen)
	}
	cnt := c.IPv6SubnetCount()
	if cnt == 0 || c.IPv6Subnet(0) != lo || c.IPv6Subnet(cnt-1) != hi || !c.ContainsIPv6(lo) || !c.ContainsIPv6(hi) {
		t.Fatalf("%q: %d subnets from %v to %v", data, cnt, c.IPv6Subnet(0), c.IPv6Subnet(cnt-1))
	}
}
