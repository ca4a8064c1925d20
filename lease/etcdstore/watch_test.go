package etcdstore

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/lease"
)

// putLeases writes n leases 10.7.x.y/28 directly, 100 per transaction.
func putLeases(t testing.TB, cli *clientv3.Client, from, n int) {
	t.Helper()
	var ops []clientv3.Op
	flush := func() {
		if _, err := cli.Txn(context.Background()).Then(ops...).Commit(); err != nil {
			t.Fatal(err)
		}
		ops = ops[:0]
	}
	for i := from; i < from+n; i++ {
		ops = append(ops, clientv3.OpPut(testPrefix+"/subnets/"+lease.SubnetKey(leaseSubnet(i)),
			fmt.Sprintf(`{"PublicIP":"%s","PublicIPv6":null}`, ip(i))))
		if len(ops) == 100 {
			flush()
		}
	}
	if len(ops) > 0 {
		flush()
	}
}

func leaseSubnet(i int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 7, byte((i + 1) >> 4), byte((i + 1) << 4)}), 28)
}

// checkSnapshot verifies a snapshot holds exactly leases [from, to).
func checkSnapshot(t testing.TB, s []lease.Lease, from, to int) {
	t.Helper()
	if len(s) != to-from {
		t.Fatalf("snapshot has %d leases, want %d", len(s), to-from)
	}
	for k, l := range s {
		i := from + k // sorted by subnet, as are the indices
		if l.Subnet != leaseSubnet(i) || l.Attrs.PublicIP != ip(i) || l.Revision == 0 {
			t.Fatalf("snapshot[%d] = %+v, want %s at %s", k, l, leaseSubnet(i), ip(i))
		}
	}
}

func TestEtcdWatch1000(t *testing.T) {
	e := startEtcd(t)
	cli := testClient(t, e)
	ctx := testCtx(t, 30*time.Second)
	putLeases(t, cli, 0, 300) // some exist before the watch

	m, _ := newTestEtcd(t, e, nil)
	snaps := make(chan []lease.Lease)
	go m.Watch(ctx, snaps)
	checkSnapshot(t, receive(t, snaps, 10*time.Second), 0, 300)

	putLeases(t, cli, 300, 700)
	s := waitFor(t, snaps, 20*time.Second, "1000 leases", func(s []lease.Lease) bool { return len(s) == 1000 })
	checkSnapshot(t, s, 0, 1000)

	// 500 go away in one batch.
	if _, err := cli.Delete(ctx, testPrefix+"/subnets/"+lease.SubnetKey(leaseSubnet(500)),
		clientv3.WithRange(testPrefix+"/subnets/"+lease.SubnetKey(leaseSubnet(999))+"\x00")); err != nil {
		t.Fatal(err)
	}
	// (lexical key order is not subnet order: check by content)
	s = waitFor(t, snaps, 10*time.Second, "deletes", func(s []lease.Lease) bool { return len(s) < 1000 })
	r, err := cli.Get(ctx, testPrefix+"/subnets/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(s)) != r.Count {
		t.Errorf("snapshot has %d leases, etcd %d", len(s), r.Count)
	}
}

