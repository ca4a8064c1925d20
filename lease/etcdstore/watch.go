package etcdstore

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/internal/claim"
	"github.com/weft-net/weft/lease"
	"github.com/weft-net/weft/lease/internal/backoff"
	"github.com/weft-net/weft/lease/internal/excerpt"
)

// watchState is what Watch knows: the leases as of revision rev.
type watchState struct {
	rev    int64                  // 0: nothing listed yet
	leases map[string]lease.Lease // by key suffix, e.g. "10.5.42.0-24"
	// bad holds the keys whose name or value is unreadable: each is
	// logged once, when first seen, however often it changes.
	bad map[string]*badKey
	// dup holds keys left out of snapshots because another key claims
	// the same subnet (a dual-stack flanneld's "a-24&v6-64" beside
	// "a-24"); each is logged once.
	dup map[string]bool
	// view settles the one-lease-per-subnet rule as leases change, for
	// WatchChanges; nil until the first Changes and after a listing.
	view *claim.Set[string, netip.Prefix, *aged]
}

// badKey counts the unreadable revisions of one key.
type badKey struct {
	rev  int64 // last mod revision seen
	revs int   // unreadable revisions seen
}

// Log bounds: a value (or key) can be as large as etcd's request limit,
// ~1.5 MiB, and is written by whoever can write to the prefix.
const (
	logValueMax = excerpt.Max
	logKeyMax   = 128
)

// Watch sends a snapshot of all leases under <prefix>/subnets/ (this
// host's included), sorted by ID (lease.CompareID): first the current
// set, then a new one after each batch of changes. It follows a prefix
// watch, resuming from the last revision seen after a disconnect and
// listing anew when etcd compacted that revision away. While etcd is unreachable nothing is
// sent, so the last snapshot stands. A key that is not SubnetKey's
// spelling, or a value that is not flanneld's lease JSON with a usable
// PublicIP, is left out and logged once (a bounded excerpt); the rest
// stand. Each subnet, IPv4 or IPv6, appears once: of leases sharing one,
// the oldest stands (see snapshot). Snapshots carry each
// lease's mod revision but no Expiration. Watch returns ctx.Err() when ctx
// ends.
func (m *Store) Watch(ctx context.Context, out chan<- []lease.Lease) error {
	return m.watch(ctx, out, &watchState{})
}

// WatchChanges is Watch sending changes (lease.ChangeWatcher): the first
// is Full, as is the first after a listing anew (a watch that cannot
// resume, a compaction); the others name only the leases that changed,
// and what their change did to the one-lease-per-subnet rule (a younger
// key standing once the older one is deleted). Building one costs the
// size of the change, not of the cluster.
func (m *Store) WatchChanges(ctx context.Context, out chan<- lease.Changes) error {
	return watchWith(m, ctx, out, m.changes, &watchState{})
}

func (m *Store) watch(ctx context.Context, out chan<- []lease.Lease, st *watchState) error {
	return watchWith(m, ctx, out, m.snapshot, st)
}

