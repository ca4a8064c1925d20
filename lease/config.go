package lease

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"strconv"
	"strings"

	"github.com/weft-net/weft/lease/internal/excerpt"
)

// Config is the cluster network configuration stored at <prefix>/config, in
// flanneld's JSON (pkg/subnet/config.go), with flannel's defaults applied.
type Config struct {
	Network    netip.Prefix
	SubnetLen  int
	SubnetMin  netip.Addr
	SubnetMax  netip.Addr
	EnableIPv4 bool
	// EnableIPv6 gives each host an IPv6 subnet of IPv6Network as well
	// (dual-stack), or alone when EnableIPv4 is false (IPv6-only). The
	// IPv6 fields are zero when it is false.
	EnableIPv6    bool
	IPv6Network   netip.Prefix
	IPv6SubnetLen int
	IPv6SubnetMin netip.Addr
	IPv6SubnetMax netip.Addr
	// EnableNFTables selects flanneld's nftables rules instead of its
	// iptables rules.
	EnableNFTables bool
	// BackendType is Backend.Type, lower-cased; "udp" when Backend is absent.
	BackendType string
	// Backend is the raw Backend object, for the backend's own fields.
	Backend json.RawMessage
}

// BackendTypes are the values of Backend.Type weft accepts. "auto" is weft's
// own: host-gw while every host shares one segment, else vxlan, decided
// again as hosts come and go (docs/auto.md).
var BackendTypes = []string{"udp", "vxlan", "host-gw", "auto"}

// rawConfig mirrors flanneld's Config for decoding. encoding/json matches
// keys case-insensitively, as it does for flanneld, so a config flanneld
// accepts decodes the same here. Pointers tell "absent" from "zero".
type rawConfig struct {
	EnableIPv4    *bool
	EnableIPv6    *bool
	Network       *string
	IPv6Network   *string
	Networks      []string
	IPv6Networks  []string
	SubnetMin     *string
	SubnetMax     *string
	IPv6SubnetMin *string
	IPv6SubnetMax *string
	SubnetLen     *strictNumber
	IPv6SubnetLen *strictNumber
	Backend       json.RawMessage
	// EnableNFTables is flanneld's; a bool, refused as anything else.
	EnableNFTables *bool
}

// strictNumber is a json.Number that refuses a quoted number ("24"), as
// flanneld's decoding into a uint field does; json.Number alone takes it.
type strictNumber struct{ json.Number }

func (n *strictNumber) UnmarshalJSON(b []byte) error {
	if len(b) == 0 || b[0] == '"' || b[0] == 't' || b[0] == 'f' || b[0] == '[' || b[0] == '{' {
		return &json.UnmarshalTypeError{Value: jsonValueKind(b), Type: reflect.TypeFor[json.Number]()}
	}
	if string(b) == "null" {
		return nil
	}
	n.Number = json.Number(b)
	return nil
}

func jsonValueKind(b []byte) string {
	switch {
	case len(b) == 0:
		return "nothing"
	case b[0] == '"':
		if len(b) > configExcerpt {
			return "a string of " + strconv.Itoa(len(b)) + " bytes"
		}
		return "string " + string(b)
	case b[0] == 't' || b[0] == 'f':
		return "bool"
	case b[0] == '[':
		return "array"
	default:
		return "object"
	}
}

// ConfigError is a refused network config. Key is the JSON key at fault.
type ConfigError struct {
	Key string // "" when the document as a whole is at fault
	Msg string
}

func (e *ConfigError) Error() string {
	if e.Key == "" {
		return "network config: " + e.Msg
	}
	return fmt.Sprintf("network config: %q: %s", e.Key, e.Msg)
}

func cfgErr(key, format string, args ...any) error {
	return &ConfigError{Key: key, Msg: fmt.Sprintf(format, args...)}
}

