package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/bench/harness"
	"github.com/weft-net/weft/bench/lab"
	"github.com/weft-net/weft/encap/admission"
	"github.com/weft-net/weft/lease"
)

// TestHostileLeases writes, while pods ping each other, leases a hostile
// or broken host could put into etcd: the default route, a piece of a
// host's own subnet, another host's public IP, another spelling of a key,
// loopback and multicast public IPs, a subnet of another network, broken
// backend data. Every host's routes, addresses, neighbours, FDB and
// iptables stay exactly as they were but for the one valid lease among
// them, and exactly as before once the keys are deleted; pings both ways
// lose nothing throughout; nothing crashes; every refusal is counted.
func TestHostileLeases(t *testing.T) {
	for _, backend := range []string{"host-gw", "vxlan", "udp"} {
		t.Run(backend, func(t *testing.T) { testHostileLeases(t, backend) })
	}
}

func testHostileLeases(t *testing.T, backend string) {
	k := newKCluster(t, 2, fmt.Sprintf(`{"Network":"10.5.0.0/16","SubnetLen":24,"Backend":{"Type":%q}}`, backend), func(l *lab.Lab) {
		for _, h := range l.Hosts {
			if out, err := l.Exec(h.Name, "ip", "route", "replace", "default", "via", "192.0.2.254"); err != nil {
				t.Fatalf("default route: %v\n%s", err, out)
			}
		}
	})
	k.start(nil, 1, 2)
	k.ping(1, 2)
	k.ping(2, 1)
	h1, h2 := k.Envs[0].Subnet, k.Envs[1].Subnet
	h2IP := k.Lab.Host(2).IP
	// The kernel backends' first passes are done once both see each other.
	time.Sleep(500 * time.Millisecond)
	before := []string{hostState(t, k.Lab, k.Lab.Host(1).Name), hostState(t, k.Lab, k.Lab.Host(2).Name)}
	// Pods ping each other all through: from before the first hostile
	// write until after the last key is deleted.
	traffic := k.pingBothWays(false)

	typ, data := backend, `null`
	if backend == "vxlan" {
		data = `{"VNI":1,"VtepMAC":"02:00:00:00:00:66"}`
	}
	if backend == "udp" {
		typ = ""
	}
	val := func(ip, typ, data string) string {
		return fmt.Sprintf(`{"PublicIP":%q,"PublicIPv6":null,"BackendType":%q,"BackendData":%s}`, ip, typ, data)
	}
	ownPart := h1.Addr().String() + "-25"
	// Subnets are allocated at random: the hostile and the valid leases
	// take third octets neither host holds, or the test would hijack a
	// real host's lease (which makes that host exit, as flanneld does).
	next := 199
	free := func() string {
		for {
			next++
			s := fmt.Sprintf("10.5.%d.0", next)
			if s != h1.Addr().String() && s != h2.Addr().String() {
				return s
			}
		}
	}
	taken, spelling, loop, multi, broken, notJSON, other := free(), free(), free(), free(), free(), free(), free()
	hostile := map[string]string{
		"0.0.0.0-0":       val("192.0.2.66", typ, data),                           // the default route
		ownPart:           val("192.0.2.66", typ, data),                           // half of h1's subnet
		taken + "-24":     val(h2IP.String(), typ, data),                          // takes h2's public IP
		spelling + "-024": val("192.0.2.67", typ, data),                           // another spelling
		loop + "-24":      val("127.0.0.1", typ, data),                            // loopback
		multi + "-24":     val("224.0.0.5", typ, data),                            // multicast
		"10.6.1.0-24":     val("192.0.2.68", typ, data),                           // another network
		broken + "-24":    val("192.0.2.69", "vxlan", `{"VNI":1,"VtepMAC":"zz"}`), // broken backend data
		notJSON + "-24":   `{"PublicIP":`,                                         // not JSON
	}
	if backend == "vxlan" {
		hostile[other+"-24"] = val("192.0.2.70", "host-gw", `null`) // another backend
		// h2's VtepMAC: its FDB entry would send h2's traffic to .71.
		hostile[free()+"-24"] = val("192.0.2.71", "vxlan", fmt.Sprintf(`{"VNI":1,"VtepMAC":%q}`, k.vtepMAC(lease.SubnetKey(h2), false)))
	}
	validAddr := free()
	validSubnet := validAddr + "/24"
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for key, v := range hostile {
		if _, err := k.cli.Put(ctx, harness.EtcdPrefix+"/subnets/"+key, v); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := k.cli.Put(ctx, harness.EtcdPrefix+"/subnets/"+validAddr+"-24", val("192.0.2.99", typ, data)); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 2; i++ {
		k.eventually(fmt.Sprintf("h%d admits the valid lease", i), 10*time.Second, func() (bool, string) {
			s := k.stats(i)
			for _, p := range s.Peers {
				if p.Subnet.String() == validSubnet {
					return true, ""
				}
			}
			return false, fmt.Sprintf("%+v", s.Peers)
		})
	}
	time.Sleep(time.Second) // reconcile passes and repairs, had anything been touched
	k.ping(1, 2)
	k.ping(2, 1)
	for i := 1; i <= 2; i++ {
		if p := k.Runs[i-1]; p.Exited() {
			t.Fatalf("h%d's weft exited:\n%s", i, p.Log())
		}
		after := hostState(t, k.Lab, k.Lab.Host(i).Name)
		if d := lineDiff(withoutLines(before[i-1], validAddr, "192.0.2.99", "02:00:00:00:00:66"), withoutLines(after, validAddr, "192.0.2.99", "02:00:00:00:00:66")); d != "" {
			t.Errorf("h%d: host state changed by hostile leases:\n%s", i, d)
		}
		s := k.stats(i)
		// h1 and h2 each see: 0/0 and the /25 (wrong lengths), h2's IP
		// taken, another network, broken data (and vxlan: another
		// backend); the store refuses the other spelling, the non-JSON
		// value, loopback and multicast as unreadable.
		want := uint64(5 + 4)
		if backend == "vxlan" {
			want += 2 // another backend, h2's VtepMAC
		}
		var refused uint64
		for _, n := range s.Refusals {
			refused += n
		}
		if refused != want || s.Refusals[admission.SubnetLength] < 2 || s.Refusals[admission.PublicIPTaken] != 1 || s.Refusals[admission.Unreadable] != 4 ||
			backend == "vxlan" && s.Refusals[admission.BackendDataTaken] != 1 {
			t.Errorf("h%d: refusals %v (%d), want %d; refused now %v", i, s.Refusals, refused, want, s.Refused)
		}
		if _, ok := s.Refused[h2.String()]; ok {
			t.Errorf("h%d: the real h2 was refused: %v", i, s.Refused)
		}
	}

	// The keys deleted, every host is exactly as it was before: no route,
	// neighbour or FDB entry a hostile key aimed at was taken away, and
	// the valid peer's are gone with it.
	if _, err := k.cli.Delete(ctx, harness.EtcdPrefix+"/subnets/"+validAddr+"-24"); err != nil {
		t.Fatal(err)
	}
	for key := range hostile {
		if _, err := k.cli.Delete(ctx, harness.EtcdPrefix+"/subnets/"+key); err != nil {
			t.Fatal(err)
		}
	}
	for i := 1; i <= 2; i++ {
		k.eventually(fmt.Sprintf("h%d drops the valid lease and its refusals", i), 10*time.Second, func() (bool, string) {
			s := k.stats(i)
			return len(s.Peers) == 1 && len(s.Refused) == 0, fmt.Sprintf("peers %+v, refused %v", s.Peers, s.Refused)
		})
	}
	time.Sleep(time.Second) // reconcile passes
	for i := 1; i <= 2; i++ {
		if d := lineDiff(before[i-1], hostState(t, k.Lab, k.Lab.Host(i).Name)); d != "" {
			t.Errorf("h%d: host state after the hostile keys were deleted:\n%s", i, d)
		}
	}
	sent, lost := traffic()
	if sent == 0 || lost != 0 {
		t.Errorf("pings while hostile leases came and went: %d sent, %d lost", sent, lost)
	}
	s := k.stats(1)
	figure(t, "%d hostile leases + 1 valid written and deleted while pods pinged both ways: %d pings, %d lost; refusals on h1 %v; host state (routes, addresses, neighbours, FDB, iptables) unchanged but for the valid peer, and exactly as before once the keys were deleted",
		len(hostile), sent, lost, s.Refusals)
	k.stop(1, 2)
}

// pingBothWays pings between the pods of h1 and h2, both ways (and over
// IPv6 too when v6), until the returned stop, which reports the totals.
func (k *kcluster) pingBothWays(v6 bool) (stop func() (sent, lost int64)) {
	h1, h2 := k.Lab.Host(1), k.Lab.Host(2)
	ps := []*pinger{startPinger(h1.Pod, h2.PodIP.String(), 20*time.Millisecond), startPinger(h2.Pod, h1.PodIP.String(), 20*time.Millisecond)}
	if v6 {
		ps = append(ps, startPinger(h1.Pod, h2.PodIP6.String(), 20*time.Millisecond), startPinger(h2.Pod, h1.PodIP6.String(), 20*time.Millisecond))
	}
	return func() (sent, lost int64) {
		for _, p := range ps {
			s, l := p.Stop()
			sent, lost = sent+s, lost+l
		}
		return sent, lost
	}
}

// withoutLines drops the lines of s that mention any of words.
func withoutLines(s string, words ...string) string {
	var b strings.Builder
	for _, l := range strings.Split(s, "\n") {
		keep := true
		for _, w := range words {
			keep = keep && !strings.Contains(l, w)
		}
		if keep {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

// vtepMAC is the VtepMAC in the BackendData (v6: BackendV6Data) of the
// etcd lease under key.
func (k *kcluster) vtepMAC(key string, v6 bool) string {
	k.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r, err := k.cli.Get(ctx, harness.EtcdPrefix+"/subnets/"+key)
	if err != nil || len(r.Kvs) != 1 {
		k.t.Fatalf("lease %s: %v", key, err)
	}
	var a lease.Attrs
	var d struct{ VtepMAC string }
	data := &a.BackendData
	if v6 {
		data = &a.BackendV6Data
	}
	if err := json.Unmarshal(r.Kvs[0].Value, &a); err != nil || json.Unmarshal(*data, &d) != nil || d.VtepMAC == "" {
		k.t.Fatalf("lease %s: %s: %v", key, r.Kvs[0].Value, err)
	}
	return d.VtepMAC
}
