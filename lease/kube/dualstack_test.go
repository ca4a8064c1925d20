package kube

import (
	"bytes"
	"context"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/weft-net/weft/lease"
	"github.com/weft-net/weft/lease/kube/kubetest"
)

// Dual-stack (net-conf-dualstack-vxlan.json: Network 10.244.0.0/16,
// IPv6Network fd00:10:244::/56), against the recordings of
// kube/dualstack-vxlan.

const (
	dualNetConf = "net-conf-dualstack-vxlan.json"
	v6Data      = "flannel.alpha.coreos.com/backend-v6-data"
	v6PublicIP  = "flannel.alpha.coreos.com/public-ipv6"
)

var (
	h1CIDRs = []string{"10.244.1.0/24", "fd00:10:244:1::/64"}
	h2CIDRs = []string{"10.244.2.0/24", "fd00:10:244:2::/64"}
)

// flanneldAnnotations are the flannel annotations h2's flanneld wrote in
// the dual-stack run (the kubelet's are left out).
func flanneldAnnotations(t *testing.T, node string) map[string]string {
	t.Helper()
	a := fixtureAnnotations(t, "dualstack-vxlan", node)
	maps.DeleteFunc(a, func(k, _ string) bool { return !strings.HasPrefix(k, DefaultAnnotationPrefix+"/") })
	if len(a) != 6 {
		t.Fatalf("%s's recorded annotations: %v", node, a)
	}
	return a
}

func nodeWith(name string, cidrs []string, ann map[string]string) *v1.Node {
	n := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, ResourceVersion: "7", Annotations: ann}}
	if len(cidrs) > 0 {
		n.Spec.PodCIDR, n.Spec.PodCIDRs = cidrs[0], cidrs
	}
	return n
}

func with(a map[string]string, kv ...string) map[string]string {
	a = maps.Clone(a)
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i+1] == "<absent>" {
			delete(a, kv[i])
		} else {
			a[kv[i]] = kv[i+1]
		}
	}
	return a
}

