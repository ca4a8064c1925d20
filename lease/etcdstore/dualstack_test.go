package etcdstore

import (
	"bytes"
	"context"
	"errors"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/lease"
)

// The recorded dual-stack vxlan cluster (dualstack/vxlan in the fixtures):
// h1 holds 10.5.77.0-24&fd00:10:5:21::-64, h2 10.5.62.0-24&fd00:10:5:32::-64.
const (
	h1DualKey = "10.5.77.0-24&fd00:10:5:21::-64"
	h2DualKey = "10.5.62.0-24&fd00:10:5:32::-64"
)

func readFile(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// h1Attrs is what flanneld's h1 wrote in the dual-stack vxlan run.
func h1Attrs(t testing.TB) (lease.Attrs, []byte) {
	t.Helper()
	raw := readFile(t, "../testdata/lease-dualstack-vxlan-10.5.77.0-24.json")
	var a lease.Attrs
	if err := a.UnmarshalJSON(raw); err != nil {
		t.Fatal(err)
	}
	return a, raw
}

// putDump writes a recorded `etcdctl get -w json` dump into etcd, each key
// that had an etcd lease under a fresh one of flanneld's 24 h.
func putDump(t *testing.T, ctx context.Context, cli *clientv3.Client, name string) {
	t.Helper()
	for _, kv := range readDump(t, name).KVs {
		var opts []clientv3.OpOption
		if kv.Lease != 0 {
			g, err := cli.Grant(ctx, 86400)
			if err != nil {
				t.Fatal(err)
			}
			opts = append(opts, clientv3.WithLease(g.ID))
		}
		if _, err := cli.Put(ctx, string(kv.Key), string(kv.Value), opts...); err != nil {
			t.Fatal(err)
		}
	}
}

func getKV(t testing.TB, ctx context.Context, cli *clientv3.Client, name string) (value string, lease int64, version int64, ok bool) {
	t.Helper()
	r, err := cli.Get(ctx, testPrefix+"/subnets/"+name)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Kvs) == 0 {
		return "", 0, 0, false
	}
	return string(r.Kvs[0].Value), r.Kvs[0].Lease, r.Kvs[0].Version, true
}

// A dual-stack host with flanneld's subnet file writes flanneld's key and
// value byte for byte: the value of lease-h1.json under the key of
// etcd-keys.txt, with a 24 h etcd lease, as the recorded dump has it.
func TestEtcdDualStackAcquireWritesFlanneldBytes(t *testing.T) {
	e := startEtcd(t)
	cli := testClient(t, e)
	putConfig(t, cli, string(readFile(t, "../testdata/config-dualstack-vxlan.json")))
	ctx := testCtx(t, 20*time.Second)
	prev, prev6, err := lease.ReadSubnetFile("../testdata/subnet-dualstack-vxlan-h1.env")
	if err != nil {
		t.Fatal(err)
	}
	m, logs := newTestEtcd(t, e, func(o *Options) { o.PreviousSubnet, o.PreviousIPv6Subnet = prev, prev6 })
	attrs, raw := h1Attrs(t)
	l, err := m.Acquire(ctx, attrs)
	if err != nil {
		t.Fatal(err)
	}
	if l.Subnet.String() != "10.5.77.0/24" || l.IPv6Subnet.String() != "fd00:10:5:21::/64" || l.Key() != h1DualKey {
		t.Fatalf("got %v (key %s), want flanneld's %s", l, l.Key(), h1DualKey)
	}
	if n := strings.Count(logs.String(), "found previously leased subnet, reusing"); n != 2 {
		t.Errorf("subnet file reuse logged %d times, want once per family:\n%s", n, logs)
	}
	var want []byte
	for _, kv := range readDump(t, "etcd-dualstack-vxlan.json").KVs {
		if string(kv.Key) == testPrefix+"/subnets/"+h1DualKey {
			want = kv.Value
		}
	}
	if !bytes.Equal(want, raw) {
		t.Fatalf("fixtures disagree: dump %s, lease-h1.json %s", want, raw)
	}
	v, id, _, ok := getKV(t, ctx, cli, h1DualKey)
	if !ok || v != string(want) {
		t.Fatalf("%s = %q, flanneld wrote %q (keys %v)", h1DualKey, v, want, listKeys(t, cli))
	}
	ttl, err := cli.TimeToLive(ctx, clientv3.LeaseID(id))
	if err != nil || ttl.GrantedTTL != 86400 {
		t.Errorf("etcd lease %+v, %v; flanneld grants 86400 s", ttl, err)
	}
}

