package etcdstore

import (
	"io"
	"net"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weft-net/weft/lease"
)

// cutProxy forwards TCP to etcd until Cut, which drops every connection
// and refuses new ones (a partition between this host and etcd) until
// Restore.
type cutProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	cut    bool
	conns  map[net.Conn]struct{}
}

func newCutProxy(t testing.TB, etcdURL string) *cutProxy {
	t.Helper()
	u, err := url.Parse(etcdURL)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{ln: ln, target: u.Host, conns: map[net.Conn]struct{}{}}
	t.Cleanup(func() { ln.Close(); p.Cut() })
	go p.serve()
	return p
}

func (p *cutProxy) URL() string { return "http://" + p.ln.Addr().String() }

func (p *cutProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		cut := p.cut
		p.mu.Unlock()
		if cut {
			c.Close()
			continue
		}
		up, err := net.Dial("tcp4", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns[c], p.conns[up] = struct{}{}, struct{}{}
		p.mu.Unlock()
		go func() { io.Copy(up, c); up.Close() }()
		go func() { io.Copy(c, up); c.Close() }()
	}
}

func (p *cutProxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = true
	for c := range p.conns {
		c.Close()
	}
	clear(p.conns)
}

func (p *cutProxy) Restore() {
	p.mu.Lock()
	p.cut = false
	p.mu.Unlock()
}

// TestEtcdKeepAcrossPartitionPastTTL: a host cut off from etcd for
// longer than its lease's TTL. The lease runs out in etcd (other hosts
// see it go); Keep does not give up meanwhile, and once etcd answers
// again it claims the same subnet back, renews it from then on, and the
// host's watch follows the cluster again.
func TestEtcdKeepAcrossPartitionPastTTL(t *testing.T) {
	e := startEtcd(t)
	cli := testClient(t, e)
	putConfig(t, cli, `{"Network": "10.5.0.0/16"}`)
	ctx := testCtx(t, 60*time.Second)
	proxy := newCutProxy(t, e.Endpoints()[0])
	m, logs := newTestEtcd(t, e, func(o *Options) {
		o.Endpoints = []string{proxy.URL()}
		o.TTL, o.RenewMargin = 3*time.Second, 2*time.Second
		o.RequestTimeout = time.Second
	})
	own, err := m.Acquire(ctx, lease.Attrs{PublicIP: ip(1)})
	if err != nil {
		t.Fatal(err)
	}
	keepErr := make(chan error, 1)
	go func() { keepErr <- m.Keep(ctx, own) }()
	snaps := make(chan []lease.Lease, 1)
	go m.Watch(ctx, snaps)
	waitFor(t, snaps, 10*time.Second, "own lease in the watch", func(s []lease.Lease) bool { return hasSubnet(s, own.Subnet) })

	key := testPrefix + "/subnets/" + own.Key()
	held := func() (string, bool) {
		r, err := cli.Get(ctx, key)
		if err != nil || len(r.Kvs) != 1 {
			return "", false
		}
		return string(r.Kvs[0].Value), true
	}
	proxy.Cut()
	cutAt := time.Now()
	for {
		if _, ok := held(); !ok {
			break
		}
		if time.Since(cutAt) > 10*time.Second {
			t.Fatal("lease still in etcd 10 s into a partition, past its 3 s TTL")
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(2 * time.Second) // well past expiry, still cut off
	select {
	case err := <-keepErr:
		t.Fatalf("Keep gave up during the partition: %v", err)
	default:
	}

	proxy.Restore()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if v, ok := held(); ok {
			var a lease.Attrs
			if err := a.UnmarshalJSON([]byte(v)); err != nil || a.PublicIP != ip(1) {
				t.Fatalf("after the partition %s holds %q (%v), want this host's lease", key, v, err)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("same subnet not reclaimed within 20 s of the partition healing:\n%s", logs)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !strings.Contains(logs.String(), "reclaiming subnet lease") {
		t.Errorf("no reclaim logged:\n%s", logs)
	}
	// The watch follows the cluster again: another host's new lease
	// shows up.
	other := netip.MustParsePrefix("10.5.77.0/24")
	if _, err := cli.Put(ctx, testPrefix+"/subnets/"+lease.SubnetKey(other), `{"PublicIP":"`+ip(2).String()+`"}`); err != nil {
		t.Fatal(err)
	}
	waitFor(t, snaps, 20*time.Second, "the watch resumed", func(s []lease.Lease) bool { return hasSubnet(s, other) && hasSubnet(s, own.Subnet) })
	// Renewed from then on: two TTLs later it is still there.
	time.Sleep(6 * time.Second)
	if _, ok := held(); !ok {
		t.Fatalf("reclaimed lease not renewed:\n%s", logs)
	}
	select {
	case err := <-keepErr:
		t.Fatalf("Keep returned: %v", err)
	default:
	}
}
