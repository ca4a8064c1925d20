package etcdstore

import (
	"context"
	"errors"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Follow makes the requests WatchChanges makes, on this store's
// connection, and none of its work: the listing of <prefix>/subnets/
// (listLeases; listed, if not nil, gets its revision and key count), then
// the watch of the prefix from the next revision (watchLeases), made again
// from the last revision seen when it ends and after a listing anew when
// that revision was compacted away, with WatchChanges' backoff. Each watch
// response goes to fn, on Follow's goroutine, as it arrives; nothing is
// parsed or kept.
//
// It is for load generators: `weft bench --etcd-load` stands in for
// thousands of hosts towards etcd from one process, where each host's
// parsed leases would not fit. It returns ctx.Err() when ctx ends, or
// ErrClosed.
func (m *Store) Follow(ctx context.Context, listed func(rev int64, keys int), fn func(clientv3.WatchResponse)) error {
	return m.followFrom(ctx, 0, listed, fn)
}

// followFrom is Follow resuming after rev (0: list first), as watchWith
// does with its state's revision.
func (m *Store) followFrom(ctx context.Context, rev int64, listed func(rev int64, keys int), fn func(clientv3.WatchResponse)) error {
	wait := m.firstRetry()
	for {
		if rev == 0 {
			err := m.retry(ctx, "listing leases", func(ctx context.Context, cli *clientv3.Client) error {
				r, err := m.listLeases(ctx, cli)
				if err != nil {
					return err
				}
				rev = r.Header.Revision
				if listed != nil {
					listed(rev, len(r.Kvs))
				}
				return nil
			})
			if err != nil {
				return err
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
		progressed := false
		for wr := range m.watchLeases(wctx, cli, rev+1) {
			if wr.CompactRevision != 0 {
				m.log.Warn("etcd: missed lease changes (revision compacted), listing all leases again",
					"resumeFrom", rev+1, "compacted", wr.CompactRevision)
				rev, progressed = 0, true
				break
			}
			if err := wr.Err(); err != nil {
				m.log.Warn("etcd: lease watch ended, resuming", "fromRevision", rev+1, "err", err)
				break
			}
			progressed = true
			if len(wr.Events) > 0 {
				rev = wr.Header.Revision
			}
			fn(wr)
		}
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
