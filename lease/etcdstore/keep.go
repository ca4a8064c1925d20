package etcdstore

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/lease"
	"github.com/weft-net/weft/lease/internal/backoff"
	"github.com/weft-net/weft/lease/internal/excerpt"
)

// keepState is what Keep knows of its own lease.
type keepState struct {
	own lease.Lease
	key string
	val []byte
	id  clientv3.LeaseID // 0 for a reservation (no TTL)
	exp time.Time        // when the etcd lease runs out, as last renewed
	rev int64            // last revision of the key seen
}

// Keep renews own before it expires (at expiry minus RenewMargin) and
// watches its key. If another party deletes the key, or the etcd lease
// ran out while etcd was unreachable, Keep claims the same subnet again
// if it is free; if another host holds it now, Keep returns an error
// wrapping ErrLeaseLost and the caller must exit (as flanneld does) so a
// restart leases a fresh subnet. While etcd is unreachable Keep retries,
// with backoff and logging. It returns nil when ctx ends, leaving the
// lease in etcd.
func (m *Store) Keep(ctx context.Context, own lease.Lease) error {
	val, err := json.Marshal(own.Attrs)
	if err != nil {
		return err
	}
	st := &keepState{own: own, key: m.leaseKey(own.Subnet, own.IPv6Subnet), val: val, exp: own.Expiration, rev: own.Revision}
	m.mu.Lock()
	id, known := m.owned[own.Key()]
	m.mu.Unlock()
	if known {
		st.id = id
	} else if err := m.adopt(ctx, st); err != nil {
		return err
	}
	wait := m.firstRetry()
	for ctx.Err() == nil {
		cli, err := m.client()
		if errors.Is(err, ErrClosed) {
			return err
		}
		if err != nil {
			d := backoff.Jitter(wait)
			m.log.Warn("etcd: keeping lease: no connection, retrying", "err", err, "in", d.Round(time.Millisecond))
			sleep(ctx, d)
			wait = min(2*wait, m.opts.RetryMax)
			continue
		}
		wctx, cancel := context.WithCancel(ctx)
		err = m.keepLoop(ctx, cli, st, watchAsync(wctx, cli, st.key, st.rev+1))
		cancel()
		if err != nil {
			return err
		}
		sleep(ctx, backoff.Jitter(m.firstRetry()))
	}
	return nil
}

// watchAsync watches key from rev. clientv3's Watch blocks until etcd
// confirms the watch, which during an outage is until etcd is back; Keep
// must go on renewing meanwhile, so the watch is made aside.
func watchAsync(ctx context.Context, cli *clientv3.Client, key string, rev int64) <-chan clientv3.WatchResponse {
	out := make(chan clientv3.WatchResponse)
	go func() {
		defer close(out)
		for wr := range cli.Watch(clientv3.WithRequireLeader(ctx), key, clientv3.WithRev(rev)) {
			select {
			case out <- wr:
			case <-ctx.Done():
				return
			}
		}
	}()
	return out
}

// adopt finds the etcd lease of a key this Manager did not acquire (own
// came from elsewhere) and renews it at once.
func (m *Store) adopt(ctx context.Context, st *keepState) error {
	var kv *mvccpb.KeyValue
	err := m.retry(ctx, "reading own lease", func(ctx context.Context, cli *clientv3.Client) error {
		r, err := cli.Get(ctx, st.key)
		if err != nil {
			return err
		}
		st.rev = r.Header.Revision
		if len(r.Kvs) > 0 {
			kv = r.Kvs[0]
		}
		return nil
	})
	if err != nil {
		return err
	}
	if kv == nil {
		return m.reclaim(ctx, st, "own lease missing")
	}
	if err := m.checkHolder(st, kv.Value); err != nil {
		return err
	}
	st.id, st.exp = clientv3.LeaseID(kv.Lease), time.Now() // renew at once to learn the expiry
	return nil
}

