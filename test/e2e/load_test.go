package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weft-net/weft/bench/harness"
	"github.com/weft-net/weft/bench/lab"
	"github.com/weft-net/weft/bench/traffic"
	"github.com/weft-net/weft/daemon"
)

// TestPeerChurn: leases of hosts that come and go are put and deleted in
// etcd many times a second (100/s for 4 s in CI, 200/s for 60 s under make
// soak) while two stable hosts exchange pings and a verified TCP stream:
// no ping lost, no packet of theirs dropped by either engine, and at the
// end both tables equal etcd's leases.
func TestPeerChurn(t *testing.T) {
	// The stable hosts lease below 10.8.128.0 (udpNetconf); the churn is
	// above, so it never touches their leases.
	f := newFLab(t, 2, udpNetconf)
	f.start(1)
	f.start(2)
	h1, h2 := f.Lab.Host(1), f.Lab.Host(2)
	if _, err := harness.WaitPath(context.Background(), h1.Pod, h2.PodIP, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	var drops [2]uint64
	for i := range drops {
		drops[i] = dataPathDrops(f.mustStats(i + 1))
	}
	srv, err := f.Lab.Start(h2.Pod, "traffic-server", f.Binary, "traffic", "server")
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()
	rate := int(soakDuration(100, 200))
	d := soakDuration(4*time.Second, 60*time.Second)
	ping := startPinger(h1.Pod, h2.PodIP.String(), 20*time.Millisecond)
	var wg sync.WaitGroup
	// Verified TCP streams of 64 MiB back to back for as long as the
	// churn lasts (each bounded, so a stall fails instead of hanging).
	var tcpOut []byte
	var tcpErr error
	var streams int
	var tcpBits float64
	churning := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-churning:
				return
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			tcpOut, tcpErr = f.Lab.ExecContext(ctx, h1.Pod, f.Binary, "traffic", "tcp", "--to", h2.PodIP.String(),
				"--bytes", fmt.Sprint(64<<20), "--verify", "sha256")
			cancel()
			var res traffic.Result
			if tcpErr == nil {
				tcpErr = json.Unmarshal(tcpOut, &res)
			}
			if tcpErr == nil && res.Bytes != 64<<20 {
				tcpErr = fmt.Errorf("server verified %d bytes of %d", res.Bytes, 64<<20)
			}
			if tcpErr != nil {
				return
			}
			streams++
			tcpBits = res.BitsPerSecond
		}
	}()

	// 64 churning subnets in the upper half of the network, never a
	// stable host's: each event flips one of them (put if absent,
	// delete if present). etcd syncs each write to disk, so 8 writers
	// share the rate, each with its own eighth of the subnets.
	const writers = 8
	var held [64]bool
	var mu sync.Mutex
	events := 0
	start := time.Now()
	var cw sync.WaitGroup
	for w := range writers {
		cw.Add(1)
		go func() {
			defer cw.Done()
			tick := time.NewTicker(writers * time.Second / time.Duration(rate))
			defer tick.Stop()
			for time.Since(start) < d {
				<-tick.C
				k := w + writers*rand.IntN(64/writers)
				sub := fmt.Sprintf("10.8.%d.0/24", 128+k)
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				var err error
				if held[k] {
					_, err = f.cli.Delete(ctx, harness.EtcdPrefix+"/subnets/10.8."+strconv.Itoa(128+k)+".0-24")
				} else {
					_, err = f.cli.Put(ctx, harness.EtcdPrefix+"/subnets/10.8."+strconv.Itoa(128+k)+".0-24", `{"PublicIP":"192.0.2.`+strconv.Itoa(100+k)+`"}`)
				}
				cancel()
				if err != nil {
					t.Errorf("churn %s: %v", sub, err)
					return
				}
				mu.Lock()
				held[k] = !held[k]
				events++
				mu.Unlock()
			}
		}()
	}
	cw.Wait()
	achieved := float64(events) / time.Since(start).Seconds()
	close(churning)
	wg.Wait()
	sent, lost := ping.Stop()
	if tcpErr != nil {
		t.Fatalf("verified TCP stream during churn: %v\n%s", tcpErr, tcpOut)
	}
	if lost != 0 {
		t.Errorf("%d of %d pings between stable hosts lost during churn", lost, sent)
	}
	for i := range drops {
		if d := dataPathDrops(f.mustStats(i+1)) - drops[i]; d != 0 {
			t.Errorf("h%d: %d drops (no-route/unknown-peer/send-error) during churn", i+1, d)
		}
	}
	f.waitConverged(30*time.Second, 1, 2)
	if got := len(f.tableSubnets(1)); got != 2+countTrue(held) {
		t.Errorf("h1's table has %d subnets, want the 2 stable hosts and %d churned leases still held", got, countTrue(held))
	}
	figure(t, "%d lease put/delete events in %s (%.0f/s): %d pings 0 lost, %d verified 64 MiB TCP streams (last %.2f Gbit/s), 0 engine drops, tables converged to etcd",
		events, d, achieved, sent, streams, tcpBits/1e9)
	f.stopAndClean()
}

