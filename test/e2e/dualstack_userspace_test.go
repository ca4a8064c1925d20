package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/weft-net/weft/bench/harness"
	"github.com/weft-net/weft/bench/lab"
	"github.com/weft-net/weft/encap/userspace"
)

// TestDualStackUDP runs three hosts on a dual-stack network with the udp
// backend: IPv6 travels through weft's engine inside flannel's UDP format
// over the IPv6 underlay (PublicIPv6, the cluster's port), IPv4 over the
// IPv4 one. Every pair pings and streams verified TCP over both families;
// a capture on the underlay's switch sees IPv6 inner packets only in IPv6
// datagrams and IPv4 ones only in IPv4 datagrams; the TUN carries the
// IPv6 lease's address and the IPv6 network's route; the lease names
// PublicIPv6 and its IPv6 underlay's port (BackendV6Data); FLANNEL_MTU is
// the IPv6 underlay's less 48, which both families fit.
func TestDualStackUDP(t *testing.T) {
	k := newKClusterOpts(t, lab.Options{Hosts: 3, IPv6: true}, dualStackConf("udp"), nil)
	l := k.Lab
	pcap := filepath.Join(l.Dir, "underlay-udp.pcap")
	dump, err := l.Start(l.Switch, "tcpdump", "tcpdump", "-i", l.Bridge, "-U", "-s", "128", "-nn", "-w", pcap, "udp port 8285")
	if err != nil {
		t.Fatal(err)
	}
	k.eventually("tcpdump listening", 10*time.Second, func() (bool, string) {
		return strings.Contains(dump.Log(), "listening on"), dump.Log()
	})
	// h1 runs two queues (a multi-queue TUN, two sockets of each family)
	// among peers of one: the same wire format both ways.
	k.start([]string{"--queues", "2"}, 1)
	k.start(nil, 2, 3)
	for i, env := range k.Envs {
		if !env.IPv6Subnet.IsValid() || env.MTU != 1452 {
			t.Fatalf("h%d: subnet file %+v", i+1, env)
		}
		h := k.Lab.Host(i + 1)
		want := fmt.Sprintf(`{"PublicIP":"%s","PublicIPv6":"%s","BackendV6Data":{"Port":8285}}`, h.IP, h.IP6)
		if got := k.leaseValue(i + 1); got != want {
			t.Errorf("h%d lease\n got %s\nwant %s", i+1, got, want)
		}
	}
	a6 := k.sh(1, "ip", "-6", "addr", "show", "flannel0")
	if !strings.Contains(a6, k.Envs[0].IPv6Subnet.Addr().String()+"/128") || strings.Contains(a6, "fe80:") {
		t.Errorf("h1 flannel0's IPv6 addresses:\n%s", a6)
	}
	if r6 := k.sh(1, "ip", "-6", "route"); !strings.Contains(r6, "fd00:10:5::/56 dev flannel0") {
		t.Errorf("h1: no IPv6 network route through flannel0:\n%s", r6)
	}
	k.eventually("every host knows both peers with IPv6", 10*time.Second, func() (bool, string) {
		for i := 1; i <= 3; i++ {
			s := k.stats(i)
			if len(s.Peers) != 2 || s.Peers[0].IPv6Subnet == nil || s.Peers[1].IPv6Subnet == nil {
				return false, fmt.Sprintf("h%d: %+v", i, s.Peers)
			}
		}
		return true, ""
	})
	for a := 1; a <= 3; a++ {
		for b := 1; b <= 3; b++ {
			if a != b {
				k.ping(a, b)
				k.ping6(a, b)
				k.tcpTo(a, b, k.Lab.Host(b).PodIP6, 4<<20)
			}
		}
	}
	k.tcp(1, 2, 4<<20)
	dump.Signal(syscall.SIGINT)
	dump.Wait()
	checkUDPUnderlays(t, k, pcap)
	for i := 1; i <= 3; i++ {
		s := k.stats(i)
		if s.Engine == nil || s.Engine.DropsByReason["spoofed-source"] != 0 || s.Engine.DropsByReason["unknown-peer"] != 0 ||
			s.Engine.DropsByReason["wrong-source-port"] != 0 {
			t.Errorf("h%d engine: %+v", i, s.Engine)
		}
		if want := map[int]int{1: 2}[i]; s.Engine != nil && len(s.Engine.Queues) != max(want, 1) {
			t.Errorf("h%d: %d queues in stats, want %d", i, len(s.Engine.Queues), max(want, 1))
		}
		var us userspace.UDPStatus
		if err := json.Unmarshal(s.BackendStatus, &us); err != nil || us.MTU != 1452 ||
			us.Local6 != netip.AddrPortFrom(l.Host(i).IP6, 8285).String() || us.Socket6 == nil || us.Socket == nil {
			t.Fatalf("h%d udp status: %v %s", i, err, s.BackendStatus)
		}
		// Each underlay socket carried its family: per-family counters.
		if us.Socket6.SendSegments == 0 || us.Socket6.RecvSegments == 0 || us.Socket.SendSegments == 0 || us.Socket.RecvSegments == 0 {
			t.Errorf("h%d: an underlay socket idle: v4 %+v, v6 %+v", i, *us.Socket, *us.Socket6)
		}
	}
	captureIPv6(t, k)
	k.stop(1, 2, 3)
}