// renewAt is when to renew: RenewMargin before expiry, as flanneld; half
// the TTL early when the margin is not below the TTL (a short test TTL
// with the default margin), so renewals never spin.
func (m *Store) renewAt(st *keepState) time.Time {
	margin := m.opts.RenewMargin
	if margin >= m.opts.TTL {
		margin = m.opts.TTL / 2
	}
	return st.exp.Add(-margin)
}

// keepLoop renews and follows one watch of the own key. It returns nil to
// have the watch made again, or an error when the lease is lost.
func (m *Store) keepLoop(ctx context.Context, cli *clientv3.Client, st *keepState, wch <-chan clientv3.WatchResponse) error {
	timer := time.NewTimer(0)
	defer timer.Stop()
	arm := func(at time.Time) {
		timer.Stop()
		select {
		case <-timer.C:
		default:
		}
		if st.id == 0 {
			return // a reservation never expires
		}
		d := time.Until(at)
		m.log.Info("waiting to renew lease", "lease", st.own.String(), "in", d.Round(time.Millisecond))
		timer.Reset(max(d, 0))
	}
	arm(m.renewAt(st))
	renewWait := m.firstRetry()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
			rctx, cancel := context.WithTimeout(ctx, m.opts.RequestTimeout)
			r, err := cli.KeepAliveOnce(rctx, st.id)
			cancel()
			switch {
			case err == nil:
				st.exp = time.Now().Add(time.Duration(r.TTL) * time.Second)
				renewWait = m.firstRetry()
				m.log.Debug("renewed lease", "lease", st.own.String(), "ttl", time.Duration(r.TTL)*time.Second)
				arm(m.renewAt(st))
			case errors.Is(err, rpctypes.ErrLeaseNotFound):
				// It ran out (etcd was away longer than the margin)
				// or was revoked; its key went with it.
				if err := m.reclaim(ctx, st, "etcd lease expired"); err != nil {
					return err
				}
				arm(m.renewAt(st))
			case ctx.Err() != nil:
				return nil
			default:
				d := backoff.Jitter(renewWait)
				m.log.Warn("etcd: renewing lease failed, retrying", "lease", st.own.String(), "err", err, "in", d.Round(time.Millisecond))
				arm(time.Now().Add(d))
				renewWait = min(2*renewWait, m.opts.RetryMax)
			}
		case wr, ok := <-wch:
			if !ok {
				return nil
			}
			if err := wr.Err(); err != nil {
				if wr.CompactRevision != 0 {
					// Missed events: look at the key as it is now.
					st.rev = wr.CompactRevision - 1
					return m.adopt(ctx, st)
				}
				m.log.Warn("etcd: watching own lease failed, watching again", "lease", st.own.String(), "err", err)
				return nil
			}
			for _, ev := range wr.Events {
				st.rev = ev.Kv.ModRevision
				switch ev.Type {
				case clientv3.EventTypeDelete:
					if err := m.reclaim(ctx, st, "own lease deleted"); err != nil {
						return err
					}
					arm(m.renewAt(st))
					return nil // watch again from the reclaim
				case clientv3.EventTypePut:
					if err := m.checkHolder(st, ev.Kv.Value); err != nil {
						return err
					}
					if id := clientv3.LeaseID(ev.Kv.Lease); id != st.id {
						// Re-put by someone with our identity (another
						// weft or flanneld started with this PublicIP):
						// follow its etcd lease.
						st.id, st.exp = id, time.Now()
						arm(st.exp)
					}
				}
			}
		}
	}
}

// checkHolder accepts a value as ours when it names this host (sameHost).
func (m *Store) checkHolder(st *keepState, val []byte) error {
	if bytes.Equal(val, st.val) {
		return nil
	}
	var a lease.Attrs
	if err := json.Unmarshal(val, &a); err != nil || !sameHost(a, st.own.Attrs) {
		return fmt.Errorf("%w: %s is now held by another host (%s)", ErrLeaseLost, st.own, excerpt.Quote(val, logValueMax))
	}
	return nil
}

