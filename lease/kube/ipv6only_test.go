package kube

import (
	"context"
	"encoding/json"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/weft-net/weft/lease"
	"github.com/weft-net/weft/lease/kube/kubetest"
)

// IPv6-only networks ("EnableIPv4": false; IPv6Network
// fd00:10:244::/56): Nodes whose podCIDRs hold one IPv6 entry.

const (
	v6OnlyVxlan  = "net-conf-ipv6only.json"
	v6OnlyHostGW = "net-conf-ipv6only-host-gw.json"
	kubeletAnn   = "volumes.kubernetes.io/controller-managed-attach-detach"
)

// v6OnlyAttrs are an IPv6-only host's lease attributes as weft's
// backends give them: no PublicIP, no BackendData.
var v6OnlyAttrs = map[string]lease.Attrs{
	"vxlan": {PublicIPv6: netip.MustParseAddr("2001:db8::1"), BackendType: "vxlan",
		BackendV6Data: json.RawMessage(`{"VNI":1,"VtepMAC":"7a:f1:30:41:e3:17"}`)},
	"host-gw": {PublicIPv6: netip.MustParseAddr("2001:db8::1"), BackendType: "host-gw"},
}

// flanneldAnnotationRule transcribes flanneld v0.28.9's AcquireLease
// (pkg/subnet/kube/kube.go) for the vxlan and host-gw backends: whether
// it patches, and the annotations it writes. Its attrs.PublicIP is an
// ip.IP4, whose zero value (an IPv6-only host's) prints "0.0.0.0";
// attrs.PublicIPv6 is nil when invalid; BackendData nil marshals
// "null".
func flanneldAnnotationRule(have map[string]string, a lease.Attrs) (map[string]string, bool) {
	const p = DefaultAnnotationPrefix + "/"
	raw := func(d json.RawMessage) string {
		if d == nil {
			return "null"
		}
		return string(d)
	}
	bd, v6Bd := raw(a.BackendData), raw(a.BackendV6Data)
	ip := "0.0.0.0"
	if a.PublicIP.IsValid() {
		ip = a.PublicIP.String()
	}
	ip6 := a.PublicIPv6.String()
	n := maps.Clone(have)
	if !(n[p+"backend-data"] != bd || n[p+"backend-type"] != a.BackendType || n[p+"public-ip"] != ip ||
		n[p+"kube-subnet-manager"] != "true" || (n[p+"public-ip-overwrite"] != "" && n[p+"public-ip-overwrite"] != ip) ||
		(a.PublicIPv6.IsValid() && (n[p+"backend-v6-data"] != v6Bd || n[p+"backend-type"] != a.BackendType ||
			n[p+"public-ipv6"] != ip6 || n[p+"kube-subnet-manager"] != "true" ||
			(n[p+"public-ipv6-overwrite"] != "" && n[p+"public-ipv6-overwrite"] != ip6)))) {
		return n, false
	}
	n[p+"backend-type"] = a.BackendType
	if a.BackendType == "vxlan" && bd != "null" || a.BackendType != "vxlan" {
		n[p+"backend-data"] = bd
		if o := n[p+"public-ip-overwrite"]; o != "" {
			n[p+"public-ip"] = o
		} else {
			n[p+"public-ip"] = ip
		}
	}
	if a.BackendType == "vxlan" && v6Bd != "null" || a.BackendType == "host-gw" && a.PublicIPv6.IsValid() {
		n[p+"backend-v6-data"] = v6Bd
		if o := n[p+"public-ipv6-overwrite"]; o != "" {
			n[p+"public-ipv6"] = o
		} else {
			n[p+"public-ipv6"] = ip6
		}
	}
	n[p+"kube-subnet-manager"] = "true"
	return n, true
}

