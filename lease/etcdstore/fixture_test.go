package etcdstore

import (
	"bytes"
	"context"
	"encoding/json"
	"net/netip"
	"os"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/lease"
)

type etcdDump struct {
	KVs []struct {
		Key, Value []byte // base64 in the file
		Version    int64
		Lease      int64
	}
}

func readDump(t *testing.T, name string) etcdDump {
	t.Helper()
	b, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	var d etcdDump
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	return d
}

// weft restarting on h1 of the recorded flanneld cluster does what
// flanneld did there: finds its lease by PublicIP, rewrites the same bytes
// under a new etcd lease (version 1 -> 2), and leaves h2's lease alone.
func TestFlanneldRestartFixture(t *testing.T) {
	e := startEtcd(t)
	cli := testClient(t, e)
	ctx := testCtx(t, 20*time.Second)
	for _, kv := range readDump(t, "etcd-udp-after-stop.json").KVs {
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

	prev, _, err := lease.ReadSubnetFile("../testdata/subnet-udp-h1.env")
	if err != nil {
		t.Fatal(err)
	}
	m, _ := newTestEtcd(t, e, func(o *Options) { o.PreviousSubnet = prev })
	cfg, err := m.Config(ctx)
	if err != nil || cfg.BackendType != "udp" {
		t.Fatalf("fixture config: %+v, %v", cfg, err)
	}
	own, err := m.Acquire(ctx, lease.Attrs{PublicIP: netip.MustParseAddr("192.0.2.1")})
	if err != nil {
		t.Fatal(err)
	}
	if own.Subnet.String() != "10.5.42.0/24" {
		t.Fatalf("got %s, flanneld kept 10.5.42.0/24", own.Subnet)
	}

	want := readDump(t, "etcd-udp-after-restart.json").KVs
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

	// Watching that cluster gives both hosts, as flanneld's h2 saw them.
	snaps := make(chan []lease.Lease)
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go m.Watch(wctx, snaps)
	s := receive(t, snaps, 10*time.Second)
	if len(s) != 2 || s[0].Subnet.String() != "10.5.40.0/24" || s[0].Attrs.PublicIP.String() != "192.0.2.2" ||
		s[1].Subnet.String() != "10.5.42.0/24" || s[1].Attrs.PublicIP.String() != "192.0.2.1" {
		t.Errorf("snapshot %v", s)
	}
}
