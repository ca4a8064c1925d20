package userspace

import (
	"context"
	"net/netip"
	"strings"
	"testing"

	"github.com/weft-net/weft/encap"
	"github.com/weft-net/weft/encap/kernel/kerneltest"
	"github.com/weft-net/weft/lease"
)

func testHost(t *testing.T) (*kerneltest.NS, encap.Host) {
	ns := kerneltest.New(t)
	idx := ns.Underlay(t, "under0", netip.MustParsePrefix("192.0.2.1/24"), 1500)
	a := netip.MustParseAddr("192.0.2.1")
	return ns, encap.Host{Iface: "under0", IfaceIndex: idx, IfaceAddr: a, PublicIP: a, IfaceMTU: 1500}
}

var testCfg = &lease.Config{Network: netip.MustParsePrefix("10.5.0.0/16"), SubnetLen: 24, BackendType: "udp"}

func peer(subnet, ip, typ, data string) lease.Lease {
	l := lease.Lease{Subnet: netip.MustParsePrefix(subnet), Attrs: lease.Attrs{PublicIP: netip.MustParseAddr(ip), BackendType: typ}}
	if data != "" {
		l.Attrs.BackendData = []byte(data)
	}
	return l
}

// The udp backend: flanneld's lease attributes (no type, no data), its
// part of admission, flannel0 with the underlay's MTU - 28, and a table of
// the admitted peers at the cluster's port.
func TestUDPBackend(t *testing.T) {
	ns, host := testHost(t)
	b, err := NewUDP(host, testCfg, Options{TUNName: "wefttest0", BatchSize: 32, AntiSpoof: true})
	if err != nil {
		t.Fatal(err)
	}
	if a, _ := b.Attrs(); a.BackendType != "" || a.BackendData != nil || a.PublicIP != host.PublicIP {
		t.Errorf("attrs %+v", a)
	}
	if b.Accept(peer("10.5.2.0/24", "192.0.2.2", "", "").Attrs) != nil || b.Accept(peer("10.5.2.0/24", "192.0.2.2", "vxlan", "").Attrs) == nil {
		t.Error("Accept takes anything but udp leases, or refuses them")
	}
	if b.Datapath() != nil {
		t.Error("a datapath before Start")
	}
	own := lease.Lease{Subnet: netip.MustParsePrefix("10.5.1.0/24"), Attrs: lease.Attrs{PublicIP: host.PublicIP}}
	var mtu int
	if err := ns.Do(func() (err error) { mtu, err = b.Start(context.Background(), own); return err }); err != nil {
		t.Fatal(err)
	}
	run(t, b)
	if mtu != 1472 {
		t.Errorf("mtu %d, want 1472", mtu)
	}
	l, err := ns.H.LinkByName("wefttest0")
	if err != nil || l.Attrs().MTU != 1472 {
		t.Fatalf("TUN: %v %v", l, err)
	}
	b.SetPeers([]lease.Lease{peer("10.5.2.0/24", "192.0.2.2", "", ""), peer("10.5.3.0/24", "192.0.2.3", "", "")})
	peers := b.Datapath().Engine.Table().Peers()
	if len(peers) != 2 || peers[0].Endpoint.Port() != 8285 {
		t.Fatalf("table %+v", peers)
	}
	if s := b.Status().(UDPStatus); s.MTU != 1472 || s.Port != 8285 {
		t.Errorf("status %+v", s)
	}
}

// Userspace vxlan: a vxlan lease with a VtepMAC kept in the state
// directory, the kernel backend's Accept, and peers with their MACs.
func TestVXLANBackend(t *testing.T) {
	ns, host := testHost(t)
	cfg := *testCfg
	cfg.BackendType, cfg.Backend = "vxlan", []byte(`{"Type":"vxlan","VNI":3}`)
	b, err := NewVXLAN(host, &cfg, Options{BatchSize: 32, AntiSpoof: true, StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	a, err := b.Attrs()
	if err != nil || a.BackendType != "vxlan" || !strings.Contains(string(a.BackendData), `"VNI":3`) {
		t.Fatalf("attrs %s %v", a.BackendData, err)
	}
	if err := b.Accept(peer("10.5.2.0/24", "192.0.2.2", "vxlan", `{"VNI":1,"VtepMAC":"02:00:00:00:00:02"}`).Attrs); err == nil {
		t.Error("Accept takes another VNI")
	}
	own := lease.Lease{Subnet: netip.MustParsePrefix("10.5.1.0/24"), Attrs: a}
	if err := ns.Do(func() (err error) { _, err = b.Start(context.Background(), own); return err }); err != nil {
		t.Fatal(err)
	}
	run(t, b)
	if _, err := ns.H.LinkByName("flannel.3"); err != nil {
		t.Fatal(err)
	}
	b.SetPeers([]lease.Lease{peer("10.5.2.0/24", "192.0.2.2", "vxlan", `{"VNI":3,"VtepMAC":"02:00:00:00:00:02"}`)})
	peers := b.Datapath().Engine.Table().Peers()
	if len(peers) != 1 || peers[0].Endpoint.Port() != 8472 {
		t.Fatalf("table %+v", peers)
	}
}

// run runs b until the test ends; Run closes the TUN and the socket.
func run(t *testing.T, b encap.Backend) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}
