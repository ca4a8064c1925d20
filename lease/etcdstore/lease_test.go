package etcdstore

import (
	"context"
	"errors"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/lease"
)

func TestEtcdRestartReusesLease(t *testing.T) {
	e := startEtcd(t)
	cli := testClient(t, e)
	putConfig(t, cli, `{"Network": "10.5.0.0/16", "Backend": {"Type": "vxlan", "VNI": 1}}`)
	ctx := testCtx(t, 20*time.Second)
	attrs := lease.Attrs{PublicIP: netip.MustParseAddr("192.0.2.1"), BackendType: "vxlan",
		BackendData: []byte(`{"VNI":1,"VtepMAC":"8e:d7:4b:96:29:eb"}`)}

	m1, _ := newTestEtcd(t, e, nil)
	l1, err := m1.Acquire(ctx, attrs)
	if err != nil {
		t.Fatal(err)
	}
	key := testPrefix + "/subnets/" + l1.Key()
	r1, err := cli.Get(ctx, key)
	if err != nil || len(r1.Kvs) != 1 {
		t.Fatal(r1, err)
	}
	m1.Close() // as on SIGTERM: the lease stays

	// Another host in between must not disturb it.
	other, _ := newTestEtcd(t, e, nil)
	lo, err := other.Acquire(ctx, lease.Attrs{PublicIP: netip.MustParseAddr("192.0.2.2")})
	if err != nil || lo.Subnet == l1.Subnet {
		t.Fatalf("other host: %v, %v", lo, err)
	}

	m2, logs := newTestEtcd(t, e, nil)
	l2, err := m2.Acquire(ctx, attrs)
	if err != nil {
		t.Fatal(err)
	}
	if l2.Subnet != l1.Subnet {
		t.Fatalf("restart got %s, had %s", l2.Subnet, l1.Subnet)
	}
	if !strings.Contains(logs.String(), "found lease for current IP, reusing") {
		t.Errorf("log:\n%s", logs)
	}
	// As flanneld: same bytes, a new etcd lease, version 1 -> 2.
	r2, err := cli.Get(ctx, key)
	if err != nil || len(r2.Kvs) != 1 {
		t.Fatal(r2, err)
	}
	k1, k2 := r1.Kvs[0], r2.Kvs[0]
	if string(k2.Value) != `{"PublicIP":"192.0.2.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"8e:d7:4b:96:29:eb"}}` {
		t.Errorf("value %s", k2.Value)
	}
	if k2.Version != 2 || k2.ModRevision <= k1.ModRevision || k2.Lease == k1.Lease || k2.Lease == 0 {
		t.Errorf("before %+v\nafter %+v", k1, k2)
	}
	// The old etcd lease was given back.
	if ttl, err := cli.TimeToLive(ctx, clientv3.LeaseID(k1.Lease)); err != nil || ttl.TTL != -1 {
		t.Errorf("old etcd lease still alive: %+v, %v", ttl, err)
	}
}

func TestEtcdReuseNeedsConfigFit(t *testing.T) {
	e := startEtcd(t)
	cli := testClient(t, e)
	ctx := testCtx(t, 20*time.Second)
	// A lease for our IP that the config no longer covers is deleted
	// and a new one taken, as flanneld does.
	putConfig(t, cli, `{"Network": "10.5.0.0/16", "SubnetMin": "10.5.10.0", "SubnetMax": "10.5.20.0"}`)
	if _, err := cli.Put(ctx, testPrefix+"/subnets/10.5.200.0-24", `{"PublicIP":"192.0.2.1","PublicIPv6":null}`); err != nil {
		t.Fatal(err)
	}
	m, _ := newTestEtcd(t, e, nil)
	l, err := m.Acquire(ctx, lease.Attrs{PublicIP: netip.MustParseAddr("192.0.2.1")})
	if err != nil {
		t.Fatal(err)
	}
	if a := l.Subnet.Addr().As4(); a[2] < 10 || a[2] > 20 {
		t.Errorf("got %s, outside SubnetMin/Max", l.Subnet)
	}
	keys := listKeys(t, cli)
	if _, ok := keys["10.5.200.0-24"]; ok || len(keys) != 1 {
		t.Errorf("keys %v", keys)
	}
}

