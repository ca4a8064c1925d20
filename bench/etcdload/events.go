package etcdload

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/lease"
)

// driver makes the lease events the hosts watch: hosts joining and
// leaving, each one etcd write as a host's store makes it.
type driver struct {
	cli  *clientv3.Client
	dir  string // <prefix>/subnets/
	ttl  int64  // seconds, as the hosts' stores grant
	next atomic.Int64
	rev  atomic.Int64 // the newest revision seen, for the claims' compare
	lost atomic.Int64 // claims lost to another join
	// serial, unless joins are to race (Options.ConcurrentJoins), lets
	// one join's claim at a time reach etcd, so each wins at once.
	serial *sync.Mutex
	joined chan clientv3.LeaseID
}

func newDriver(cli *clientv3.Client, dir string, ttl time.Duration, firstSubnet int, concurrentJoins bool) *driver {
	d := &driver{cli: cli, dir: dir, ttl: int64(ttl / time.Second), joined: make(chan clientv3.LeaseID, 1<<16)}
	if !concurrentJoins {
		d.serial = &sync.Mutex{}
	}
	d.next.Store(int64(firstSubnet))
	return d
}

// write is one event: its revision and when its request was sent.
type write struct {
	rev int64
	at  time.Time
}

func (d *driver) seen(rev int64) {
	for {
		r := d.rev.Load()
		if rev <= r || d.rev.CompareAndSwap(r, rev) {
			return
		}
	}
}

// join is a new host claiming a free subnet with the write of
// etcdstore's claim (lease/etcdstore/acquire.go, tryAcquire and claim):
// a Grant of the TTL, then a Txn that puts the lease JSON attached to it
// if no lease was created since the host's listing and the key is free.
// The event is the Txn. The host's listing before it (a Get of the
// prefix) is the joining host's start, which the start storm measures,
// and is left out: the compare takes the newest revision the driver has
// seen instead.
func (d *driver) join(ctx context.Context) (write, error) {
	i := int(d.next.Add(1) - 1)
	if i > maxSubnet {
		return write{}, fmt.Errorf("no free subnet left for a joining host (%d)", i)
	}
	a, err := attrs(i)
	if err != nil {
		return write{}, err
	}
	val, err := a.MarshalJSON()
	if err != nil {
		return write{}, err
	}
	key := d.dir + lease.SubnetKey(subnet(i))
	g, err := d.cli.Grant(ctx, d.ttl)
	if err != nil {
		return write{}, fmt.Errorf("etcd: grant: %w", err)
	}
	// Joins at the same time race: of those that read one revision, the
	// first claim wins and the others go again, as hosts do (etcdstore
	// gives up after maxRaces, 1000).
	if d.serial != nil {
		d.serial.Lock()
		defer d.serial.Unlock()
	}
	for range 1000 {
		w := write{at: time.Now()}
		r, err := d.cli.Txn(ctx).If(
			clientv3.Compare(clientv3.CreateRevision(d.dir), "<", d.rev.Load()+1).WithPrefix(),
			clientv3.Compare(clientv3.Version(key), "=", 0),
		).Then(clientv3.OpPut(key, string(val), clientv3.WithLease(g.ID))).Commit()
		if err != nil {
			return write{}, fmt.Errorf("etcd: claim: %w", err)
		}
		d.seen(r.Header.Revision)
		if r.Succeeded {
			w.rev = r.Header.Revision
			d.joined <- g.ID
			return w, nil
		}
		// Another join created a lease since: a host would list
		// again; the answer's revision does here.
		d.lost.Add(1)
	}
	why := "no key created since"
	rev := d.rev.Load()
	if r, err := d.cli.Get(ctx, d.dir, clientv3.WithPrefix(), clientv3.WithMinCreateRev(rev+1), clientv3.WithKeysOnly(), clientv3.WithLimit(1)); err == nil && len(r.Kvs) > 0 {
		why = fmt.Sprintf("%s created at %d (%d keys since)", r.Kvs[0].Key, r.Kvs[0].CreateRevision, r.Count)
	}
	if r, err := d.cli.Get(ctx, key); err == nil && len(r.Kvs) > 0 {
		why += fmt.Sprintf("; %s exists, created at %d", key, r.Kvs[0].CreateRevision)
	}
	return write{}, fmt.Errorf("etcd: 1000 claims of %s in a row lost to other joins, at revision %d: %s", key, rev, why)
}

// leave is a host going away: weft, like flanneld, leaves its lease in
// etcd when it stops, and etcd deletes the key when the lease runs out (the
// lessor revokes it). A Revoke is that deletion, now. It takes the oldest
// joined host's lease, waiting for a join in flight if none is done.
func (d *driver) leave(ctx context.Context) (write, error) {
	var id clientv3.LeaseID
	select {
	case id = <-d.joined:
	case <-ctx.Done():
		return write{}, ctx.Err()
	}
	w := write{at: time.Now()}
	r, err := d.cli.Revoke(ctx, id)
	if err != nil {
		return write{}, fmt.Errorf("etcd: revoke: %w", err)
	}
	// The header is the revision once the revoke is applied: its
	// deletion's (etcd applies one entry at a time).
	w.rev = r.Header.Revision
	d.seen(w.rev)
	return w, nil
}

// event k of a run: joins and leaves alternate, a join first.
func (d *driver) event(ctx context.Context, k int) (write, error) {
	if k%2 == 0 {
		return d.join(ctx)
	}
	return d.leave(ctx)
}

// prefill writes hosts 1..n's leases as if each had joined earlier: a
// Grant of ttl and a Put attached to it per host, 32 in flight. Not
// measured.
func prefill(ctx context.Context, cli *clientv3.Client, dir string, n int, ttl time.Duration) error {
	next := atomic.Int64{}
	errc := make(chan error, 32)
	for range 32 {
		go func() {
			for {
				i := int(next.Add(1))
				if i > n {
					errc <- nil
					return
				}
				a, err := attrs(i)
				if err != nil {
					errc <- err
					return
				}
				val, err := a.MarshalJSON()
				if err != nil {
					errc <- err
					return
				}
				g, err := cli.Grant(ctx, int64(ttl/time.Second))
				if err == nil {
					_, err = cli.Put(ctx, dir+lease.SubnetKey(subnet(i)), string(val), clientv3.WithLease(g.ID))
				}
				if err != nil {
					errc <- fmt.Errorf("etcd: writing host %d's lease: %w", i, err)
					return
				}
			}
		}()
	}
	var first error
	for range 32 {
		if err := <-errc; err != nil && first == nil {
			first = err
			next.Store(int64(n)) // the others stop
		}
	}
	return first
}