// A fresh dual-stack host gets one subnet of each family, in range.
func TestEtcdDualStackAcquireFresh(t *testing.T) {
	e := startEtcd(t)
	cli := testClient(t, e)
	putConfig(t, cli, string(readFile(t, "../testdata/config-dualstack-vxlan.json")))
	ctx := testCtx(t, 20*time.Second)
	m, _ := newTestEtcd(t, e, nil)
	attrs, _ := h1Attrs(t)
	l, err := m.Acquire(ctx, attrs)
	if err != nil {
		t.Fatal(err)
	}
	cfg, _ := m.Config(ctx)
	if !cfg.Contains(l.Subnet) || !cfg.ContainsIPv6(l.IPv6Subnet) {
		t.Fatalf("got %v outside %s / %s", l, cfg.Network, cfg.IPv6Network)
	}
	if keys := listKeys(t, cli); len(keys) != 1 || keys[l.Key()] == "" {
		t.Errorf("keys %v, want only %s", keys, l.Key())
	}
}

// weft restarting on h1 of the recorded dual-stack cluster does what
// flanneld did: finds its lease by PublicIP, keeps both subnets, rewrites
// the same bytes under a new etcd lease (version 1 -> 2) and leaves h2's
// alone (restart/etcd-get-after-*.json); a watch then sees both hosts
// with both families.
func TestEtcdDualStackRestartFixture(t *testing.T) {
	e := startEtcd(t)
	cli := testClient(t, e)
	ctx := testCtx(t, 20*time.Second)
	putDump(t, ctx, cli, "etcd-dualstack-vxlan-after-stop.json")
	m, logs := newTestEtcd(t, e, nil)
	attrs, _ := h1Attrs(t)
	own, err := m.Acquire(ctx, attrs)
	if err != nil {
		t.Fatal(err)
	}
	if own.Key() != h1DualKey {
		t.Fatalf("got %s, flanneld kept %s", own.Key(), h1DualKey)
	}
	if !strings.Contains(logs.String(), "found lease for current IP, reusing") {
		t.Errorf("log:\n%s", logs)
	}
	want := readDump(t, "etcd-dualstack-vxlan-after-restart.json").KVs
	r, err := cli.Get(ctx, testPrefix, clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Kvs) != len(want) {
		t.Fatalf("%d keys, flanneld left %d", len(r.Kvs), len(want))
	}
	for i, kv := range r.Kvs {
		w := want[i]
		if !bytes.Equal(kv.Key, w.Key) || !bytes.Equal(kv.Value, w.Value) || kv.Version != w.Version || (kv.Lease == 0) != (w.Lease == 0) {
			t.Errorf("key %s = %s (version %d, lease %x)\nflanneld: %s = %s (version %d, lease %x)",
				kv.Key, kv.Value, kv.Version, kv.Lease, w.Key, w.Value, w.Version, w.Lease)
		}
	}

	snaps := make(chan []lease.Lease)
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go m.Watch(wctx, snaps)
	s := receive(t, snaps, 10*time.Second)
	if len(s) != 2 || s[0].Key() != h2DualKey || s[1].Key() != h1DualKey ||
		s[0].Attrs.PublicIPv6.String() != "2001:db8::2" || s[1].Attrs.PublicIPv6.String() != "2001:db8::1" ||
		string(s[0].Attrs.BackendV6Data) != `{"VNI":1,"VtepMAC":"62:a3:0b:92:83:ae"}` {
		t.Errorf("snapshot %v", s)
	}
}