func TestEtcdPreviousSubnetFile(t *testing.T) {
	e := startEtcd(t)
	cli := testClient(t, e)
	putConfig(t, cli, `{"Network": "10.5.0.0/16"}`)
	ctx := testCtx(t, 20*time.Second)

	path := filepath.Join(t.TempDir(), "subnet.env")
	if err := lease.WriteSubnetFile(path, lease.SubnetEnv{Network: netip.MustParsePrefix("10.5.0.0/16"), Subnet: netip.MustParsePrefix("10.5.77.0/24"), MTU: 1472}); err != nil {
		t.Fatal(err)
	}
	prev, _, err := lease.ReadSubnetFile(path)
	if err != nil {
		t.Fatal(err)
	}
	m, logs := newTestEtcd(t, e, func(o *Options) { o.PreviousSubnet = prev })
	l, err := m.Acquire(ctx, lease.Attrs{PublicIP: netip.MustParseAddr("192.0.2.1")})
	if err != nil {
		t.Fatal(err)
	}
	if l.Subnet.String() != "10.5.77.0/24" {
		t.Errorf("got %s, want the subnet file's 10.5.77.0/24", l.Subnet)
	}
	if !strings.Contains(logs.String(), "found previously leased subnet, reusing") {
		t.Errorf("log:\n%s", logs)
	}

	// Held by another host now: never taken from it.
	m2, logs2 := newTestEtcd(t, e, func(o *Options) { o.PreviousSubnet = prev })
	l2, err := m2.Acquire(ctx, lease.Attrs{PublicIP: netip.MustParseAddr("192.0.2.2")})
	if err != nil {
		t.Fatal(err)
	}
	if l2.Subnet == l.Subnet {
		t.Errorf("second host took %s from the first", l2.Subnet)
	}
	if !strings.Contains(logs2.String(), "previous subnet is leased by another host") {
		t.Errorf("log:\n%s", logs2)
	}
	if v := listKeys(t, cli)["10.5.77.0-24"]; v != `{"PublicIP":"192.0.2.1","PublicIPv6":null}` {
		t.Errorf("10.5.77.0-24 = %s", v)
	}
}

func TestEtcdNetworkFull(t *testing.T) {
	e := startEtcd(t)
	cli := testClient(t, e)
	// A /28 gives /30 subnets; the first is never leased: three hosts.
	putConfig(t, cli, `{"Network": "10.9.0.0/28"}`)
	ctx := testCtx(t, 20*time.Second)
	got := map[string]bool{}
	for i := range 3 {
		m, _ := newTestEtcd(t, e, nil)
		l, err := m.Acquire(ctx, lease.Attrs{PublicIP: ip(i)})
		if err != nil {
			t.Fatal(err)
		}
		got[l.Subnet.String()] = true
	}
	if !got["10.9.0.4/30"] || !got["10.9.0.8/30"] || !got["10.9.0.12/30"] {
		t.Errorf("leased %v", got)
	}
	before := listKeys(t, cli)

	m, _ := newTestEtcd(t, e, nil)
	_, err := m.Acquire(ctx, lease.Attrs{PublicIP: ip(3)})
	if !errors.Is(err, ErrNetworkFull) || !strings.Contains(err.Error(), "10.9.0.4 and 10.9.0.12") {
		t.Fatalf("4th host: %v", err)
	}
	after := listKeys(t, cli)
	if len(after) != len(before) {
		t.Errorf("keys changed: %v -> %v", before, after)
	}
	ls, err := cli.Leases(ctx)
	if err != nil || len(ls.Leases) != 3 {
		t.Errorf("%d etcd leases (%v), want 3: the failed host left one behind", len(ls.Leases), err)
	}
}

// receive returns the next snapshot, failing the test on timeout.
func receive(t testing.TB, ch <-chan []lease.Lease, d time.Duration) []lease.Lease {
	t.Helper()
	select {
	case s := <-ch:
		return s
	case <-time.After(d):
		t.Fatalf("no snapshot within %s", d)
		return nil
	}
}

// waitFor reads snapshots until ok accepts one.
func waitFor(t testing.TB, ch <-chan []lease.Lease, d time.Duration, what string, ok func([]lease.Lease) bool) []lease.Lease {
	t.Helper()
	deadline := time.After(d)
	var last []lease.Lease
	for {
		select {
		case s := <-ch:
			if ok(s) {
				return s
			}
			last = s
		case <-deadline:
			t.Fatalf("%s: not within %s; last snapshot has %d leases: %v", what, d, len(last), last)
		}
	}
}

func hasSubnet(s []lease.Lease, p netip.Prefix) bool {
	for _, l := range s {
		if l.Subnet == p {
			return true
		}
	}
	return false
}

