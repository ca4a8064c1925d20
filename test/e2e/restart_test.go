package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/weft-net/weft/bench/harness"
	"github.com/weft-net/weft/bench/lab"
	"github.com/weft-net/weft/bench/traffic"
)

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

// kill9 kills weft on host i as a crash would: no SIGTERM handler runs.
func (f *flab) kill9(i int) {
	f.t.Helper()
	p := f.Runs[i-1]
	if err := p.Signal(syscall.SIGKILL); err != nil {
		f.t.Fatal(err)
	}
	if err := p.WaitContext(context.Background()); err == nil {
		f.t.Fatalf("h%d: weft exited 0 on SIGKILL", i)
	}
}

// restart starts weft on host i again as systemd's Restart=on-failure
// would: same flags, the subnet file of the previous run left in place,
// and waits until the engine answers on its debug socket (it serves it
// once the lease is held and the data path is up).
func (f *flab) restart(i int, extra ...string) {
	f.t.Helper()
	h := f.Lab.Host(i)
	argv := append([]string{f.Binary, "run",
		"--etcd-endpoints=" + harness.EtcdEndpoint(),
		"--iface=" + h.Underlay,
		"--subnet-file=" + harness.SubnetFile(h),
		"--debug-socket=" + harness.DebugSocket(h),
	}, extra...)
	p, err := f.Lab.Start(h.Name, "weft-"+strconv.Itoa(i), argv...)
	if err != nil {
		f.t.Fatal(err)
	}
	f.Runs[i-1] = p
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := f.Lab.Exec(h.Name, f.Binary, "stats", "--debug-socket", harness.DebugSocket(h)); err == nil {
			return
		}
		if p.Exited() || time.Now().After(deadline) {
			f.t.Fatalf("h%d: restarted weft not up:\n%s", i, p.Log())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestRestartUnderTraffic: kill -9 of the receiving udp engine while a
// verified TCP transfer runs, twice (six times under make soak); the
// restarted engine leases the same subnet, from its subnet file or, when
// that is gone too, from etcd, and the transfer completes with every byte
// verified, TCP retransmitting across the gaps.
func TestRestartUnderTraffic(t *testing.T) {
	f := newFLab(t, 2, udpNetconf)
	f.start(1)
	f.start(2)
	h1, h2 := f.Lab.Host(1), f.Lab.Host(2)
	if _, err := harness.WaitPath(context.Background(), h1.Pod, h2.PodIP, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	envBefore, _ := os.ReadFile(harness.SubnetFile(h2))
	leasesBefore, err := f.Leases(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	srv, err := f.Lab.Start(h2.Pod, "traffic-server", f.Binary, "traffic", "server")
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()

	// Restarts during one transfer. Odd ones lose the subnet file too
	// (a reboot clears /run): the subnet then comes from etcd, found by
	// this host's public IP.
	kills := int(soakDuration(2, 6))
	n := int64(kills) * (512 << 20)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	type result struct {
		out []byte
		err error
	}
	done := make(chan result, 1)
	go func() {
		out, err := f.Lab.ExecContext(ctx, h1.Pod, f.Binary, "traffic", "tcp", "--to", h2.PodIP.String(),
			"--bytes", fmt.Sprint(n), "--verify", "sha256")
		done <- result{out, err}
	}()
	var gaps []time.Duration
	for k := 0; k < kills; k++ {
		// Kill once the receiver has taken some of the stream, so the
		// kill lands mid-transfer.
		base := f.mustStats(2).Engine.RxBytes
		for {
			u, ok := f.udpStats(2)
			if ok && u.Engine.RxBytes > base+16<<20 {
				break
			}
			select {
			case r := <-done:
				t.Fatalf("transfer ended before kill %d: %v\n%s", k+1, r.err, r.out)
			case <-time.After(50 * time.Millisecond):
			}
		}
		start := time.Now()
		f.kill9(2)
		if k%2 == 1 {
			if err := os.Remove(harness.SubnetFile(h2)); err != nil {
				t.Fatal(err)
			}
		}
		f.restart(2)
		gaps = append(gaps, time.Since(start))
		if env, _ := os.ReadFile(harness.SubnetFile(h2)); string(env) != string(envBefore) {
			t.Fatalf("restarted engine wrote another subnet file:\n%s\nwant:\n%s", env, envBefore)
		}
	}
	r := <-done
	if r.err != nil {
		t.Fatalf("transfer across %d kill -9: %v\n%s\n%s", kills, r.err, r.out, f.Lab.Logs())
	}
	var res traffic.Result
	if err := json.Unmarshal(r.out, &res); err != nil || res.Bytes != n {
		t.Fatalf("server verified %d of %d bytes (%v): %s", res.Bytes, n, err, r.out)
	}
	leasesAfter, err := f.Leases(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(leasesAfter) != fmt.Sprint(leasesBefore) {
		t.Errorf("leases changed across the restarts:\nbefore %v\nafter  %v", leasesBefore, leasesAfter)
	}
	figure(t, "%d kill -9 + restart of the receiving engine (every other one without its subnet file) during a %d MiB sha256-verified TCP transfer: same subnet each time, all bytes verified; kill-to-engine-up %v", kills, n>>20, gaps)
	f.stopAndClean()
}

// TestKernelRestartKeepsForwarding: vxlan and host-gw state lives in the
// kernel, so pods keep talking while weft is dead (kill -9) and after it
// comes back; the restart takes the same subnet.
func TestKernelRestartKeepsForwarding(t *testing.T) {
	for _, backend := range []string{"vxlan", "host-gw"} {
		t.Run(backend, func(t *testing.T) {
			f := newFLab(t, 2, `{"Network":"10.9.0.0/16","SubnetLen":24,"Backend":{"Type":"`+backend+`"}}`)
			f.start(1)
			f.start(2)
			h1, h2 := f.Lab.Host(1), f.Lab.Host(2)
			if _, err := harness.WaitPath(context.Background(), h1.Pod, h2.PodIP, 20*time.Second); err != nil {
				t.Fatal(err)
			}
			envBefore, _ := os.ReadFile(harness.SubnetFile(h2))
			f.kill9(2)
			// weft is gone: every ping must still be answered, both ways.
			for _, c := range [][2]*lab.Host{{h1, h2}, {h2, h1}} {
				res, err := lab.Ping(context.Background(), c[0].Pod, c[1].PodIP, 20, 25*time.Millisecond, time.Second)
				if err != nil || res.Received != 20 {
					t.Fatalf("with weft on h2 killed, ping %s -> %s: %d of 20 (%v)", c[0].Pod, c[1].PodIP, res.Received, err)
				}
			}
			p := startPinger(h1.Pod, h2.PodIP.String(), 20*time.Millisecond)
			f.restart(2)
			time.Sleep(time.Second) // a reconcile pass after the restart
			sent, lost := p.Stop()
			if lost != 0 {
				t.Errorf("%d of %d pings lost while weft restarted", lost, sent)
			}
			if env, _ := os.ReadFile(harness.SubnetFile(h2)); string(env) != string(envBefore) {
				t.Errorf("restart wrote another subnet file:\n%s\nwant:\n%s", env, envBefore)
			}
			figure(t, "%s: 40 pings with weft killed, %d pings across the restart: 0 lost", backend, sent)
			f.stopAndClean()
		})
	}
}
