package lease

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/weft-net/weft/lease/internal/excerpt"
)

// Attrs is the value stored under a subnet key: flanneld's LeaseAttrs.
// Field order and JSON names are flanneld's; MarshalJSON reproduces its
// bytes exactly (see attrs_json.go).
type Attrs struct {
	// PublicIP is the IPv4 address other hosts send this host's pod
	// traffic to; the zero Addr on an IPv6-only host (flanneld writes
	// "0.0.0.0").
	PublicIP netip.Addr
	// PublicIPv6 is the IPv6 underlay address of a host with IPv6 pod
	// subnets; the zero Addr when the host has none (JSON null).
	PublicIPv6  netip.Addr
	BackendType string          // "" for udp, as flanneld writes it
	BackendData json.RawMessage // nil when flanneld writes none
	// BackendV6Data is the backend's data for the IPv6 subnet (vxlan: the
	// VNI and the MAC of flannel-v6.<VNI>); nil when there is none.
	BackendV6Data json.RawMessage
}

// BackendName is the lease's backend type as the network config and
// people name it: flanneld's udp backend writes an empty BackendType.
func (a Attrs) BackendName() string {
	if a.BackendType == "" {
		return "udp"
	}
	return a.BackendType
}

// Lease is one host's claim on one subnet of the cluster network.
type Lease struct {
	// Subnet is the host's IPv4 pod subnet; the zero Prefix on an
	// IPv6-only network.
	Subnet netip.Prefix
	// IPv6Subnet is the host's IPv6 pod subnet; the zero Prefix when the
	// network has no IPv6.
	IPv6Subnet netip.Prefix
	Attrs      Attrs
	Expiration time.Time // zero for leases that never expire (static store)
	// Revision is the store's revision of the lease's last change (0 for
	// the static store). It lets a watcher resume.
	Revision int64
	// CreateRevision is the store's revision of the lease's creation (0
	// for the static store): of two leases that collide, the older wins.
	CreateRevision int64
}

// ID is the subnet that identifies the lease within its network: its
// IPv4 subnet, or its IPv6 subnet when it has none (an IPv6-only host's).
// Two leases a store hands out never share an ID, so everything that keys
// or orders leases (admission, backends, status, metrics) uses it. On a
// dual-stack network the IPv4 subnet names the lease, as flanneld's logs
// and weft's always have.
func (l Lease) ID() netip.Prefix {
	if l.Subnet.IsValid() {
		return l.Subnet
	}
	return l.IPv6Subnet
}

// CompareID orders leases by ID, for slices.SortFunc: IPv4-identified
// leases first, by address then length, then IPv6-identified ones.
func CompareID(a, b Lease) int {
	x, y := a.ID(), b.ID()
	if c := x.Addr().Compare(y.Addr()); c != 0 {
		return c
	}
	return x.Bits() - y.Bits()
}

// Key returns flanneld's name for the lease (pkg/subnet MakeSubnetKey):
// "10.5.42.0-24", "10.5.77.0-24&fd00:10:5:21::-64" with an IPv6 subnet,
// "0.0.0.0-0&fd00:10:5:12::-64" on an IPv6-only network.
func (l Lease) Key() string { return LeaseKey(l.Subnet, l.IPv6Subnet) }

// LeaseKey is Key for a pair of subnets, either of which may be the zero
// Prefix (not both).
func LeaseKey(v4, v6 netip.Prefix) string {
	if !v6.IsValid() {
		return SubnetKey(v4)
	}
	if !v4.IsValid() {
		v4 = netip.PrefixFrom(netip.IPv4Unspecified(), 0)
	}
	return SubnetKey(v4) + "&" + SubnetKey(v6)
}

// SubnetKey renders a subnet as flanneld's key suffix, the "/" of the CIDR
// replaced by "-".
func SubnetKey(p netip.Prefix) string {
	return p.Addr().String() + "-" + itoa(p.Bits())
}

// String names the lease's subnets for logs: "10.5.42.0/24",
// "10.5.42.0/24+fd00:10:5:21::/64" or "fd00:10:5:12::/64".
func (l Lease) String() string {
	switch {
	case !l.IPv6Subnet.IsValid():
		return l.Subnet.String()
	case !l.Subnet.IsValid():
		return l.IPv6Subnet.String()
	}
	return l.Subnet.String() + "+" + l.IPv6Subnet.String()
}

