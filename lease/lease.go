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
	PublicIP    netip.Addr
	BackendType string          // "" for udp, as flanneld writes it
	BackendData json.RawMessage // nil when flanneld writes none
}

// Lease is one host's claim on one subnet of the cluster network.
type Lease struct {
	Subnet     netip.Prefix
	Attrs      Attrs
	Expiration time.Time // zero for leases that never expire (static store)
	// Revision is the store's revision of the lease's last change (0 for
	// the static store). It lets a watcher resume.
	Revision int64
	// CreateRevision is the store's revision of the lease's creation (0
	// for the static store): of two leases that collide, the older wins.
	CreateRevision int64
}

// Key returns flanneld's name for the subnet: "10.5.42.0-24".
func (l Lease) Key() string { return SubnetKey(l.Subnet) }

// SubnetKey renders a subnet as flanneld's key suffix, the "/" of the CIDR
// replaced by "-".
func SubnetKey(p netip.Prefix) string {
	return p.Addr().String() + "-" + itoa(p.Bits())
}

// ParseSubnetKey reads flanneld's key suffix "10.5.42.0-24" back into a
// prefix. A dual-stack flanneld's "10.5.42.0-24&fd00::-64" gives its IPv4
// part.
//
// Only the spelling SubnetKey produces is accepted (and, after "&", the
// one flanneld gives the IPv6 subnet): "10.5.2.0-024", "10.5.2.0-+24",
// "10.5.2.1-24" or "::ffff:10.5.2.0-24" are refused. Each subnet has one
// key, so two keys in etcd can never claim one subnet between them and
// make every host's table refuse the snapshot.
func ParseSubnetKey(s string) (netip.Prefix, error) {
	v4, v6, dual := strings.Cut(s, "&")
	p, err := parseKeyPart(v4, false)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("subnet key %s: %w", excerpt.Quote(s, keyExcerpt), err)
	}
	if dual {
		if _, err := parseKeyPart(v6, true); err != nil {
			return netip.Prefix{}, fmt.Errorf("subnet key %s: IPv6 part: %w", excerpt.Quote(s, keyExcerpt), err)
		}
	}
	return p, nil
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
