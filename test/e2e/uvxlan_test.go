package e2e

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
	"github.com/weft-net/weft/daemon"
	"github.com/weft-net/weft/encap/userspace"
)

// uvxlanStatus is a userspace vxlan host's status: the engine's counters
// and the backend's own.
type uvxlanStatus struct {
	Engine *daemon.EngineStats
	Peers  []daemon.PeerStatus
	userspace.VXLANStatus
}

func (k *kcluster) uvxlanStats(i int) uvxlanStatus {
	k.t.Helper()
	s := k.stats(i)
	u := uvxlanStatus{Engine: s.Engine, Peers: s.Peers}
	if s.Backend != "vxlan" || s.Engine == nil || json.Unmarshal(s.BackendStatus, &u.VXLANStatus) != nil || u.Datapath != "userspace" {
		k.t.Fatalf("h%d: not userspace vxlan stats: %s (%s)\n%s", i, s.Backend, s.Why, s.BackendStatus)
	}
	return u
}

// TestUserspaceVXLAN is issue 8's mixed cluster: h1 and h2 run the
// kernel's vxlan, h3 speaks VXLAN from userspace (--no-kernel-vxlan), and
// traffic flows in every direction with no change on the kernel hosts.
func TestUserspaceVXLAN(t *testing.T) {
	k := newKCluster(t, 3, `{"Network":"10.5.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan"}}`, nil)
	l := k.Lab
	pcap := filepath.Join(l.Dir, "underlay.pcap")
	dump, err := l.Start(l.Switch, "tcpdump", "tcpdump", "-i", l.Bridge, "-U", "-s", "0", "-nn", "-w", pcap, "udp port 8472")
	if err != nil {
		t.Fatal(err)
	}
	k.eventually("tcpdump listening", 10*time.Second, func() (bool, string) {
		return strings.Contains(dump.Log(), "listening on"), dump.Log()
	})
	// Offloads stay on: over veth the kernel vxlan peers hand h3's socket
	// whole TSO packets (one datagram, inner checksum partial), which the
	// userspace side must cut and complete itself.
	k.start(nil, 1, 2)
	k.start([]string{"--no-kernel-vxlan"}, 3)

	s3 := k.uvxlanStats(3)
	if why := k.stats(3).Why; !strings.Contains(why, "--no-kernel-vxlan") {
		t.Errorf("h3's reason names no --no-kernel-vxlan: %s", why)
	}
	mac := map[int]string{3: s3.MAC}
	for i := 1; i <= 3; i++ {
		if i < 3 {
			mac[i] = strings.TrimSpace(k.sh(i, "cat", "/sys/class/net/flannel.1/address"))
		}
		want := fmt.Sprintf(`{"PublicIP":"%s","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"%s"}}`, l.Host(i).IP, mac[i])
		if got := k.leaseValue(i); got != want {
			t.Fatalf("h%d lease\n got %s\nwant %s", i, got, want)
		}
		if k.Envs[i-1].MTU != 1450 {
			t.Errorf("h%d FLANNEL_MTU %d, want 1450", i, k.Envs[i-1].MTU)
		}
	}
	if dev := k.sh(3, "ip", "-d", "link", "show", "flannel.1"); !strings.Contains(dev, "mtu 1450") || !strings.Contains(dev, "tun type tun") {
		t.Fatalf("h3's flannel.1 is not a TUN of MTU 1450:\n%s", dev)
	}
	if a := k.sh(3, "ip", "-4", "addr", "show", "flannel.1"); !strings.Contains(a, k.Envs[2].Subnet.Addr().String()+"/32") {
		t.Fatalf("h3's flannel.1 lacks the lease's network address:\n%s", a)
	}
	// The kernel hosts program h3 as any vxlan peer.
	for _, on := range []int{1, 2} {
		fdb := fmt.Sprintf("%s dev flannel.1 dst %s self permanent", mac[3], l.Host(3).IP)
		k.eventually(fmt.Sprintf("h%d programs h3", on), 10*time.Second, func() (bool, string) {
			f := k.sh(on, "bridge", "fdb", "show")
			return has(f, fdb), f
		})
	}
	k.eventually("h3 knows both kernel peers", 10*time.Second, func() (bool, string) {
		s := k.uvxlanStats(3)
		return len(s.Peers) == 2, fmt.Sprint(s.Peers)
	})

	for a := 1; a <= 3; a++ {
		for b := 1; b <= 3; b++ {
			if a != b {
				k.ping(a, b)
				k.tcp(a, b, 4<<20)
			}
		}
	}
	dump.Signal(syscall.SIGINT)
	dump.Wait()
	checkUnderlayCapture(t, k, pcap, mac, k.uvxlanStats(3).Transport.SourcePorts)

	t.Run("bad-frames-dropped-by-reason", func(t *testing.T) { testUVXLANBadFrames(t, k, mac) })

	// Peers come and go: h2 leaves (lease deleted) and comes back.
	k.stop(2)

	// While h2's weft is away its kernel state stays. A neighbour entry
	// that is not permanent (here made stale by hand) is re-checked with a
	// unicast ARP request to the cached VtepMAC, which the FDB sends to h3
	// (neigh_timer_handler's NUD_PROBE): h3 answers, and h2's kernel takes
	// the reply.
	gw3 := k.Envs[2].Subnet.Addr().String()
	arpBefore := k.uvxlanStats(3).Encap.ARPReplies
	k.sh(2, "ip", "neigh", "replace", gw3, "dev", "flannel.1", "lladdr", mac[3], "nud", "stale")
	k.ping(2, 3)
	k.eventually("h3 answers h2's kernel's ARP", 15*time.Second, func() (bool, string) {
		n := k.sh(2, "ip", "neigh", "show", gw3, "dev", "flannel.1")
		ok := k.uvxlanStats(3).Encap.ARPReplies > arpBefore && strings.Contains(n, "REACHABLE") && strings.Contains(n, mac[3])
		return ok, n
	})

	k.deleteLease(2)
	k.eventually("h3 drops h2", 10*time.Second, func() (bool, string) {
		s := k.uvxlanStats(3)
		return len(s.Peers) == 1 && s.Peers[0].Subnet == k.Envs[0].Subnet, fmt.Sprint(s.Peers)
	})
	k.start(nil, 2)
	k.eventually("h3 takes h2 back", 10*time.Second, func() (bool, string) {
		s := k.uvxlanStats(3)
		return len(s.Peers) == 2, fmt.Sprint(s.Peers)
	})
	k.ping(3, 2)
	k.ping(2, 3)

	// A restart keeps h3's VtepMAC and lease bytes, so the kernel hosts'
	// entries stay valid.
	lease3 := k.leaseValue(3)
	k.stop(3)
	k.start([]string{"--no-kernel-vxlan"}, 3)
	if got := k.leaseValue(3); got != lease3 {
		t.Fatalf("restart changed h3's lease %s -> %s", lease3, got)
	}
	k.eventually("h3 after restart", 10*time.Second, func() (bool, string) {
		s := k.uvxlanStats(3)
		return len(s.Peers) == 2, fmt.Sprint(s.Peers)
	})
	k.ping(1, 3)
	k.tcp(3, 1, 1<<20)
	k.stop(1, 2, 3)
}

