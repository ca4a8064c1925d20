package etcdstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/lease"
)

// ErrNetworkFull: every subnet between SubnetMin and SubnetMax is leased.
var ErrNetworkFull = errors.New("network full")

// ErrLeaseLost: another host holds this host's subnet now; Keep returns
// it, and the daemon should exit so a restart leases a fresh subnet.
var ErrLeaseLost = errors.New("subnet lease lost")

// maxRaces bounds how often Acquire retries after another host claimed the
// subnet it picked in the same instant; each lost race means another
// subnet was taken, so the network fills before this matters.
const maxRaces = 1000

// Acquire obtains this host's lease, in flanneld's order: the lease this
// host already holds (found by PublicIP), if it fits the config (re-put
// with a fresh etcd lease, as flanneld does); else the subnets of the
// subnet file (PreviousSubnet, PreviousIPv6Subnet) where they are free;
// else random free subnets between SubnetMin and SubnetMax (and, with
// EnableIPv6, IPv6SubnetMin and IPv6SubnetMax), each family picked on its
// own. A dual-stack lease is one key, "<v4>-<len>&<v6>-<len>".
//
// Claims are etcd transactions that fail if any lease was created since
// the leases were read, so two hosts never hold one subnet of either
// family, even though one key names two subnets. When the network is full
// (of either family) the error wraps ErrNetworkFull and nothing is left
// behind in etcd. etcd being unreachable is retried until ctx ends.
func (m *Store) Acquire(ctx context.Context, attrs lease.Attrs) (lease.Lease, error) {
	// Attrs no host can use (a loopback PublicIP, say) are refused
	// before waiting on etcd.
	val, err := attrs.MarshalJSON()
	if err != nil {
		return lease.Lease{}, err
	}
	cfg, err := m.config(ctx)
	if err != nil {
		return lease.Lease{}, err
	}
	var got lease.Lease
	races := 0
	err = m.retry(ctx, "acquiring a subnet lease", func(ctx context.Context, cli *clientv3.Client) error {
		for {
			l, won, err := m.tryAcquire(ctx, cli, cfg, attrs, val)
			if err != nil {
				return err
			}
			if won {
				got = l
				return nil
			}
			if races++; races > maxRaces {
				return fmt.Errorf("%w: lost %d races for a free subnet", ErrNetworkFull, maxRaces)
			}
		}
	})
	if err != nil {
		return lease.Lease{}, err
	}
	return got, nil
}

// sameHost reports whether two lease values name one host: by PublicIP,
// as flanneld; by PublicIPv6 when neither has an IPv4 address (IPv6-only
// hosts). flanneld compares PublicIP alone, which on an IPv6-only network
// is 0.0.0.0 for every host, so its second host takes over the first
// one's lease (see the fixtures' README, "IPv6-only").
func sameHost(a, b lease.Attrs) bool {
	if a.PublicIP.IsValid() || b.PublicIP.IsValid() {
		return a.PublicIP == b.PublicIP
	}
	return a.PublicIPv6.IsValid() && a.PublicIPv6 == b.PublicIPv6
}

// leases is what one read of <prefix>/subnets/ says about who holds what.
type leases struct {
	rev           int64      // the read's revision
	taken, taken6 *subnetSet // IPv4 and IPv6 subnets held
	mine          *mvccpb.KeyValue
	mine4, mine6  netip.Prefix // the subnets of mine
}

// readLeases sorts the keys under subnets/ into the subnets of cfg they
// take and finds the key whose value names host.
func (m *Store) readLeases(r *clientv3.GetResponse, cfg *lease.Config, host lease.Attrs) *leases {
	ls := &leases{rev: r.Header.Revision,
		taken:  newSubnetSet(cfg.Network, cfg.SubnetLen, len(r.Kvs)),
		taken6: newSubnetSet(cfg.IPv6Network, cfg.IPv6SubnetLen, len(r.Kvs))}
	for _, kv := range r.Kvs {
		name := strings.TrimPrefix(string(kv.Key), m.subnetsDir())
		v4, v6, err := lease.ParseSubnetKey(name)
		if err != nil {
			// Not a key weft reads, but flanneld may: leave its
			// subnets alone rather than lease them a second time.
			v4, v6 = looseSubnetKey(name)
			ls.taken.add(v4)
			ls.taken6.add(v6)
			continue
		}
		ls.taken.add(v4)
		ls.taken6.add(v6)
		var a lease.Attrs
		if ls.mine == nil && json.Unmarshal(kv.Value, &a) == nil && sameHost(a, host) {
			ls.mine, ls.mine4, ls.mine6 = kv, v4, v6
		}
	}
	return ls
}