func countTrue(m [64]bool) int {
	n := 0
	for _, v := range m {
		if v {
			n++
		}
	}
	return n
}

var goroutineGauge = regexp.MustCompile(`(?m)^go_goroutines (\d+)$`)

// goroutines asks host i's engine for its goroutine count: the Go
// collector's go_goroutines on the debug socket's /metrics.
func (f *flab) goroutines(i int) int {
	f.t.Helper()
	b, err := daemon.Client{Socket: harness.DebugSocket(f.Lab.Host(i))}.Get("/metrics")
	if err != nil {
		f.t.Fatalf("h%d: goroutine count: %v", i, err)
	}
	m := goroutineGauge.FindSubmatch(b)
	if m == nil {
		f.t.Fatalf("h%d: no go_goroutines in /metrics", i)
	}
	n, _ := strconv.Atoi(string(m[1]))
	return n
}

// kernelDrops sums what the kernel counted as dropped in namespace ns:
// UDP receive buffer overflows and every link's dropped packets.
func kernelDrops(l *lab.Lab, ns string) (udpRcvbuf, linkDrops uint64) {
	snmp, _ := l.Exec(ns, "cat", "/proc/net/snmp")
	var hdr []string
	for _, line := range lines(string(snmp)) {
		if !strings.HasPrefix(line, "Udp:") {
			continue
		}
		fields := strings.Fields(line)
		if hdr == nil {
			hdr = fields
			continue
		}
		for j, h := range hdr {
			if h == "RcvbufErrors" && j < len(fields) {
				udpRcvbuf, _ = strconv.ParseUint(fields[j], 10, 64)
			}
		}
	}
	js, _ := l.Exec(ns, "ip", "-s", "-j", "link", "show")
	var links []struct {
		Stats64 struct {
			RX struct{ Dropped uint64 } `json:"rx"`
			TX struct{ Dropped uint64 } `json:"tx"`
		} `json:"stats64"`
	}
	json.Unmarshal(js, &links)
	for _, k := range links {
		linkDrops += k.Stats64.RX.Dropped + k.Stats64.TX.Dropped
	}
	return udpRcvbuf, linkDrops
}

