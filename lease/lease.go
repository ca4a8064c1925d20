package lease

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"
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
func ParseSubnetKey(s string) (netip.Prefix, error) {
	s, _, _ = strings.Cut(s, "&")
	a, l, ok := strings.Cut(s, "-")
	if !ok {
		return netip.Prefix{}, fmt.Errorf("subnet key %q: no '-' between address and length", s)
	}
	addr, err := netip.ParseAddr(a)
	if err != nil || !addr.Is4() {
		return netip.Prefix{}, fmt.Errorf("subnet key %q: %q is not an IPv4 address", s, a)
	}
	n, err := strconv.Atoi(l)
	if err != nil || n < 0 || n > 32 {
		return netip.Prefix{}, fmt.Errorf("subnet key %q: bad prefix length %q", s, l)
	}
	p := netip.PrefixFrom(addr, n)
	if p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("subnet key %q: host bits set", s)
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
	// when possible) and returns it.
	Acquire(ctx context.Context, attrs Attrs) (Lease, error)
	// Watch sends a full snapshot of all leases (this host's included) each
	// time the set changes, starting with the current set. It returns when
	// ctx ends. Snapshots are never partial: a lease whose value cannot be
	// parsed is left out and logged.
	Watch(ctx context.Context, snapshots chan<- []Lease) error
	// Keep renews own until ctx ends, reclaiming it if it was deleted. It
	// returns an error only when the lease is lost for good.
	Keep(ctx context.Context, own Lease) error
}