func TestEtcdWatchSkipsGarbage(t *testing.T) {
	e := startEtcd(t)
	cli := testClient(t, e)
	ctx := testCtx(t, 20*time.Second)
	// flanneld's own values, byte for byte from the fixtures.
	for _, f := range []string{"lease-vxlan-10.5.92.0-24.json", "lease-vxlan-10.5.55.0-24.json"} {
		v, err := os.ReadFile("../testdata/" + f)
		if err != nil {
			t.Fatal(err)
		}
		key := strings.TrimSuffix(strings.TrimPrefix(f, "lease-vxlan-"), ".json")
		if _, err := cli.Put(ctx, testPrefix+"/subnets/"+key, string(v)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := cli.Put(ctx, testPrefix+"/subnets/10.5.66.0-24", `{"PublicIP":"192.0.2.3",`); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, testPrefix+"/subnets/not-a-subnet", `{"PublicIP":"192.0.2.4"}`); err != nil {
		t.Fatal(err)
	}
	// Other spellings of a held subnet's key (issue 14, item 3): left
	// out, so the snapshot has each subnet once.
	for _, k := range []string{"10.5.92.0-024", "10.5.92.0-+24", "10.5.92.1-24"} {
		if _, err := cli.Put(ctx, testPrefix+"/subnets/"+k, `{"PublicIP":"192.0.2.9"}`); err != nil {
			t.Fatal(err)
		}
	}

	m, logs := newTestEtcd(t, e, nil)
	snaps := make(chan []lease.Lease)
	go m.Watch(ctx, snaps)
	s := receive(t, snaps, 10*time.Second)
	if len(s) != 2 || s[0].Subnet.String() != "10.5.55.0/24" || s[1].Subnet.String() != "10.5.92.0/24" {
		t.Fatalf("snapshot %v", s)
	}
	if s[1].Attrs.BackendType != "vxlan" || string(s[1].Attrs.BackendData) != `{"VNI":1,"VtepMAC":"8e:d7:4b:96:29:eb"}` {
		t.Errorf("vxlan attrs %+v", s[1].Attrs)
	}
	for _, k := range []string{"10.5.66.0-24", "not-a-subnet", "10.5.92.0-024", "10.5.92.0-+24", "10.5.92.1-24"} {
		if !strings.Contains(logs.String(), "ignoring unreadable subnet lease") || !strings.Contains(logs.String(), k) {
			t.Errorf("%s not logged:\n%s", k, logs)
		}
	}

	// A good lease turning into garbage leaves; fixed, it comes back.
	if _, err := cli.Put(ctx, testPrefix+"/subnets/10.5.55.0-24", `garbage`); err != nil {
		t.Fatal(err)
	}
	s = receive(t, snaps, 10*time.Second)
	if len(s) != 1 || s[0].Subnet.String() != "10.5.92.0/24" {
		t.Fatalf("after garbage: %v", s)
	}
	if _, err := cli.Put(ctx, testPrefix+"/subnets/10.5.66.0-24", `{"PublicIP":"192.0.2.3","PublicIPv6":null}`); err != nil {
		t.Fatal(err)
	}
	s = receive(t, snaps, 10*time.Second)
	if len(s) != 2 || s[0].Subnet.String() != "10.5.66.0/24" || s[0].Attrs.PublicIP.String() != "192.0.2.3" {
		t.Fatalf("after fix: %v", s)
	}
}

// A watcher that was away while its resume revision got compacted lists
// anew and converges, dropping leases deleted meanwhile.
func TestEtcdWatchResumesAfterCompaction(t *testing.T) {
	e := startEtcd(t)
	cli := testClient(t, e)
	ctx := testCtx(t, 20*time.Second)
	putLeases(t, cli, 0, 10)

	m, logs := newTestEtcd(t, e, nil)
	st := &watchState{}
	if err := m.list(ctx, st); err != nil {
		t.Fatal(err)
	}
	stale := st.rev
	// While "away": 3 deleted, 5 added, 1 changed, then compaction.
	for i := range 3 {
		if _, err := cli.Delete(ctx, testPrefix+"/subnets/"+lease.SubnetKey(leaseSubnet(i))); err != nil {
			t.Fatal(err)
		}
	}
	putLeases(t, cli, 10, 5)
	if _, err := cli.Put(ctx, testPrefix+"/subnets/"+lease.SubnetKey(leaseSubnet(5)), `{"PublicIP":"192.0.2.55","PublicIPv6":null}`); err != nil {
		t.Fatal(err)
	}
	r, err := cli.Get(ctx, "x")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Compact(ctx, r.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}

	snaps := make(chan []lease.Lease)
	go m.watch(ctx, snaps, st) // resumes from the stale revision
	s := receive(t, snaps, 10*time.Second)
	if len(s) != 12 || hasSubnet(s, leaseSubnet(0)) || !hasSubnet(s, leaseSubnet(14)) {
		t.Fatalf("after re-list: %d leases %v", len(s), s)
	}
	for _, l := range s {
		if l.Subnet == leaseSubnet(5) && l.Attrs.PublicIP.String() != "192.0.2.55" {
			t.Errorf("changed lease not seen: %+v", l)
		}
	}
	if !strings.Contains(logs.String(), "revision compacted") || st.rev <= stale {
		t.Errorf("compaction not handled as such (rev %d, stale %d):\n%s", st.rev, stale, logs)
	}
	// And the watch goes on from there.
	putLeases(t, cli, 20, 1)
	s = receive(t, snaps, 10*time.Second)
	if len(s) != 13 || !hasSubnet(s, leaseSubnet(20)) {
		t.Fatalf("after resume: %v", s)
	}
}

// etcd stopped and started again under a running host: no snapshot drops
// a lease meanwhile, the watch resumes, and the own lease is renewed again.
func TestEtcdServerRestartUnderWatchAndKeep(t *testing.T) {
	dir := t.TempDir()
	e := startEtcdAt(t, dir, "http://127.0.0.1:0")
	addr := e.Endpoints()[0]
	cli := testClient(t, e)
	putConfig(t, cli, `{"Network": "10.5.0.0/16"}`)
	putLeases(t, cli, 0, 5)
	ctx := testCtx(t, 40*time.Second)

	m, logs := newTestEtcd(t, e, func(o *Options) {
		o.TTL = 6 * time.Second
		o.RenewMargin = 3 * time.Second // renewal every 3 s
		o.RequestTimeout = time.Second
	})
	own, err := m.Acquire(ctx, lease.Attrs{PublicIP: netip.MustParseAddr("192.0.2.1")})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close() // before e2's cleanup, which would wait for its streams
	keepErr := make(chan error, 1)
	go func() { keepErr <- m.Keep(ctx, own) }()
	snaps := make(chan []lease.Lease, 100)
	go m.Watch(ctx, snaps)
	if s := receive(t, snaps, 10*time.Second); len(s) != 6 {
		t.Fatalf("first snapshot %v", s)
	}

	// Close stops serving new requests at once but waits up to etcd's
	// request timeout (7 s) for open streams: an outage longer than a
	// renewal period.
	e.Close()
	if !strings.Contains(logs.String(), "renewing lease failed, retrying") {
		t.Errorf("no failed renewal logged:\n%s", logs)
	}
	e2 := startEtcdAt(t, dir, addr)
	cli2 := testClient(t, e2)
	renewals := strings.Count(logs.String(), "renewed lease") + strings.Count(logs.String(), "reclaimed subnet lease")
	putLeases(t, cli2, 5, 1)
	s := waitFor(t, snaps, 20*time.Second, "watch resumes", func(s []lease.Lease) bool { return len(s) == 7 })
	if !hasSubnet(s, own.Subnet) {
		t.Errorf("own lease missing: %v", s)
	}
	// No snapshot in between lost a peer.
	for len(snaps) > 0 {
		if s := <-snaps; !hasSubnet(s, leaseSubnet(0)) || !hasSubnet(s, leaseSubnet(4)) {
			t.Errorf("a snapshot dropped peers while etcd was away: %v", s)
		}
	}
	// The own lease is renewed (or reclaimed, if it ran out during the
	// outage) once etcd is back.
	deadline := time.Now().Add(15 * time.Second)
	for strings.Count(logs.String(), "renewed lease")+strings.Count(logs.String(), "reclaimed subnet lease") == renewals {
		if time.Now().After(deadline) {
			t.Fatalf("own lease not renewed after etcd came back:\n%s", logs)
		}
		time.Sleep(50 * time.Millisecond)
	}
	r, err := cli2.Get(ctx, testPrefix+"/subnets/"+own.Key())
	if err != nil || len(r.Kvs) != 1 {
		t.Fatalf("own lease gone after etcd restart: %v, %v\n%s", r, err, logs)
	}
	ttl, err := cli2.TimeToLive(ctx, clientv3.LeaseID(r.Kvs[0].Lease))
	if err != nil || ttl.TTL < 3 {
		t.Errorf("own lease TTL %+v, %v", ttl, err)
	}
	select {
	case err := <-keepErr:
		t.Fatalf("Keep returned: %v", err)
	default:
	}
}

// TestEtcdWatchCreateRevision: a lease carries the revision of its
// creation, which a renewal does not move, so admission can let the older
// of two colliding leases win.
func TestEtcdWatchCreateRevision(t *testing.T) {
	e := startEtcd(t)
	cli := testClient(t, e)
	ctx := testCtx(t, 20*time.Second)
	putLeases(t, cli, 0, 1)
	m, _ := newTestEtcd(t, e, nil)
	snaps := make(chan []lease.Lease)
	go m.Watch(ctx, snaps)
	first := receive(t, snaps, 10*time.Second)
	if len(first) != 1 || first[0].CreateRevision == 0 {
		t.Fatalf("first snapshot %+v", first)
	}
	putLeases(t, cli, 0, 1) // a renewal
	s := waitFor(t, snaps, 10*time.Second, "the renewal", func(s []lease.Lease) bool {
		return len(s) == 1 && s[0].Revision > first[0].Revision
	})
	if s[0].CreateRevision != first[0].CreateRevision {
		t.Errorf("create revision moved from %d to %d on a renewal", first[0].CreateRevision, s[0].CreateRevision)
	}
}

// TestEtcdWatchCoalescesBursts: hosts joining one put at a time while the
// receiver is busy become a few snapshots, the last with every lease, not
// one stale snapshot per put.
func TestEtcdWatchCoalescesBursts(t *testing.T) {
	e := startEtcd(t)
	cli := testClient(t, e)
	ctx := testCtx(t, 30*time.Second)
	m, _ := newTestEtcd(t, e, nil)
	snaps := make(chan []lease.Lease)
	go m.Watch(ctx, snaps)
	receive(t, snaps, 10*time.Second)
	const n = 400
	for i := range n {
		putLeases(t, cli, i, 1) // one put per host
	}
	time.Sleep(300 * time.Millisecond) // the receiver is busy meanwhile
	got := 0
	s := waitFor(t, snaps, 10*time.Second, "every lease", func(s []lease.Lease) bool { got++; return len(s) == n })
	checkSnapshot(t, s, 0, n)
	if got > 3 {
		t.Errorf("%d snapshots for %d puts made while the receiver was busy; want the latest, not a backlog", got, n)
	}
}
