package etcdstore

import (
	"context"

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
	relist := func() error {
		if rev != 0 {
			return nil
		}
		return m.retry(ctx, "listing leases", func(ctx context.Context, cli *clientv3.Client) error {
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
	}
	return m.watchLoop(ctx, relist, func(cli *clientv3.Client) bool {
		wctx, cancel := context.WithCancel(ctx)
		defer cancel()
		progressed := false
		for wr := range m.watchLeases(wctx, cli, rev+1) {
			if wr.CompactRevision != 0 {
				m.log.Warn("etcd: missed lease changes (revision compacted), listing all leases again",
					"resumeFrom", rev+1, "compacted", wr.CompactRevision)
				rev = 0
				return true
			}
			if err := wr.Err(); err != nil {
				m.log.Warn("etcd: lease watch ended, resuming", "fromRevision", rev+1, "err", err)
				return progressed
			}
			progressed = true
			if len(wr.Events) > 0 {
				rev = wr.Header.Revision
			}
			fn(wr)
		}
		return progressed
	})
}
