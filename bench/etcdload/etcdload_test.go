package etcdload

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var weftBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "weft-etcdload-test-")
	if err != nil {
		panic(err)
	}
	weftBin = filepath.Join(dir, "weft")
	out, err := exec.Command("go", "build", "-o", weftBin, "github.com/weft-net/weft/cmd/weft").CombinedOutput()
	if err != nil {
		os.Stderr.Write(out)
		os.RemoveAll(dir)
		panic("building weft: " + err.Error())
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// A small run against a real weft etcd: every phase completes, and the
// server sees exactly a weft host's requests per host, so the figures at
// 5,000 are about what weft does. If etcdstore's requests change, this
// says so here, and docs/scale.md's figures are due again.
func TestRunSmall(t *testing.T) {
	const n = 20
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	r, err := Run(ctx, Options{Binary: weftBin, Hosts: n, FanOutEvents: 4, ChurnRate: 20, ChurnDuration: 500 * time.Millisecond,
		Idle: time.Second, Timeout: time.Minute, Progress: func(s string) { t.Log(s) }})
	if r != nil {
		var b strings.Builder
		WriteTable(&b, r)
		t.Log("\n" + b.String())
	}
	if err != nil {
		t.Fatal(err)
	}
	// Per host: the config, Acquire's listing and WatchChanges' (Range);
	// the lease watch and Keep's watch of its own key, on one stream;
	// Acquire's re-put of the lease it holds with a fresh etcd lease
	// (Grant, Txn) and the old one revoked. Plus the bench's: a read of
	// the revision and the first join.
	want := map[string]float64{"Range": 3*n + 1, "Watch": 2 * n, "LeaseGrant": n + 1, "Txn": n + 1, "LeaseRevoke": n}
	for m, c := range want {
		if r.Storm.Requests[m] != c {
			t.Errorf("start storm: %v %s requests, want %v (all: %v)", r.Storm.Requests[m], m, c, r.Storm.Requests)
		}
	}
	if len(r.Storm.Requests) != len(want) {
		t.Errorf("start storm: requests %v, want only %v", r.Storm.Requests, want)
	}
	if r.Storm.KeysListed != n*n {
		t.Errorf("start storm: %d keys listed, want %d", r.Storm.KeysListed, n*n)
	}
	if r.Idle.WatchStreams != n || r.Idle.Watchers != 2*n {
		t.Errorf("idle: %v watch streams, %v watchers; want %d, %d", r.Idle.WatchStreams, r.Idle.Watchers, n, 2*n)
	}
	if r.FanOut.Events != 4 || r.Churn == nil || r.Churn.Events != 10 {
		t.Errorf("events: fan-out %d, churn %+v", r.FanOut.Events, r.Churn)
	}
	if r.Storm.ServerCPU <= 0 || r.Idle.Window <= 0 || r.ServerRSSPeak == 0 {
		t.Errorf("no figures: %+v", r)
	}
	if r.Warnings != 0 {
		t.Errorf("the hosts logged %d warnings: %v", r.Warnings, r.WarningLines)
	}
}

// With renewals every 2 s, the hosts renew through Keep, and etcd counts
// the renewals.
func TestRunRenewals(t *testing.T) {
	const n = 10
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	r, err := Run(ctx, Options{Binary: weftBin, Hosts: n, FanOutEvents: 2, ChurnRate: 0, RenewEvery: 2 * time.Second,
		Idle: 5 * time.Second, Timeout: time.Minute, Progress: func(s string) { t.Log(s) }})
	if err != nil {
		t.Fatal(err)
	}
	if r.TTL != 4*time.Second || r.RenewEvery != 2*time.Second || r.RenewalsPerSecond != n/2 {
		t.Errorf("TTL %s, renewing every %s, %v/s by design; want 4s, 2s, %d/s", r.TTL, r.RenewEvery, r.RenewalsPerSecond, n/2)
	}
	if r.Idle.Renewals <= 0 || r.Idle.Requests["LeaseKeepAlive"] <= 0 {
		t.Errorf("no renewals seen in 5 s: %v/s, requests %v", r.Idle.Renewals, r.Idle.Requests)
	}
	if r.Churn != nil {
		t.Errorf("churn at rate 0: %+v", r.Churn)
	}
}