// Reading flanneld's recorded dual-stack clusters (vxlan and host-gw)
// gives each host's two subnets and attributes, as flanneld's h2 saw
// them.
func TestEtcdDualStackFixtureWatch(t *testing.T) {
	for _, c := range []struct {
		dump string
		want []string // key, PublicIP, PublicIPv6, BackendType, BackendData, BackendV6Data
	}{
		{"etcd-dualstack-vxlan.json", []string{
			h2DualKey, "192.0.2.2", "2001:db8::2", "vxlan", `{"VNI":1,"VtepMAC":"5e:66:a8:d5:a6:13"}`, `{"VNI":1,"VtepMAC":"62:a3:0b:92:83:ae"}`,
			h1DualKey, "192.0.2.1", "2001:db8::1", "vxlan", `{"VNI":1,"VtepMAC":"12:ad:4c:f6:c0:a2"}`, `{"VNI":1,"VtepMAC":"22:a6:83:20:ec:9a"}`}},
		{"etcd-dualstack-host-gw.json", []string{
			"10.5.53.0-24&fd00:10:5:27::-64", "192.0.2.2", "2001:db8::2", "host-gw", "", "",
			"10.5.83.0-24&fd00:10:5:62::-64", "192.0.2.1", "2001:db8::1", "host-gw", "", ""}},
	} {
		t.Run(c.dump, func(t *testing.T) {
			e := startEtcd(t)
			cli := testClient(t, e)
			ctx := testCtx(t, 20*time.Second)
			putDump(t, ctx, cli, c.dump)
			m, logs := newTestEtcd(t, e, nil)
			cfg, err := m.Config(ctx)
			if err != nil || !cfg.EnableIPv6 || cfg.IPv6SubnetLen != 64 {
				t.Fatalf("config %+v, %v", cfg, err)
			}
			snaps := make(chan []lease.Lease)
			wctx, cancel := context.WithCancel(ctx)
			defer cancel()
			go m.Watch(wctx, snaps)
			s := receive(t, snaps, 10*time.Second)
			if len(s) != 2 {
				t.Fatalf("snapshot %v", s)
			}
			for i, l := range s {
				w := c.want[6*i:]
				got := []string{l.Key(), l.Attrs.PublicIP.String(), l.Attrs.PublicIPv6.String(), l.Attrs.BackendType,
					string(l.Attrs.BackendData), string(l.Attrs.BackendV6Data)}
				for j := range got {
					if got[j] != w[j] {
						t.Errorf("lease %d: %q, flanneld: %q", i, got, w[:6])
						break
					}
				}
				if l.CreateRevision == 0 {
					t.Errorf("lease %d: no create revision", i)
				}
			}
			if m.Unreadable() != 0 || strings.Contains(logs.String(), "second lease") {
				t.Errorf("%d unreadable; log:\n%s", m.Unreadable(), logs)
			}
		})
	}
}

// dualConfig has 7 leasable /64s (fd00:10:5::/61, the first never
// leased) and plenty of IPv4 subnets: the IPv6 side fills first.
const dualConfig = `{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:5::/61","Backend":{"Type":"host-gw"}}`

func dualAttrs(i int) lease.Attrs {
	return lease.Attrs{PublicIP: ip(i), PublicIPv6: netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: byte(i + 1)}), BackendType: "host-gw"}
}