func TestEtcdExpiryAndRenewal(t *testing.T) {
	e := startEtcd(t)
	cli := testClient(t, e)
	putConfig(t, cli, `{"Network": "10.5.0.0/16"}`)
	ctx := testCtx(t, 30*time.Second)
	short := func(o *Options) { o.TTL = 3 * time.Second; o.RenewMargin = 2 * time.Second }

	kept, keptLogs := newTestEtcd(t, e, short)
	lk, err := kept.Acquire(ctx, lease.Attrs{PublicIP: ip(1)})
	if err != nil {
		t.Fatal(err)
	}
	keepErr := make(chan error, 1)
	go func() { keepErr <- kept.Keep(ctx, lk) }()

	dropped, _ := newTestEtcd(t, e, short)
	acquired := time.Now()
	ld, err := dropped.Acquire(ctx, lease.Attrs{PublicIP: ip(2)})
	if err != nil {
		t.Fatal(err)
	}
	// No Keep for ld: it must expire after its 3 s TTL.

	w, _ := newTestEtcd(t, e, nil)
	snaps := make(chan []lease.Lease)
	go w.Watch(ctx, snaps)
	first := receive(t, snaps, 10*time.Second)
	if !hasSubnet(first, lk.Subnet) || !hasSubnet(first, ld.Subnet) {
		t.Fatalf("first snapshot %v", first)
	}
	start := time.Now()
	s := waitFor(t, snaps, 10*time.Second, "expired lease leaves", func(s []lease.Lease) bool { return !hasSubnet(s, ld.Subnet) })
	if !hasSubnet(s, lk.Subnet) {
		t.Errorf("the renewed lease left too: %v", s)
	}
	if el := time.Since(acquired); el < 2500*time.Millisecond {
		t.Errorf("lease gone %s after it was granted, before its 3 s TTL", el)
	}
	// Well past two TTLs the kept lease is still there, renewed.
	time.Sleep(time.Until(start.Add(7 * time.Second)))
	r, err := cli.Get(ctx, testPrefix+"/subnets/"+lk.Key())
	if err != nil || len(r.Kvs) != 1 {
		t.Fatalf("kept lease gone: %v %v", r, err)
	}
	if r.Kvs[0].Version != 1 {
		t.Errorf("renewal rewrote the key (version %d); it should only refresh the etcd lease", r.Kvs[0].Version)
	}
	ttl, err := cli.TimeToLive(ctx, clientv3.LeaseID(r.Kvs[0].Lease))
	if err != nil || ttl.TTL < 1 || ttl.GrantedTTL != 3 {
		t.Errorf("kept lease TTL %+v, %v", ttl, err)
	}
	if n := strings.Count(keptLogs.String(), "renewed lease"); n < 3 {
		t.Errorf("%d renewals logged in 7 s with a 3 s TTL", n)
	}
	select {
	case err := <-keepErr:
		t.Fatalf("Keep returned: %v", err)
	default:
	}
}

func TestEtcdKeepReclaimsDeletedLease(t *testing.T) {
	e := startEtcd(t)
	cli := testClient(t, e)
	putConfig(t, cli, `{"Network": "10.5.0.0/16"}`)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	m, logs := newTestEtcd(t, e, nil)
	own, err := m.Acquire(ctx, lease.Attrs{PublicIP: ip(1)})
	if err != nil {
		t.Fatal(err)
	}
	keepErr := make(chan error, 1)
	go func() { keepErr <- m.Keep(ctx, own) }()
	key := testPrefix + "/subnets/" + own.Key()
	time.Sleep(200 * time.Millisecond) // let Keep's watch start

	// Someone deletes it: Keep puts it back, with a live etcd lease.
	if _, err := cli.Delete(ctx, key); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		r, err := cli.Get(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		if len(r.Kvs) == 1 {
			if string(r.Kvs[0].Value) != `{"PublicIP":"198.51.100.2","PublicIPv6":null}` || r.Kvs[0].Lease == 0 {
				t.Fatalf("reclaimed as %+v", r.Kvs[0])
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not reclaimed; log:\n%s", logs)
		}
		time.Sleep(50 * time.Millisecond)
	}

	// Someone else takes it: Keep gives up with ErrLeaseLost.
	time.Sleep(200 * time.Millisecond)
	if _, err := cli.Put(ctx, key, `{"PublicIP":"192.0.2.99","PublicIPv6":null}`); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-keepErr:
		if !errors.Is(err, ErrLeaseLost) {
			t.Fatalf("Keep: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Keep did not notice the lease was taken")
	}
}

func TestEtcdKeepLostWhenTakenAfterDelete(t *testing.T) {
	e := startEtcd(t)
	cli := testClient(t, e)
	putConfig(t, cli, `{"Network": "10.5.0.0/16"}`)
	ctx := testCtx(t, 20*time.Second)
	m, _ := newTestEtcd(t, e, nil)
	own, err := m.Acquire(ctx, lease.Attrs{PublicIP: ip(1)})
	if err != nil {
		t.Fatal(err)
	}
	key := testPrefix + "/subnets/" + own.Key()
	// Deleted and taken by another host before Keep runs: Keep, resuming
	// from Acquire's revision, sees the delete, cannot reclaim, and says so.
	if _, err := cli.Delete(ctx, key); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, key, `{"PublicIP":"192.0.2.99","PublicIPv6":null}`); err != nil {
		t.Fatal(err)
	}
	err = m.Keep(ctx, own)
	if !errors.Is(err, ErrLeaseLost) || !strings.Contains(err.Error(), own.Subnet.String()) {
		t.Fatalf("Keep: %v", err)
	}
}

