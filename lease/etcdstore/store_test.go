package etcdstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/lease"
	"github.com/weft-net/weft/lease/etcdserver"
)

const testPrefix = "/coreos.com/network"

// logBuf collects a Manager's log lines for assertions; it outlives the
// test's goroutines, unlike t.Log.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func newTestEtcd(t testing.TB, e *etcdserver.Server, set func(*Options)) (*Store, *logBuf) {
	t.Helper()
	logs := &logBuf{}
	opts := Options{
		Endpoints: e.Endpoints(),
		Logger:    slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		RetryMax:  200 * time.Millisecond,
	}
	if set != nil {
		set(&opts)
	}
	m, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m, logs
}

func putConfig(t testing.TB, cli *clientv3.Client, cfg string) {
	t.Helper()
	if _, err := cli.Put(context.Background(), testPrefix+"/config", cfg); err != nil {
		t.Fatal(err)
	}
}

func testCtx(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func ip(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{198, 51, byte(100 + i/250), byte(1 + i%250)})
}

// listKeys returns the subnet keys in etcd with their values and leases.
func listKeys(t testing.TB, cli *clientv3.Client) map[string]string {
	t.Helper()
	r, err := cli.Get(context.Background(), testPrefix+"/subnets/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, kv := range r.Kvs {
		out[strings.TrimPrefix(string(kv.Key), testPrefix+"/subnets/")] = string(kv.Value)
	}
	return out
}

func TestEtcdConfigWaitsForKey(t *testing.T) {
	e := startEtcd(t)
	cli := testClient(t, e)
	m, logs := newTestEtcd(t, e, nil)
	ctx := testCtx(t, 20*time.Second)

	done := make(chan error, 1)
	var cfg *lease.Config
	go func() {
		var err error
		cfg, err = m.Config(ctx)
		done <- err
	}()
	time.Sleep(600 * time.Millisecond)
	select {
	case err := <-done:
		t.Fatalf("Config returned before the key existed: %v", err)
	default:
	}
	if !strings.Contains(logs.String(), "fetching network config failed, retrying") {
		t.Errorf("no retry logged:\n%s", logs)
	}
	fixture, err := os.ReadFile("../testdata/config-vxlan.json")
	if err != nil {
		t.Fatal(err)
	}
	putConfig(t, cli, string(fixture))
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if cfg.BackendType != "vxlan" || cfg.Network.String() != "10.5.0.0/16" {
		t.Errorf("config %+v", cfg)
	}

	// A config that does not parse is refused at once, naming the key.
	putConfig(t, cli, `{"Network": "10.5.0.0/16", "SubnetLen": 33}`)
	_, err = m.Config(ctx)
	var ce *lease.ConfigError
	if !errors.As(err, &ce) || ce.Key != "SubnetLen" {
		t.Errorf("bad config: %v", err)
	}

	// Canceling ctx ends the wait.
	m2, _ := newTestEtcd(t, e, func(o *Options) { o.Prefix = "/nothing/here" })
	cctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if _, err := m2.Config(cctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("missing config with ctx ending: %v", err)
	}
}