// Hosts racing for the IPv6 subnets never get the same one, though each
// key names a different IPv4 subnet, so etcd's create-if-absent on the
// key alone would let two of them through; the host that finds no IPv6
// subnet left is told so and leaves nothing behind. A foreign key that
// holds an IPv6 subnet under its own IPv4 subnet keeps it too.
func TestEtcdDualStackHostsNeverShareIPv6Subnet(t *testing.T) {
	e := startEtcd(t)
	cli := testClient(t, e)
	putConfig(t, cli, dualConfig)
	ctx := testCtx(t, 60*time.Second)
	// Held by a flanneld host, spelt as flanneld's parser still reads it.
	if _, err := cli.Put(ctx, testPrefix+"/subnets/10.5.200.0-24&fd00:10:5:1::-064", `{"PublicIP":"192.0.2.200","PublicIPv6":"2001:db8::200"}`); err != nil {
		t.Fatal(err)
	}
	const hosts = 9 // 6 /64s are left for them
	var wg sync.WaitGroup
	got := make([]lease.Lease, hosts)
	errs := make([]error, hosts)
	for i := range hosts {
		m, _ := newTestEtcd(t, e, nil)
		wg.Add(1)
		go func() {
			defer wg.Done()
			got[i], errs[i] = m.Acquire(ctx, dualAttrs(i))
		}()
	}
	wg.Wait()
	seen := map[netip.Prefix]int{netip.MustParsePrefix("fd00:10:5:1::/64"): -1}
	won, full := 0, 0
	for i := range hosts {
		switch {
		case errs[i] == nil:
			won++
			if j, dup := seen[got[i].IPv6Subnet]; dup {
				t.Errorf("hosts %d and %d both got %s", i, j, got[i].IPv6Subnet)
			}
			seen[got[i].IPv6Subnet] = i
		case errors.Is(errs[i], ErrNetworkFull) && strings.Contains(errs[i].Error(), "all 7 IPv6 subnets /64 between fd00:10:5:1:: and fd00:10:5:7:: of fd00:10:5::/61 are leased"):
			full++
		default:
			t.Errorf("host %d: %v", i, errs[i])
		}
	}
	if won != 6 || full != 3 {
		t.Errorf("%d hosts leased, %d told the network is full; want 6 and 3", won, full)
	}
	if keys := listKeys(t, cli); len(keys) != 7 {
		t.Errorf("%d keys, want 7: %v", len(keys), keys)
	}
	ls, err := cli.Leases(ctx)
	if err != nil || len(ls.Leases) != 6 {
		t.Errorf("%d etcd leases (%v), want 6: a failed host left one behind", len(ls.Leases), err)
	}
}

// The subnet file's subnets are reused each where it is free: an IPv6
// subnet another host holds is not taken (flanneld checks only the IPv4
// one), and the IPv4 one is kept regardless.
func TestEtcdDualStackPreviousIPv6SubnetTaken(t *testing.T) {
	e := startEtcd(t)
	cli := testClient(t, e)
	putConfig(t, cli, dualConfig)
	ctx := testCtx(t, 20*time.Second)
	if _, err := cli.Put(ctx, testPrefix+"/subnets/10.5.9.0-24&fd00:10:5:3::-64", `{"PublicIP":"192.0.2.9","PublicIPv6":"2001:db8::9"}`); err != nil {
		t.Fatal(err)
	}
	m, logs := newTestEtcd(t, e, func(o *Options) {
		o.PreviousSubnet, o.PreviousIPv6Subnet = netip.MustParsePrefix("10.5.77.0/24"), netip.MustParsePrefix("fd00:10:5:3::/64")
	})
	l, err := m.Acquire(ctx, dualAttrs(1))
	if err != nil {
		t.Fatal(err)
	}
	if l.Subnet.String() != "10.5.77.0/24" || l.IPv6Subnet.String() == "fd00:10:5:3::/64" || !l.IPv6Subnet.IsValid() {
		t.Errorf("got %v: want 10.5.77.0/24 and an IPv6 subnet other than fd00:10:5:3::/64", l)
	}
	if !strings.Contains(logs.String(), `previous subnet is leased by another host, picking another" family=IPv6`) {
		t.Errorf("log:\n%s", logs)
	}

	// An IPv6 subnet outside the config is not reused either.
	m2, logs2 := newTestEtcd(t, e, func(o *Options) { o.PreviousIPv6Subnet = netip.MustParsePrefix("fd00:99::/64") })
	l2, err := m2.Acquire(ctx, dualAttrs(2))
	if err != nil || !l2.IPv6Subnet.IsValid() || l2.IPv6Subnet == l.IPv6Subnet {
		t.Errorf("got %v, %v", l2, err)
	}
	if !strings.Contains(logs2.String(), `previous subnet does not fit the network config, not reusing it" family=IPv6`) {
		t.Errorf("log:\n%s", logs2)
	}
}

