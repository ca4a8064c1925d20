package lease

import (
	"encoding/binary"
	"net/netip"
)

// maxIPv6SubnetBits bounds IPv6SubnetLen − the IPv6Network's length: the
// number of subnets is counted in a uint64. 2^63 subnets is more hosts
// than any cluster has; flanneld takes more (fd00::/8 with /64s) and
// weft refuses such a config by name.
const maxIPv6SubnetBits = 63

// parseIPv6 reads IPv6Network, IPv6SubnetLen, IPv6SubnetMin and
// IPv6SubnetMax with flannel v0.28's defaults and limits
// (pkg/subnet/config.go CheckNetworkConfig): IPv6SubnetLen defaults to 64
// for an IPv6Network of /62 or shorter, else to its length + 2; at most
// 126 and at least the network's length + 2; IPv6SubnetMin defaults to
// the network's second subnet (the first is never handed out), and
// IPv6SubnetMax to its last; both inside the network, on a subnet
// boundary. Unlike flanneld, weft refuses an IPv6Network larger than a /8
// or overlapping ::/8, fe80::/10 or ff00::/8, and more than 2^63 subnets.
func parseIPv6(cfg *Config, raw *rawConfig) error {
	if raw.IPv6Network == nil || *raw.IPv6Network == "" {
		return cfgErr("IPv6Network", "missing: EnableIPv6 needs the cluster's IPv6 network, e.g. \"fd00:10:5::/56\"")
	}
	network, err := netip.ParsePrefix(*raw.IPv6Network)
	if err != nil || !network.Addr().Is6() || network.Addr().Is4In6() || network.Addr().Zone() != "" {
		return cfgErr("IPv6Network", "%s is not an IPv6 CIDR such as \"fd00:10:5::/56\"", quote(*raw.IPv6Network))
	}
	cfg.IPv6Network = network.Masked()
	if err := checkNetwork(cfg.IPv6Network); err != nil {
		return cfgErr("IPv6Network", "%v", err)
	}
	nbits := cfg.IPv6Network.Bits()
	if raw.IPv6SubnetLen != nil && raw.IPv6SubnetLen.String() != "0" {
		n, err := raw.IPv6SubnetLen.Int64()
		if err != nil || n < 0 || n > 126 {
			return cfgErr("IPv6SubnetLen", "%s is out of range: it must be a whole number up to 126 (each host needs at least a /126)", shortNum(raw.IPv6SubnetLen))
		}
		if int(n) < nbits+2 {
			return cfgErr("IPv6SubnetLen", "%d is out of range for IPv6Network %s: it must be at least %d so the network holds at least four subnets", n, cfg.IPv6Network, nbits+2)
		}
		cfg.IPv6SubnetLen = int(n)
	} else {
		switch {
		case nbits > 124:
			return cfgErr("IPv6Network", "%s is too small: the smallest usable IPv6 network is a /124", cfg.IPv6Network)
		case nbits <= 62:
			cfg.IPv6SubnetLen = 64
		default:
			cfg.IPv6SubnetLen = nbits + 2
		}
	}
	if cfg.IPv6SubnetLen-nbits > maxIPv6SubnetBits {
		return cfgErr("IPv6SubnetLen", "%d makes 2^%d subnets of %s; weft counts at most 2^%d (use a longer IPv6Network or a shorter IPv6SubnetLen)",
			cfg.IPv6SubnetLen, cfg.IPv6SubnetLen-nbits, cfg.IPv6Network, maxIPv6SubnetBits)
	}
	shift := 128 - cfg.IPv6SubnetLen
	base := u128From(cfg.IPv6Network.Addr())
	last := base.or(u128{}.not().shr(uint(nbits)))
	cfg.IPv6SubnetMin = base.add(u128{lo: 1}.shl(uint(shift))).addr()
	cfg.IPv6SubnetMax = last.shr(uint(shift)).shl(uint(shift)).addr()
	for _, b := range []struct {
		key string
		v   *string
		dst *netip.Addr
	}{{"IPv6SubnetMin", raw.IPv6SubnetMin, &cfg.IPv6SubnetMin}, {"IPv6SubnetMax", raw.IPv6SubnetMax, &cfg.IPv6SubnetMax}} {
		if b.v == nil || *b.v == "" {
			continue
		}
		a, err := netip.ParseAddr(*b.v)
		if err != nil || !a.Is6() || a.Is4In6() || a.Zone() != "" {
			return cfgErr(b.key, "%s is not an IPv6 address", quote(*b.v))
		}
		if !cfg.IPv6Network.Contains(a) {
			return cfgErr(b.key, "%s is not inside IPv6Network %s", a, cfg.IPv6Network)
		}
		if m := netip.PrefixFrom(a, cfg.IPv6SubnetLen).Masked().Addr(); m != a {
			return cfgErr(b.key, "%s is not on an IPv6SubnetLen (/%d) boundary (did you mean %s?)", a, cfg.IPv6SubnetLen, m)
		}
		*b.dst = a
	}
	if cfg.IPv6SubnetMin.Compare(cfg.IPv6SubnetMax) > 0 {
		return cfgErr("IPv6SubnetMin", "%s is above IPv6SubnetMax %s: no subnet can be leased", cfg.IPv6SubnetMin, cfg.IPv6SubnetMax)
	}
	return nil
}