// watchWith follows the leases, sending build's view of st after each
// batch of changes.
func watchWith[T any](m *Store, ctx context.Context, out chan<- T, build func(*watchState) T, st *watchState) error {
	relist := func() error {
		if st.rev != 0 {
			return nil
		}
		if err := m.list(ctx, st); err != nil {
			return err
		}
		select {
		case out <- build(st):
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return m.watchLoop(ctx, relist, func(cli *clientv3.Client) bool {
		wctx, cancel := context.WithCancel(ctx)
		return follow(m, ctx, out, build, st, m.watchLeases(wctx, cli, st.rev+1), cancel)
	})
}

// watchLoop is the skeleton every lease watch shares: relist (which lists
// when the watcher has lost its place, and returns only for good), a
// client (retried with backoff while there is no connection), one watch
// (which reports whether it got anywhere), and backoff between watches,
// reset by a watch that did.
func (m *Store) watchLoop(ctx context.Context, relist func() error, watch func(*clientv3.Client) (progressed bool)) error {
	wait := m.firstRetry()
	for {
		if err := relist(); err != nil {
			return err
		}
		cli, err := m.client()
		if errors.Is(err, ErrClosed) {
			return err
		}
		if err != nil {
			d := backoff.Jitter(wait)
			m.log.Warn("etcd: watching leases: no connection, retrying", "err", err, "in", d.Round(time.Millisecond))
			if !sleep(ctx, d) {
				return ctx.Err()
			}
			wait = min(2*wait, m.opts.RetryMax)
			continue
		}
		progressed := watch(cli)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if progressed {
			wait = m.firstRetry()
		}
		if !sleep(ctx, backoff.Jitter(wait)) {
			return ctx.Err()
		}
		wait = min(2*wait, m.opts.RetryMax)
	}
}

// follow applies watch responses until the watch ends. It reports whether
// any arrived, to reset the backoff. One goroutine applies responses as
// they come while this one sends snapshots: while the receiver is busy
// with a snapshot, a burst of changes (hosts joining one by one) keeps
// being applied, and the next snapshot is the latest state, not one of a
// backlog of stale ones each costing the receiver O(hosts). stop ends the
// watch (wch closes); follow returns only once the reader is done with st.
func follow[T any](m *Store, ctx context.Context, out chan<- T, build func(*watchState) T, st *watchState, wch clientv3.WatchChan, stop func()) bool {
	var (
		mu         sync.Mutex
		progressed bool
	)
	dirty := make(chan struct{}, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for wr := range wch {
			mu.Lock()
			end, changed, prog := m.take(st, wr)
			progressed = progressed || prog
			mu.Unlock()
			if changed {
				select {
				case dirty <- struct{}{}:
				default:
				}
			}
			if end {
				return
			}
		}
	}()
	finish := func() bool {
		stop()
		<-done
		mu.Lock()
		defer mu.Unlock()
		return progressed
	}
	sendLatest := func() bool {
		mu.Lock()
		if st.rev == 0 { // compacted: the caller lists anew
			mu.Unlock()
			return true
		}
		snap := build(st)
		mu.Unlock()
		select {
		case out <- snap:
			return true
		case <-ctx.Done():
			return false
		}
	}
	for {
		select {
		case <-dirty:
			if !sendLatest() {
				return finish()
			}
		case <-done:
			select {
			case <-dirty:
				sendLatest()
			default:
			}
			return finish()
		case <-ctx.Done():
			return finish()
		}
	}
}

// take applies one watch response. It reports whether the watch must end
// (compaction, which also resets st.rev so the caller lists anew; an
// error), whether the leases changed, and whether the response was
// progress (anything but an error).
func (m *Store) take(st *watchState, wr clientv3.WatchResponse) (end, changed, progress bool) {
	if wr.CompactRevision != 0 {
		m.log.Warn("etcd: missed lease changes (revision compacted), listing all leases again",
			"resumeFrom", st.rev+1, "compacted", wr.CompactRevision)
		st.rev = 0
		return true, false, true
	}
	if err := wr.Err(); err != nil {
		m.log.Warn("etcd: lease watch ended, resuming", "fromRevision", st.rev+1, "err", err)
		return true, false, false
	}
	if len(wr.Events) == 0 {
		return false, false, true // progress notification
	}
	for _, ev := range wr.Events {
		m.apply(st, ev.Kv, ev.Type == clientv3.EventTypeDelete)
	}
	st.rev = wr.Header.Revision
	return false, true, true
}

// listLeases is the listing a lease watch starts from: every key under
// <prefix>/subnets/. Watch, WatchChanges and Follow make it alike.
func (m *Store) listLeases(ctx context.Context, cli *clientv3.Client) (*clientv3.GetResponse, error) {
	return cli.Get(ctx, m.subnetsDir(), clientv3.WithPrefix())
}

// watchLeases is the watch of <prefix>/subnets/ from rev that Watch,
// WatchChanges and Follow make alike: on a leader only, so a member cut
// off from its cluster ends the watch rather than go silent.
func (m *Store) watchLeases(ctx context.Context, cli *clientv3.Client, rev int64) clientv3.WatchChan {
	return cli.Watch(clientv3.WithRequireLeader(ctx), m.subnetsDir(), clientv3.WithPrefix(), clientv3.WithRev(rev))
}

// list replaces st with the leases in etcd now, retrying until it can.
func (m *Store) list(ctx context.Context, st *watchState) error {
	return m.retry(ctx, "listing leases", func(ctx context.Context, cli *clientv3.Client) error {
		r, err := m.listLeases(ctx, cli)
		if err != nil {
			return err
		}
		old := st.leases
		st.leases = make(map[string]lease.Lease, len(r.Kvs))
		if st.bad == nil {
			st.bad = map[string]*badKey{}
		}
		present := make(map[string]bool, len(r.Kvs))
		for _, kv := range r.Kvs {
			name := strings.TrimPrefix(string(kv.Key), m.subnetsDir())
			present[name] = true
			if l, ok := old[name]; ok {
				st.leases[name] = l // so apply logs only what changed
			}
			m.apply(st, kv, false)
		}
		for name := range st.bad {
			if !present[name] {
				delete(st.bad, name) // deleted while the watch was away
			}
		}
		for name := range st.dup {
			if !present[name] {
				delete(st.dup, name)
			}
		}
		for name, l := range old {
			if _, ok := st.leases[name]; !ok {
				// Debug: admission logs the peer's departure at Info, once.
				m.log.Debug("subnet lease gone", "lease", l.String(), "publicIP", l.Attrs.PublicIP)
			}
		}
		st.rev = r.Header.Revision
		st.view = nil // the next Changes is Full
		return nil
	})
}

// apply records one key's new state. A key or value that cannot be read
// leaves that key out of the snapshots and is logged once (a bounded
// excerpt of it); the other leases stand.
func (m *Store) apply(st *watchState, kv *mvccpb.KeyValue, deleted bool) {
	name := strings.TrimPrefix(string(kv.Key), m.subnetsDir())
	if deleted {
		if l, ok := st.leases[name]; ok {
			// Debug: admission logs the peer's departure at Info, once.
			m.log.Debug("subnet lease gone", "lease", l.String(), "publicIP", l.Attrs.PublicIP)
		}
		if b, ok := st.bad[name]; ok {
			m.log.Info("unreadable subnet lease removed", "key", excerpt.Quote(kv.Key, logKeyMax), "unreadableRevisions", b.revs)
		}
		delete(st.leases, name)
		delete(st.bad, name)
		delete(st.dup, name)
		st.viewDelete(name)
		return
	}
	sn, sn6, err := lease.ParseSubnetKey(name)
	var a lease.Attrs
	if err == nil {
		err = json.Unmarshal(kv.Value, &a)
	}
	if err != nil {
		if st.bad == nil {
			st.bad = map[string]*badKey{}
		}
		b := st.bad[name]
		if b == nil {
			b = &badKey{}
			st.bad[name] = b
			m.unreadable.Add(1)
			m.log.Error("ignoring unreadable subnet lease", "key", excerpt.Quote(kv.Key, logKeyMax),
				"value", excerpt.Quote(kv.Value, logValueMax), "valueBytes", len(kv.Value), "err", err,
				"unreadableKeys", len(st.bad))
		}
		if b.rev != kv.ModRevision {
			b.rev = kv.ModRevision
			b.revs++
		}
		delete(st.leases, name)
		st.viewDelete(name)
		return
	}
	if b, ok := st.bad[name]; ok {
		m.log.Info("subnet lease readable again", "key", excerpt.Quote(name, logKeyMax), "unreadableRevisions", b.revs)
		delete(st.bad, name)
	}
	l := lease.Lease{Subnet: sn, IPv6Subnet: sn6, Attrs: a, Revision: kv.ModRevision, CreateRevision: kv.CreateRevision}
	if old, ok := st.leases[name]; !ok || old.Attrs.PublicIP != a.PublicIP || old.Attrs.PublicIPv6 != a.PublicIPv6 {
		m.log.Debug("subnet lease seen", "lease", l.String(), "publicIP", a.PublicIP, "publicIPv6", a.PublicIPv6, "backend", a.BackendType)
	}
	st.leases[name] = l
	st.viewPut(name, l)
}

// send sends the snapshot (see snapshot).
func (m *Store) send(ctx context.Context, out chan<- []lease.Lease, st *watchState) bool {
	select {
	case out <- m.snapshot(st):
		return true
	case <-ctx.Done():
		return false
	}
}

// snapshot is st's leases sorted by ID (lease.CompareID), then IPv6
// subnet, each subnet of either family once. Keys that share a subnet (flanneld's "a-24"
// beside a dual-stack "a-24&v6-64", or a second key reusing another's
// IPv6 subnet under another IPv4 one) are settled by age: the lease
// created first (lowest create revision, then mod revision, then name)
// stands, as etcd's create-if-absent would have had it with one key, and
// as admission orders leases; each later one that collides with a lease
// standing is left out and logged once. A renewal or a restart's re-put
// keeps a key's create revision, so a host never loses its subnets to a
// younger key by renewing.
func (m *Store) snapshot(st *watchState) []lease.Lease {
	// Sort positions in a slice of (name, lease) pairs: no map lookup per
	// comparison (at 5,000 leases those were a fifth of a host's CPU per
	// lease event) and no copying of leases per swap.
	type named struct {
		name string
		l    lease.Lease
	}
	all := make([]named, 0, len(st.leases))
	dual := false
	for name, l := range st.leases {
		all = append(all, named{name, l})
		dual = dual || l.IPv6Subnet.IsValid()
	}
	order := make([]int32, len(all))
	for i := range order {
		order[i] = int32(i)
	}
	bySubnet := func(i, j int32) int {
		a, b := &all[i].l, &all[j].l
		if c := lease.CompareID(*a, *b); c != 0 {
			return c
		}
		return a.IPv6Subnet.Addr().Compare(b.IPv6Subnet.Addr())
	}
	byAge := func(i, j int32) int {
		a, b := &all[i], &all[j]
		if c := cmp.Compare(created(a.l), created(b.l)); c != 0 {
			return c
		}
		if c := cmp.Compare(a.l.Revision, b.l.Revision); c != 0 {
			return c
		}
		return strings.Compare(a.name, b.name)
	}
	dup := func(name string, l lease.Lease, subnet netip.Prefix, heldBy lease.Lease) {
		m.noteDuplicate(st, name, l, subnet, heldBy)
	}
	snap := make([]lease.Lease, 0, len(all))
	if !dual {
		// IPv4 leases only: sorted by subnet then age, the first of a
		// run with one subnet stands. One sort.
		slices.SortFunc(order, func(i, j int32) int {
			if c := bySubnet(i, j); c != 0 {
				return c
			}
			return byAge(i, j)
		})
		for _, i := range order {
			l := all[i].l
			if n := len(snap); n > 0 && snap[n-1].Subnet == l.Subnet {
				dup(all[i].name, l, l.Subnet, snap[n-1])
				continue
			}
			snap = append(snap, l)
		}
		return snap
	}
	// With IPv6 subnets one lease may collide with two others, one per
	// family: take the leases oldest first, each whose subnets are free.
	slices.SortFunc(order, byAge)
	held := make(map[netip.Prefix]int32, 2*len(all))
	kept := order[:0]
	for _, i := range order {
		l := &all[i].l
		if w, ok := held[l.Subnet]; ok && l.Subnet.IsValid() {
			dup(all[i].name, *l, l.Subnet, all[w].l)
			continue
		}
		if w, ok := held[l.IPv6Subnet]; ok && l.IPv6Subnet.IsValid() {
			dup(all[i].name, *l, l.IPv6Subnet, all[w].l)
			continue
		}
		if l.Subnet.IsValid() {
			held[l.Subnet] = i
		}
		if l.IPv6Subnet.IsValid() {
			held[l.IPv6Subnet] = i
		}
		kept = append(kept, i)
	}
	slices.SortFunc(kept, bySubnet)
	for _, i := range kept {
		snap = append(snap, all[i].l)
	}
	return snap
}

// created is the revision a lease was created at: its create revision,
// or, where that is unknown (0), its mod revision.
func created(l lease.Lease) int64 {
	if l.CreateRevision != 0 {
		return l.CreateRevision
	}
	return l.Revision
}