// The cluster turns IPv6 on: a host whose lease has no IPv6 part keeps
// its IPv4 subnet (flanneld would renumber it) and gains an IPv6 subnet,
// the old key replaced by the dual key in one step. Turned off again, the
// IPv6 part goes and the IPv4 subnet stays.
func TestEtcdDualStackTurnedOnKeepsIPv4Subnet(t *testing.T) {
	e := startEtcd(t)
	cli := testClient(t, e)
	putConfig(t, cli, `{"Network":"10.5.0.0/16","Backend":{"Type":"host-gw"}}`)
	ctx := testCtx(t, 20*time.Second)
	attrs := dualAttrs(1)
	v4only := attrs
	v4only.PublicIPv6 = netip.Addr{}
	m1, _ := newTestEtcd(t, e, nil)
	l1, err := m1.Acquire(ctx, v4only)
	if err != nil {
		t.Fatal(err)
	}
	_, oldID, _, _ := getKV(t, ctx, cli, l1.Key())
	m1.Close()

	putConfig(t, cli, dualConfig)
	m2, logs := newTestEtcd(t, e, nil)
	l2, err := m2.Acquire(ctx, attrs)
	if err != nil {
		t.Fatal(err)
	}
	if l2.Subnet != l1.Subnet || !l2.IPv6Subnet.IsValid() {
		t.Fatalf("after IPv6 was turned on: %v, had %v", l2, l1)
	}
	if !strings.Contains(logs.String(), "keeping its IPv4 subnet") {
		t.Errorf("log:\n%s", logs)
	}
	keys := listKeys(t, cli)
	if len(keys) != 1 || keys[l2.Key()] != `{"PublicIP":"198.51.100.2","PublicIPv6":"2001:db8::2","BackendType":"host-gw"}` {
		t.Errorf("keys %v, want only %s", keys, l2.Key())
	}
	if ttl, err := cli.TimeToLive(ctx, clientv3.LeaseID(oldID)); err != nil || ttl.TTL != -1 {
		t.Errorf("old etcd lease still alive: %+v, %v", ttl, err)
	}
	// Keep renews the new key.
	kctx, stop := context.WithCancel(ctx)
	kept := make(chan error, 1)
	go func() { kept <- m2.Keep(kctx, l2) }()
	stop()
	if err := <-kept; err != nil {
		t.Fatal(err)
	}
	m2.Close()

	putConfig(t, cli, `{"Network":"10.5.0.0/16","Backend":{"Type":"host-gw"}}`)
	m3, _ := newTestEtcd(t, e, nil)
	l3, err := m3.Acquire(ctx, v4only)
	if err != nil {
		t.Fatal(err)
	}
	if l3.Subnet != l1.Subnet || l3.IPv6Subnet.IsValid() {
		t.Fatalf("after IPv6 was turned off: %v, had %v", l3, l1)
	}
	if keys := listKeys(t, cli); len(keys) != 1 || keys[l1.Key()] == "" {
		t.Errorf("keys %v, want only %s", keys, l1.Key())
	}
}