// subnetSet is the subnets of one family that leases hold.
type subnetSet struct {
	network netip.Prefix // the config's network of this family
	bits    int          // the config's subnet length
	exact   map[netip.Prefix]bool
	// other holds subnets of another length inside network (leased under
	// an earlier SubnetLen, or a hand-written key): a candidate
	// overlapping one is taken too, as flanneld's Overlaps check has
	// it. Usually empty. A prefix as large as network or larger (a
	// hostile "0.0.0.0-0") is no lease of this network and is ignored,
	// or one key would stop every new host.
	other []netip.Prefix
}

func newSubnetSet(network netip.Prefix, bits, n int) *subnetSet {
	return &subnetSet{network: network, bits: bits, exact: make(map[netip.Prefix]bool, n)}
}

// add records p; the zero Prefix is ignored.
func (s *subnetSet) add(p netip.Prefix) {
	switch {
	case !p.IsValid():
	case p.Bits() == s.bits:
		s.exact[p] = true
	case s.network.IsValid() && p.Bits() > s.network.Bits() && s.network.Contains(p.Addr()):
		s.other = append(s.other, p)
	}
}

// has reports whether a lease holds p or a subnet overlapping it.
func (s *subnetSet) has(p netip.Prefix) bool {
	if s.exact[p] {
		return true
	}
	for _, o := range s.other {
		if o.Overlaps(p) {
			return true
		}
	}
	return false
}

// flanneldKey is flanneld's subnet key pattern (pkg/subnet/subnet.go),
// unanchored at the start as there.
var flanneldKey = regexp.MustCompile(`(\d+\.\d+.\d+.\d+)-(\d+)(?:&([a-f\d:]+)-(\d+))?$`)

// looseSubnetKey reads a key ParseSubnetKey refuses as flanneld's
// pattern does: "10.5.2.0-024" or "10.5.2.1-24" name 10.5.2.0/24 for a
// flanneld host, "…&fd00:10:5:0021::-064" fd00:10:5:21::/64, and
// "10.5.2.0-24&10.5.3.0-24" 10.5.3.0/24. Either result may be the zero
// Prefix; an IPv6-only key's 0.0.0.0-0 names no IPv4 subnet. Acquire
// leaves such subnets alone, as a flanneld host may hold them.
func looseSubnetKey(name string) (v4, v6 netip.Prefix) {
	parts := flanneldKey.FindStringSubmatch(name)
	if parts == nil {
		return netip.Prefix{}, netip.Prefix{}
	}
	v4 = loosePrefix(parts[1], parts[2], 32)
	if parts[3] != "" {
		v6 = loosePrefix(parts[3], parts[4], 128)
	}
	return v4, v6
}

func loosePrefix(a, l string, bitLen int) netip.Prefix {
	addr, err := netip.ParseAddr(a)
	if err != nil || addr.BitLen() != bitLen || addr.Zone() != "" || addr.Is4In6() {
		// ::ffff:a05:200 is an IPv4 address to netip: no config
		// leases it as an IPv6 subnet.
		return netip.Prefix{}
	}
	n, err := strconv.ParseUint(l, 10, 8)
	if err != nil || n > uint64(bitLen) || n == 0 {
		// A /0 is no subnet (0.0.0.0-0 is an IPv6-only key's IPv4 part).
		return netip.Prefix{}
	}
	return netip.PrefixFrom(addr, int(n)).Masked()
}

// pool is one address family's leasable subnets in a config.
type pool struct {
	family   string // "IPv4" or "IPv6", for logs and errors
	prev     netip.Prefix
	network  netip.Prefix
	bits     int
	min, max netip.Addr
	count    uint64
	at       func(uint64) netip.Prefix
	contains func(netip.Prefix) bool
}

func (m *Store) pool4(cfg *lease.Config) pool {
	return pool{family: "IPv4", prev: m.opts.PreviousSubnet, network: cfg.Network, bits: cfg.SubnetLen,
		min: cfg.SubnetMin, max: cfg.SubnetMax, count: cfg.SubnetCount(), at: cfg.Subnet, contains: cfg.Contains}
}

func (m *Store) pool6(cfg *lease.Config) pool {
	return pool{family: "IPv6", prev: m.opts.PreviousIPv6Subnet, network: cfg.IPv6Network, bits: cfg.IPv6SubnetLen,
		min: cfg.IPv6SubnetMin, max: cfg.IPv6SubnetMax, count: cfg.IPv6SubnetCount(), at: cfg.IPv6Subnet, contains: cfg.ContainsIPv6}
}

// fits reports whether a lease's subnets suit cfg: each family the config
// has, a subnet of it; each it has not, none (flanneld's
// isSubnetConfigCompat and isIPv6SubnetConfigCompat).
func fits4(cfg *lease.Config, p netip.Prefix) bool {
	if !cfg.EnableIPv4 {
		return !p.IsValid()
	}
	return cfg.Contains(p)
}