// ParseConfig decodes flanneld's network config JSON, applies flannel
// v0.28's defaults and checks its limits. Each error is a *ConfigError that
// names the key at fault.
//
// Defaults, as flanneld: EnableIPv4 true; SubnetLen 24 when Network is /22
// or larger, else Network's length + 2; SubnetMin the network's second
// subnet (the first is never handed out); SubnetMax its last; Backend
// absent means udp. Limits: Network at most /28; SubnetLen at most 30 and
// at least Network's length + 2 (flannel wants room for four subnets);
// SubnetMin and SubnetMax inside Network, on a SubnetLen boundary, and
// SubnetMin <= SubnetMax. A Network with host bits set is masked, as
// flanneld does. Unlike flanneld, weft refuses a Network larger than a /8
// or overlapping 0.0.0.0/8, 127.0.0.0/8, 224.0.0.0/4 or 240.0.0.0/4 (no
// pod can have such addresses, and with 0.0.0.0/0 the TUN route would
// replace the default route); SubnetMin and SubnetMax, inside Network,
// are then unicast too. Errors quote at most 64 bytes of a value.
func ParseConfig(data []byte) (*Config, error) {
	var raw rawConfig
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	if err := dec.Decode(&raw); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			kind := jsonKind(te.Type.Kind().String())
			if te.Type == reflect.TypeFor[json.Number]() {
				kind = "number"
			}
			return nil, cfgErr(te.Field, "must be a JSON %s, not %s", kind, te.Value)
		}
		return nil, cfgErr("", "not valid JSON: %v", err)
	}
	if dec.More() {
		return nil, cfgErr("", "trailing data after the JSON object")
	}
	if len(raw.IPv6Networks) > 0 {
		return nil, cfgErr("IPv6Networks", "multiple networks are not supported; use \"IPv6Network\"")
	}
	if len(raw.Networks) > 0 {
		return nil, cfgErr("Networks", "multiple networks are not supported; use \"Network\"")
	}
	cfg := &Config{
		EnableIPv4:     raw.EnableIPv4 == nil || *raw.EnableIPv4,
		EnableIPv6:     raw.EnableIPv6 != nil && *raw.EnableIPv6,
		EnableNFTables: raw.EnableNFTables != nil && *raw.EnableNFTables,
	}
	if !cfg.EnableIPv4 && !cfg.EnableIPv6 {
		return nil, cfgErr("EnableIPv4", "false, and EnableIPv6 is not true: the network has no addresses at all")
	}
	if cfg.EnableIPv4 {
		if err := parseIPv4(cfg, &raw); err != nil {
			return nil, err
		}
	}
	if cfg.EnableIPv6 {
		if err := parseIPv6(cfg, &raw); err != nil {
			return nil, err
		}
	} else if raw.IPv6Network != nil && *raw.IPv6Network != "" {
		// flanneld ignores IPv6Network without EnableIPv6, but its JSON
		// decoding refuses one that is not a CIDR; so does weft.
		if p, err := netip.ParsePrefix(*raw.IPv6Network); err != nil || !p.Addr().Is6() {
			return nil, cfgErr("IPv6Network", "%s is not an IPv6 CIDR such as \"fd00:10:5::/56\"", quote(*raw.IPv6Network))
		}
	}
	if err := parseBackend(cfg, raw.Backend); err != nil {
		return nil, err
	}
	return cfg, nil
}

// parseIPv4 reads Network, SubnetLen, SubnetMin and SubnetMax.
func parseIPv4(cfg *Config, raw *rawConfig) error {
	if raw.Network == nil || *raw.Network == "" {
		return cfgErr("Network", "missing: the cluster network CIDR is required, e.g. \"10.5.0.0/16\" (or \"EnableIPv4\": false for an IPv6-only network)")
	}
	network, err := netip.ParsePrefix(*raw.Network)
	if err != nil || !network.Addr().Is4() {
		return cfgErr("Network", "%s is not an IPv4 CIDR such as \"10.5.0.0/16\"", quote(*raw.Network))
	}
	cfg.Network = network.Masked()
	if err := checkNetwork(cfg.Network); err != nil {
		return cfgErr("Network", "%v", err)
	}
	nbits := cfg.Network.Bits()

	if raw.SubnetLen != nil && raw.SubnetLen.String() != "0" {
		n, err := raw.SubnetLen.Int64()
		if err != nil || n < 0 || n > 30 {
			return cfgErr("SubnetLen", "%s is out of range: it must be a whole number from %d to 30 (each host needs at least a /30)", shortNum(raw.SubnetLen), min(nbits+2, 30))
		}
		if int(n) < nbits+2 {
			return cfgErr("SubnetLen", "%d is out of range for Network %s: it must be at least %d so the network holds at least four subnets", n, cfg.Network, nbits+2)
		}
		cfg.SubnetLen = int(n)
	} else {
		switch {
		case nbits > 28:
			return cfgErr("Network", "%s is too small: the smallest usable network is a /28", cfg.Network)
		case nbits <= 22:
			cfg.SubnetLen = 24
		default:
			cfg.SubnetLen = nbits + 2
		}
	}

	size := uint32(1) << (32 - cfg.SubnetLen)
	base := addrU32(cfg.Network.Addr())
	last := base | (^uint32(0) >> nbits) // broadcast of the network
	mask := ^(size - 1)
	cfg.SubnetMin = u32Addr(base + size)
	cfg.SubnetMax = u32Addr(last - size + 1)
	for _, b := range []struct {
		key string
		v   *string
		dst *netip.Addr
	}{{"SubnetMin", raw.SubnetMin, &cfg.SubnetMin}, {"SubnetMax", raw.SubnetMax, &cfg.SubnetMax}} {
		if b.v == nil || *b.v == "" {
			continue
		}
		a, err := netip.ParseAddr(*b.v)
		if err != nil || !a.Is4() {
			return cfgErr(b.key, "%s is not an IPv4 address", quote(*b.v))
		}
		if !cfg.Network.Contains(a) {
			return cfgErr(b.key, "%s is not inside Network %s", a, cfg.Network)
		}
		if addrU32(a)&mask != addrU32(a) {
			return cfgErr(b.key, "%s is not on a SubnetLen (/%d) boundary (did you mean %s?)", a, cfg.SubnetLen, u32Addr(addrU32(a)&mask))
		}
		*b.dst = a
	}
	if cfg.SubnetMin.Compare(cfg.SubnetMax) > 0 {
		return cfgErr("SubnetMin", "%s is above SubnetMax %s: no subnet can be leased", cfg.SubnetMin, cfg.SubnetMax)
	}

	return nil
}

