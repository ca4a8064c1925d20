package lease

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseConfig(t *testing.T) {
	type want struct {
		network, min, max, backend string
		subnetLen                  int
	}
	tests := []struct {
		name string
		json string
		want want
	}{
		// flannel's pkg/subnet config tests and Documentation/configuration.md.
		{"defaults, lower-case key", `{ "network": "10.3.0.0/16" }`,
			want{"10.3.0.0/16", "10.3.1.0", "10.3.255.0", "udp", 24}},
		{"overrides", `{ "Network": "10.3.0.0/16", "SubnetMin": "10.3.5.0", "SubnetMax": "10.3.8.0", "SubnetLen": 28 }`,
			want{"10.3.0.0/16", "10.3.5.0", "10.3.8.0", "udp", 28}},
		{"documented udp example", `{"Network": "10.0.0.0/8", "SubnetLen": 20, "SubnetMin": "10.10.0.0", "SubnetMax": "10.99.0.0", "Backend": {"Type": "udp", "Port": 7890}}`,
			want{"10.0.0.0/8", "10.10.0.0", "10.99.0.0", "udp", 20}},
		{"documented vxlan example", `{"Network": "10.0.0.0/8", "Backend": {"Type": "vxlan"}}`,
			want{"10.0.0.0/8", "10.0.1.0", "10.255.255.0", "vxlan", 24}},
		{"kube-flannel default", `{"Network": "10.244.0.0/16", "EnableNFTables": false, "Backend": {"Type": "vxlan"}}`,
			want{"10.244.0.0/16", "10.244.1.0", "10.244.255.0", "vxlan", 24}},
		{"/22 still gets /24", `{"Network": "10.1.0.0/22"}`,
			want{"10.1.0.0/22", "10.1.1.0", "10.1.3.0", "udp", 24}},
		{"/23 gets /25", `{"Network": "10.1.0.0/23"}`,
			want{"10.1.0.0/23", "10.1.0.128", "10.1.1.128", "udp", 25}},
		{"/28 smallest, gets /30", `{"Network": "10.1.0.0/28"}`,
			want{"10.1.0.0/28", "10.1.0.4", "10.1.0.12", "udp", 30}},
		{"host bits masked as flanneld does", `{"Network": "10.5.7.9/16"}`,
			want{"10.5.0.0/16", "10.5.1.0", "10.5.255.0", "udp", 24}},
		{"backend type lower-cased", `{"Network": "10.5.0.0/16", "Backend": {"Type": "Host-GW"}}`,
			want{"10.5.0.0/16", "10.5.1.0", "10.5.255.0", "host-gw", 24}},
		{"auto backend", `{"Network": "10.5.0.0/16", "Backend": {"Type": "auto"}}`,
			want{"10.5.0.0/16", "10.5.1.0", "10.5.255.0", "auto", 24}},
		{"EnableIPv6 false accepted", `{"Network": "10.5.0.0/16", "EnableIPv4": true, "EnableIPv6": false}`,
			want{"10.5.0.0/16", "10.5.1.0", "10.5.255.0", "udp", 24}},
		{"SubnetMin == SubnetMax", `{"Network": "10.5.0.0/16", "SubnetMin": "10.5.9.0", "SubnetMax": "10.5.9.0"}`,
			want{"10.5.0.0/16", "10.5.9.0", "10.5.9.0", "udp", 24}},
		{"SubnetLen 30 max", `{"Network": "10.5.0.0/16", "SubnetLen": 30}`,
			want{"10.5.0.0/16", "10.5.0.4", "10.5.255.252", "udp", 30}},
		{"SubnetLen prefix+2", `{"Network": "10.5.0.0/16", "SubnetLen": 18}`,
			want{"10.5.0.0/16", "10.5.64.0", "10.5.192.0", "udp", 18}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := ParseConfig([]byte(tt.json))
			if err != nil {
				t.Fatal(err)
			}
			got := want{c.Network.String(), c.SubnetMin.String(), c.SubnetMax.String(), c.BackendType, c.SubnetLen}
			if got != tt.want {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
			if !c.EnableIPv4 {
				t.Error("EnableIPv4 false")
			}
		})
	}
}

