package lease

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
)

// The dual-stack and IPv6-only recordings of flanneld v0.28.9: configs
// parse with its defaults ("Picking ipv6 subnet in range fd00:10:5:1::
// ... fd00:10:5:ff::"), leases round-trip byte for byte, subnet files are
// written byte for byte.
func TestDualStackFixtures(t *testing.T) {
	read := func(name string) []byte {
		b, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for _, name := range []string{"config-dualstack-vxlan.json", "config-dualstack-host-gw.json", "config-ipv6only-vxlan.json"} {
		c, err := ParseConfig(read(name))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !c.EnableIPv6 || c.IPv6Network != netip.MustParsePrefix("fd00:10:5::/56") || c.IPv6SubnetLen != 64 ||
			c.IPv6SubnetMin != netip.MustParseAddr("fd00:10:5:1::") || c.IPv6SubnetMax != netip.MustParseAddr("fd00:10:5:ff::") ||
			c.IPv6SubnetCount() != 255 || c.IPv6Subnet(0x20) != netip.MustParsePrefix("fd00:10:5:21::/64") {
			t.Errorf("%s: %+v", name, c)
		}
		if v4 := name != "config-ipv6only-vxlan.json"; c.EnableIPv4 != v4 || c.Network.IsValid() != v4 {
			t.Errorf("%s: EnableIPv4 %v, Network %v", name, c.EnableIPv4, c.Network)
		}
	}
	for _, name := range []string{"lease-dualstack-vxlan-10.5.77.0-24.json", "lease-dualstack-host-gw-h1.json", "lease-ipv6only-vxlan-h2.json"} {
		in := read(name)
		var a Attrs
		if err := json.Unmarshal(in, &a); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !a.PublicIPv6.IsValid() {
			t.Errorf("%s: no PublicIPv6: %+v", name, a)
		}
		if out, err := json.Marshal(a); err != nil || !bytes.Equal(out, in) {
			t.Errorf("%s: written back as\n%s (%v)\nwant\n%s", name, out, err, in)
		}
	}
	for _, tt := range []struct {
		name string
		env  SubnetEnv
	}{
		{"subnet-dualstack-vxlan-h1.env", SubnetEnv{Network: netip.MustParsePrefix("10.5.0.0/16"), Subnet: netip.MustParsePrefix("10.5.77.0/24"),
			IPv6Network: netip.MustParsePrefix("fd00:10:5::/56"), IPv6Subnet: netip.MustParsePrefix("fd00:10:5:21::/64"), MTU: 1450, IPMasq: true}},
		{"subnet-ipv6only-vxlan-h1.env", SubnetEnv{
			IPv6Network: netip.MustParsePrefix("fd00:10:5::/56"), IPv6Subnet: netip.MustParsePrefix("fd00:10:5:12::/64"), MTU: 1450, IPMasq: true}},
	} {
		out, err := tt.env.Bytes()
		if want := read(tt.name); err != nil || !bytes.Equal(out, want) {
			t.Errorf("%s: wrote\n%s (%v)\nwant\n%s", tt.name, out, err, want)
		}
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "s.env"), out, 0o644); err != nil {
			t.Fatal(err)
		}
		v4, v6, err := ReadSubnetFile(filepath.Join(dir, "s.env"))
		if err != nil || v4 != tt.env.Subnet || v6 != tt.env.IPv6Subnet {
			t.Errorf("%s: read back %v %v %v", tt.name, v4, v6, err)
		}
	}
	l := Lease{Subnet: netip.MustParsePrefix("10.5.77.0/24"), IPv6Subnet: netip.MustParsePrefix("fd00:10:5:21::/64")}
	if l.Key() != "10.5.77.0-24&fd00:10:5:21::-64" {
		t.Errorf("key %q", l.Key())
	}
	if l := (Lease{IPv6Subnet: netip.MustParsePrefix("fd00:10:5:12::/64")}); l.Key() != "0.0.0.0-0&fd00:10:5:12::-64" {
		t.Errorf("IPv6-only key %q", l.Key())
	}
}

// Public IPv6 addresses other hosts cannot send to are refused.
func TestCheckPublicIPv6(t *testing.T) {
	for _, s := range []string{"::", "::1", "::ffff:192.0.2.1", "fe80::1", "ff02::1", "192.0.2.1"} {
		if err := CheckPublicIPv6(netip.MustParseAddr(s)); err == nil {
			t.Errorf("%s accepted", s)
		}
	}
	for _, s := range []string{"2001:db8::1", "fd00::1", "2a00:1450::1"} {
		if err := CheckPublicIPv6(netip.MustParseAddr(s)); err != nil {
			t.Errorf("%s: %v", s, err)
		}
	}
}
