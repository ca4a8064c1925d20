package etcdserver

import (
	"context"
	"net/url"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// startEtcd runs a real embedded etcd in a fresh directory for one test.
func startEtcd(t testing.TB) *Server {
	t.Helper()
	return startEtcdAt(t, t.TempDir(), "http://127.0.0.1:0")
}

func startEtcdAt(t testing.TB, dir, listen string) *Server {
	t.Helper()
	e, err := Start(Options{Dir: dir, ListenClientURLs: []string{listen}, LogLevel: "error"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	return e
}

func testClient(t testing.TB, e *Server) *clientv3.Client {
	t.Helper()
	c, err := clientv3.New(clientv3.Config{Endpoints: e.Endpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestEmbeddedRestartKeepsData(t *testing.T) {
	dir := t.TempDir()
	e := startEtcdAt(t, dir, "http://127.0.0.1:0")
	eps := e.Endpoints()
	if len(eps) != 1 {
		t.Fatalf("endpoints %v", eps)
	}
	u, err := url.Parse(eps[0])
	if err != nil || u.Port() == "0" || u.Port() == "" {
		t.Fatalf("endpoint %q has no real port", eps[0])
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c := testClient(t, e)
	if _, err := c.Put(ctx, "/k", "v"); err != nil {
		t.Fatal(err)
	}
	e.Close()

	// Same data dir, same client port: the value is still there.
	e2 := startEtcdAt(t, dir, eps[0])
	c2 := testClient(t, e2)
	r, err := c2.Get(ctx, "/k")
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Kvs) != 1 || string(r.Kvs[0].Value) != "v" {
		t.Fatalf("after restart: %v", r.Kvs)
	}
}

func TestEmbeddedRefusesBadURL(t *testing.T) {
	for _, u := range []string{"127.0.0.1:2379", "https://127.0.0.1:2379", "http://127.0.0.1", "unix:///x"} {
		if e, err := Start(Options{Dir: t.TempDir(), ListenClientURLs: []string{u}}); err == nil {
			e.Close()
			t.Errorf("%s accepted", u)
		}
	}
}

func TestEmbeddedAdvertisesRealPort(t *testing.T) {
	e := startEtcd(t)
	c := testClient(t, e)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := c.MemberList(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Members) != 1 || len(r.Members[0].ClientURLs) != 1 || r.Members[0].ClientURLs[0] != e.Endpoints()[0] {
		t.Fatalf("members %+v, endpoints %v", r.Members, e.Endpoints())
	}
}