// parseBackend reads Backend and its Type.
func parseBackend(cfg *Config, backend json.RawMessage) error {
	cfg.BackendType = "udp"
	if len(backend) > 0 && string(backend) != "null" {
		var be struct{ Type *string }
		if err := json.Unmarshal(backend, &be); err != nil {
			return cfgErr("Backend", "must be a JSON object with a string \"Type\" such as {\"Type\": \"vxlan\"}: %v", err)
		}
		cfg.Backend = append(json.RawMessage(nil), backend...)
		if be.Type != nil {
			cfg.BackendType = strings.ToLower(*be.Type)
		}
		// flanneld treats a Backend without Type as Type "" and fails
		// to find that backend; weft defaults it to udp like a missing
		// Backend, which is what such a config means.
		if cfg.BackendType == "" {
			cfg.BackendType = "udp"
		}
		known := false
		for _, t := range BackendTypes {
			known = known || t == cfg.BackendType
		}
		if !known {
			return cfgErr("Backend", "\"Type\": %s is not a backend weft has (known: %s)", quote(*be.Type), strings.Join(BackendTypes, ", "))
		}
	}
	return nil
}

// configExcerpt bounds how much of a config value an error quotes.
const configExcerpt = 64

func quote(s string) string { return excerpt.Quote(s, configExcerpt) }

// shortNum is a JSON number for an error message, cut if absurdly long.
func shortNum(n *strictNumber) string {
	if s := n.String(); len(s) <= 24 {
		return s
	}
	return n.String()[:24] + "..."
}

func jsonKind(k string) string {
	switch k {
	case "string":
		return "string"
	case "bool":
		return "boolean"
	case "slice":
		return "array"
	case "ptr":
		return "value"
	}
	return k
}

// SubnetSize is the number of addresses in one subnet of the network.
func (c *Config) SubnetSize() uint32 { return uint32(1) << (32 - c.SubnetLen) }

// SubnetCount is the number of subnets between SubnetMin and SubnetMax.
func (c *Config) SubnetCount() uint64 {
	return uint64(addrU32(c.SubnetMax)-addrU32(c.SubnetMin))/uint64(c.SubnetSize()) + 1
}

// Subnet returns the i-th leasable subnet, counting from SubnetMin (0) to
// SubnetCount()-1.
func (c *Config) Subnet(i uint64) netip.Prefix {
	return netip.PrefixFrom(u32Addr(addrU32(c.SubnetMin)+uint32(i)*c.SubnetSize()), c.SubnetLen)
}

// Contains reports whether p is a subnet this config can lease: the right
// length, aligned, and between SubnetMin and SubnetMax.
func (c *Config) Contains(p netip.Prefix) bool {
	return p.IsValid() && p.Addr().Is4() && p.Bits() == c.SubnetLen && p.Masked() == p &&
		c.SubnetMin.Compare(p.Addr()) <= 0 && p.Addr().Compare(c.SubnetMax) <= 0
}

func addrU32(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func u32Addr(v uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}
