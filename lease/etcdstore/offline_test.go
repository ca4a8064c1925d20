package etcdstore

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"

	"github.com/weft-net/weft/lease"
)

// A store that never reaches etcd, for what Watch does with what it got.
func offlineStore(t *testing.T) (*Store, *logBuf) {
	t.Helper()
	logs := &logBuf{}
	m, err := New(Options{Endpoints: []string{"http://127.0.0.1:9"},
		Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m, logs
}

func (m *Store) kv(name, value string, rev int64) *mvccpb.KeyValue {
	return &mvccpb.KeyValue{Key: []byte(m.subnetsDir() + name), Value: []byte(value), ModRevision: rev}
}

// An unreadable value of etcd's largest size, rewritten at every
// revision, is logged once, as a bounded excerpt with its length
// (issue 14, item 5); the leases beside it stand.
func TestWatchLogsUnreadableValueOnceBounded(t *testing.T) {
	m, logs := offlineStore(t)
	st := &watchState{leases: map[string]lease.Lease{}}
	m.apply(st, m.kv("10.5.1.0-24", `{"PublicIP":"192.0.2.1"}`, 1), false)
	big := `{"PublicIP":"192.0.2.2","BackendType":"` + strings.Repeat("A", 1536*1024) // no closing: unreadable
	for rev := int64(2); rev < 7; rev++ {
		m.apply(st, m.kv("10.5.2.0-24", big, rev), false)
	}
	// A bad key, also long.
	longKey := "10.5.3.0-24" + strings.Repeat("9", 100000)
	m.apply(st, m.kv(longKey, `{"PublicIP":"192.0.2.3"}`, 7), false)
	m.apply(st, m.kv(longKey, `{"PublicIP":"192.0.2.3"}`, 8), false)

	out := logs.String()
	if n := strings.Count(out, "ignoring unreadable subnet lease"); n != 2 {
		t.Errorf("logged %d times, want once per bad key (2):\n%.2000s", n, out)
	}
	if len(out) > 4096 {
		t.Errorf("%d bytes of log for two bad keys, want a bounded excerpt", len(out))
	}
	if !strings.Contains(out, "valueBytes="+strconv.Itoa(len(big))) {
		t.Errorf("value length not logged:\n%.2000s", out)
	}
	if len(st.leases) != 1 || st.leases["10.5.1.0-24"].Subnet != netip.MustParsePrefix("10.5.1.0/24") {
		t.Errorf("leases %v", st.leases)
	}
	if b := st.bad["10.5.2.0-24"]; b == nil || b.revs != 5 {
		t.Errorf("bad revisions counted %+v, want 5", b)
	}

	// Fixed, it comes back and the count is told.
	m.apply(st, m.kv("10.5.2.0-24", `{"PublicIP":"192.0.2.2"}`, 9), false)
	if _, ok := st.leases["10.5.2.0-24"]; !ok || st.bad["10.5.2.0-24"] != nil {
		t.Errorf("fixed lease not taken: %v %v", st.leases, st.bad)
	}
	if !strings.Contains(logs.String(), "unreadableRevisions=5") {
		t.Errorf("recovery not logged with its count:\n%.2000s", logs.String()[len(out):])
	}
}

// Two keys naming one subnet (a dual-stack flanneld's key beside a plain
// one) give one lease in the snapshot, the first claimed, so no host's
// table refuses the snapshot (issue 14, item 3).
func TestWatchSnapshotOneLeasePerSubnet(t *testing.T) {
	m, logs := offlineStore(t)
	st := &watchState{leases: map[string]lease.Lease{}}
	m.apply(st, m.kv("10.5.3.0-24&fd00::-64", `{"PublicIP":"192.0.2.9"}`, 5), false)
	m.apply(st, m.kv("10.5.3.0-24", `{"PublicIP":"192.0.2.3"}`, 4), false)
	m.apply(st, m.kv("10.5.4.0-24", `{"PublicIP":"192.0.2.4"}`, 6), false)
	out := make(chan []lease.Lease, 2)
	for range 2 {
		if !m.send(context.Background(), out, st) {
			t.Fatal("send failed")
		}
	}
	s := <-out
	if len(s) != 2 || s[0].Subnet.String() != "10.5.3.0/24" || s[0].Attrs.PublicIP.String() != "192.0.2.3" || s[1].Subnet.String() != "10.5.4.0/24" {
		t.Fatalf("snapshot %v", s)
	}
	if n := strings.Count(logs.String(), "ignoring a second lease"); n != 1 {
		t.Errorf("duplicate logged %d times, want once:\n%s", n, logs)
	}
}

// Keep's "lost to another host" error quotes the holder's value bounded.
func TestCheckHolderBounded(t *testing.T) {
	m, _ := offlineStore(t)
	st := &keepState{own: lease.Lease{Subnet: netip.MustParsePrefix("10.5.1.0/24"), Attrs: lease.Attrs{PublicIP: netip.MustParseAddr("192.0.2.1")}},
		val: []byte(`{"PublicIP":"192.0.2.1","PublicIPv6":null}`)}
	err := m.checkHolder(st, []byte(`{"PublicIP":"192.0.2.2","BackendType":"`+strings.Repeat("B", 1<<20)+`"}`))
	if !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("got %v, want ErrLeaseLost", err)
	}
	if len(err.Error()) > 1024 {
		t.Errorf("error is %d bytes long", len(err.Error()))
	}
	if m.checkHolder(st, []byte(`{"PublicIP":"192.0.2.1"}`)) != nil {
		t.Error("own PublicIP refused")
	}
}

// Acquire refuses a PublicIP no host can send to at once, naming it,
// rather than waiting for etcd (issue 14, item 4).
func TestAcquireRefusesUnusablePublicIP(t *testing.T) {
	m, _ := offlineStore(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, ip := range []string{"0.0.0.0", "127.0.0.1", "224.0.0.1", "255.255.255.255"} {
		_, err := m.Acquire(ctx, lease.Attrs{PublicIP: netip.MustParseAddr(ip)})
		if err == nil || !strings.Contains(err.Error(), "PublicIP "+ip) || ctx.Err() != nil {
			t.Errorf("%s: %v", ip, err)
		}
	}
}

// TLS files with a plain endpoint are refused, naming the flags and the
// endpoint: etcd's client would drop TLS for it silently (issue 14,
// item 6).
func TestNewRefusesTLSFilesWithPlainEndpoint(t *testing.T) {
	for name, c := range map[string]struct {
		o    Options
		want []string
	}{
		"cafile, http":        {Options{Endpoints: []string{"http://192.0.2.10:2379"}, CAFile: "/x/ca.pem"}, []string{"--etcd-cafile given", "http://192.0.2.10:2379"}},
		"certfile, HTTP":      {Options{Endpoints: []string{"HTTP://192.0.2.10:2379"}, CertFile: "/x/c.pem", KeyFile: "/x/k.pem"}, []string{"--etcd-certfile, --etcd-keyfile given", "http://192.0.2.10:2379"}},
		"mixed endpoints":     {Options{Endpoints: []string{"https://192.0.2.10:2379,http://192.0.2.11:2379"}, CAFile: "/x/ca.pem"}, []string{"http://192.0.2.11:2379", "without TLS"}},
		"unix":                {Options{Endpoints: []string{"unix://etcd.sock:0"}, CAFile: "/x/ca.pem"}, []string{"unix://etcd.sock:0"}},
		"default endpoints":   {Options{CAFile: "/x/ca.pem"}, []string{"the default --etcd-endpoints", "http://127.0.0.1:2379"}},
		"loopback is no pass": {Options{Endpoints: []string{"http://127.0.0.1:2379"}, CAFile: "/x/ca.pem"}, []string{"http://127.0.0.1:2379"}},
	} {
		_, err := New(c.o)
		if err == nil {
			t.Errorf("%s: accepted", name)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: %v, want it to say %q", name, err, w)
			}
		}
	}
}

// Plain http to another host is warned about, also beside https
// endpoints, which used to hide the warning.
func TestNewWarnsPlainHTTP(t *testing.T) {
	for eps, warn := range map[string]bool{
		"http://192.0.2.10:2379":                         true,
		"https://192.0.2.10:2379,http://192.0.2.11:2379": true,
		"https://192.0.2.10:2379":                        false,
		"http://127.0.0.1:2379,http://localhost:2379":    false,
	} {
		logs := &logBuf{}
		m, err := New(Options{Endpoints: []string{eps}, Logger: slog.New(slog.NewTextHandler(logs, nil))})
		if err != nil {
			t.Fatalf("%s: %v", eps, err)
		}
		m.Close()
		if got := strings.Contains(logs.String(), "This is insecure"); got != warn {
			t.Errorf("%s: warned %v, want %v:\n%s", eps, got, warn, logs)
		}
	}
}