// weft writes what flanneld's rule writes, on IPv6-only networks and,
// as a check of the transcription, on the recorded IPv4 and dual-stack
// ones. Where flanneld patches again with nothing to change (an
// IPv6-only vxlan host: it compares a public-ip it never writes), weft
// sends no patch.
func TestIPv6OnlyAnnotationsMatchFlanneldRule(t *testing.T) {
	for _, c := range []struct {
		name, netConf string
		attrs         lease.Attrs
	}{
		{"ipv6only-vxlan", v6OnlyVxlan, v6OnlyAttrs["vxlan"]},
		{"ipv6only-host-gw", v6OnlyHostGW, v6OnlyAttrs["host-gw"]},
		{"vxlan", "net-conf-vxlan.json", fixtureAttrs["vxlan"]},
		{"host-gw", "net-conf-host-gw.json", fixtureAttrs["host-gw"]},
		{"dualstack-vxlan", dualNetConf, fixtureAttrs["dualstack-vxlan"]},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := testStore(t, c.netConf)
			have := map[string]string{kubeletAnn: "true"}
			want, _ := flanneldAnnotationRule(have, c.attrs)
			got, err := s.wantAnnotations(have, c.attrs)
			if err != nil {
				t.Fatal(err)
			}
			if !maps.Equal(got, want) {
				t.Errorf("weft writes\n%v\nflanneld's rule\n%v", got, want)
			}
			// Written once, nothing changes after.
			again, err := s.wantAnnotations(got, c.attrs)
			if err != nil {
				t.Fatal(err)
			}
			n := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "h1", Annotations: got}}
			if body, err := annotationPatch(asNode(n), again); body != nil || err != nil {
				t.Errorf("second write patches %s (%v)", body, err)
			}
			_, flanneldPatches := flanneldAnnotationRule(got, c.attrs)
			if wantAgain := c.name == "ipv6only-vxlan"; flanneldPatches != wantAgain {
				t.Errorf("the transcription patches again: %v, want %v", flanneldPatches, wantAgain)
			}
		})
	}
	// What each IPv6-only backend writes, spelled out.
	p := DefaultAnnotationPrefix + "/"
	s := testStore(t, v6OnlyHostGW)
	got, _ := s.wantAnnotations(nil, v6OnlyAttrs["host-gw"])
	if got[p+"public-ip"] != "0.0.0.0" || got[p+"backend-data"] != "null" || got[p+"public-ipv6"] != "2001:db8::1" || got[p+"backend-v6-data"] != "null" {
		t.Errorf("host-gw: %v", got)
	}
	s = testStore(t, v6OnlyVxlan)
	got, _ = s.wantAnnotations(nil, v6OnlyAttrs["vxlan"])
	if _, ok := got[p+"public-ip"]; ok || got[p+"public-ipv6"] != "2001:db8::1" || len(got) != 4 {
		t.Errorf("vxlan: %v", got)
	}
	// Deliberately not flanneld's: public-ip-overwrite would put an IPv4
	// address on an IPv6-only Node; weft keeps "0.0.0.0".
	s = testStore(t, v6OnlyHostGW)
	have := map[string]string{p + "public-ip-overwrite": "192.0.2.9"}
	got, _ = s.wantAnnotations(have, v6OnlyAttrs["host-gw"])
	if fl, _ := flanneldAnnotationRule(have, v6OnlyAttrs["host-gw"]); got[p+"public-ip"] != "0.0.0.0" || fl[p+"public-ip"] != "192.0.2.9" {
		t.Errorf("public-ip with an overwrite: weft %q, flanneld %q", got[p+"public-ip"], fl[p+"public-ip"])
	}
}

// flanneldPatch is the annotation patch flanneld's rule sends to a Node
// created by createNode (the kubelet's annotation only), as the audit
// log records it.
func flanneldPatch(t *testing.T, node string, attrs lease.Attrs) string {
	t.Helper()
	have := map[string]string{kubeletAnn: "true"}
	want, _ := flanneldAnnotationRule(have, attrs)
	delete(want, kubeletAnn)
	b, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": want}})
	if err != nil {
		t.Fatal(err)
	}
	return "nodes/status " + node + " " + string(b)
}

