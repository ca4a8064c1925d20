package lease

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
)

// Static is a Manager whose leases are fixed at startup: the host's own
// subnet and its peers come from flags or a file. It needs no etcd and is
// what tests and small fixed setups use.
type Static struct {
	cfg   Config
	own   netip.Prefix
	peers []Lease

	ownAttrs Attrs // set by Acquire
}

var _ Manager = (*Static)(nil)

// StaticPeer is one entry of --static-peer / --static-peers.
type StaticPeer struct {
	Subnet   netip.Prefix `json:"Subnet"`
	PublicIP netip.Addr   `json:"PublicIP"`
}

// NewStatic checks that own and every peer are distinct subnets of network
// with the same prefix length, and returns a store that serves them.
func NewStatic(network, own netip.Prefix, peers []StaticPeer) (*Static, error) {
	if !network.IsValid() || !network.Addr().Is4() {
		return nil, fmt.Errorf("--static-network: %q is not an IPv4 CIDR", network)
	}
	network = network.Masked()
	if err := checkNetwork(network); err != nil {
		return nil, fmt.Errorf("--static-network: %w", err)
	}
	check := func(flag string, p netip.Prefix) error {
		switch {
		case !p.IsValid() || !p.Addr().Is4():
			return fmt.Errorf("%s: %q is not an IPv4 CIDR", flag, p)
		case p.Masked() != p:
			return fmt.Errorf("%s: %s has host bits set (did you mean %s?)", flag, p, p.Masked())
		case p.Bits() != own.Bits():
			return fmt.Errorf("%s: %s has prefix length /%d, but every subnet of the network must be /%d like --static-subnet", flag, p, p.Bits(), own.Bits())
		case p.Bits() <= network.Bits() || !network.Contains(p.Addr()):
			return fmt.Errorf("%s: %s is not a subnet inside --static-network %s", flag, p, network)
		}
		return nil
	}
	if err := check("--static-subnet", own); err != nil {
		return nil, err
	}
	s := &Static{
		cfg: Config{Network: network, SubnetLen: own.Bits(), EnableIPv4: true, BackendType: "udp"},
		own: own,
	}
	seen := map[netip.Prefix]bool{own: true}
	for _, p := range peers {
		if err := check("--static-peer", p.Subnet); err != nil {
			return nil, err
		}
		if seen[p.Subnet] {
			return nil, fmt.Errorf("--static-peer: subnet %s is given twice (or is this host's own)", p.Subnet)
		}
		if err := CheckPublicIP(p.PublicIP); err != nil {
			return nil, fmt.Errorf("--static-peer: %s: %w", p.Subnet, err)
		}
		seen[p.Subnet] = true
		s.peers = append(s.peers, Lease{Subnet: p.Subnet, Attrs: Attrs{PublicIP: p.PublicIP}})
	}
	return s, nil
}

// Own is this host's subnet (--static-subnet).
func (s *Static) Own() netip.Prefix { return s.own }

func (s *Static) Config(context.Context) (*Config, error) { c := s.cfg; return &c, nil }

func (s *Static) Acquire(_ context.Context, attrs Attrs) (Lease, error) {
	s.ownAttrs = attrs
	return Lease{Subnet: s.own, Attrs: attrs}, nil
}

// Watch sends the fixed set once and waits for ctx to end.
func (s *Static) Watch(ctx context.Context, out chan<- []Lease) error {
	select {
	case out <- append(slices.Clone(s.peers), Lease{Subnet: s.own, Attrs: s.ownAttrs}):
	case <-ctx.Done():
		return ctx.Err()
	}
	<-ctx.Done()
	return ctx.Err()
}

func (s *Static) Keep(ctx context.Context, _ Lease) error {
	<-ctx.Done()
	return nil
}