func fits6(cfg *lease.Config, p netip.Prefix) bool {
	if !cfg.EnableIPv6 {
		return !p.IsValid()
	}
	return cfg.ContainsIPv6(p)
}

// choose picks the subnet of one family for a new lease: the subnet
// file's if it fits the config and no lease holds it, else a random free
// one. flanneld takes the subnet file's IPv6 subnet only together with
// its IPv4 one, and checks only the IPv4 one is free; weft takes each
// where it is free, so a host whose IPv4 subnet went elsewhere keeps its
// IPv6 one, and never takes an IPv6 subnet another lease holds.
func (m *Store) choose(p pool, taken *subnetSet) (netip.Prefix, error) {
	if prev := p.prev; prev.IsValid() {
		switch {
		case !p.contains(prev):
			m.log.Warn("previous subnet does not fit the network config, not reusing it", "family", p.family, "subnet", prev,
				"network", p.network, "subnetLen", p.bits, "min", p.min, "max", p.max)
		case taken.has(prev):
			m.log.Warn("previous subnet is leased by another host, picking another", "family", p.family, "subnet", prev)
		default:
			m.log.Info("found previously leased subnet, reusing", "family", p.family, "subnet", prev)
			return prev, nil
		}
	}
	sn, ok := pickFree(p.count, p.at, taken)
	if !ok {
		return netip.Prefix{}, fmt.Errorf("%w: all %d %s subnets /%d between %s and %s of %s are leased",
			ErrNetworkFull, p.count, p.family, p.bits, p.min, p.max, p.network)
	}
	m.log.Debug("picking subnet", "family", p.family, "range", p.min.String()+" ... "+p.max.String(), "subnet", sn)
	return sn, nil
}

// tryAcquire makes one attempt; won is false when another host changed
// the leases first.
func (m *Store) tryAcquire(ctx context.Context, cli *clientv3.Client, cfg *lease.Config, attrs lease.Attrs, val []byte) (l lease.Lease, won bool, err error) {
	r, err := cli.Get(ctx, m.subnetsDir(), clientv3.WithPrefix())
	if err != nil {
		return lease.Lease{}, false, err
	}
	ls := m.readLeases(r, cfg, attrs)
	// Fails if a lease was created since the read: it may hold a
	// subnet picked here under another key.
	unchanged := clientv3.Compare(clientv3.CreateRevision(m.subnetsDir()), "<", ls.rev+1).WithPrefix()

	// (a) The lease this host holds already.
	if mine := ls.mine; mine != nil {
		same := clientv3.Compare(clientv3.ModRevision(string(mine.Key)), "=", mine.ModRevision)
		// A reservation (a key with no TTL put by an admin) stays one,
		// as flanneld keeps it.
		withTTL := mine.Lease != 0
		var extra []clientv3.Op
		sn, sn6 := ls.mine4, ls.mine6
		cmps := []clientv3.Cmp{same}
		switch fit4, fit6 := fits4(cfg, sn), fits6(cfg, sn6); {
		case fit4 && fit6:
			m.log.Info("found lease for current IP, reusing", "subnet", sn, "ipv6Subnet", sn6, "publicIP", attrs.PublicIP)
		case fit4:
			// The IPv6 part does not fit: the cluster turned IPv6
			// on (or off), or moved its IPv6 network. flanneld
			// deletes the lease and picks both subnets afresh, so
			// the running pods' IPv4 addresses leave the host's
			// subnet. weft keeps the IPv4 subnet and moves it, in
			// one transaction, to a key with a new IPv6 part (or
			// none): peers see the lease change, never go without it.
			if sn6 = (netip.Prefix{}); cfg.EnableIPv6 {
				if sn6, err = m.choose(m.pool6(cfg), ls.taken6); err != nil {
					return lease.Lease{}, false, err
				}
			}
			m.log.Info("found lease for current IP with an IPv6 part that does not fit the network config, keeping its IPv4 subnet",
				"subnet", sn, "ipv6Subnet", ls.mine6, "newIPv6Subnet", sn6, "publicIP", attrs.PublicIP)
			extra = []clientv3.Op{clientv3.OpDelete(string(mine.Key))}
			cmps = append(cmps, unchanged, clientv3.Compare(clientv3.Version(m.leaseKey(sn, sn6)), "=", 0))
		default:
			// flanneld's way: delete it and take a new lease.
			m.log.Info("found lease for current IP, but it does not fit the network config, deleting it",
				"subnet", sn, "ipv6Subnet", sn6, "publicIP", attrs.PublicIP)
			if _, err := cli.Txn(ctx).If(same).Then(clientv3.OpDelete(string(mine.Key))).Commit(); err != nil {
				return lease.Lease{}, false, err
			}
			return lease.Lease{}, false, nil
		}
		l, won, err := m.claim(ctx, cli, sn, sn6, val, attrs, cmps, withTTL, extra...)
		if won {
			if string(mine.Key) != m.leaseKey(sn, sn6) {
				m.mu.Lock()
				delete(m.owned, strings.TrimPrefix(string(mine.Key), m.subnetsDir()))
				m.mu.Unlock()
			}
			if mine.Lease != 0 {
				// The old etcd lease holds no key now.
				_, _ = cli.Revoke(ctx, clientv3.LeaseID(mine.Lease))
			}
		}
		return l, won, err
	}

	// (b) The subnets of the subnet file where free, (c) else random free
	// ones. Both families are picked before anything is written, so a
	// full network leaves nothing behind.
	var sn, sn6 netip.Prefix
	if cfg.EnableIPv4 {
		if sn, err = m.choose(m.pool4(cfg), ls.taken); err != nil {
			return lease.Lease{}, false, err
		}
	}
	if cfg.EnableIPv6 {
		if sn6, err = m.choose(m.pool6(cfg), ls.taken6); err != nil {
			return lease.Lease{}, false, err
		}
	}
	return m.claim(ctx, cli, sn, sn6, val, attrs,
		[]clientv3.Cmp{unchanged, clientv3.Compare(clientv3.Version(m.leaseKey(sn, sn6)), "=", 0)}, true)
}