func TestEtcdUnreachableAtStart(t *testing.T) {
	// A port nobody listens on: Config keeps retrying, logging, until ctx ends.
	l := freeLoopbackURLMust(t)
	logs := &logBuf{}
	m, err := New(Options{Endpoints: []string{l}, RetryMax: 100 * time.Millisecond, RequestTimeout: 200 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	if _, err := m.Config(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v", err)
	}
	if n := strings.Count(logs.String(), "retrying"); n < 3 {
		t.Errorf("%d retries logged, want several:\n%s", n, logs)
	}

	// Then etcd comes up on that address: the same Manager gets through.
	e := startEtcdAt(t, t.TempDir(), l)
	putConfig(t, testClient(t, e), `{"Network": "10.5.0.0/16"}`)
	if _, err := m.Config(testCtx(t, 20*time.Second)); err != nil {
		t.Fatal(err)
	}
}

func freeLoopbackURLMust(t testing.TB) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return "http://" + l.Addr().String()
}

func TestNewEtcdRefuses(t *testing.T) {
	for name, o := range map[string]Options{
		"bad endpoint":       {Endpoints: []string{"127.0.0.1:2379"}},
		"empty endpoints":    {Endpoints: []string{" , "}},
		"relative prefix":    {Prefix: "coreos.com/network"},
		"cert without key":   {CertFile: "/x.pem"},
		"user without pass":  {Username: "root"},
		"missing CA file":    {CAFile: "/nonexistent/ca.pem"},
		"negative margin":    {RenewMargin: -time.Minute},
		"TTL below etcd min": {TTL: time.Second},
	} {
		if _, err := New(o); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	m, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(m.opts.Endpoints, ","); got != "http://127.0.0.1:4001,http://127.0.0.1:2379" {
		t.Errorf("default endpoints %s", got)
	}
	if m.opts.Prefix != testPrefix || m.opts.TTL != 24*time.Hour || m.opts.RenewMargin != time.Hour {
		t.Errorf("defaults %+v", m.opts)
	}
}

func TestEtcdAcquire64Concurrent(t *testing.T) {
	e := startEtcd(t)
	cli := testClient(t, e)
	putConfig(t, cli, `{"Network": "10.5.0.0/16", "Backend": {"Type": "udp"}}`)
	ctx := testCtx(t, 40*time.Second)

	const n = 64
	leases := make([]lease.Lease, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		m, _ := newTestEtcd(t, e, nil)
		if _, err := m.Config(ctx); err != nil {
			t.Fatal(err)
		}
		wg.Go(func() {
			<-start
			leases[i], errs[i] = m.Acquire(ctx, lease.Attrs{PublicIP: ip(i)})
		})
	}
	close(start)
	wg.Wait()

	cfg, _ := lease.ParseConfig([]byte(`{"Network": "10.5.0.0/16"}`))
	seen := map[netip.Prefix]int{}
	for i, l := range leases {
		if errs[i] != nil {
			t.Fatalf("host %d: %v", i, errs[i])
		}
		if !cfg.Contains(l.Subnet) {
			t.Errorf("host %d got %s, outside 10.5.1.0 ... 10.5.255.0", i, l.Subnet)
		}
		if j, dup := seen[l.Subnet]; dup {
			t.Errorf("hosts %d and %d both got %s", j, i, l.Subnet)
		}
		seen[l.Subnet] = i
	}
	// etcd agrees: one key per host, each with its host's value and a
	// 24 h etcd lease.
	r, err := cli.Get(ctx, testPrefix+"/subnets/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Kvs) != n {
		t.Fatalf("%d keys in etcd, want %d", len(r.Kvs), n)
	}
	for _, kv := range r.Kvs {
		sn, _, _ := lease.ParseSubnetKey(strings.TrimPrefix(string(kv.Key), testPrefix+"/subnets/"))
		i, ok := seen[sn]
		want := fmt.Sprintf(`{"PublicIP":"%s","PublicIPv6":null}`, ip(i))
		if !ok || string(kv.Value) != want {
			t.Errorf("%s = %s, want %s", kv.Key, kv.Value, want)
		}
		ttl, err := cli.TimeToLive(ctx, clientv3.LeaseID(kv.Lease))
		if err != nil || ttl.GrantedTTL != 86400 || ttl.TTL < 86000 {
			t.Errorf("%s: lease %x TTL %+v, %v", kv.Key, kv.Lease, ttl, err)
		}
	}
	// Lost races left no etcd leases behind.
	ls, err := cli.Leases(ctx)
	if err != nil || len(ls.Leases) != n {
		t.Errorf("%d etcd leases (err %v), want %d", len(ls.Leases), err, n)
	}
}

func TestEtcdPutConfig(t *testing.T) {
	e := startEtcd(t)
	m, _ := newTestEtcd(t, e, nil)
	ctx := testCtx(t, 20*time.Second)
	if _, ok, err := m.RawConfig(ctx); ok || err != nil {
		t.Fatalf("empty store: ok %v, %v", ok, err)
	}
	// Stored byte for byte, spaces and all.
	first := []byte("{ \"Network\": \"10.5.0.0/16\",\n  \"Backend\": {\"Type\": \"vxlan\"} }\n")
	if stored, err := m.PutConfig(ctx, first, true); !stored || err != nil {
		t.Fatalf("first put: %v, %v", stored, err)
	}
	if got, ok, err := m.RawConfig(ctx); !ok || err != nil || !bytes.Equal(got, first) {
		t.Fatalf("RawConfig = %q, %v, %v", got, ok, err)
	}
	second := []byte(`{"Network": "10.6.0.0/16"}`)
	if stored, err := m.PutConfig(ctx, second, true); stored || err != nil {
		t.Fatalf("only-if-absent over an existing config: %v, %v", stored, err)
	}
	if got, _, _ := m.RawConfig(ctx); !bytes.Equal(got, first) {
		t.Fatalf("existing config replaced: %q", got)
	}
	if stored, err := m.PutConfig(ctx, second, false); !stored || err != nil {
		t.Fatalf("forced put: %v, %v", stored, err)
	}
	if c, err := m.Config(ctx); err != nil || c.Network.String() != "10.6.0.0/16" {
		t.Fatalf("Config after forced put: %+v, %v", c, err)
	}
	// Invalid configs never reach etcd.
	var ce *lease.ConfigError
	if _, err := m.PutConfig(ctx, []byte(`{"Network": "10.6.0.0/16", "SubnetLen": 8}`), false); !errors.As(err, &ce) {
		t.Fatalf("invalid config: %v", err)
	}
	if got, _, _ := m.RawConfig(ctx); !bytes.Equal(got, second) {
		t.Fatalf("invalid config stored: %q", got)
	}
}

func TestEtcdAuth(t *testing.T) {
	e := startEtcd(t)
	cli := testClient(t, e)
	ctx := testCtx(t, 20*time.Second)
	putConfig(t, cli, `{"Network": "10.5.0.0/16"}`)
	for _, step := range []func() error{
		func() error { _, err := cli.RoleAdd(ctx, "root"); return err },
		func() error { _, err := cli.UserAdd(ctx, "root", "s3cret"); return err },
		func() error { _, err := cli.UserGrantRole(ctx, "root", "root"); return err },
		func() error { _, err := cli.AuthEnable(ctx); return err },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}

	m, _ := newTestEtcd(t, e, func(o *Options) { o.Username, o.Password = "root", "s3cret" })
	if _, err := m.Acquire(ctx, lease.Attrs{PublicIP: ip(1)}); err != nil {
		t.Fatalf("with the right password: %v", err)
	}

	// A wrong password is not worth retrying: it is returned at once.
	bad, _ := newTestEtcd(t, e, func(o *Options) { o.Username, o.Password = "root", "wrong" })
	// (Were it retried, Config would run into ctx's deadline instead.)
	if _, err := bad.Config(ctx); err == nil || !strings.Contains(err.Error(), "authentication failed") || ctx.Err() != nil {
		t.Fatalf("wrong password: %v", err)
	}
	// Without credentials etcd refuses too.
	anon, _ := newTestEtcd(t, e, nil)
	if _, err := anon.Config(ctx); err == nil || ctx.Err() != nil {
		t.Fatalf("anonymous access to an auth-enabled etcd: %v", err)
	}
}

func TestEtcdClosed(t *testing.T) {
	e := startEtcd(t)
	m, _ := newTestEtcd(t, e, nil)
	m.Close()
	ctx := testCtx(t, 5*time.Second)
	if _, err := m.Config(ctx); !errors.Is(err, ErrClosed) {
		t.Errorf("Config after Close: %v", err)
	}
	if err := m.Watch(ctx, make(chan []lease.Lease)); !errors.Is(err, ErrClosed) {
		t.Errorf("Watch after Close: %v", err)
	}
}

func TestRenewAt(t *testing.T) {
	exp := time.Date(2026, 11, 24, 14, 31, 52, 0, time.UTC)
	for _, tt := range []struct {
		ttl, margin, before time.Duration
	}{
		{24 * time.Hour, 60 * time.Minute, 60 * time.Minute}, // flanneld: "Waiting for 22h59m58s to renew lease"
		{24 * time.Hour, 1439 * time.Minute, 1439 * time.Minute},
		{24 * time.Hour, time.Minute, time.Minute},
		{3 * time.Second, 60 * time.Minute, 1500 * time.Millisecond},
		{3 * time.Second, 2 * time.Second, 2 * time.Second},
	} {
		m, err := New(Options{TTL: tt.ttl, RenewMargin: tt.margin})
		if err != nil {
			t.Fatal(err)
		}
		if got := exp.Sub(m.renewAt(&keepState{exp: exp})); got != tt.before {
			t.Errorf("TTL %s, margin %s: renews %s before expiry, want %s", tt.ttl, tt.margin, got, tt.before)
		}
	}
}