// An auto host changing backend live keeps both subnets; the dual key's
// value is replaced in place.
func TestEtcdDualStackReacquireKeepsIPv6Subnet(t *testing.T) {
	e := startEtcd(t)
	cli := testClient(t, e)
	putConfig(t, cli, strings.Replace(dualConfig, `"host-gw"`, `"auto"`, 1))
	ctx := testCtx(t, 20*time.Second)
	m, _ := newTestEtcd(t, e, nil)
	a := dualAttrs(1)
	l1, err := m.Acquire(ctx, a)
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
	a.BackendType, a.BackendData, a.BackendV6Data = "vxlan", []byte(`{"VNI":1,"VtepMAC":"8e:d7:4b:96:29:eb"}`), []byte(`{"VNI":1,"VtepMAC":"8e:d7:4b:96:29:ec"}`)
	l2, err := m.Acquire(ctx, a)
	if err != nil || l2.Subnet != l1.Subnet || l2.IPv6Subnet != l1.IPv6Subnet {
		t.Fatalf("re-acquire: %v %v, want %v", l2, err, l1)
	}
	v, _, version, _ := getKV(t, ctx, cli, l1.Key())
	if v != `{"PublicIP":"198.51.100.2","PublicIPv6":"2001:db8::2","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"8e:d7:4b:96:29:eb"},"BackendV6Data":{"VNI":1,"VtepMAC":"8e:d7:4b:96:29:ec"}}` || version != 2 {
		t.Errorf("value after re-acquire (version %d): %s", version, v)
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

// Keep renews the dual key and reclaims it under the same key after a
// deletion. If another host took the IPv6 subnet meanwhile, under a key
// of its own, the lease is lost: reclaiming would give two hosts one
// IPv6 subnet.
func TestEtcdDualStackKeep(t *testing.T) {
	e := startEtcd(t)
	cli := testClient(t, e)
	putConfig(t, cli, dualConfig)
	ctx := testCtx(t, 30*time.Second)
	m, logs := newTestEtcd(t, e, func(o *Options) { o.TTL = 3 * time.Second; o.RenewMargin = 2 * time.Second })
	own, err := m.Acquire(ctx, dualAttrs(1))
	if err != nil {
		t.Fatal(err)
	}
	keepErr := make(chan error, 1)
	go func() { keepErr <- m.Keep(ctx, own) }()
	time.Sleep(4 * time.Second) // past one TTL: renewed, not re-put
	v, id, version, ok := getKV(t, ctx, cli, own.Key())
	if !ok || version != 1 || !strings.Contains(logs.String(), "renewed lease") {
		t.Fatalf("after a TTL: %q version %d; log:\n%s", v, version, logs)
	}

	if _, err := cli.Delete(ctx, testPrefix+"/subnets/"+own.Key()); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		v2, id2, _, ok := getKV(t, ctx, cli, own.Key())
		if ok {
			if v2 != v || id2 == 0 || id2 == id {
				t.Fatalf("reclaimed as %s with etcd lease %x (was %x)", v2, id2, id)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not reclaimed; log:\n%s", logs)
		}
		time.Sleep(50 * time.Millisecond)
	}

	time.Sleep(200 * time.Millisecond)
	taker := "10.5.250.0-24&" + lease.SubnetKey(own.IPv6Subnet)
	if _, err := cli.Txn(ctx).Then(clientv3.OpDelete(testPrefix+"/subnets/"+own.Key()),
		clientv3.OpPut(testPrefix+"/subnets/"+taker, `{"PublicIP":"192.0.2.99","PublicIPv6":"2001:db8::99"}`)).Commit(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-keepErr:
		if !errors.Is(err, ErrLeaseLost) || !strings.Contains(err.Error(), taker) {
			t.Fatalf("Keep: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("Keep did not notice its IPv6 subnet was taken; log:\n%s", logs)
	}
	if _, _, _, ok := getKV(t, ctx, cli, own.Key()); ok {
		t.Error("Keep reclaimed a lease whose IPv6 subnet another host holds")
	}
}

// A hostile key reusing a host's IPv6 subnet under another IPv4 subnet
// stays out of the snapshots, also after the host restarts and re-puts
// its lease (the older lease wins by creation, not by last write).
func TestEtcdDualStackWatchDedupe(t *testing.T) {
	e := startEtcd(t)
	cli := testClient(t, e)
	putConfig(t, cli, dualConfig)
	ctx := testCtx(t, 20*time.Second)
	m, _ := newTestEtcd(t, e, nil)
	own, err := m.Acquire(ctx, dualAttrs(1))
	if err != nil {
		t.Fatal(err)
	}
	hostile := "10.5.251.0-24&" + lease.SubnetKey(own.IPv6Subnet)
	if _, err := cli.Put(ctx, testPrefix+"/subnets/"+hostile, `{"PublicIP":"192.0.2.66","PublicIPv6":"2001:db8::66"}`); err != nil {
		t.Fatal(err)
	}
	w, logs := newTestEtcd(t, e, nil)
	snaps := make(chan []lease.Lease)
	go w.Watch(ctx, snaps)
	s := receive(t, snaps, 10*time.Second)
	if len(s) != 1 || s[0].Key() != own.Key() {
		t.Fatalf("snapshot %v, want only %s", s, own.Key())
	}
	m.Close()
	m2, _ := newTestEtcd(t, e, nil)
	if l, err := m2.Acquire(ctx, dualAttrs(1)); err != nil || l.Key() != own.Key() {
		t.Fatalf("restart: %v, %v", l, err)
	}
	s = receive(t, snaps, 10*time.Second)
	if len(s) != 1 || s[0].Key() != own.Key() || s[0].Attrs.PublicIP != ip(1) {
		t.Fatalf("after the restart: snapshot %v, want only %s", s, own.Key())
	}
	if n := strings.Count(logs.String(), "ignoring a second lease"); n != 1 {
		t.Errorf("duplicate logged %d times, want once:\n%s", n, logs)
	}
}

// IPv6-only is refused by the daemon for now; the store leases it
// without flanneld's bug: two hosts get two leases, told apart by
// PublicIPv6 (flanneld matches every host's PublicIP 0.0.0.0).
func TestEtcdIPv6OnlyHostsGetTheirOwnLeases(t *testing.T) {
	e := startEtcd(t)
	cli := testClient(t, e)
	putConfig(t, cli, string(readFile(t, "../testdata/config-ipv6only-vxlan.json")))
	ctx := testCtx(t, 20*time.Second)
	var got []lease.Lease
	for i := range 2 {
		m, _ := newTestEtcd(t, e, nil)
		a := dualAttrs(i)
		a.PublicIP = netip.Addr{}
		l, err := m.Acquire(ctx, a)
		if err != nil {
			t.Fatal(err)
		}
		if l.Subnet.IsValid() || !strings.HasPrefix(l.Key(), "0.0.0.0-0&fd00:10:5:") {
			t.Fatalf("host %d: %v (key %s)", i, l, l.Key())
		}
		got = append(got, l)
	}
	if got[0].IPv6Subnet == got[1].IPv6Subnet || len(listKeys(t, cli)) != 2 {
		t.Errorf("leases %v, keys %v", got, listKeys(t, cli))
	}
	// The first host restarting finds its own lease.
	m, logs := newTestEtcd(t, e, nil)
	a := dualAttrs(0)
	a.PublicIP = netip.Addr{}
	if l, err := m.Acquire(ctx, a); err != nil || l.IPv6Subnet != got[0].IPv6Subnet {
		t.Errorf("restart: %v, %v, had %v; log:\n%s", l, err, got[0], logs)
	}
}

// Offline: the snapshot's one-lease-per-subnet rule holds for IPv6
// subnets too, settled by creation: a lease that loses its IPv6 subnet to
// an older one is out, and a younger lease sharing only the loser's IPv4
// subnet then stands (the older leases take their subnets first).
func TestWatchSnapshotOneLeasePerIPv6Subnet(t *testing.T) {
	m, logs := offlineStore(t)
	st := &watchState{leases: map[string]lease.Lease{}}
	put := func(name, value string, created, mod int64) {
		kv := m.kv(name, value, mod)
		kv.CreateRevision = created
		m.apply(st, kv, false)
	}
	put("10.5.1.0-24&fd00:10:5:1::-64", `{"PublicIP":"192.0.2.1","PublicIPv6":"2001:db8::1"}`, 5, 20) // loses fd00:10:5:1:: to .2
	put("10.5.2.0-24&fd00:10:5:1::-64", `{"PublicIP":"192.0.2.2","PublicIPv6":"2001:db8::2"}`, 3, 30)
	put("10.5.1.0-24&fd00:10:5:3::-64", `{"PublicIP":"192.0.2.3","PublicIPv6":"2001:db8::3"}`, 7, 7)
	put("10.5.4.0-24&fd00:10:5:4::-64", `{"PublicIP":"192.0.2.4","PublicIPv6":"2001:db8::4"}`, 8, 8)
	put("10.5.5.0-24&fd00:10:5:4::-64", `{"PublicIP":"192.0.2.5","PublicIPv6":"2001:db8::5"}`, 9, 9) // hostile: .4's IPv6 subnet
	var got []string
	for range 2 {
		got = got[:0]
		for _, l := range m.snapshot(st) {
			got = append(got, l.Key()+" "+l.Attrs.PublicIP.String())
		}
	}
	want := []string{"10.5.1.0-24&fd00:10:5:3::-64 192.0.2.3", "10.5.2.0-24&fd00:10:5:1::-64 192.0.2.2", "10.5.4.0-24&fd00:10:5:4::-64 192.0.2.4"}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("snapshot\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if n := strings.Count(logs.String(), "ignoring a second lease"); n != 2 {
		t.Errorf("duplicates logged %d times, want once each (2):\n%s", n, logs)
	}
	// Keys weft reads into dual-stack leases.
	if l := st.leases["10.5.4.0-24&fd00:10:5:4::-64"]; l.IPv6Subnet.String() != "fd00:10:5:4::/64" || l.Attrs.PublicIPv6.String() != "2001:db8::4" {
		t.Errorf("lease %+v", l)
	}
}

// flanneld's looser spellings of a dual key name the subnets its parser
// reads; an IPv6-only key's 0.0.0.0-0 names no IPv4 subnet.
func TestLooseSubnetKey(t *testing.T) {
	for _, c := range []struct{ key, v4, v6 string }{
		{"10.5.2.0-024", "10.5.2.0/24", "invalid Prefix"},
		{"10.5.2.1-24&fd00:10:5:0021::-064", "10.5.2.0/24", "fd00:10:5:21::/64"},
		{"0.0.0.0-0&fd00:10:5:12::1-64", "invalid Prefix", "fd00:10:5:12::/64"},
		{"10.5.2.0-24&10.5.3.0-24", "10.5.3.0/24", "invalid Prefix"},
		{"x10.5.2.0-24", "10.5.2.0/24", "invalid Prefix"},
		{"10.5.2.0-24&FD00::-64", "invalid Prefix", "invalid Prefix"},
		{"junk", "invalid Prefix", "invalid Prefix"},
	} {
		v4, v6 := looseSubnetKey(c.key)
		if v4.String() != c.v4 || v6.String() != c.v6 {
			t.Errorf("%s: %s %s, want %s %s", c.key, v4, v6, c.v4, c.v6)
		}
	}
}

// A lease of another subnet length inside the network (an earlier
// IPv6SubnetLen) keeps the subnets it overlaps from being leased; a key
// as large as the network or larger (hostile) does not stop new hosts.
func TestSubnetSetOverlaps(t *testing.T) {
	s := newSubnetSet(netip.MustParsePrefix("fd00:10:5::/56"), 64, 0)
	s.add(netip.MustParsePrefix("fd00:10:5:20::/60"))
	s.add(netip.MustParsePrefix("fd00::/8"))
	s.add(netip.MustParsePrefix("fd00:10:5::/56"))
	s.add(netip.MustParsePrefix("fd00:10:5:3::/64"))
	for p, want := range map[string]bool{
		"fd00:10:5:21::/64": true, "fd00:10:5:2f::/64": true, "fd00:10:5:3::/64": true,
		"fd00:10:5:30::/64": false, "fd00:10:5:4::/64": false,
	} {
		if got := s.has(netip.MustParsePrefix(p)); got != want {
			t.Errorf("has(%s) = %v, want %v", p, got, want)
		}
	}
}