func TestParseConfigFixtures(t *testing.T) {
	for _, be := range []string{"udp", "vxlan", "host-gw"} {
		data, err := os.ReadFile(filepath.Join("testdata", "config-"+be+".json"))
		if err != nil {
			t.Fatal(err)
		}
		c, err := ParseConfig(data)
		if err != nil {
			t.Fatalf("%s: %v", be, err)
		}
		if c.Network != netip.MustParsePrefix("10.5.0.0/16") || c.SubnetLen != 24 || c.BackendType != be ||
			c.SubnetMin != netip.MustParseAddr("10.5.1.0") || c.SubnetMax != netip.MustParseAddr("10.5.255.0") {
			t.Errorf("%s: got %+v", be, c)
		}
		// The backend's own fields stay available, raw.
		if !strings.Contains(string(c.Backend), `"Type":"`+be+`"`) {
			t.Errorf("%s: Backend %s", be, c.Backend)
		}
	}
}

func TestParseConfigErrors(t *testing.T) {
	tests := []struct {
		json, key, msg string
	}{
		{`{`, "", "not valid JSON"},
		{`[]`, "", "not valid JSON"},
		{`{"Network": "10.5.0.0/16"} {}`, "", "trailing data"},
		{`{}`, "Network", "missing"},
		{`{"Network": "10.5.0.0"}`, "Network", "not an IPv4 CIDR"},
		{`{"Network": "fd00::/64"}`, "Network", "not an IPv4 CIDR"},
		{`{"Network": 10}`, "Network", "must be a JSON string, not number"},
		{`{"Network": "10.5.0.0/29"}`, "Network", "too small"},
		{`{"Network": "10.5.0.0/16", "SubnetLen": 33}`, "SubnetLen", "33 is out of range"},
		{`{"Network": "10.5.0.0/16", "SubnetLen": 31}`, "SubnetLen", "31 is out of range"},
		{`{"Network": "10.5.0.0/16", "SubnetLen": -1}`, "SubnetLen", "-1 is out of range"},
		{`{"Network": "10.5.0.0/16", "SubnetLen": 24.5}`, "SubnetLen", "out of range"},
		{`{"Network": "10.5.0.0/16", "SubnetLen": "24"}`, "SubnetLen", "must be a JSON number"}, // flanneld refuses a quoted number too
		{`{"Network": "10.5.0.0/16", "SubnetLen": true}`, "SubnetLen", "must be a JSON number"},
		{`{"Network": "10.5.0.0/16", "SubnetLen": 16}`, "SubnetLen", "at least 18"},
		{`{"Network": "10.5.0.0/16", "SubnetLen": 17}`, "SubnetLen", "at least 18"},
		{`{"Network": "10.5.0.0/16", "SubnetMin": "10.6.1.0"}`, "SubnetMin", "not inside Network"},
		{`{"Network": "10.5.0.0/16", "SubnetMax": "10.6.1.0"}`, "SubnetMax", "not inside Network"},
		{`{"Network": "10.5.0.0/16", "SubnetMin": "10.5.1.1"}`, "SubnetMin", "boundary (did you mean 10.5.1.0?)"},
		{`{"Network": "10.5.0.0/16", "SubnetMax": "10.5.1.128"}`, "SubnetMax", "boundary"},
		{`{"Network": "10.5.0.0/16", "SubnetMin": "bogus"}`, "SubnetMin", "not an IPv4 address"},
		{`{"Network": "10.5.0.0/16", "SubnetMin": "10.5.9.0", "SubnetMax": "10.5.8.0"}`, "SubnetMin", "above SubnetMax"},
		{`{"Network": "10.5.0.0/16", "Backend": {"Type": "wireguard"}}`, "Backend", `"wireguard" is not a backend`},
		{`{"Network": "10.5.0.0/16", "Backend": {"Type": 3}}`, "Backend", "string \"Type\""},
		{`{"Network": "10.5.0.0/16", "Backend": "udp"}`, "Backend", "JSON object"},
		{`{"EnableIPv4": false, "EnableIPv6": false}`, "EnableIPv4", "no addresses at all"},
		{`{"EnableIPv4": false}`, "EnableIPv4", "no addresses at all"},
		{`{"Network": "10.5.0.0/16", "IPv6Network": "10.6.0.0/16"}`, "IPv6Network", "not an IPv6 CIDR"},
		{`{"Network": "10.5.0.0/16", "EnableIPv6": true}`, "IPv6Network", "missing"},
		{`{"Network": "10.5.0.0/16", "EnableIPv6": true, "IPv6Network": "10.6.0.0/16"}`, "IPv6Network", "not an IPv6 CIDR"},
		{`{"Network": "10.5.0.0/16", "EnableIPv6": true, "IPv6Network": "::ffff:10.6.0.0/112"}`, "IPv6Network", "not an IPv6 CIDR"},
		{`{"Network": "10.5.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00::/125"}`, "IPv6Network", "too small"},
		{`{"Network": "10.5.0.0/16", "EnableIPv6": true, "IPv6Network": "::/0"}`, "IPv6Network", "too large"},
		{`{"Network": "10.5.0.0/16", "EnableIPv6": true, "IPv6Network": "fe80::/64"}`, "IPv6Network", "link-local"},
		{`{"Network": "10.5.0.0/16", "EnableIPv6": true, "IPv6Network": "ff05::/64"}`, "IPv6Network", "multicast"},
		{`{"Network": "10.5.0.0/16", "EnableIPv6": true, "IPv6Network": "::/16"}`, "IPv6Network", "reserved"},
		{`{"Network": "10.5.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00::/8", "IPv6SubnetLen": 120}`, "IPv6SubnetLen", "2^112 subnets"},
		{`{"Network": "10.5.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00::/56", "IPv6SubnetLen": 127}`, "IPv6SubnetLen", "127 is out of range"},
		{`{"Network": "10.5.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00::/56", "IPv6SubnetLen": 57}`, "IPv6SubnetLen", "at least 58"},
		{`{"Network": "10.5.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00::/56", "IPv6SubnetLen": "64"}`, "IPv6SubnetLen", "must be a JSON number"},
		{`{"Network": "10.5.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00::/56", "IPv6SubnetMin": "fd01::"}`, "IPv6SubnetMin", "not inside IPv6Network"},
		{`{"Network": "10.5.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00::/56", "IPv6SubnetMax": "fd00:0:0:1::1"}`, "IPv6SubnetMax", "boundary (did you mean fd00:0:0:1::?)"},
		{`{"Network": "10.5.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00::/56", "IPv6SubnetMin": "10.5.0.0"}`, "IPv6SubnetMin", "not an IPv6 address"},
		{`{"Network": "10.5.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00::/56", "IPv6SubnetMin": "fd00:0:0:9::", "IPv6SubnetMax": "fd00:0:0:8::"}`, "IPv6SubnetMin", "above IPv6SubnetMax"},
		{`{"Network": "10.5.0.0/16", "EnableIPv6": true, "IPv6Networks": ["fd00::/56"]}`, "IPv6Networks", "not supported"},
		{`{"Networks": ["10.5.0.0/16", "10.6.0.0/16"]}`, "Networks", "not supported"},
		// Not unicast address space a pod can have (issue 14, item 4);
		// 0/0 would make the TUN route replace the default route.
		{`{"Network": "0.0.0.0/0"}`, "Network", "too large"},
		{`{"Network": "0.0.0.0/0", "SubnetLen": 24}`, "Network", "too large"},
		{`{"Network": "10.0.0.0/7"}`, "Network", "too large"},
		{`{"Network": "0.0.0.0/8"}`, "Network", "overlaps 0.0.0.0/8"},
		{`{"Network": "0.5.0.0/16"}`, "Network", "overlaps 0.0.0.0/8"},
		{`{"Network": "127.0.0.0/8"}`, "Network", "overlaps 127.0.0.0/8"},
		{`{"Network": "127.5.0.0/16"}`, "Network", "overlaps 127.0.0.0/8"},
		{`{"Network": "224.0.0.0/4"}`, "Network", "too large"},
		{`{"Network": "224.0.0.0/8"}`, "Network", "overlaps 224.0.0.0/4"},
		{`{"Network": "239.5.0.0/16"}`, "Network", "overlaps 224.0.0.0/4"},
		{`{"Network": "240.0.0.0/4"}`, "Network", "too large"},
		{`{"Network": "240.0.0.0/8"}`, "Network", "overlaps 240.0.0.0/4"},
		{`{"Network": "255.255.255.0/24"}`, "Network", "overlaps 240.0.0.0/4"},
		{`{"Network": "10.5.0.0/16", "SubnetMin": "127.0.0.0"}`, "SubnetMin", "not inside Network"},
		{`{"Network": "10.5.0.0/16", "SubnetMax": "224.0.0.0"}`, "SubnetMax", "not inside Network"},
	}
	for _, tt := range tests {
		_, err := ParseConfig([]byte(tt.json))
		var ce *ConfigError
		if !errors.As(err, &ce) {
			t.Errorf("%s: err %v, want a *ConfigError", tt.json, err)
			continue
		}
		if ce.Key != tt.key || !strings.Contains(err.Error(), tt.msg) || !strings.HasPrefix(err.Error(), "network config: ") {
			t.Errorf("%s:\n got key %q: %v\nwant key %q, message containing %q", tt.json, ce.Key, err, tt.key, tt.msg)
		}
	}
}