// reclaim claims the own subnets again after their key went away: under
// the same key, if it is absent and no other key holds either subnet
// (another host may have taken the IPv6 subnet under a key of its own).
func (m *Store) reclaim(ctx context.Context, st *keepState, why string) error {
	m.log.Warn("reclaiming subnet lease", "lease", st.own.String(), "reason", why)
	var l lease.Lease
	var won bool
	var holder []byte
	races := 0
	err := m.retry(ctx, "reclaiming subnet lease", func(ctx context.Context, cli *clientv3.Client) error {
		for {
			r, err := cli.Get(ctx, m.subnetsDir(), clientv3.WithPrefix())
			if err != nil {
				return err
			}
			for _, kv := range r.Kvs {
				if string(kv.Key) != st.key {
					continue
				}
				// Back already: ours (re-put by another process
				// with our identity) or lost.
				holder = kv.Value
				st.rev = kv.ModRevision
				if err := m.checkHolder(st, holder); err != nil {
					return err
				}
				st.id, st.exp = clientv3.LeaseID(kv.Lease), time.Now()
				return nil
			}
			if by := m.holderOf(r.Kvs, st.own); by != nil {
				holder = by.Value
				return fmt.Errorf("%w: %s is now held by another host under %s (%s)", ErrLeaseLost, st.own,
					excerpt.Quote(by.Key, logKeyMax), excerpt.Quote(by.Value, logValueMax))
			}
			l, won, err = m.claim(ctx, cli, st.own.Subnet, st.own.IPv6Subnet, st.val, st.own.Attrs, []clientv3.Cmp{
				clientv3.Compare(clientv3.Version(st.key), "=", 0),
				clientv3.Compare(clientv3.CreateRevision(m.subnetsDir()), "<", r.Header.Revision+1).WithPrefix(),
			}, true)
			if err != nil || won {
				return err
			}
			if races++; races > maxRaces {
				return fmt.Errorf("lost %d races reclaiming %s", maxRaces, st.own)
			}
		}
	})
	if err != nil {
		if errors.Is(err, ErrLeaseLost) {
			m.log.Error("subnet lease lost to another host; exiting so a restart leases a new subnet", "lease", st.own.String(), "holder", excerpt.Quote(holder, logValueMax))
		}
		return err
	}
	if won {
		old := st.id
		m.mu.Lock()
		st.id = m.owned[st.own.Key()]
		m.mu.Unlock()
		if old != 0 && old != st.id {
			// Deleted key, live etcd lease: give the lease back.
			if cli, err := m.client(); err == nil {
				rctx, cancel := context.WithTimeout(ctx, m.opts.RequestTimeout)
				_, _ = cli.Revoke(rctx, old)
				cancel()
			}
		}
		st.exp, st.rev = l.Expiration, l.Revision
		m.log.Info("reclaimed subnet lease", "lease", st.own.String())
	}
	return nil
}

// holderOf returns a key that holds one of own's subnets, read as
// flanneld reads keys; nil if there is none. Only the same subnet
// counts: a key overlapping it otherwise is no lease a host of this
// network takes (the hostile "0.0.0.0-0" must not make a host give up).
func (m *Store) holderOf(kvs []*mvccpb.KeyValue, own lease.Lease) *mvccpb.KeyValue {
	same := func(a, b netip.Prefix) bool { return a.IsValid() && a == b }
	for _, kv := range kvs {
		name := strings.TrimPrefix(string(kv.Key), m.subnetsDir())
		v4, v6, err := lease.ParseSubnetKey(name)
		if err != nil {
			v4, v6 = looseSubnetKey(name)
		}
		if same(v4, own.Subnet) || same(v6, own.IPv6Subnet) {
			return kv
		}
	}
	return nil
}