// A key weft does not read but flanneld does ("10.5.2.0-024" is
// 10.5.2.0/24 to flanneld's parser) still keeps its subnet from being
// leased a second time.
func TestEtcdAcquireLeavesLooseKeysSubnet(t *testing.T) {
	e := startEtcd(t)
	cli := testClient(t, e)
	putConfig(t, cli, `{"Network": "10.5.0.0/16", "SubnetMin": "10.5.2.0", "SubnetMax": "10.5.2.0"}`)
	ctx := testCtx(t, 20*time.Second)
	for _, k := range []string{"10.5.2.0-024", "10.5.2.1-24", "10.5.2.0-24&fd00::-064"} {
		key := testPrefix + "/subnets/" + k
		if _, err := cli.Put(ctx, key, `{"PublicIP":"192.0.2.9","PublicIPv6":null}`); err != nil {
			t.Fatal(err)
		}
		m, _ := newTestEtcd(t, e, nil)
		l, err := m.Acquire(ctx, lease.Attrs{PublicIP: ip(1)})
		if !errors.Is(err, ErrNetworkFull) {
			t.Errorf("with key %s: leased %v (%v), want ErrNetworkFull", k, l.Subnet, err)
		}
		if _, err := cli.Delete(ctx, testPrefix+"/subnets/", clientv3.WithPrefix()); err != nil {
			t.Fatal(err)
		}
	}
}

// An auto host changing backend acquires again with new attributes while
// it holds its lease: same subnet, the value replaced in place (watchers
// see the new BackendType), the lease kept alive afterwards.
func TestEtcdReacquireChangesBackendInPlace(t *testing.T) {
	e := startEtcd(t)
	cli := testClient(t, e)
	putConfig(t, cli, `{"Network": "10.5.0.0/16", "Backend": {"Type": "auto"}}`)
	ctx := testCtx(t, 20*time.Second)
	ip := netip.MustParseAddr("192.0.2.1")
	m, _ := newTestEtcd(t, e, nil)
	l1, err := m.Acquire(ctx, lease.Attrs{PublicIP: ip, BackendType: "host-gw"})
	if err != nil {
		t.Fatal(err)
	}
	kctx, stop := context.WithCancel(ctx)
	kept := make(chan error, 1)
	go func() { kept <- m.Keep(kctx, l1) }()
	stop()
	if err := <-kept; err != nil {
		t.Fatal(err)
	}
	l2, err := m.Acquire(ctx, lease.Attrs{PublicIP: ip, BackendType: "vxlan", BackendData: []byte(`{"VNI":1,"VtepMAC":"8e:d7:4b:96:29:eb"}`)})
	if err != nil || l2.Subnet != l1.Subnet {
		t.Fatalf("re-acquire: %v %v, want %s", l2.Subnet, err, l1.Subnet)
	}
	r, err := cli.Get(ctx, testPrefix+"/subnets/"+l1.Key())
	if err != nil || len(r.Kvs) != 1 {
		t.Fatal(r, err)
	}
	if v := string(r.Kvs[0].Value); v != `{"PublicIP":"192.0.2.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"8e:d7:4b:96:29:eb"}}` {
		t.Fatalf("value after re-acquire: %s", v)
	}
	kctx, stop = context.WithCancel(ctx)
	defer stop()
	go func() { kept <- m.Keep(kctx, l2) }()
	select {
	case err := <-kept:
		t.Fatalf("Keep of the re-acquired lease ended: %v", err)
	case <-time.After(500 * time.Millisecond):
	}
}
