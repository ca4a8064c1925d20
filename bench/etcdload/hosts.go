package etcdload

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/encap/vxlan"
	"github.com/weft-net/weft/lease"
	"github.com/weft-net/weft/lease/etcdstore"
)

// The cluster: a /8 of /24s (65,536 subnets), vxlan, as in bench/scale.
const (
	netconf   = `{"Network":"10.0.0.0/8","SubnetLen":24,"Backend":{"Type":"vxlan"}}`
	subnetLen = 24
	// maxSubnet is the last index subnet can give inside SubnetMax.
	maxSubnet = 65534
)

// subnet is host i's /24 (i >= 1; 10.0.0.0/24 is below SubnetMin).
func subnet(i int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), subnetLen)
}

// attrs is what host i writes into its lease, as a vxlan host does:
// PublicIP in 198.18.0.0/15 (RFC 2544, benchmarking), VNI 1, a VtepMAC.
func attrs(i int) (lease.Attrs, error) {
	n := (uint32(198)<<24 | uint32(18)<<16) + uint32(i) + 1 // .0 is the network's
	mac := net.HardwareAddr{0x0e, 0x57, byte(i >> 24), byte(i >> 16), byte(i >> 8), byte(i)}
	data, err := vxlan.MarshalLeaseData(1, mac)
	if err != nil {
		return lease.Attrs{}, err
	}
	return lease.Attrs{PublicIP: netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}),
		BackendType: "vxlan", BackendData: data}, nil
}

// tracker records, for each watch event of the measured writes, how many
// hosts received it and when the first and the last did. Slot k is the
// write at revision base+k: etcd gives every write a revision of its own.
type tracker struct {
	epoch  time.Time
	base   atomic.Int64 // 0: nothing measured yet
	slots  []slot
	events atomic.Int64 // watch events received by all hosts
}

type slot struct {
	hosts       atomic.Int64
	first, last atomic.Int64 // ns since epoch; 0: none yet
}

func newTracker(n int) *tracker { return &tracker{epoch: time.Now(), slots: make([]slot, n)} }

// take is every host's Follow callback: no lock, no allocation.
func (t *tracker) take(wr clientv3.WatchResponse) {
	if len(wr.Events) == 0 {
		return
	}
	now := int64(time.Since(t.epoch))
	t.events.Add(int64(len(wr.Events)))
	base := t.base.Load()
	if base == 0 {
		return
	}
	for _, ev := range wr.Events {
		k := ev.Kv.ModRevision - base
		if k < 0 || k >= int64(len(t.slots)) {
			continue
		}
		s := &t.slots[k]
		s.hosts.Add(1)
		for {
			f := s.first.Load()
			if (f != 0 && f <= now) || s.first.CompareAndSwap(f, now) {
				break
			}
		}
		for {
			l := s.last.Load()
			if l >= now || s.last.CompareAndSwap(l, now) {
				break
			}
		}
	}
}

// at is the slot of revision rev, nil outside the measured range.
func (t *tracker) at(rev int64) *slot {
	k := rev - t.base.Load()
	if t.base.Load() == 0 || k < 0 || k >= int64(len(t.slots)) {
		return nil
	}
	return &t.slots[k]
}

func (t *tracker) time(ns int64) time.Time { return t.epoch.Add(time.Duration(ns)) }

// host is one simulated weft host: an etcd store of its own, so a
// connection of its own.
type host struct {
	i      int
	store  *etcdstore.Store
	listed atomic.Bool
	// acquired is how long Acquire took, listedAfter how long from the
	// host's start until its listing arrived.
	acquired    time.Duration
	listedAfter atomic.Int64
}

// fleet is the simulated hosts.
type fleet struct {
	opts       etcdstore.Options
	tr         *tracker
	hosts      []*host
	slots      chan struct{} // with StartParallel: one per host starting
	listed     atomic.Int64  // hosts whose first listing arrived
	keysListed atomic.Int64
	warn       *warnings
	errOnce    sync.Once
	err        chan error // the first host that gave up
}

// start runs host i as `weft run` does with the etcd store: Config,
// Acquire (which finds the lease this host holds, by its PublicIP, and
// re-puts it with a fresh etcd lease), then Keep and the lease watch
// (WatchChanges' requests, through Follow) until ctx ends. It returns
// once Acquire has.
func (f *fleet) start(ctx context.Context, i int) (err error) {
	release := func() {}
	if f.slots != nil {
		select {
		case f.slots <- struct{}{}:
		case <-ctx.Done():
			return ctx.Err()
		}
		release = sync.OnceFunc(func() { <-f.slots })
	}
	defer func() {
		if err != nil {
			release()
		}
	}()
	// weft run passes the subnet of its subnet file (etcdmgr.go).
	opts := f.opts
	opts.PreviousSubnet = subnet(i)
	s, err := etcdstore.New(opts)
	if err != nil {
		return err
	}
	start := time.Now()
	h := &host{i: i, store: s}
	f.hosts[i-1] = h
	a, err := attrs(i)
	if err != nil {
		return err
	}
	if _, err := s.Config(ctx); err != nil {
		return fmt.Errorf("host %d: config: %w", i, err)
	}
	t := time.Now()
	own, err := s.Acquire(ctx, a)
	if err != nil {
		return fmt.Errorf("host %d: acquire: %w", i, err)
	}
	h.acquired = time.Since(t)
	if own.Subnet != subnet(i) {
		return fmt.Errorf("host %d: acquired %s, not the lease it holds, %s", i, own.Subnet, subnet(i))
	}
	go func() {
		if err := s.Keep(ctx, own); err != nil && ctx.Err() == nil {
			f.fail(fmt.Errorf("host %d: keeping its lease: %w", i, err))
		}
	}()
	go func() {
		listed := func(_ int64, keys int) {
			if h.listed.CompareAndSwap(false, true) {
				h.listedAfter.Store(int64(time.Since(start)))
				release()
				f.keysListed.Add(int64(keys))
				f.listed.Add(1)
			}
		}
		if err := s.Follow(ctx, listed, f.tr.take); err != nil && ctx.Err() == nil {
			f.fail(fmt.Errorf("host %d: watching leases: %w", i, err))
		}
	}()
	return nil
}

func (f *fleet) fail(err error) {
	f.errOnce.Do(func() { f.err <- err })
}

func (f *fleet) close() {
	var wg sync.WaitGroup
	for _, h := range f.hosts {
		if h != nil {
			wg.Go(func() { h.store.Close() })
		}
	}
	wg.Wait()
}

// warnings is the hosts' log: it counts what they log at Warn and above
// (retries, lost watches) and keeps the first few lines.
type warnings struct {
	n     atomic.Int64
	mu    sync.Mutex
	first []string
}

func (w *warnings) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }

func (w *warnings) Handle(_ context.Context, r slog.Record) error {
	if w.n.Add(1) > 3 {
		return nil
	}
	line := r.Message
	r.Attrs(func(a slog.Attr) bool {
		line += " " + a.String()
		return true
	})
	w.mu.Lock()
	w.first = append(w.first, line)
	w.mu.Unlock()
	return nil
}

func (w *warnings) WithAttrs([]slog.Attr) slog.Handler { return w }
func (w *warnings) WithGroup(string) slog.Handler      { return w }

func (w *warnings) lines() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.first...)
}