// ParseSubnetKey reads flanneld's key suffix back into the lease's
// subnets: "10.5.42.0-24" gives an IPv4 subnet alone, a dual-stack
// "10.5.42.0-24&fd00::-64" both, and an IPv6-only "0.0.0.0-0&fd00::-64"
// the IPv6 subnet alone (v4 is the zero Prefix). "0.0.0.0-0" without an
// IPv6 part is 0.0.0.0/0, which no config can lease.
//
// Only the spelling LeaseKey produces is accepted: "10.5.2.0-024",
// "10.5.2.0-+24", "10.5.2.1-24" or "::ffff:10.5.2.0-24" are refused. Each
// subnet has one key, so two keys in etcd can never claim one subnet
// between them and make every host's table refuse the snapshot.
func ParseSubnetKey(s string) (v4, v6 netip.Prefix, err error) {
	a, b, dual := strings.Cut(s, "&")
	if v4, err = parseKeyPart(a, false); err != nil {
		return netip.Prefix{}, netip.Prefix{}, fmt.Errorf("subnet key %s: %w", excerpt.Quote(s, keyExcerpt), err)
	}
	if !dual {
		return v4, netip.Prefix{}, nil
	}
	if v6, err = parseKeyPart(b, true); err != nil {
		return netip.Prefix{}, netip.Prefix{}, fmt.Errorf("subnet key %s: IPv6 part: %w", excerpt.Quote(s, keyExcerpt), err)
	}
	if v4.Bits() == 0 {
		if v4.Addr() != netip.IPv4Unspecified() {
			return netip.Prefix{}, netip.Prefix{}, fmt.Errorf("subnet key %s: an IPv6-only key starts with 0.0.0.0-0", excerpt.Quote(s, keyExcerpt))
		}
		v4 = netip.Prefix{}
	}
	return v4, v6, nil
}

// keyExcerpt bounds how much of a key an error quotes: a key comes from
// whoever can write to etcd and may be very long.
const keyExcerpt = 80

// parseKeyPart reads "<addr>-<len>" as SubnetKey writes it: the address in
// netip's (for IPv6 RFC 5952) form, the length in decimal without sign or
// leading zero, no host bits set.
func parseKeyPart(s string, v6 bool) (netip.Prefix, error) {
	a, l, ok := strings.Cut(s, "-")
	if !ok {
		return netip.Prefix{}, fmt.Errorf("no '-' between address and length")
	}
	addr, err := netip.ParseAddr(a)
	switch {
	case err != nil:
		return netip.Prefix{}, fmt.Errorf("%s is not an IP address", excerpt.Quote(a, keyExcerpt))
	case !v6 && !addr.Is4():
		return netip.Prefix{}, fmt.Errorf("%s is not an IPv4 address", excerpt.Quote(a, keyExcerpt))
	case v6 && (!addr.Is6() || addr.Is4In6() || addr.Zone() != ""):
		return netip.Prefix{}, fmt.Errorf("%s is not an IPv6 address", excerpt.Quote(a, keyExcerpt))
	}
	n, err := strconv.Atoi(l)
	if err != nil || n < 0 || n > addr.BitLen() {
		return netip.Prefix{}, fmt.Errorf("bad prefix length %s", excerpt.Quote(l, keyExcerpt))
	}
	p := netip.PrefixFrom(addr, n)
	if p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("host bits set (the subnet is %s)", p.Masked())
	}
	if want := SubnetKey(p); s != want {
		return netip.Prefix{}, fmt.Errorf("not in canonical form %q", want)
	}
	return p, nil
}

func itoa(n int) string {
	var b [4]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
		if n == 0 {
			return string(b[i:])
		}
	}
}

// Manager is what a running host needs from a lease store.
type Manager interface {
	// Config returns the cluster's network configuration, validated.
	Config(ctx context.Context) (*Config, error)
	// Acquire obtains this host's lease for attrs (reusing a previous one
	// when possible) and returns it. Called again with the same PublicIP
	// while the lease is held (after its Keep has returned), it returns
	// the same subnet with the lease's BackendType and BackendData
	// replaced in place, so watchers (flanneld's too) see the change:
	// that is how an auto host changes backend live.
	Acquire(ctx context.Context, attrs Attrs) (Lease, error)
	// Watch sends a full snapshot of all leases (this host's included) each
	// time the set changes, starting with the current set. It returns when
	// ctx ends. Snapshots are never partial: a lease whose key or value
	// cannot be parsed is left out and logged, and the rest stand. Each
	// subnet appears at most once.
	Watch(ctx context.Context, snapshots chan<- []Lease) error
	// Keep renews own until ctx ends, reclaiming it if it was deleted. It
	// returns an error only when the lease is lost for good.
	Keep(ctx context.Context, own Lease) error
}