// Networks at the edges of what is allowed still parse.
func TestParseConfigUnicastEdges(t *testing.T) {
	for _, n := range []string{"1.0.0.0/8", "126.0.0.0/8", "128.0.0.0/8", "223.0.0.0/8", "169.254.0.0/16", "100.64.0.0/10"} {
		if _, err := ParseConfig([]byte(`{"Network": "` + n + `"}`)); err != nil {
			t.Errorf("%s: %v", n, err)
		}
	}
}

// A config value of any size is quoted bounded in errors.
func TestParseConfigErrorsBounded(t *testing.T) {
	big := strings.Repeat("1", 1<<20)
	for _, in := range []string{
		`{"Network": "` + big + `"}`,
		`{"Network": "10.5.0.0/16", "SubnetMin": "` + big + `"}`,
		`{"Network": "10.5.0.0/16", "SubnetLen": ` + big + `}`,
		`{"Network": "10.5.0.0/16", "SubnetLen": "` + big + `"}`,
		`{"Network": "10.5.0.0/16", "IPv6Network": "` + big + `"}`,
		`{"Network": "10.5.0.0/16", "Backend": {"Type": "` + big + `"}}`,
	} {
		_, err := ParseConfig([]byte(in))
		if err == nil || len(err.Error()) > 512 {
			t.Errorf("%.60s...: error of %d bytes: %.300v", in, len(fmt.Sprint(err)), err)
		}
	}
}

