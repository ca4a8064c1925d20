package etcdstore

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/lease"
)

// watchState is what Watch knows: the leases as of revision rev.
type watchState struct {
	rev    int64                  // 0: nothing listed yet
	leases map[string]lease.Lease // by key suffix, e.g. "10.5.42.0-24"
	bad    map[string]int64       // keys with unreadable values, by mod revision (logged once)
}

// Watch sends a snapshot of all leases under <prefix>/subnets/ (this
// host's included), sorted by subnet: first the current set, then a new
// one after each batch of changes. It follows a prefix watch, resuming
// from the last revision seen after a disconnect and listing anew when
// etcd compacted that revision away. While etcd is unreachable nothing is
// sent, so the last snapshot stands. A lease whose value is not flanneld's
// lease JSON is left out and logged; the rest stand. Snapshots carry each
// lease's mod revision but no Expiration. Watch returns ctx.Err() when ctx
// ends.
func (m *Store) Watch(ctx context.Context, out chan<- []lease.Lease) error {
	return m.watch(ctx, out, &watchState{})
}

func (m *Store) watch(ctx context.Context, out chan<- []lease.Lease, st *watchState) error {
	wait := m.firstRetry()
	for {
		if st.rev == 0 {
			if err := m.list(ctx, st); err != nil {
				return err
			}
			if !send(ctx, out, st) {
				return ctx.Err()
			}
		}
		cli, err := m.client()
		if errors.Is(err, ErrClosed) {
			return err
		}
		if err != nil {
			m.log.Warn("etcd: watching leases: no connection, retrying", "err", err, "in", wait)
			if !sleep(ctx, wait) {
				return ctx.Err()
			}
			wait = min(2*wait, m.opts.RetryMax)
			continue
		}
		wctx, cancel := context.WithCancel(ctx)
		wch := cli.Watch(clientv3.WithRequireLeader(wctx), m.subnetsDir(), clientv3.WithPrefix(), clientv3.WithRev(st.rev+1))
		progressed := m.follow(ctx, out, st, wch)
		cancel()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if progressed {
			wait = m.firstRetry()
		}
		if !sleep(ctx, wait) {
			return ctx.Err()
		}
		wait = min(2*wait, m.opts.RetryMax)
	}
}

// follow applies watch responses until the watch ends. It reports whether
// any arrived, to reset the backoff.
func (m *Store) follow(ctx context.Context, out chan<- []lease.Lease, st *watchState, wch clientv3.WatchChan) bool {
	progressed := false
	for wr := range wch {
		if wr.CompactRevision != 0 {
			m.log.Warn("etcd: missed lease changes (revision compacted), listing all leases again",
				"resumeFrom", st.rev+1, "compacted", wr.CompactRevision)
			st.rev = 0
			return true
		}
		if err := wr.Err(); err != nil {
			m.log.Warn("etcd: lease watch ended, resuming", "fromRevision", st.rev+1, "err", err)
			return progressed
		}
		progressed = true
		if len(wr.Events) == 0 {
			continue // progress notification
		}
		for _, ev := range wr.Events {
			m.apply(st, ev.Kv, ev.Type == clientv3.EventTypeDelete)
		}
		st.rev = wr.Header.Revision
		if !send(ctx, out, st) {
			return progressed
		}
	}
	return progressed
}

// list replaces st with the leases in etcd now, retrying until it can.
func (m *Store) list(ctx context.Context, st *watchState) error {
	return m.retry(ctx, "listing leases", func(ctx context.Context, cli *clientv3.Client) error {
		r, err := cli.Get(ctx, m.subnetsDir(), clientv3.WithPrefix())
		if err != nil {
			return err
		}
		old := st.leases
		st.leases = make(map[string]lease.Lease, len(r.Kvs))
		if st.bad == nil {
			st.bad = map[string]int64{}
		}
		for _, kv := range r.Kvs {
			name := strings.TrimPrefix(string(kv.Key), m.subnetsDir())
			if l, ok := old[name]; ok {
				st.leases[name] = l // so apply logs only what changed
			}
			m.apply(st, kv, false)
		}
		for name, l := range old {
			if _, ok := st.leases[name]; !ok {
				m.log.Info("subnet removed", "subnet", l.Subnet, "publicIP", l.Attrs.PublicIP)
			}
		}
		st.rev = r.Header.Revision
		return nil
	})
}

// apply records one key's new state.
func (m *Store) apply(st *watchState, kv *mvccpb.KeyValue, deleted bool) {
	name := strings.TrimPrefix(string(kv.Key), m.subnetsDir())
	if deleted {
		if l, ok := st.leases[name]; ok {
			m.log.Info("subnet removed", "subnet", l.Subnet, "publicIP", l.Attrs.PublicIP)
		}
		delete(st.leases, name)
		delete(st.bad, name)
		return
	}
	sn, err := lease.ParseSubnetKey(name)
	var a lease.Attrs
	if err == nil {
		err = json.Unmarshal(kv.Value, &a)
	}
	if err != nil {
		if st.bad[name] != kv.ModRevision {
			m.log.Error("ignoring unreadable subnet lease", "key", string(kv.Key), "value", string(kv.Value), "err", err)
			st.bad[name] = kv.ModRevision
		}
		delete(st.leases, name)
		return
	}
	delete(st.bad, name)
	if old, ok := st.leases[name]; !ok || old.Attrs.PublicIP != a.PublicIP {
		m.log.Info("subnet added", "subnet", sn, "publicIP", a.PublicIP, "backend", a.BackendType)
	}
	st.leases[name] = lease.Lease{Subnet: sn, Attrs: a, Revision: kv.ModRevision}
}

func send(ctx context.Context, out chan<- []lease.Lease, st *watchState) bool {
	snap := make([]lease.Lease, 0, len(st.leases))
	for _, l := range st.leases {
		snap = append(snap, l)
	}
	slices.SortFunc(snap, func(a, b lease.Lease) int { return a.Subnet.Addr().Compare(b.Subnet.Addr()) })
	select {
	case out <- snap:
		return true
	case <-ctx.Done():
		return false
	}
}
