package e2e

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/bench/harness"
	"github.com/weft-net/weft/bench/lab"
	"github.com/weft-net/weft/daemon"
	"github.com/weft-net/weft/lease"
)

// startRing pings h1->h2, h2->h3 and h3->h1 pod to pod, continuously.
func (f *flab) startRing() []*pinger {
	var ps []*pinger
	for i := 1; i <= 3; i++ {
		a, b := f.Lab.Host(i), f.Lab.Host(i%3+1)
		ps = append(ps, startPinger(a.Pod, b.PodIP.String(), 50*time.Millisecond))
	}
	return ps
}

func (f *flab) waitRing() {
	f.t.Helper()
	for i := 1; i <= 3; i++ {
		a, b := f.Lab.Host(i), f.Lab.Host(i%3+1)
		if _, err := harness.WaitPath(context.Background(), a.Pod, b.PodIP, 20*time.Second); err != nil {
			f.t.Fatal(err)
		}
	}
}

// dataPathDrops sums the drops of the reasons an outage could cause.
func dataPathDrops(u daemon.StatusReport) uint64 {
	return u.Engine.DropsByReason["no-route"] + u.Engine.DropsByReason["unknown-peer"] + u.Engine.DropsByReason["send-error"]
}

// putFakeLease writes a lease for a host that does not exist, as another
// weft or flanneld would.
func (f *flab) putFakeLease(subnet, publicIP string, opts ...clientv3.OpOption) {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	key := harness.EtcdPrefix + "/subnets/" + strings.Replace(subnet, "/", "-", 1)
	if _, err := f.cli.Put(ctx, key, `{"PublicIP":"`+publicIP+`"}`, opts...); err != nil {
		f.t.Fatal(err)
	}
}

func (f *flab) deleteKey(subnet string) {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := f.cli.Delete(ctx, harness.EtcdPrefix+"/subnets/"+strings.Replace(subnet, "/", "-", 1)); err != nil {
		f.t.Fatal(err)
	}
}

// TestEtcdOutage: etcd killed under a running 3-host lab, for 12 s in CI
// and 60 s under make soak. Pod traffic goes on with no loss and no drop
// in the engines; when etcd is back the leases are renewed (the test TTL
// of 6 s would let them run out otherwise), the watch follows new and
// removed leases again, and every table equals etcd's leases.
func TestEtcdOutage(t *testing.T) {
	const ttl = 6 * time.Second
	t.Setenv("WEFT_TEST_LEASE_TTL", ttl.String())
	f := newFLab(t, 3, udpNetconf)
	for i := 1; i <= 3; i++ {
		f.start(i)
	}
	f.waitRing()
	f.waitConverged(10*time.Second, 1, 2, 3)
	var drops [3]uint64
	for i := range drops {
		drops[i] = dataPathDrops(f.mustStats(i + 1))
	}
	ring := f.startRing()
	outage := soakDuration(12*time.Second, 60*time.Second)
	f.stopEtcd()
	time.Sleep(outage)
	var sent, lost int64
	for _, p := range ring {
		s, l := p.Stop()
		sent, lost = sent+s, lost+l
	}
	if lost != 0 {
		t.Errorf("%d of %d pings lost during a %s etcd outage", lost, sent, outage)
	}
	for i := range drops {
		if d := dataPathDrops(f.mustStats(i+1)) - drops[i]; d != 0 {
			t.Errorf("h%d: %d no-route/unknown-peer/send-error drops during the outage", i+1, d)
		}
		if f.Runs[i].Exited() {
			t.Fatalf("h%d: weft exited during the etcd outage:\n%s", i+1, f.Runs[i].Log())
		}
	}
	figure(t, "etcd down %s under 3 hosts: %d pings, %d lost; 0 engine drops", outage, sent, lost)

	f.startEtcd()
	back := time.Now()
	// Renewed: without renewals every lease would be gone 2 TTLs later.
	time.Sleep(2*ttl + time.Second)
	got, err := f.etcdSubnets()
	if err != nil || len(got) != 3 {
		t.Fatalf("leases 2 TTLs after etcd came back: %v (%v); want all 3 renewed\n%s", got, err, f.Lab.Logs())
	}
	for i := 1; i <= 3; i++ {
		if env, _ := harness.ParseSubnetEnv(mustRead(t, harness.SubnetFile(f.Lab.Host(i)))); env.Subnet != f.Envs[i-1].Subnet {
			t.Errorf("h%d: subnet %s after the outage, %s before", i, env.Subnet, f.Envs[i-1].Subnet)
		}
	}
	// The watch follows etcd again: a new host's lease appears in every
	// table, and goes when deleted.
	f.putFakeLease("10.8.250.0/24", "192.0.2.200")
	f.waitConverged(30*time.Second, 1, 2, 3)
	f.deleteKey("10.8.250.0/24")
	f.waitConverged(30*time.Second, 1, 2, 3)
	figure(t, "after etcd returned: leases renewed, watch resumed, tables equal etcd's within %s", time.Since(back).Round(time.Second))
	f.waitRing()
	f.stopAndClean()
}