// The own lease of an IPv6-only host, against the API server: the
// Node's one IPv6 podCIDR, no IPv4 subnet or PublicIP; the annotation
// patch is flanneld's rule's, then the condition; a restart reads
// BackendV6Data back and sends only the condition; Config spans the
// IPv6 network. A Node with an IPv4 podCIDR only is refused by name.
func TestIPv6OnlyOwnLease(t *testing.T) {
	srv := kubetest.Start(t)
	admin := srv.Client(t, kubetest.Admin)
	grantDeployRBAC(t, admin, nil)
	ctx := kubetest.Ctx(t, 2*time.Minute)
	for i, backend := range []string{"vxlan", "host-gw"} {
		node := []string{"h1", "h2"}[i]
		cidr := []string{"fd00:10:244:1::/64", "fd00:10:244:2::/64"}[i]
		netConf := map[string]string{"vxlan": v6OnlyVxlan, "host-gw": v6OnlyHostGW}[backend]
		attrs := v6OnlyAttrs[backend]
		createNode(t, admin, node, []string{cidr}, map[string]string{})
		s := newTestStore(t, srv, storeOpts{node: node, netConf: netConf})
		cfg, err := s.Config(ctx)
		if err != nil || cfg.EnableIPv4 || cfg.Network.IsValid() || cfg.IPv6SubnetLen != 64 ||
			cfg.IPv6SubnetMin.String() != "fd00:10:244::" || cfg.IPv6SubnetMax.String() != "fd00:10:244:ff::" {
			t.Errorf("%s: config %+v, %v", backend, cfg, err)
		}
		before := len(auditPatches(t, srv))
		own, err := s.Acquire(ctx, attrs)
		if err != nil {
			t.Fatalf("%s: %v", backend, err)
		}
		if own.Subnet.IsValid() || own.IPv6Subnet.String() != cidr || own.ID() != own.IPv6Subnet ||
			own.Attrs.PublicIP.IsValid() || own.Attrs.PublicIPv6 != attrs.PublicIPv6 || own.Key() != "0.0.0.0-0&"+strings.Replace(cidr, "/", "-", 1) {
			t.Errorf("%s: own lease %+v", backend, own)
		}
		keepCtx, stopKeep := context.WithCancel(ctx)
		keepDone := make(chan error, 1)
		go func() { keepDone <- s.Keep(keepCtx, own) }()
		waitNode(t, admin, node, "NetworkUnavailable=False", networkAvailable)
		got := auditPatches(t, srv)[before:]
		if len(got) != 2 || got[0] != flanneldPatch(t, node, attrs) || !strings.HasPrefix(got[1], "nodes/status "+node+` {"status":{"conditions":`) {
			t.Errorf("%s: patches\n%s\nwant\n%s\nthen the condition", backend, strings.Join(got, "\n"), flanneldPatch(t, node, attrs))
		}
		snaps := startWatch(t, s)
		watchUntil(t, snaps, "the own lease", func(ls []lease.Lease) bool {
			return slices.ContainsFunc(ls, func(l lease.Lease) bool { return l.ID() == own.ID() && l.Attrs.PublicIPv6 == attrs.PublicIPv6 })
		})
		stopKeep()
		<-keepDone
		s.Close()

		// Restart: the previous attributes (vxlan: the VtepMAC of
		// flannel-v6.1) come back; only the condition is patched.
		s2 := newTestStore(t, srv, storeOpts{node: node, netConf: netConf})
		prev, ok, err := s2.PreviousAttrs(ctx)
		if err != nil || !ok || string(prev.BackendV6Data) != string(attrs.BackendV6Data) || prev.PublicIP.IsValid() {
			t.Fatalf("%s: previous attrs %+v, %v, %v", backend, prev, ok, err)
		}
		before = len(auditPatches(t, srv))
		own2, err := s2.Acquire(ctx, prev)
		if err != nil || own2.IPv6Subnet != own.IPv6Subnet {
			t.Fatalf("%s: restart %+v, %v", backend, own2, err)
		}
		keep2, stop2 := context.WithCancel(ctx)
		done2 := make(chan error, 1)
		go func() { done2 <- s2.Keep(keep2, own2) }()
		deadline := time.Now().Add(20 * time.Second)
		for len(auditPatches(t, srv)) == before && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
		}
		time.Sleep(time.Second)
		if got := auditPatches(t, srv)[before:]; len(got) != 1 || !strings.Contains(got[0], `"conditions"`) {
			t.Errorf("%s: restart patches %s; want the condition only", backend, strings.Join(got, "\n"))
		}
		stop2()
		<-done2
	}

	createNode(t, admin, "v4only", []string{"10.244.1.0/24"}, map[string]string{})
	s := newTestStore(t, srv, storeOpts{node: "v4only", netConf: v6OnlyVxlan})
	want := `node "v4only" has no IPv6 pod CIDR`
	if _, err := s.Acquire(ctx, v6OnlyAttrs["vxlan"]); err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("IPv4-only Node: %v; want %q", err, want)
	}
	noV6 := v6OnlyAttrs["vxlan"]
	noV6.PublicIPv6 = netip.Addr{}
	s = newTestStore(t, srv, storeOpts{node: "h1", netConf: v6OnlyVxlan})
	if _, err := s.Acquire(ctx, noV6); err == nil || !strings.Contains(err.Error(), "no public IPv6 address") {
		t.Errorf("no PublicIPv6: %v", err)
	}
}