func TestConfigContains(t *testing.T) {
	c, err := ParseConfig([]byte(`{"Network": "10.5.0.0/16", "SubnetMin": "10.5.2.0", "SubnetMax": "10.5.9.0"}`))
	if err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]bool{
		"10.5.2.0/24": true, "10.5.9.0/24": true, "10.5.5.0/24": true,
		"10.5.1.0/24": false, "10.5.10.0/24": false, "10.5.5.0/25": false, "10.6.5.0/24": false, "10.5.0.0/24": false,
	} {
		if got := c.Contains(netip.MustParsePrefix(p)); got != want {
			t.Errorf("Contains(%s) = %v, want %v", p, got, want)
		}
	}
}

// EnableNFTables is read, not ignored: the daemon picks the firewall's
// mode from it.
func TestConfigEnableNFTables(t *testing.T) {
	for in, want := range map[string]bool{
		`{"Network":"10.244.0.0/16"}`:                        false,
		`{"Network":"10.244.0.0/16","EnableNFTables":false}`: false,
		`{"Network":"10.244.0.0/16","EnableNFTables":true}`:  true,
		`{"Network":"10.244.0.0/16","enablenftables":true}`:  true,
	} {
		c, err := ParseConfig([]byte(in))
		if err != nil || c.EnableNFTables != want {
			t.Errorf("%s: %v, %v", in, c, err)
		}
	}
	if _, err := ParseConfig([]byte(`{"Network":"10.244.0.0/16","EnableNFTables":"yes"}`)); err == nil || !strings.Contains(err.Error(), "EnableNFTables") {
		t.Errorf("a string EnableNFTables: %v", err)
	}
}