// IPv6SubnetCount is the number of IPv6 subnets between IPv6SubnetMin and
// IPv6SubnetMax; 0 without IPv6.
func (c *Config) IPv6SubnetCount() uint64 {
	if !c.EnableIPv6 {
		return 0
	}
	shift := uint(128 - c.IPv6SubnetLen)
	return u128From(c.IPv6SubnetMax).sub(u128From(c.IPv6SubnetMin)).shr(shift).lo + 1
}

// IPv6Subnet returns the i-th leasable IPv6 subnet, counting from
// IPv6SubnetMin (0) to IPv6SubnetCount()-1.
func (c *Config) IPv6Subnet(i uint64) netip.Prefix {
	shift := uint(128 - c.IPv6SubnetLen)
	return netip.PrefixFrom(u128From(c.IPv6SubnetMin).add(u128{lo: i}.shl(shift)).addr(), c.IPv6SubnetLen)
}

// ContainsIPv6 reports whether p is an IPv6 subnet this config can
// lease: the right length, aligned, between IPv6SubnetMin and
// IPv6SubnetMax.
func (c *Config) ContainsIPv6(p netip.Prefix) bool {
	return c.EnableIPv6 && p.IsValid() && p.Addr().Is6() && !p.Addr().Is4In6() && p.Addr().Zone() == "" &&
		p.Bits() == c.IPv6SubnetLen && p.Masked() == p &&
		c.IPv6SubnetMin.Compare(p.Addr()) <= 0 && p.Addr().Compare(c.IPv6SubnetMax) <= 0
}

// u128 is an IPv6 address as a number, for subnet arithmetic.
type u128 struct{ hi, lo uint64 }

func u128From(a netip.Addr) u128 {
	b := a.As16()
	return u128{binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])}
}

func (u u128) addr() netip.Addr {
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], u.hi)
	binary.BigEndian.PutUint64(b[8:], u.lo)
	return netip.AddrFrom16(b)
}

func (u u128) not() u128      { return u128{^u.hi, ^u.lo} }
func (u u128) or(v u128) u128 { return u128{u.hi | v.hi, u.lo | v.lo} }
func (u u128) add(v u128) u128 {
	lo := u.lo + v.lo
	carry := uint64(0)
	if lo < u.lo {
		carry = 1
	}
	return u128{u.hi + v.hi + carry, lo}
}
func (u u128) sub(v u128) u128 {
	lo := u.lo - v.lo
	borrow := uint64(0)
	if u.lo < v.lo {
		borrow = 1
	}
	return u128{u.hi - v.hi - borrow, lo}
}
func (u u128) shl(n uint) u128 {
	switch {
	case n == 0:
		return u
	case n >= 128:
		return u128{}
	case n >= 64:
		return u128{u.lo << (n - 64), 0}
	}
	return u128{u.hi<<n | u.lo>>(64-n), u.lo << n}
}
func (u u128) shr(n uint) u128 {
	switch {
	case n == 0:
		return u
	case n >= 128:
		return u128{}
	case n >= 64:
		return u128{0, u.hi >> (n - 64)}
	}
	return u128{u.hi >> n, u.lo>>n | u.hi<<(64-n)}
}
