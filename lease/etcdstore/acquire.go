package etcdstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
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
// PublicIP already holds, if it fits the config (re-put with a fresh etcd
// lease, as flanneld does); else PreviousSubnet if it is free; else a
// random free subnet between SubnetMin and SubnetMax. Claims are etcd
// transactions on the key's absence, so two hosts never hold one subnet.
// When the network is full the error wraps ErrNetworkFull and nothing is
// left behind in etcd. etcd being unreachable is retried until ctx ends.
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

// looseSubnetKey reads a key as flanneld's regular expression
// (\d+\.\d+\.\d+\.\d+)-(\d+) and strconv.ParseUint do: "10.5.2.0-024" or
// "10.5.2.1-24" name subnet 10.5.2.0/24 for a flanneld host, though
// ParseSubnetKey refuses them.
func looseSubnetKey(name string) (netip.Prefix, bool) {
	v4, _, _ := strings.Cut(name, "&")
	a, l, ok := strings.Cut(v4, "-")
	if !ok {
		return netip.Prefix{}, false
	}
	addr, err := netip.ParseAddr(a)
	if err != nil || !addr.Is4() {
		return netip.Prefix{}, false
	}
	n, err := strconv.ParseUint(l, 10, 8)
	if err != nil || n > 32 {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(addr, int(n)).Masked(), true
}

// tryAcquire makes one attempt; won is false when another host changed the
// chosen key first.
func (m *Store) tryAcquire(ctx context.Context, cli *clientv3.Client, cfg *lease.Config, attrs lease.Attrs, val []byte) (l lease.Lease, won bool, err error) {
	r, err := cli.Get(ctx, m.subnetsDir(), clientv3.WithPrefix())
	if err != nil {
		return lease.Lease{}, false, err
	}
	taken := make(map[netip.Prefix]bool, len(r.Kvs))
	var mine *mvccpb.KeyValue
	var mineSubnet netip.Prefix
	for _, kv := range r.Kvs {
		name := strings.TrimPrefix(string(kv.Key), m.subnetsDir())
		sn, _, err := lease.ParseSubnetKey(name)
		if err != nil {
			// Not a key weft reads, but flanneld may: leave its
			// subnet alone rather than lease it a second time.
			if p, ok := looseSubnetKey(name); ok {
				taken[p] = true
			}
			continue
		}
		taken[sn] = true
		var a lease.Attrs
		if mine == nil && json.Unmarshal(kv.Value, &a) == nil && a.PublicIP == attrs.PublicIP {
			mine, mineSubnet = kv, sn
		}
	}

	// (a) The lease this PublicIP holds already.
	if mine != nil {
		if cfg.Contains(mineSubnet) {
			m.log.Info("found lease for current IP, reusing", "subnet", mineSubnet, "publicIP", attrs.PublicIP)
			cond := clientv3.Compare(clientv3.ModRevision(string(mine.Key)), "=", mine.ModRevision)
			if mine.Lease == 0 {
				// A reservation (a key with no TTL put by an admin):
				// flanneld keeps it without TTL.
				return m.claim(ctx, cli, mineSubnet, val, attrs, cond, false)
			}
			l, won, err := m.claim(ctx, cli, mineSubnet, val, attrs, cond, true)
			if won {
				// The old etcd lease holds no key now.
				_, _ = cli.Revoke(ctx, clientv3.LeaseID(mine.Lease))
			}
			return l, won, err
		}
		m.log.Info("found lease for current IP, but it does not fit the network config, deleting it", "subnet", mineSubnet, "publicIP", attrs.PublicIP)
		if _, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(string(mine.Key)), "=", mine.ModRevision)).
			Then(clientv3.OpDelete(string(mine.Key))).Commit(); err != nil {
			return lease.Lease{}, false, err
		}
		return lease.Lease{}, false, nil
	}

	// (b) The subnet of the subnet file, if free.
	if prev := m.opts.PreviousSubnet; prev.IsValid() {
		switch {
		case !cfg.Contains(prev):
			m.log.Warn("previous subnet does not fit the network config, not reusing it", "subnet", prev,
				"network", cfg.Network, "subnetLen", cfg.SubnetLen, "min", cfg.SubnetMin, "max", cfg.SubnetMax)
		case taken[prev]:
			m.log.Warn("previous subnet is leased by another host, picking another", "subnet", prev)
		default:
			m.log.Info("found previously leased subnet, reusing", "subnet", prev)
			return m.claim(ctx, cli, prev, val, attrs, clientv3.Compare(clientv3.Version(m.subnetKey(prev)), "=", 0), true)
		}
	}

	// (c) A random free subnet.
	sn, ok := pickFree(cfg, taken)
	if !ok {
		return lease.Lease{}, false, fmt.Errorf("%w: all %d subnets /%d between %s and %s of %s are leased",
			ErrNetworkFull, cfg.SubnetCount(), cfg.SubnetLen, cfg.SubnetMin, cfg.SubnetMax, cfg.Network)
	}
	m.log.Debug("picking subnet", "range", cfg.SubnetMin.String()+" ... "+cfg.SubnetMax.String(), "subnet", sn)
	return m.claim(ctx, cli, sn, val, attrs, clientv3.Compare(clientv3.Version(m.subnetKey(sn)), "=", 0), true)
}

// claim puts val at sn's key if cond holds, attached to a fresh etcd lease
// when withTTL. A granted etcd lease that ends up unused is revoked, so a
// failed claim leaves nothing behind.
func (m *Store) claim(ctx context.Context, cli *clientv3.Client, sn netip.Prefix, val []byte, attrs lease.Attrs, cond clientv3.Cmp, withTTL bool) (lease.Lease, bool, error) {
	key := m.subnetKey(sn)
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
	r, err := cli.Txn(ctx).If(cond).Then(put).Commit()
	if err != nil || !r.Succeeded {
		if withTTL {
			// Best effort: an unused lease expires by itself anyway.
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), m.opts.RequestTimeout)
			_, _ = cli.Revoke(rctx, id)
			cancel()
		}
		if err == nil {
			m.log.Info("subnet was claimed by another host first, retrying", "subnet", sn)
		}
		return lease.Lease{}, false, err
	}
	m.mu.Lock()
	m.owned[sn] = id
	m.mu.Unlock()
	m.log.Info("allocated lease to current node", "subnet", sn, "publicIP", attrs.PublicIP, "ttl", m.opts.TTL)
	return lease.Lease{Subnet: sn, Attrs: attrs, Expiration: exp, Revision: r.Header.Revision}, true, nil
}

// pickFree returns a random subnet between SubnetMin and SubnetMax that is
// not taken. Random probes find one quickly unless the range is nearly
// full; then the free ones are listed.
func pickFree(cfg *lease.Config, taken map[netip.Prefix]bool) (netip.Prefix, bool) {
	n := cfg.SubnetCount()
	at := cfg.Subnet
	for range 64 {
		if p := at(rand.Uint64N(n)); !taken[p] {
			return p, true
		}
	}
	if n > uint64(len(taken))+1<<20 {
		// Too many to list, and 64 misses in a row with far more
		// free than taken cannot happen in practice: probe on.
		for {
			if p := at(rand.Uint64N(n)); !taken[p] {
				return p, true
			}
		}
	}
	var free []netip.Prefix
	for i := range n {
		if p := at(i); !taken[p] {
			free = append(free, p)
		}
	}
	if len(free) == 0 {
		return netip.Prefix{}, false
	}
	return free[rand.IntN(len(free))], true
}
