package etcdstore

import (
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/lease/etcdserver"
)

// startEtcd runs a real embedded etcd in a fresh directory for one test.
func startEtcd(t testing.TB) *etcdserver.Server {
	t.Helper()
	return startEtcdAt(t, t.TempDir(), "http://127.0.0.1:0")
}

func startEtcdAt(t testing.TB, dir, listen string) *etcdserver.Server {
	t.Helper()
	e, err := etcdserver.Start(etcdserver.Options{Dir: dir, ListenClientURLs: []string{listen}, LogLevel: "error"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	return e
}

func testClient(t testing.TB, e *etcdserver.Server) *clientv3.Client {
	t.Helper()
	c, err := clientv3.New(clientv3.Config{Endpoints: e.Endpoints(), DialTimeout: 5 * time.Second, Logger: quietZap()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}