// checkUnderlayCapture decodes the capture on the switch: every frame
// h3 sent is the kernel's VXLAN (I flag only, VNI 1, reserved bytes zero,
// inner Ethernet from h3's VtepMAC to the receiver's, IPv4 inside), from
// one of h3's source ports, and there are as many as the kernel hosts
// sent it.
func checkUnderlayCapture(t *testing.T, k *kcluster, path string, mac map[int]string, ports []uint16) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := pcapgo.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	hostOf := map[string]int{}
	for i := 1; i <= 3; i++ {
		hostOf[k.Lab.Host(i).IP.String()] = i
	}
	fromH3, toH3 := 0, 0
	usedPorts := map[uint16]bool{}
	for {
		data, _, err := r.ReadPacketData()
		if err != nil {
			break
		}
		p := gopacket.NewPacket(data, layers.LayerTypeEthernet, gopacket.Default)
		ip, _ := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
		u, _ := p.Layer(layers.LayerTypeUDP).(*layers.UDP)
		if ip == nil || u == nil || u.DstPort != 8472 {
			continue
		}
		src, dst := hostOf[ip.SrcIP.String()], hostOf[ip.DstIP.String()]
		if src != 3 && dst != 3 {
			continue
		}
		// A bridge forwards UDP GSO sends whole: split h3's super-packets
		// at the first frame's length, as the kernel will (UDP_SEGMENT).
		for _, pl := range udpSegments(u.Payload) {
			checkVXLANFrame(t, pl, src, dst, mac)
		}
		if int(ip.Length)-28 != len(u.Payload) {
			t.Fatalf("h%d -> h%d: outer length %d for %d bytes of UDP payload", src, dst, ip.Length, len(u.Payload))
		}
		if src == 3 {
			fromH3++
			usedPorts[uint16(u.SrcPort)] = true
			if !containsPort(ports, uint16(u.SrcPort)) {
				t.Fatalf("h3 sent from port %d, not one of its source ports %v", u.SrcPort, ports)
			}
		} else {
			toH3++
		}
	}
	if fromH3 < 100 || toH3 < 100 {
		t.Fatalf("captured %d frames from h3 and %d to it", fromH3, toH3)
	}
	// Pings and transfers to and from two peers are a dozen flows; they
	// land on one of 8 ports each, so all on one would mean no spreading.
	if len(usedPorts) < 2 {
		t.Errorf("h3's flows all left from %v: no per-flow source ports", usedPorts)
	}
	t.Logf("capture: %d frames from h3 over %d source ports, %d to it", fromH3, len(usedPorts), toH3)
}

