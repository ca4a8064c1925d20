package e2e

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"

	"github.com/weft-net/weft/bench/lab"
	"github.com/weft-net/weft/bench/lab/labtest"
	"github.com/weft-net/weft/lease"
)

const etcdURL = "http://192.0.2.254:2379"

// TestUDPBackendEtcd is issue 3's promise end to end: three weft hosts in
// namespaces lease their subnets from one etcd, with no static
// configuration, see each other and forward traffic; a host that joins
// later is learned by the others, and one whose lease is deleted is
// forgotten. It runs against weft's embedded etcd and against a real
// etcd 3.4 server (Debian's etcd-server, installed by .ci/run), the
// version the flanneld fixtures were recorded with.
func TestUDPBackendEtcd(t *testing.T) {
	t.Run("embedded", func(t *testing.T) { testUDPBackendEtcd(t, false) })
	t.Run("external-etcd", func(t *testing.T) { testUDPBackendEtcd(t, true) })
}

func testUDPBackendEtcd(t *testing.T, external bool) {
	l := labtest.New(t, lab.Options{Hosts: 3})
	exe := self(t)
	const netconf = `{"Network":"10.8.0.0/16","Backend":{"Type":"udp"}}`
	dataDir := filepath.Join(l.Dir, "etcd")
	if external {
		etcdBin, err := exec.LookPath("etcd")
		if err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatal("no etcd binary: .ci/run installs etcd-server")
			}
			t.Skip("no etcd binary (apt-get install etcd-server)")
		}
		if _, err := l.Start(l.Switch, "etcd", etcdBin, "--data-dir", dataDir,
			"--listen-client-urls", etcdURL, "--advertise-client-urls", etcdURL,
			"--listen-peer-urls", "http://127.0.0.1:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
			"--initial-cluster", "default=http://127.0.0.1:2380"); err != nil {
			t.Fatal(err)
		}
		// weft netconf waits for etcd and stores the config as given.
		if out, err := l.Exec(l.Switch, exe, "netconf", "set", "--etcd-endpoints", etcdURL, netconf); err != nil {
			t.Fatalf("weft netconf set: %v\n%s", err, out)
		}
	} else if _, err := l.Start(l.Switch, "etcd", exe, "etcd", "--data-dir", dataDir,
		"--listen-client-urls", etcdURL, "--network-config", netconf); err != nil {
		t.Fatal(err)
	}

	start := func(h *lab.Host) *lab.Proc {
		p, err := l.Start(h.Name, "weft", exe, "run", "--etcd-endpoints", etcdURL, "--iface", h.Underlay,
			"--subnet-file", filepath.Join(h.Dir, "subnet.env"), "--debug-socket", filepath.Join(h.Dir, "debug.sock"))
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	attach := func(h *lab.Host, p *lab.Proc) netip.Prefix {
		env := string(waitFile(t, p, filepath.Join(h.Dir, "subnet.env")))
		var sub netip.Prefix
		for _, line := range strings.Split(env, "\n") {
			if v, ok := strings.CutPrefix(line, "FLANNEL_SUBNET="); ok {
				sub = netip.MustParsePrefix(v).Masked()
			}
		}
		if !sub.IsValid() || !netip.MustParsePrefix("10.8.0.0/16").Contains(sub.Addr()) || sub.Bits() != 24 {
			t.Fatalf("%s leased %v; want a /24 of 10.8.0.0/16:\n%s", h.Name, sub, env)
		}
		if err := h.AttachPod(sub); err != nil {
			t.Fatal(err)
		}
		return sub
	}
	h1, h2, h3 := l.Hosts[0], l.Hosts[1], l.Hosts[2]
	p1, p2 := start(h1), start(h2)
	s1, s2 := attach(h1, p1), attach(h2, p2)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	pingEventually := func(from, to *lab.Host) {
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		for {
			res, err := lab.Ping(ctx, from.Pod, to.PodIP, 1, 0, time.Second)
			if err == nil && res.Received == 1 {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("no path %s -> %s (%s -> %s) within 15s", from.Name, to.Name, from.PodIP, to.PodIP)
			}
		}
	}
	pingEventually(h1, h2)
	pingEventually(h2, h1)

	// A host joining later is learned through the watch.
	p3 := start(h3)
	s3 := attach(h3, p3)
	if s1 == s2 || s2 == s3 || s1 == s3 {
		t.Fatalf("subnets not distinct: %s %s %s", s1, s2, s3)
	}
	pingEventually(h1, h3)
	pingEventually(h3, h2)

	// The leases in etcd are flanneld's bytes.
	cli := etcdClient(t, l)
	resp, err := cli.Get(ctx, "/coreos.com/network/subnets/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, kv := range resp.Kvs {
		got[string(kv.Key)] = string(kv.Value)
		if kv.Lease == 0 {
			t.Errorf("%s has no etcd lease attached", kv.Key)
		}
	}
	for _, c := range []struct {
		h   *lab.Host
		sub netip.Prefix
	}{{h1, s1}, {h2, s2}, {h3, s3}} {
		key := "/coreos.com/network/subnets/" + lease.SubnetKey(c.sub)
		want := fmt.Sprintf(`{"PublicIP":"%s","PublicIPv6":null}`, c.h.IP)
		if got[key] != want {
			t.Errorf("%s = %q, want %q", key, got[key], want)
		}
	}

	// h3's lease deleted (as an operator or its expiry would): the others
	// drop it from their tables.
	if _, err := cli.Delete(ctx, "/coreos.com/network/subnets/"+lease.SubnetKey(s3)); err != nil {
		t.Fatal(err)
	}
	p3.Stop()
	deadline := time.Now().Add(15 * time.Second)
	for {
		st := weftStats(t, l, h1, exe)
		if len(st.Peers) == 1 && st.Peers[0].Subnet == s2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("h1 still has peers %v after h3's lease was deleted", st.Peers)
		}
		time.Sleep(200 * time.Millisecond)
	}
	pingEventually(h1, h2)
	for _, p := range []*lab.Proc{p1, p2} {
		if p.Exited() {
			t.Errorf("weft exited:\n%s", p.Log())
		}
	}
}

// etcdClient dials the lab's etcd from the test, through the switch
// namespace.
func etcdClient(t *testing.T, l *lab.Lab) *clientv3.Client {
	t.Helper()
	dial := lab.DialContext(l.Switch)
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{etcdURL},
		DialTimeout: 10 * time.Second,
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return dial(ctx, "tcp", addr)
		})},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}