// TestEtcdPartitionLongerThanTTL: h1 loses etcd (its packets to etcd are
// dropped) for longer than the lease TTL. Its lease runs out in etcd and
// the others drop it from their tables, but h1 keeps forwarding with what
// it knows, the others keep talking among themselves, and when the
// partition heals h1 reclaims the same subnet and is reachable again.
func TestEtcdPartitionLongerThanTTL(t *testing.T) {
	const ttl = 4 * time.Second
	t.Setenv("WEFT_TEST_LEASE_TTL", ttl.String())
	f := newFLab(t, 3, udpNetconf)
	for i := 1; i <= 3; i++ {
		f.start(i)
	}
	f.waitRing()
	h1, h2, h3 := f.Lab.Host(1), f.Lab.Host(2), f.Lab.Host(3)
	own := f.Envs[0].Subnet.String()
	envBefore := mustRead(t, harness.SubnetFile(h1))
	rule := []string{"OUTPUT", "-p", "tcp", "-d", lab.SwitchIP.String(), "--dport", fmt.Sprint(harness.EtcdPort), "-j", "DROP"}
	f.exec(h1.Name, append([]string{"iptables", "-I"}, rule...)...)
	healed := false
	heal := func() {
		if !healed {
			f.exec(h1.Name, append([]string{"iptables", "-D"}, rule...)...)
			healed = true
		}
	}
	defer heal()
	stable := startPinger(h2.Pod, h3.PodIP.String(), 50*time.Millisecond)

	// The lease runs out in etcd and the others forget h1.
	deadline := time.Now().Add(ttl + 20*time.Second)
	for {
		subs, err := f.etcdSubnets()
		if err == nil && !slices.Contains(subs, own) && !slices.Contains(f.tableSubnets(2), own) && !slices.Contains(f.tableSubnets(3), own) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("h1's lease %s did not expire from etcd and the others' tables: etcd %v (%v)", own, subs, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	// h1 still forwards with its last table: pings from its pod reach
	// h2, which drops them as from a host with no lease.
	if got := f.tableSubnets(1); len(got) != 3 {
		t.Errorf("partitioned h1 forgot peers: table %v", got)
	}
	before := f.mustStats(2).Engine.DropsByReason["unknown-peer"]
	lab.Ping(context.Background(), h1.Pod, h2.PodIP, 5, 20*time.Millisecond, 200*time.Millisecond)
	if d := f.mustStats(2).Engine.DropsByReason["unknown-peer"] - before; d < 5 {
		t.Errorf("h2 saw %d of h1's 5 pings (as unknown-peer drops): h1 stopped forwarding while partitioned", d)
	}
	time.Sleep(soakDuration(2*time.Second, 60*time.Second))
	if f.Runs[0].Exited() {
		t.Fatalf("h1 exited while partitioned:\n%s", f.Runs[0].Log())
	}
	heal()
	healedAt := time.Now()
	// h1 reclaims the same subnet; everyone converges and h1 is
	// reachable again.
	deadline = time.Now().Add(60 * time.Second)
	for {
		subs, _ := f.etcdSubnets()
		if slices.Contains(subs, own) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("h1 did not reclaim %s within 60s of the partition healing:\n%s", own, f.Runs[0].Log())
		}
		time.Sleep(200 * time.Millisecond)
	}
	f.waitConverged(30*time.Second, 1, 2, 3)
	f.waitRing()
	sent, lost := stable.Stop()
	if lost != 0 {
		t.Errorf("h2 -> h3: %d of %d pings lost while h1 was partitioned", lost, sent)
	}
	if env := mustRead(t, harness.SubnetFile(h1)); string(env) != string(envBefore) {
		t.Errorf("h1's subnet file changed:\n%s\nwas:\n%s", env, envBefore)
	}
	v := f.leaseValueOf(own)
	var a lease.Attrs
	if err := a.UnmarshalJSON([]byte(v)); err != nil || a.PublicIP != h1.IP {
		t.Errorf("reclaimed lease %s = %s (%v), want h1's", own, v, err)
	}
	figure(t, "h1 partitioned from etcd past a %s TTL: lease expired and was reclaimed (same subnet) %s after healing; h2->h3 %d pings, %d lost",
		ttl, time.Since(healedAt).Round(100*time.Millisecond), sent, lost)
	f.stopAndClean()
}

func (f *flab) leaseValueOf(subnet string) string {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r, err := f.cli.Get(ctx, harness.EtcdPrefix+"/subnets/"+strings.Replace(subnet, "/", "-", 1))
	if err != nil || len(r.Kvs) != 1 {
		f.t.Fatalf("lease %s: %v", subnet, err)
	}
	return string(r.Kvs[0].Value)
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