// A peer's lease as the store reads it from a Node: both halves from the
// Node flanneld annotated; the IPv4 half alone from a Node without IPv6
// parts; no lease, with the reason, from unreadable IPv6 annotations. A
// network without IPv6 ignores the IPv6 parts, broken or not, as
// flanneld.
func TestNodeToLeaseDualStack(t *testing.T) {
	s := testStore(t, dualNetConf)
	h2 := flanneldAnnotations(t, "h2")
	v4Only := with(h2, v6Data, "<absent>", v6PublicIP, "<absent>")
	for _, c := range []struct {
		name    string
		n       *v1.Node
		want    string // lease.String() and public IPs
		errLike string
	}{
		{"flanneld's h2", nodeWith("h2", h2CIDRs, h2), "10.244.2.0/24+fd00:10:244:2::/64 192.0.2.2 2001:db8::2", ""},
		{"podCIDRs v6 first", nodeWith("h2", []string{h2CIDRs[1], h2CIDRs[0]}, h2), "10.244.2.0/24+fd00:10:244:2::/64 192.0.2.2 2001:db8::2", ""},
		{"IPv4 podCIDR and annotations only", nodeWith("h3", []string{"10.244.3.0/24"}, v4Only), "10.244.3.0/24 192.0.2.2 invalid IP", ""},
		{"IPv6 podCIDR, no IPv6 annotations", nodeWith("h3", h2CIDRs, v4Only), "10.244.2.0/24 192.0.2.2 invalid IP", ""},
		{"IPv6 annotations, no IPv6 podCIDR", nodeWith("h3", []string{"10.244.3.0/24"}, h2), "10.244.3.0/24 192.0.2.2 invalid IP", ""},
		{"public-ipv6 not an address", nodeWith("h2", h2CIDRs, with(h2, v6PublicIP, "not-an-ip")), "", `public-ipv6: "not-an-ip" is not an IPv6 address`},
		{"public-ipv6 an IPv4 address", nodeWith("h2", h2CIDRs, with(h2, v6PublicIP, "192.0.2.2")), "", "is not an IPv6 address"},
		{"public-ipv6 IPv4-mapped", nodeWith("h2", h2CIDRs, with(h2, v6PublicIP, "::ffff:192.0.2.2")), "", "is not an IPv6 address"},
		{"public-ipv6 empty", nodeWith("h2", h2CIDRs, with(h2, v6PublicIP, "")), "10.244.2.0/24 192.0.2.2 invalid IP", ""},
		{"public-ipv6 long", nodeWith("h2", h2CIDRs, with(h2, v6PublicIP, strings.Repeat("x", 10000))), "", "(10000 bytes)"},
		{"public-ipv6 broken, no IPv6 podCIDR", nodeWith("h3", []string{"10.244.3.0/24"}, with(h2, v6PublicIP, "nope")), "", "is not an IPv6 address"},
		{"backend-v6-data not JSON", nodeWith("h2", h2CIDRs, with(h2, v6Data, `{"VNI":1,`)), "", "backend-v6-data is not JSON"},
		{"backend-v6-data too large", nodeWith("h2", h2CIDRs, with(h2, v6Data, `"`+strings.Repeat("x", 100000)+`"`)), "", "BackendV6Data is"},
		{"IPv6 podCIDR only", nodeWith("h6", []string{"fd00:10:244:6::/64"}, h2), "", "has no IPv4 pod CIDR"},
	} {
		t.Run(c.name, func(t *testing.T) {
			nl, err := s.nodeToLease(asNode(c.n))
			if c.errLike != "" {
				if err == nil || !strings.Contains(err.Error(), c.errLike) {
					t.Errorf("lease %v, err %v; want an error saying %q", nl.lease, err, c.errLike)
				}
				if err != nil && len(err.Error()) > 400 {
					t.Errorf("error of %d bytes", len(err.Error()))
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			l := nl.lease
			if got := l.String() + " " + l.Attrs.PublicIP.String() + " " + l.Attrs.PublicIPv6.String(); got != c.want {
				t.Errorf("lease %s, want %s", got, c.want)
			}
			if l.IPv6Subnet.IsValid() {
				if string(l.Attrs.BackendV6Data) != h2[v6Data] || string(l.Attrs.BackendData) != h2["flannel.alpha.coreos.com/backend-data"] {
					t.Errorf("backend data %s / %s", l.Attrs.BackendData, l.Attrs.BackendV6Data)
				}
			} else if l.Attrs.PublicIPv6.IsValid() || l.Attrs.BackendV6Data != nil {
				t.Errorf("an IPv4 peer's lease has IPv6 attrs %+v", l.Attrs)
			}
		})
	}
	// Without IPv6 in the network the IPv6 parts are not read at all.
	s4 := testStore(t)
	nl, err := s4.nodeToLease(asNode(nodeWith("h2", h2CIDRs, with(h2, v6PublicIP, "nope", v6Data, "{"))))
	if err != nil || nl.lease.String() != "10.244.2.0/24" || nl.lease.Attrs.PublicIPv6.IsValid() || nl.lease.Attrs.BackendV6Data != nil {
		t.Errorf("IPv4 network: %+v, %v; want the IPv4 lease alone", nl.lease, err)
	}
}

// A Node whose IPv6 annotations turn unreadable leaves the peers (logged
// once, counted once); fixed, it is back and counted again only when it
// breaks again.
func TestUnreadableIPv6Counted(t *testing.T) {
	s := testStore(t, dualNetConf)
	h2 := flanneldAnnotations(t, "h2")
	s.update(asNode(nodeWith("h2", h2CIDRs, h2)), false)
	if len(s.leases) != 1 || s.Unreadable() != 0 {
		t.Fatalf("leases %v, unreadable %d", s.leases, s.Unreadable())
	}
	for range 3 {
		s.update(asNode(nodeWith("h2", h2CIDRs, with(h2, v6Data, "{"))), false)
	}
	if len(s.leases) != 0 || s.Unreadable() != 1 {
		t.Errorf("broken backend-v6-data: leases %v, unreadable %d; want none, 1", s.leases, s.Unreadable())
	}
	s.update(asNode(nodeWith("h2", h2CIDRs, with(h2, v6PublicIP, "x"))), false) // another reason: same Node
	s.update(asNode(nodeWith("h2", h2CIDRs, h2)), false)
	if len(s.leases) != 1 || s.Unreadable() != 1 {
		t.Errorf("fixed: leases %v, unreadable %d; want h2, 1", s.leases, s.Unreadable())
	}
	s.update(asNode(nodeWith("h2", h2CIDRs, with(h2, v6PublicIP, "x"))), false)
	if s.Unreadable() != 2 {
		t.Errorf("broken again: unreadable %d, want 2", s.Unreadable())
	}
	// A change of IPv6 parts alone is a changed lease.
	s.update(asNode(nodeWith("h2", h2CIDRs, h2)), false)
	old := s.leases["h2"].lease
	s.update(asNode(nodeWith("h2", h2CIDRs, with(h2, v6PublicIP, "2001:db8::22"))), false)
	if sameLease(old, s.leases["h2"].lease) {
		t.Error("a changed public-ipv6 is the same lease")
	}
}

// public-ipv6-overwrite wins over the host's IPv6 address, as
// public-ip-overwrite over its IPv4 one; the IPv4 half is untouched.
func TestPublicIPv6Overwrite(t *testing.T) {
	s := testStore(t, dualNetConf)
	attrs := fixtureAttrs["dualstack-vxlan"]
	have := map[string]string{"flannel.alpha.coreos.com/public-ipv6-overwrite": "2001:db8:77::7"}
	want, err := s.wantAnnotations(have, attrs)
	if err != nil {
		t.Fatal(err)
	}
	if want[v6PublicIP] != "2001:db8:77::7" || want["flannel.alpha.coreos.com/public-ip"] != "192.0.2.1" {
		t.Errorf("public-ipv6 %q, public-ip %q; want the overwrite and 192.0.2.1", want[v6PublicIP], want["flannel.alpha.coreos.com/public-ip"])
	}
	if again, _ := s.wantAnnotations(want, attrs); !maps.Equal(again, want) {
		t.Errorf("applied, it changes again: %v", again)
	}
}

// host-gw writes public-ipv6 and a "null" backend-v6-data, as flanneld's
// rule has it; so does weft's udp backend, which carries IPv6 (flanneld's
// never did); a backend flanneld has no IPv6 rule for is refused.
func TestIPv6AnnotationsByBackend(t *testing.T) {
	s := testStore(t, dualNetConf)
	hg := lease.Attrs{PublicIP: netip.MustParseAddr("192.0.2.1"), PublicIPv6: netip.MustParseAddr("2001:db8::1"), BackendType: "host-gw"}
	want, err := s.wantAnnotations(nil, hg)
	if err != nil {
		t.Fatal(err)
	}
	if want[v6Data] != "null" || want[v6PublicIP] != "2001:db8::1" || want["flannel.alpha.coreos.com/backend-data"] != "null" {
		t.Errorf("host-gw annotations %v", want)
	}
	if why := s.noIPv6Annotations(hg); why != "" {
		t.Errorf("host-gw refused: %s", why)
	}
	udp := lease.Attrs{PublicIP: hg.PublicIP, PublicIPv6: hg.PublicIPv6}
	if w, err := s.wantAnnotations(nil, udp); err != nil || w[v6Data] != "null" || w[v6PublicIP] != "2001:db8::1" || s.noIPv6Annotations(udp) != "" {
		t.Errorf("udp annotations %v, %v, %q", w, err, s.noIPv6Annotations(udp))
	}
	for _, c := range []struct {
		attrs lease.Attrs
		why   string
	}{
		{lease.Attrs{PublicIP: hg.PublicIP, PublicIPv6: hg.PublicIPv6, BackendType: "ipsec"}, "ipsec backend"},
		{lease.Attrs{PublicIP: hg.PublicIP, BackendType: "host-gw"}, "no public IPv6 address"},
		{lease.Attrs{PublicIP: hg.PublicIP, PublicIPv6: hg.PublicIPv6, BackendType: "vxlan", BackendData: fixtureAttrs["vxlan"].BackendData}, "no IPv6 data"},
	} {
		if why := s.noIPv6Annotations(c.attrs); !strings.Contains(why, c.why) {
			t.Errorf("%+v: %q, want a reason saying %q", c.attrs, why, c.why)
		}
	}
}

func TestLastSubnet(t *testing.T) {
	for _, c := range []struct {
		network string
		bits    int
		want    string
	}{
		{"10.244.0.0/16", 24, "10.244.255.0"},
		{"10.0.0.0/8", 26, "10.255.255.192"},
		{"fd00:10:244::/56", 64, "fd00:10:244:ff::"},
		{"fd00::/8", 64, "fdff:ffff:ffff:ffff::"},
		{"fd00:10:244::/64", 80, "fd00:10:244:0:ffff::"},
		{"fd00:10:244::/120", 124, "fd00:10:244::f0"},
	} {
		if got := lastSubnet(netip.MustParsePrefix(c.network), c.bits); got.String() != c.want {
			t.Errorf("lastSubnet(%s, %d) = %s, want %s", c.network, c.bits, got, c.want)
		}
	}
}

// This host's dual-stack lease against a real API server: both subnets
// from podCIDRs, the config's IPv6 part from the IPv6 podCIDR, flanneld's
// annotations and both patch bodies as the API server recorded them,
// subnet.env byte for byte; a restart reads both VtepMACs back and sends
// only the condition, as flanneld.
func TestDualStackOwnLeaseAgainstAPIServer(t *testing.T) {
	srv := kubetest.Start(t)
	admin := srv.Client(t, kubetest.Admin)
	grantDeployRBAC(t, admin, nil)
	createNode(t, admin, "h1", h1CIDRs, map[string]string{})
	ctx := kubetest.Ctx(t, 2*time.Minute)

	s := newTestStore(t, srv, storeOpts{netConf: dualNetConf})
	cfg, err := s.Config(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.EnableIPv6 || cfg.IPv6Network.String() != "fd00:10:244::/56" || cfg.IPv6SubnetLen != 64 ||
		cfg.IPv6SubnetMin.String() != "fd00:10:244::" || cfg.IPv6SubnetMax.String() != "fd00:10:244:ff::" || cfg.SubnetLen != 24 {
		t.Errorf("config %+v", cfg)
	}
	if !cfg.ContainsIPv6(netip.MustParsePrefix(h2CIDRs[1])) {
		t.Errorf("the config does not hold h2's IPv6 podCIDR")
	}
	if ip, err := s.PublicIPv6Override(ctx); ip.IsValid() || err != nil {
		t.Errorf("IPv6 override of a fresh Node: %v, %v", ip, err)
	}
	attrs := fixtureAttrs["dualstack-vxlan"]
	own, err := s.Acquire(ctx, attrs)
	if err != nil {
		t.Fatal(err)
	}
	if own.String() != "10.244.1.0/24+fd00:10:244:1::/64" || own.Attrs.PublicIPv6 != attrs.PublicIPv6 || string(own.Attrs.BackendV6Data) != string(attrs.BackendV6Data) {
		t.Errorf("own lease %+v", own)
	}
	keepCtx, stopKeep := context.WithCancel(ctx)
	keepDone := make(chan error, 1)
	go func() { keepDone <- s.Keep(keepCtx, own) }()
	n := waitNode(t, admin, "h1", "NetworkUnavailable=False", networkAvailable)
	if got, want := n.Annotations, fixtureAnnotations(t, "dualstack-vxlan", "h1"); !maps.Equal(got, want) {
		t.Errorf("annotations %v\nflanneld wrote %v", got, want)
	}
	if got, want := auditPatches(t, srv), fixturePatches(t, "patch-requests-dualstack-vxlan-h1.txt"); !slices.Equal(got, want) {
		t.Errorf("patches as the API server recorded them:\n%s\nflanneld's:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	env := filepath.Join(t.TempDir(), "subnet.env")
	if err := lease.WriteSubnetFile(env, lease.SubnetEnv{Network: cfg.Network, Subnet: own.Subnet, IPv6Network: cfg.IPv6Network, IPv6Subnet: own.IPv6Subnet, MTU: 1450, IPMasq: true}); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(env)
	want, _ := os.ReadFile("testdata/subnet-dualstack-vxlan-h1.env")
	if !bytes.Equal(got, want) {
		t.Errorf("subnet.env\n%s\nflanneld's\n%s", got, want)
	}
	snaps := startWatch(t, s)
	watchUntil(t, snaps, "h1's dual-stack lease", func(ls []lease.Lease) bool {
		return len(ls) == 1 && ls[0].String() == own.String() && ls[0].Attrs.PublicIPv6 == attrs.PublicIPv6
	})
	stopKeep()
	<-keepDone
	s.Close()

	s2 := newTestStore(t, srv, storeOpts{netConf: dualNetConf})
	prev, ok, err := s2.PreviousAttrs(ctx)
	if err != nil || !ok || string(prev.BackendV6Data) != string(attrs.BackendV6Data) || string(prev.BackendData) != string(attrs.BackendData) || prev.PublicIPv6 != attrs.PublicIPv6 {
		t.Fatalf("previous attrs after restart: %+v, %v, %v", prev, ok, err)
	}
	own2, err := s2.Acquire(ctx, prev)
	if err != nil || own2.String() != own.String() {
		t.Fatalf("restart: %v, %v", own2, err)
	}
	before := len(auditPatches(t, srv))
	go s2.Keep(ctx, own2)
	for deadline := time.Now().Add(20 * time.Second); len(auditPatches(t, srv)) == before && time.Now().Before(deadline); {
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(time.Second)
	if got, want := auditPatches(t, srv)[before:], fixturePatches(t, "patch-requests-dualstack-vxlan-h1-restart.txt"); !slices.Equal(got, want) {
		t.Errorf("restart patches:\n%s\nflanneld's:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// Peers of a dual-stack network: a Node annotated as flanneld annotated
// h2 is a dual-stack peer; an IPv4-only Node an IPv4 peer; unreadable
// IPv6 annotations leave a Node out (counted) until they are fixed; a
// changed public-ipv6 is a changed lease.
func TestDualStackPeers(t *testing.T) {
	srv := kubetest.Start(t)
	admin := srv.Client(t, kubetest.Admin)
	grantDeployRBAC(t, admin, nil)
	createNode(t, admin, "h1", h1CIDRs, map[string]string{})
	h2 := flanneldAnnotations(t, "h2")
	createNode(t, admin, "h2", h2CIDRs, h2)
	createNode(t, admin, "h3", []string{"10.244.3.0/24"}, peerAnnotations("192.0.2.3", "vxlan", `{"VNI":1,"VtepMAC":"4e:86:bf:e9:21:03"}`))
	createNode(t, admin, "h4", []string{"10.244.4.0/24", "fd00:10:244:4::/64"}, with(h2, v6PublicIP, "2001:db8::zz"))
	createNode(t, admin, "h5", []string{"10.244.5.0/24", "fd00:10:244:5::/64"}, with(h2, v6Data, `{"VNI":1,"VtepMAC":`))

	s := newTestStore(t, srv, storeOpts{netConf: dualNetConf})
	snaps := startWatch(t, s)
	peers := func(ls []lease.Lease) []string {
		var out []string
		for _, l := range ls {
			out = append(out, l.String()+"="+l.Attrs.PublicIP.String()+","+l.Attrs.PublicIPv6.String())
		}
		return out
	}
	ls := watchUntil(t, snaps, "h2 and h3", func(ls []lease.Lease) bool {
		return slices.Equal(peers(ls), []string{"10.244.2.0/24+fd00:10:244:2::/64=192.0.2.2,2001:db8::2", "10.244.3.0/24=192.0.2.3,invalid IP"})
	})
	if a := ls[0].Attrs; string(a.BackendV6Data) != h2[v6Data] || a.BackendType != "vxlan" || string(a.BackendData) != h2["flannel.alpha.coreos.com/backend-data"] {
		t.Errorf("h2's attrs %+v", a)
	}
	if ls[1].Attrs.BackendV6Data != nil {
		t.Errorf("h3's attrs %+v", ls[1].Attrs)
	}
	if n := s.Unreadable(); n != 2 {
		t.Errorf("unreadable %d, want 2 (h4, h5)", n)
	}
	// h4's public-ipv6 fixed: a dual-stack peer.
	patchAnnotations(t, admin, "h4", map[string]string{v6PublicIP: "2001:db8::4"})
	watchUntil(t, snaps, "h4", func(ls []lease.Lease) bool {
		return slices.Contains(peers(ls), "10.244.4.0/24+fd00:10:244:4::/64=192.0.2.2,2001:db8::4")
	})
	// h2's public-ipv6 changed: a changed lease.
	patchAnnotations(t, admin, "h2", map[string]string{v6PublicIP: "2001:db8::22"})
	watchUntil(t, snaps, "h2's new IPv6 address", func(ls []lease.Lease) bool {
		return slices.Contains(peers(ls), "10.244.2.0/24+fd00:10:244:2::/64=192.0.2.2,2001:db8::22")
	})
	// h2's backend-v6-data broken: h2 leaves the peers, counted.
	patchAnnotations(t, admin, "h2", map[string]string{v6Data: "not json"})
	watchUntil(t, snaps, "h2 gone", func(ls []lease.Lease) bool {
		return !slices.ContainsFunc(ls, func(l lease.Lease) bool { return l.Subnet.String() == "10.244.2.0/24" })
	})
	if n := s.Unreadable(); n != 3 {
		t.Errorf("unreadable %d, want 3", n)
	}
}

// Refusals of a dual-stack network at start, each naming the problem:
// this host's Node without an IPv6 podCIDR, or with one outside
// IPv6Network; an unusable IPv6 override annotation; a host without an
// IPv6 address or IPv6 backend data. The IPv6
// overrides are read, overwrite first, and the overwrite is what
// public-ipv6 gets.
func TestDualStackRefusalsAndOverrides(t *testing.T) {
	srv := kubetest.Start(t)
	admin := srv.Client(t, kubetest.Admin)
	grantDeployRBAC(t, admin, nil)
	ctx := kubetest.Ctx(t, 2*time.Minute)
	createNode(t, admin, "v4only", []string{"10.244.1.0/24"}, map[string]string{})
	createNode(t, admin, "outside6", []string{"10.244.1.0/24", "fd00:99::/64"}, map[string]string{})
	for node, want := range map[string]string{
		"v4only":   `node "v4only" has no IPv6 pod CIDR (spec.podCIDRs [10.244.1.0/24]), but the network config has "EnableIPv6": true`,
		"outside6": `subnet "fd00:10:244::/56" specified in the flannel net config doesn't contain "fd00:99::/64" IPv6 PodCIDR of the "outside6" node`,
	} {
		s := newTestStore(t, srv, storeOpts{node: node, netConf: dualNetConf})
		if _, err := s.Config(ctx); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Node %s: Config: %v; want an error saying %q", node, err, want)
		}
		if _, err := s.Acquire(ctx, fixtureAttrs["dualstack-vxlan"]); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Node %s: Acquire: %v; want an error saying %q", node, err, want)
		}
	}
	// The same Node is fine for a network without IPv6: its IPv4 lease.
	s4 := newTestStore(t, srv, storeOpts{node: "outside6"})
	if own, err := s4.Acquire(ctx, fixtureAttrs["vxlan"]); err != nil || own.String() != "10.244.1.0/24" {
		t.Errorf("IPv4 network: %v, %v", own, err)
	}

	createNode(t, admin, "h1", h1CIDRs, map[string]string{
		"flannel.alpha.coreos.com/node-public-ipv6": "2001:db8:5::1",
	})
	s := newTestStore(t, srv, storeOpts{netConf: dualNetConf})
	if ip, err := s.PublicIPv6Override(ctx); err != nil || ip.String() != "2001:db8:5::1" {
		t.Errorf("node-public-ipv6: %v, %v", ip, err)
	}
	if ip, err := s.PublicIPOverride(ctx); err != nil || ip.IsValid() {
		t.Errorf("IPv4 override: %v, %v; want none", ip, err)
	}
	noV6 := fixtureAttrs["dualstack-vxlan"]
	noV6.PublicIPv6 = netip.Addr{}
	if _, err := s.Acquire(ctx, noV6); err == nil || !strings.Contains(err.Error(), "this host has no public IPv6 address") {
		t.Errorf("no PublicIPv6: %v", err)
	}
	noData := fixtureAttrs["dualstack-vxlan"]
	noData.BackendV6Data = nil
	if _, err := s.Acquire(ctx, noData); err == nil || !strings.Contains(err.Error(), "BackendV6Data") {
		t.Errorf("no BackendV6Data: %v", err)
	}
	for _, bad := range []string{"fe80::1", "192.0.2.9", "nope"} {
		patchAnnotations(t, admin, "h1", map[string]string{"flannel.alpha.coreos.com/public-ipv6-overwrite": bad})
		waitCached(t, s, func(n *node) bool { return n.Annotations["flannel.alpha.coreos.com/public-ipv6-overwrite"] == bad })
		if _, err := s.PublicIPv6Override(ctx); err == nil || !strings.Contains(err.Error(), "public-ipv6-overwrite") {
			t.Errorf("overwrite %q: PublicIPv6Override: %v", bad, err)
		}
		if _, err := s.Acquire(ctx, fixtureAttrs["dualstack-vxlan"]); err == nil || !strings.Contains(err.Error(), "public-ipv6-overwrite") {
			t.Errorf("overwrite %q: Acquire: %v", bad, err)
		}
	}
	patchAnnotations(t, admin, "h1", map[string]string{"flannel.alpha.coreos.com/public-ipv6-overwrite": "2001:db8:6::1"})
	waitCached(t, s, func(n *node) bool {
		return n.Annotations["flannel.alpha.coreos.com/public-ipv6-overwrite"] == "2001:db8:6::1"
	})
	if ip, err := s.PublicIPv6Override(ctx); err != nil || ip.String() != "2001:db8:6::1" {
		t.Errorf("public-ipv6-overwrite: %v, %v", ip, err)
	}
	own, err := s.Acquire(ctx, fixtureAttrs["dualstack-vxlan"])
	if err != nil || own.Attrs.PublicIPv6.String() != "2001:db8:6::1" {
		t.Errorf("Acquire with the overwrite: %+v, %v", own, err)
	}
	waitNode(t, admin, "h1", "public-ipv6 from the overwrite", func(n *v1.Node) bool {
		return n.Annotations[v6PublicIP] == "2001:db8:6::1" && n.Annotations["flannel.alpha.coreos.com/public-ip"] == "192.0.2.1"
	})
}

// waitCached waits until the store's cache sees this host's Node as ok
// says.
func waitCached(t *testing.T, s *Store, ok func(*node) bool) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if n, found := s.nodes.ownNode(); found && ok(n) {
			return
		}
	}
	t.Fatalf("Node %s: not in the store's cache as wanted within 20 s", s.node)
}

// Keep on a dual-stack network: a Node re-created without annotations
// gets flanneld's dual-stack annotations back; one re-created with
// another IPv6 podCIDR is a lost lease, and Keep says so.
func TestDualStackKeep(t *testing.T) {
	srv := kubetest.Start(t)
	admin := srv.Client(t, kubetest.Admin)
	grantDeployRBAC(t, admin, nil)
	ctx := kubetest.Ctx(t, 2*time.Minute)
	createNode(t, admin, "h1", h1CIDRs, map[string]string{})
	s := newTestStore(t, srv, storeOpts{netConf: dualNetConf})
	own, err := s.Acquire(ctx, fixtureAttrs["dualstack-vxlan"])
	if err != nil {
		t.Fatal(err)
	}
	keepDone := make(chan error, 1)
	go func() { keepDone <- s.Keep(ctx, own) }()
	waitNode(t, admin, "h1", "condition", networkAvailable)
	if err := admin.CoreV1().Nodes().Delete(ctx, "h1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	createNode(t, admin, "h1", h1CIDRs, map[string]string{})
	want := fixtureAnnotations(t, "dualstack-vxlan", "h1")
	waitNode(t, admin, "h1", "dual-stack annotations and condition back", func(n *v1.Node) bool {
		return maps.Equal(n.Annotations, want) && networkAvailable(n)
	})
	if err := admin.CoreV1().Nodes().Delete(ctx, "h1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	createNode(t, admin, "h1", []string{"10.244.1.0/24", "fd00:10:244:9::/64"}, map[string]string{})
	select {
	case err := <-keepDone:
		if err == nil || !strings.Contains(err.Error(), "fd00:10:244:9::/64") || !strings.Contains(err.Error(), "restart to take it") {
			t.Errorf("Keep: %v; want the lost lease named", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Keep goes on with an IPv6 podCIDR that is no longer its own")
	}
}