// TestOverload: the pods of h1 and h2 send UDP flat out to h3's pod (10 s
// in CI, 60 s under make soak), more than the engines can forward. The
// excess is dropped and counted, RSS stays flat, no goroutine is left
// behind, and a verified TCP stream goes through at once after.
func TestOverload(t *testing.T) {
	f := newFLab(t, 3, udpNetconf)
	for i := 1; i <= 3; i++ {
		f.start(i)
	}
	f.waitRing()
	h1, h2, h3 := f.Lab.Host(1), f.Lab.Host(2), f.Lab.Host(3)
	srv, err := f.Lab.Start(h3.Pod, "traffic-server", f.Binary, "traffic", "server")
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()
	var g0 [3]int
	for i := range g0 {
		g0[i] = f.goroutines(i + 1)
	}
	var before [3][2]uint64
	for i, ns := range []string{h1.Name, h2.Name, h3.Name} {
		before[i][0], before[i][1] = kernelDrops(f.Lab, ns)
	}
	d := soakDuration(10*time.Second, 60*time.Second)
	results := make([]*traffic.Result, 2)
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for k, h := range []*lab.Host{h1, h2} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), d+time.Minute)
			defer cancel()
			results[k], errs[k] = f.Traffic(ctx, h.Pod, "udp", "--to", h3.PodIP.String(), "--size", "1400", "--duration", d.String())
		}()
	}
	// RSS of every engine, each half second.
	var rss [3][]int
	pids := []int{f.Runs[0].Pid(), f.Runs[1].Pid(), f.Runs[2].Pid()}
	sampling := time.Now()
	for time.Since(sampling) < d {
		for i, pid := range pids {
			kb, _ := strconv.Atoi(procStatus(pid, "VmRSS"))
			rss[i] = append(rss[i], kb)
		}
		time.Sleep(500 * time.Millisecond)
	}
	wg.Wait()
	var sent, delivered int64
	for k := range results {
		if errs[k] != nil {
			t.Fatalf("udp flood from h%d: %v\n%s", k+1, errs[k], f.Lab.Logs())
		}
		sent += results[k].Sent
		delivered += results[k].Delivered
	}
	if delivered >= sent {
		t.Fatalf("offered %d datagrams, %d delivered: the load did not exceed what the engines forward", sent, delivered)
	}
	var engineDrops, udpRcvbuf, linkDrops uint64
	for i, ns := range []string{h1.Name, h2.Name, h3.Name} {
		for _, n := range f.mustStats(i + 1).Engine.Drops {
			engineDrops += n
		}
		u, l := kernelDrops(f.Lab, ns)
		udpRcvbuf += u - before[i][0]
		linkDrops += l - before[i][1]
	}
	if udpRcvbuf+linkDrops+engineDrops == 0 {
		t.Errorf("%d datagrams lost and none counted as dropped (engines, UDP sockets, links)", sent-delivered)
	}
	// Flat: the second half of the run grows no higher than the first
	// half's peak plus slack for the Go heap's pacing. Bounded pools
	// mean nothing piles up; a queue without bound would climb.
	for i, s := range rss {
		half := len(s) / 2
		first, second := slices.Max(s[:half]), slices.Max(s[half:])
		if second > first+16<<10 {
			t.Errorf("h%d: RSS climbed under sustained overload: first half peak %d kB, second half peak %d kB (%v)", i+1, first, second, s)
		}
		figure(t, "h%d RSS under overload: start %d kB, first-half peak %d kB, second-half peak %d kB", i+1, s[0], first, second)
	}
	// Forwarding resumes at once: a verified TCP stream goes through.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	after, err := f.Traffic(ctx, h1.Pod, "tcp", "--to", h3.PodIP.String(), "--bytes", fmt.Sprint(256<<20), "--verify", "sha256")
	if err != nil || after.Bytes != 256<<20 {
		t.Fatalf("verified TCP after the overload: %v %+v", err, after)
	}
	time.Sleep(time.Second) // let the flood's last batches drain
	for i := range g0 {
		if g := f.goroutines(i + 1); g > g0[i]+2 {
			t.Errorf("h%d: %d goroutines after the overload, %d before", i+1, g, g0[i])
		}
	}
	figure(t, "2 pods flat out for %s: offered %d datagrams, delivered %d (%.0f%% loss); counted drops: engine %d, UDP rcvbuf %d, links %d; TCP after %.2f Gbit/s verified",
		d, sent, delivered, 100*float64(sent-delivered)/float64(sent), engineDrops, udpRcvbuf, linkDrops, after.BitsPerSecond/1e9)
	f.stopAndClean()
}