// udpSegments cuts a captured UDP payload into the VXLAN frames it holds:
// one, or a GSO train of equal frames (the last may be shorter).
func udpSegments(pl []byte) [][]byte {
	if len(pl) < 8+14+4 {
		return [][]byte{pl}
	}
	size := 8 + 14 + (int(pl[8+14+2])<<8 | int(pl[8+14+3]))
	var out [][]byte
	for len(pl) > size && size > 8+14 {
		out, pl = append(out, pl[:size]), pl[size:]
	}
	return append(out, pl)
}

// checkVXLANFrame checks one frame from src to dst is what the kernel's
// vxlan sends: I flag only, VNI 1, reserved bytes zero, inner Ethernet
// between the two VtepMACs carrying exactly one IPv4 packet.
func checkVXLANFrame(t *testing.T, pl []byte, src, dst int, mac map[int]string) {
	t.Helper()
	var vx layers.VXLAN
	if len(pl) < 8+14+20 || vx.DecodeFromBytes(pl, gopacket.NilDecodeFeedback) != nil {
		t.Fatalf("h%d -> h%d: not VXLAN: %x", src, dst, pl)
	}
	if !bytes.Equal(pl[:8], []byte{0x08, 0, 0, 0, 0, 0, 1, 0}) {
		t.Fatalf("h%d -> h%d: VXLAN header %x, want the kernel's 0800000000000100", src, dst, pl[:8])
	}
	inner := gopacket.NewPacket(vx.Payload, layers.LayerTypeEthernet, gopacket.Default)
	eth, _ := inner.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
	iip, _ := inner.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
	if eth == nil || iip == nil || eth.EthernetType != layers.EthernetTypeIPv4 ||
		eth.SrcMAC.String() != mac[src] || eth.DstMAC.String() != mac[dst] {
		t.Fatalf("h%d -> h%d: inner frame unlike the kernel's (want %s -> %s):\n%s", src, dst, mac[src], mac[dst], inner.Dump())
	}
	if int(iip.Length) != len(vx.Payload)-14 {
		t.Fatalf("h%d -> h%d: inner IPv4 length %d in a %d-byte frame", src, dst, iip.Length, len(vx.Payload))
	}
}