// checkUDPUnderlays reads the switch's capture of the cluster's udp port:
// IPv6 pod packets rode IPv6 datagrams and IPv4 pod packets IPv4 ones
// (flannel's UDP format: the inner packet starts right after the UDP
// header, its version in the top nibble).
func checkUDPUnderlays(t *testing.T, k *kcluster, pcap string) {
	t.Helper()
	count := func(filter string) int {
		out, err := exec.Command("tcpdump", "-nn", "-r", pcap, filter).Output()
		if err != nil {
			t.Fatalf("tcpdump -r %s %q: %v", pcap, filter, err)
		}
		return strings.Count(string(out), "\n")
	}
	for _, c := range []struct {
		filter  string
		nonzero bool
	}{
		{"ip6 and udp port 8285 and (ip6[48] & 0xf0) == 0x60", true},
		{"ip and udp port 8285 and (udp[8] & 0xf0) == 0x40", true},
		{"ip and udp port 8285 and (udp[8] & 0xf0) == 0x60", false},
		{"ip6 and udp port 8285 and (ip6[48] & 0xf0) == 0x40", false},
		{"ip6 and udp src port 8285 and udp dst port 8285", true},
		{"ip6 and udp port 8285 and not (udp src port 8285 and udp dst port 8285)", false},
	} {
		if n := count(c.filter); (n > 0) != c.nonzero {
			t.Errorf("underlay capture: %d datagrams match %q", n, c.filter)
		}
	}
}

// captureIPv6: `weft capture` with an IPv6 filter shows IPv6 packets as
// it shows IPv4 ones (the text lines), and its pcapng (LINKTYPE_ETHERNET
// on a network with IPv6) is one tcpdump reads.
func captureIPv6(t *testing.T, k *kcluster) {
	t.Helper()
	h1, h2 := k.Lab.Host(1), k.Lab.Host(2)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	type result struct {
		out []byte
		err error
	}
	done := make(chan result, 1)
	filter := "icmp6 and dst net " + k.Envs[1].IPv6Subnet.String()
	go func() {
		out, err := k.Lab.ExecContext(ctx, h1.Name, k.Binary, "capture", "--debug-socket", harness.DebugSocket(h1), "-c", "2", "--points", "from-tun", filter)
		done <- result{out, err}
	}()
	var r result
	for deadline := time.Now().Add(10 * time.Second); ; {
		lab.Ping(ctx, h1.Pod, h2.PodIP6, 1, 0, time.Second)
		select {
		case r = <-done:
		case <-time.After(100 * time.Millisecond):
			if time.Now().Before(deadline) {
				continue
			}
			t.Fatal("weft capture saw no IPv6 packet in 10 s")
		}
		break
	}
	lines := strings.Split(strings.TrimSpace(string(r.out)), "\n")
	if r.err != nil || len(lines) != 2 {
		t.Fatalf("weft capture %q: %v: %d lines:\n%s", filter, r.err, len(lines), r.out)
	}
	for _, line := range lines {
		if !strings.Contains(line, " from-tun IPv6 "+h1.PodIP6.String()+" > "+h2.PodIP6.String()) || !strings.Contains(line, "EchoRequest") {
			t.Errorf("line %q", line)
		}
	}
	file := filepath.Join(h1.Dir, "v6.pcapng")
	cp, err := k.Lab.Start(h1.Name, "capture-v6", k.Binary, "capture", "--debug-socket", harness.DebugSocket(h1), "-c", "4", "-w", file, "icmp6")
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); !cp.Exited() && time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		lab.Ping(ctx, h1.Pod, h2.PodIP6, 1, 0, time.Second)
	}
	if err := cp.WaitContext(ctx); err != nil {
		t.Fatalf("weft capture -w: %v\n%s", err, cp.Log())
	}
	out, err := exec.CommandContext(ctx, "tcpdump", "-nr", file).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "link-type EN10MB") || !strings.Contains(string(out), "IP6 "+h1.PodIP6.String()+" > "+h2.PodIP6.String()+": ICMP6, echo request") {
		t.Errorf("tcpdump -r of the IPv6 capture: %v\n%s", err, out)
	}
}