// claim puts val at the key of sn and sn6 if cmps hold, attached to a
// fresh etcd lease when withTTL, and runs extra in the same transaction.
// A granted etcd lease that ends up unused is revoked, so a failed claim
// leaves nothing behind.
func (m *Store) claim(ctx context.Context, cli *clientv3.Client, sn, sn6 netip.Prefix, val []byte, attrs lease.Attrs, cmps []clientv3.Cmp, withTTL bool, extra ...clientv3.Op) (lease.Lease, bool, error) {
	name := lease.LeaseKey(sn, sn6)
	key := m.subnetsDir() + name
	var id clientv3.LeaseID
	var exp time.Time
	put := clientv3.OpPut(key, string(val))
	if withTTL {
		g, err := cli.Grant(ctx, int64(m.opts.TTL/time.Second))
		if err != nil {
			return lease.Lease{}, false, err
		}
		id, exp = g.ID, time.Now().Add(time.Duration(g.TTL)*time.Second)
		put = clientv3.OpPut(key, string(val), clientv3.WithLease(id))
	}
	r, err := cli.Txn(ctx).If(cmps...).Then(append(extra, put)...).Commit()
	if err != nil || !r.Succeeded {
		if withTTL {
			// Best effort: an unused lease expires by itself anyway.
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), m.opts.RequestTimeout)
			_, _ = cli.Revoke(rctx, id)
			cancel()
		}
		if err == nil {
			m.log.Info("another host changed the leases first, retrying", "subnet", sn, "ipv6Subnet", sn6)
		}
		return lease.Lease{}, false, err
	}
	m.mu.Lock()
	m.owned[name] = id
	m.mu.Unlock()
	m.log.Info("allocated lease to current node", "subnet", sn, "ipv6Subnet", sn6, "publicIP", attrs.PublicIP, "ttl", m.opts.TTL)
	return lease.Lease{Subnet: sn, IPv6Subnet: sn6, Attrs: attrs, Expiration: exp, Revision: r.Header.Revision}, true, nil
}

// pickFree returns a random one of the n subnets at(0) … at(n-1) that is
// not taken. Random probes find one quickly unless nearly all are taken;
// then the free ones are counted and one of them picked, in two passes
// with no list. A range too large to count (more than 2^22 subnets: IPv6)
// is probed 65,536 times more: only leases covering all but a
// thousandth of it (wide keys of another length) make that fail.
func pickFree(n uint64, at func(uint64) netip.Prefix, taken *subnetSet) (netip.Prefix, bool) {
	probe := func(tries int) (netip.Prefix, bool) {
		for range tries {
			if p := at(rand.Uint64N(n)); !taken.has(p) {
				return p, true
			}
		}
		return netip.Prefix{}, false
	}
	if p, ok := probe(64); ok || n > 1<<22 {
		if ok {
			return p, true
		}
		return probe(1 << 16)
	}
	var free uint64
	for i := range n {
		if !taken.has(at(i)) {
			free++
		}
	}
	if free == 0 {
		return netip.Prefix{}, false
	}
	k := rand.Uint64N(free)
	for i := range n {
		if p := at(i); !taken.has(p) {
			if k == 0 {
				return p, true
			}
			k--
		}
	}
	return netip.Prefix{}, false // not reached: nothing changed taken
}