func containsPort(ports []uint16, p uint16) bool {
	for _, q := range ports {
		if q == p {
			return true
		}
	}
	return false
}

// testUVXLANBadFrames sends malformed frames to h3's VXLAN port from h1 (a
// peer) and from the switch (no lease): each is dropped under its reason,
// none reaches the TUN, and an ARP request for h3's gateway is answered.
func testUVXLANBadFrames(t *testing.T, k *kcluster, mac map[int]string) {
	l := k.Lab
	h3 := l.Host(3)
	m3, _ := net.ParseMAC(mac[3])
	m1, _ := net.ParseMAC(mac[1])
	ipv4 := innerUDP(t, k.Envs[0].Subnet.Addr().Next().String(), k.Envs[2].Subnet.Addr().Next().String())
	fr := func(vx string, dst net.HardwareAddr, etherType uint16, body []byte) []byte {
		b, _ := hex.DecodeString(vx)
		b = append(b, dst...)
		b = append(b, m1...)
		b = append(b, byte(etherType>>8), byte(etherType))
		return append(b, body...)
	}
	gw := k.Envs[2].Subnet.Addr().As4()
	src := k.Envs[0].Subnet.Addr().As4()
	arp := append([]byte{0, 1, 8, 0, 6, 4, 0, 1}, m1...)
	arp = append(append(append(arp, src[:]...), make([]byte, 6)...), gw[:]...)
	bcast := net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	send := func(ns string, payload []byte) {
		out, err := l.Exec(ns, "env", "WEFT_TEST_HELPER=send-udp", helperBin, h3.IP.String()+":8472", "0", hex.EncodeToString(payload))
		if err != nil {
			t.Fatalf("send from %s: %v\n%s", ns, err, out)
		}
	}
	before := k.uvxlanStats(3)
	h1 := l.Host(1).Name
	send(h1, fr("0800000000000200", m3, 0x0800, ipv4))                                 // wrong VNI
	send(h1, fr("0c00000000000100", m3, 0x0800, ipv4))                                 // a reserved flag
	send(h1, fr("0800000000000100", net.HardwareAddr{2, 0, 0, 0, 0, 1}, 0x0800, ipv4)) // another MAC
	send(h1, fr("0800000000000100", m3, 0x86dd, ipv4))                                 // IPv6 ethertype
	send(h1, []byte{0x08, 0, 0, 0, 0, 0, 1, 0, 1, 2})                                  // truncated
	send(l.Switch, fr("0800000000000100", m3, 0x0800, ipv4))                           // from no lease
	send(h1, fr("0800000000000100", bcast, 0x0806, arp))                               // ARP for h3's gateway
	want := map[string]uint64{"wrong-vni": 1, "bad-encap-header": 2, "wrong-mac": 1, "not-ipv4-frame": 1, "unknown-peer": 1, "arp-answered": 1}
	var after uvxlanStatus
	k.eventually("bad frames counted", 5*time.Second, func() (bool, string) {
		after = k.uvxlanStats(3)
		ok := true
		for r, n := range want {
			ok = ok && after.Engine.DropsByReason[r]-before.Engine.DropsByReason[r] == n
		}
		return ok, fmt.Sprintf("before %v\nafter %v", before.Engine.DropsByReason, after.Engine.DropsByReason)
	})
	if after.Engine.RxPackets != before.Engine.RxPackets {
		t.Errorf("rx packets %d -> %d: a bad frame was delivered", before.Engine.RxPackets, after.Engine.RxPackets)
	}
	if after.Encap.ARPReplies != before.Encap.ARPReplies+1 {
		t.Errorf("ARP replies %d -> %d", before.Encap.ARPReplies, after.Encap.ARPReplies)
	}
}