// Peers of an IPv6-only network: Nodes with an IPv6 podCIDR and
// public-ipv6 (flanneld's IPv6-only annotations, or a dual-stack Node's,
// whose IPv4 part is left out); a Node without an IPv6 podCIDR or
// without public-ipv6 is refused and counted; a changed public-ipv6 is
// followed.
func TestIPv6OnlyPeers(t *testing.T) {
	srv := kubetest.Start(t)
	admin := srv.Client(t, kubetest.Admin)
	grantDeployRBAC(t, admin, nil)
	ctx := kubetest.Ctx(t, 2*time.Minute)
	createNode(t, admin, "h1", []string{"fd00:10:244:1::/64"}, map[string]string{})
	s := newTestStore(t, srv, storeOpts{netConf: v6OnlyVxlan})
	if _, err := s.Acquire(ctx, v6OnlyAttrs["vxlan"]); err != nil {
		t.Fatal(err)
	}
	p := DefaultAnnotationPrefix + "/"
	h2, _ := flanneldAnnotationRule(map[string]string{}, lease.Attrs{PublicIPv6: netip.MustParseAddr("2001:db8::2"), BackendType: "vxlan",
		BackendV6Data: json.RawMessage(`{"VNI":1,"VtepMAC":"22:a6:83:20:ec:9a"}`)})
	createNode(t, admin, "h2", []string{"fd00:10:244:2::/64"}, h2)
	createNode(t, admin, "dual", []string{"10.244.3.0/24", "fd00:10:244:3::/64"}, flanneldAnnotations(t, "h2"))
	createNode(t, admin, "v4only", []string{"10.244.4.0/24"}, peerAnnotations("192.0.2.4", "vxlan", `{"VNI":1,"VtepMAC":"52:21:cc:9e:cb:55"}`))
	noIP6 := maps.Clone(h2)
	delete(noIP6, p+"public-ipv6")
	createNode(t, admin, "noip6", []string{"fd00:10:244:5::/64"}, noIP6)

	type peer struct{ id, ip6 string }
	peers := func(ls []lease.Lease) []peer {
		var out []peer
		for _, l := range ls {
			if l.Subnet.IsValid() || l.Attrs.PublicIP.IsValid() || l.Attrs.BackendData != nil {
				out = append(out, peer{"IPv4 part " + l.String(), ""})
				continue
			}
			out = append(out, peer{l.ID().String(), l.Attrs.PublicIPv6.String()})
		}
		return out
	}
	snaps := startWatch(t, s)
	watchUntil(t, snaps, "h1, h2 and the dual-stack Node by their IPv6 subnets", func(ls []lease.Lease) bool {
		return slices.Equal(peers(ls), []peer{
			{"fd00:10:244:1::/64", "2001:db8::1"}, {"fd00:10:244:2::/64", "2001:db8::2"}, {"fd00:10:244:3::/64", "2001:db8::2"},
		})
	})
	for deadline := time.Now().Add(20 * time.Second); s.Unreadable() != 2 && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}
	if n := s.Unreadable(); n != 2 {
		t.Errorf("unreadable %d, want 2 (v4only, noip6)", n)
	}
	patchAnnotations(t, admin, "h2", map[string]string{p + "public-ipv6": "2001:db8::22"})
	ls := watchUntil(t, snaps, "h2's new public-ipv6", func(ls []lease.Lease) bool {
		return slices.Contains(peers(ls), peer{"fd00:10:244:2::/64", "2001:db8::22"})
	})
	if i := slices.IndexFunc(ls, func(l lease.Lease) bool { return l.ID().String() == "fd00:10:244:2::/64" }); string(ls[i].Attrs.BackendV6Data) != `{"VNI":1,"VtepMAC":"22:a6:83:20:ec:9a"}` {
		t.Errorf("h2's lease %+v", ls[i])
	}
	if err := admin.CoreV1().Nodes().Delete(ctx, "h2", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	watchUntil(t, snaps, "h2 gone", func(ls []lease.Lease) bool { return len(peers(ls)) == 2 })
}