// TestDualStackUserspaceVXLAN is a mixed dual-stack vxlan cluster: h1 and
// h2 run the kernel's vxlan (flannel.1 and flannel-v6.1), h3 speaks VXLAN
// from userspace (--no-kernel-vxlan) for both families. The kernel hosts
// program h3 as any dual-stack vxlan peer (its BackendV6Data MAC over
// its PublicIPv6), and pods reach each other over IPv4 and IPv6 both ways.
func TestDualStackUserspaceVXLAN(t *testing.T) {
	k := newKClusterOpts(t, lab.Options{Hosts: 3, IPv6: true}, dualStackConf("vxlan"), nil)
	l := k.Lab
	k.start(nil, 1, 2)
	k.start([]string{"--no-kernel-vxlan"}, 3)

	s3 := k.uvxlanStats(3)
	if s3.MAC6 == "" || s3.MAC6 == s3.MAC || s3.MTU != 1430 {
		t.Fatalf("h3 userspace vxlan status: %+v", s3.VXLANStatus)
	}
	want := fmt.Sprintf(`{"PublicIP":"%s","PublicIPv6":"%s","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"%s"},"BackendV6Data":{"VNI":1,"VtepMAC":"%s"}}`,
		l.Host(3).IP, l.Host(3).IP6, s3.MAC, s3.MAC6)
	if got := k.leaseValue(3); got != want {
		t.Fatalf("h3 lease\n got %s\nwant %s", got, want)
	}
	for i, env := range k.Envs {
		if env.MTU != 1430 || !env.IPv6Subnet.IsValid() {
			t.Errorf("h%d subnet file %+v", i+1, env)
		}
	}
	if a := k.sh(3, "ip", "-6", "addr", "show", "flannel.1"); !strings.Contains(a, k.Envs[2].IPv6Subnet.Addr().String()+"/128") {
		t.Fatalf("h3's TUN lacks the IPv6 lease's address:\n%s", a)
	}
	// The kernel hosts program h3's IPv6 half on flannel-v6.1.
	for _, on := range []int{1, 2} {
		fdb := fmt.Sprintf("%s dev flannel-v6.1 dst %s self permanent", s3.MAC6, l.Host(3).IP6)
		k.eventually(fmt.Sprintf("h%d programs h3's IPv6 half", on), 10*time.Second, func() (bool, string) {
			f := k.sh(on, "bridge", "fdb", "show")
			return has(f, fdb), f
		})
	}
	k.eventually("h3 knows both kernel peers with IPv6", 10*time.Second, func() (bool, string) {
		s := k.uvxlanStats(3)
		return len(s.Peers) == 2 && s.Peers[0].IPv6Subnet != nil && s.Peers[1].IPv6Subnet != nil, fmt.Sprint(s.Peers)
	})
	for _, other := range []int{1, 2} {
		k.ping(3, other)
		k.ping(other, 3)
		k.ping6(3, other)
		k.ping6(other, 3)
		k.tcpTo(3, other, l.Host(other).PodIP6, 4<<20)
		k.tcpTo(other, 3, l.Host(3).PodIP6, 4<<20)
		k.tcpTo(3, other, l.Host(other).PodIP, 2<<20)
		k.tcpTo(other, 3, l.Host(3).PodIP, 2<<20)
	}
	k.ping6(1, 2) // the kernel hosts between themselves, unchanged

	s3 = k.uvxlanStats(3)
	if r6 := s3.Transport.Receive6; r6 == nil || r6.RecvDatagrams == 0 {
		t.Errorf("h3 received nothing on its IPv6 underlay socket: %+v", s3.Transport)
	}
	for _, r := range []string{"spoofed-source", "unknown-peer", "wrong-mac", "not-ipv4-frame"} {
		if n := s3.Engine.DropsByReason[r]; n != 0 {
			t.Errorf("h3 dropped %d packets as %s: %v", n, r, s3.Engine.DropsByReason)
		}
	}

	// A restart keeps both VtepMACs and so the lease's bytes: the kernel
	// hosts' entries for h3 stay valid. It comes back with two queues: a
	// socket of each family per queue, both families' groups on the VXLAN
	// port.
	lease3 := k.leaseValue(3)
	k.stop(3)
	k.start([]string{"--no-kernel-vxlan", "--queues", "2"}, 3)
	if got := k.leaseValue(3); got != lease3 {
		t.Fatalf("restart changed h3's lease %s -> %s", lease3, got)
	}
	k.eventually("h3 after restart", 10*time.Second, func() (bool, string) {
		s := k.uvxlanStats(3)
		return len(s.Peers) == 2, fmt.Sprint(s.Peers)
	})
	k.ping6(1, 3)
	k.tcpTo(3, 2, l.Host(2).PodIP6, 1<<20)
	k.tcpTo(1, 3, l.Host(3).PodIP6, 1<<20)
	k.tcpTo(2, 3, l.Host(3).PodIP, 1<<20)
	s3 = k.uvxlanStats(3)
	if len(s3.Engine.Queues) != 2 || s3.Transport.Receive6 == nil || s3.Transport.Receive6.RecvSegments == 0 {
		t.Errorf("h3 with --queues 2: queues %+v, IPv6 receive %+v", s3.Engine.Queues, s3.Transport.Receive6)
	}
	k.stop(1, 2, 3)
}
