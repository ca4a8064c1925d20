package etcdstore

import (
	"context"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/lease"
)

// follower records what Follow hands out.
type follower struct {
	listings chan [2]int64 // revision, keys
	events   chan string   // "PUT key" or "DELETE key"
}

func newFollower() *follower {
	return &follower{listings: make(chan [2]int64, 10), events: make(chan string, 100)}
}

func (f *follower) listed(rev int64, keys int) { f.listings <- [2]int64{rev, int64(keys)} }

func (f *follower) take(wr clientv3.WatchResponse) {
	for _, ev := range wr.Events {
		f.events <- ev.Type.String() + " " + strings.TrimPrefix(string(ev.Kv.Key), testPrefix+"/subnets/")
	}
}

func (f *follower) listing(t *testing.T) [2]int64 {
	t.Helper()
	select {
	case l := <-f.listings:
		return l
	case <-time.After(10 * time.Second):
		t.Fatal("no listing")
		return [2]int64{}
	}
}

func (f *follower) event(t *testing.T, want string) {
	t.Helper()
	select {
	case ev := <-f.events:
		if ev != want {
			t.Fatalf("event %q, want %q", ev, want)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("no event, want %q", want)
	}
}

func TestFollowListsThenWatches(t *testing.T) {
	e := startEtcd(t)
	cli := testClient(t, e)
	ctx := testCtx(t, 20*time.Second)
	putLeases(t, cli, 0, 3)

	m, _ := newTestEtcd(t, e, nil)
	f := newFollower()
	done := make(chan error, 1)
	fctx, stop := context.WithCancel(ctx)
	go func() { done <- m.Follow(fctx, f.listed, f.take) }()
	if l := f.listing(t); l[1] != 3 || l[0] == 0 {
		t.Fatalf("listing: revision %d, %d keys; want 3 keys", l[0], l[1])
	}
	putLeases(t, cli, 3, 1)
	f.event(t, "PUT "+lease.SubnetKey(leaseSubnet(3)))
	if _, err := cli.Delete(ctx, testPrefix+"/subnets/"+lease.SubnetKey(leaseSubnet(0))); err != nil {
		t.Fatal(err)
	}
	f.event(t, "DELETE "+lease.SubnetKey(leaseSubnet(0)))
	// Only the subnets: the config is no lease.
	putConfig(t, cli, `{"Network":"10.7.0.0/16"}`)
	putLeases(t, cli, 4, 1)
	f.event(t, "PUT "+lease.SubnetKey(leaseSubnet(4)))

	stop()
	select {
	case err := <-done:
		if err != context.Canceled {
			t.Fatalf("Follow returned %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Follow did not return when its context ended")
	}
}

// A watch resuming from a compacted revision lists anew, as Watch does.
func TestFollowListsAgainAfterCompaction(t *testing.T) {
	e := startEtcd(t)
	cli := testClient(t, e)
	ctx := testCtx(t, 20*time.Second)
	putLeases(t, cli, 0, 2)
	r, err := cli.Get(ctx, "x")
	if err != nil {
		t.Fatal(err)
	}
	stale := r.Header.Revision - 1
	putLeases(t, cli, 2, 3)
	if r, err = cli.Get(ctx, "x"); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Compact(ctx, r.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}

	m, logs := newTestEtcd(t, e, nil)
	f := newFollower()
	go m.followFrom(ctx, stale, f.listed, f.take)
	if l := f.listing(t); l[1] != 5 || l[0] != r.Header.Revision {
		t.Fatalf("listing anew: revision %d, %d keys; want %d, 5 keys", l[0], l[1], r.Header.Revision)
	}
	if !strings.Contains(logs.String(), "revision compacted") {
		t.Errorf("compaction not logged:\n%s", logs)
	}
	putLeases(t, cli, 5, 1)
	f.event(t, "PUT "+lease.SubnetKey(leaseSubnet(5)))
}