// Keep on an IPv6-only network: a Node re-created without annotations
// gets them back (public-ip "0.0.0.0" with host-gw); one re-created
// with another IPv6 podCIDR is a lost lease.
func TestIPv6OnlyKeep(t *testing.T) {
	srv := kubetest.Start(t)
	admin := srv.Client(t, kubetest.Admin)
	grantDeployRBAC(t, admin, nil)
	ctx := kubetest.Ctx(t, 2*time.Minute)
	cidr := []string{"fd00:10:244:1::/64"}
	createNode(t, admin, "h1", cidr, map[string]string{})
	s := newTestStore(t, srv, storeOpts{netConf: v6OnlyHostGW})
	own, err := s.Acquire(ctx, v6OnlyAttrs["host-gw"])
	if err != nil {
		t.Fatal(err)
	}
	keepDone := make(chan error, 1)
	go func() { keepDone <- s.Keep(ctx, own) }()
	first := waitNode(t, admin, "h1", "condition", networkAvailable)
	want, _ := flanneldAnnotationRule(map[string]string{kubeletAnn: "true"}, v6OnlyAttrs["host-gw"])
	if !maps.Equal(first.Annotations, want) {
		t.Errorf("annotations %v, want %v", first.Annotations, want)
	}
	if err := admin.CoreV1().Nodes().Delete(ctx, "h1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	createNode(t, admin, "h1", cidr, map[string]string{})
	waitNode(t, admin, "h1", "annotations and condition back", func(n *v1.Node) bool {
		return maps.Equal(n.Annotations, want) && networkAvailable(n)
	})
	// An edit of public-ipv6 is written back too.
	patchAnnotations(t, admin, "h1", map[string]string{DefaultAnnotationPrefix + "/public-ipv6": "2001:db8::99"})
	waitNode(t, admin, "h1", "public-ipv6 written back", func(n *v1.Node) bool { return maps.Equal(n.Annotations, want) })
	if err := admin.CoreV1().Nodes().Delete(ctx, "h1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	createNode(t, admin, "h1", []string{"fd00:10:244:9::/64"}, map[string]string{})
	select {
	case err := <-keepDone:
		if err == nil || !strings.Contains(err.Error(), "fd00:10:244:9::/64") || !strings.Contains(err.Error(), "restart to take it") {
			t.Errorf("Keep: %v; want the lost lease named", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Keep goes on with an IPv6 podCIDR that is no longer its own")
	}
}
