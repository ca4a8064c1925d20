package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/bench/harness"
	"github.com/weft-net/weft/bench/lab"
	"github.com/weft-net/weft/encap/admission"
	"github.com/weft-net/weft/lease"
)

// TestHostileLeasesDualStack is TestHostileLeases for the IPv6 half of
// dual-stack leases: IPv6 subnets that are the whole space, part of a
// host's, outside the IPv6 network or another host's; public IPv6
// addresses that are another host's, link-local, loopback or
// multicast; broken IPv6 backend data. Each such lease is refused whole
// (its IPv4 half is valid and unused), no host's routes, neighbours, FDB,
// iptables or ip6tables change but for the one valid dual-stack lease,
// and pods keep reaching each other over both families.
func TestHostileLeasesDualStack(t *testing.T) {
	for _, backend := range []string{"vxlan", "host-gw"} {
		t.Run(backend, func(t *testing.T) { testHostileLeases6(t, backend) })
	}
}

func testHostileLeases6(t *testing.T, backend string) {
	k := newKClusterOpts(t, lab.Options{Hosts: 2, IPv6: true}, dualStackConf(backend), nil)
	k.start(nil, 1, 2)
	k.ping(1, 2)
	k.ping(2, 1)
	k.ping6(1, 2)
	k.ping6(2, 1)
	time.Sleep(500 * time.Millisecond) // first reconcile passes
	before := []string{hostState(t, k.Lab, k.Lab.Host(1).Name), hostState(t, k.Lab, k.Lab.Host(2).Name)}
	traffic := k.pingBothWays(true) // both families, all through
	h1v6, h2v6 := k.Envs[0].IPv6Subnet, k.Envs[1].IPv6Subnet
	h2IP6 := k.Lab.Host(2).IP6

	data4, data6 := "", ""
	if backend == "vxlan" {
		data4 = `,"BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:66"}`
		data6 = `,"BackendV6Data":{"VNI":1,"VtepMAC":"02:00:00:00:00:67"}`
	}
	val := func(ip, ip6, v6data string) string {
		return fmt.Sprintf(`{"PublicIP":%q,"PublicIPv6":%q,"BackendType":%q%s%s}`, ip, ip6, backend, data4, v6data)
	}
	// IPv4 halves no host holds, so only the IPv6 half is at fault.
	next := 199
	free4 := func() string {
		for {
			next++
			s := fmt.Sprintf("10.5.%d.0", next)
			if s != k.Envs[0].Subnet.Addr().String() && s != k.Envs[1].Subnet.Addr().String() {
				return s
			}
		}
	}
	free6 := func(n int) string {
		b := netip.MustParseAddr("fd00:10:5::").As16()
		b[7] = byte(n)
		p := netip.PrefixFrom(netip.AddrFrom16(b), 64)
		if p == h1v6 || p == h2v6 {
			b[7] = byte(n + 100)
		}
		return netip.AddrFrom16(b).String()
	}
	ipN := 70
	ip4 := func() string { ipN++; return fmt.Sprintf("192.0.2.%d", ipN) }
	ip6 := func() string { return fmt.Sprintf("2001:db8::%x", ipN+0x100) }
	type hostile struct{ key, value string }
	var leases []hostile
	add := func(v6key, pub6, v6data string) {
		v4, a := free4(), ip4()
		leases = append(leases, hostile{v4 + "-24&" + v6key, val(a, pub6, v6data)})
	}
	add("::-0", ip6(), data6)                     // the whole IPv6 space
	add(h1v6.Addr().String()+"-65", ip6(), data6) // half of h1's IPv6 subnet
	add("fd00:10:6::-64", ip6(), data6)           // outside the IPv6 network
	add(h2v6.Addr().String()+"-64", ip6(), data6) // h2's IPv6 subnet under another IPv4 subnet
	add(free6(0xd1)+"-64", h2IP6.String(), data6) // h2's public IPv6
	add(free6(0xd2)+"-64", "fe80::1", data6)      // link-local
	add(free6(0xd3)+"-64", "::1", data6)          // loopback
	add(free6(0xd4)+"-64", "ff02::1", data6)      // multicast
	add(free6(0xd5)+"-0064", ip6(), data6)        // another spelling
	if backend == "vxlan" {
		add(free6(0xd6)+"-64", ip6(), `,"BackendV6Data":{"VNI":1,"VtepMAC":"zz"}`) // broken IPv6 data
		add(free6(0xd7)+"-64", ip6(), "")                                          // no IPv6 data
		// h2's IPv6 VtepMAC: its flannel-v6.1 FDB entry would send h2's
		// IPv6 traffic elsewhere.
		mac6 := k.vtepMAC(lease.LeaseKey(k.Envs[1].Subnet.Masked(), h2v6.Masked()), true)
		add(free6(0xd8)+"-64", ip6(), fmt.Sprintf(`,"BackendV6Data":{"VNI":1,"VtepMAC":%q}`, mac6))
	}
	validV4, validV6 := free4(), free6(0xd9)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, l := range leases {
		if _, err := k.cli.Put(ctx, harness.EtcdPrefix+"/subnets/"+l.key, l.value); err != nil {
			t.Fatal(err)
		}
	}
	validIP6 := "2001:db8::99"
	if _, err := k.cli.Put(ctx, harness.EtcdPrefix+"/subnets/"+validV4+"-24&"+validV6+"-64", val("192.0.2.99", validIP6, data6)); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 2; i++ {
		k.eventually(fmt.Sprintf("h%d admits the valid lease", i), 10*time.Second, func() (bool, string) {
			s := k.stats(i)
			for _, p := range s.Peers {
				if p.Subnet.Addr().String() == validV4 && p.IPv6Subnet != nil && p.IPv6Subnet.Addr().String() == validV6 {
					return true, ""
				}
			}
			return false, fmt.Sprintf("%+v", s.Peers)
		})
	}
	time.Sleep(time.Second) // reconcile passes and repairs, had anything been touched
	k.ping(1, 2)
	k.ping6(1, 2)
	k.ping6(2, 1)
	ignore := []string{validV4, validV6, "192.0.2.99", validIP6, "02:00:00:00:00:66", "02:00:00:00:00:67"}
	for i := 1; i <= 2; i++ {
		if p := k.Runs[i-1]; p.Exited() {
			t.Fatalf("h%d's weft exited:\n%s", i, p.Log())
		}
		after := hostState(t, k.Lab, k.Lab.Host(i).Name)
		if d := lineDiff(withoutLines(before[i-1], ignore...), withoutLines(after, ignore...)); d != "" {
			t.Errorf("h%d: host state changed by hostile leases:\n%s", i, d)
		}
		s := k.stats(i)
		var refused uint64
		for _, n := range s.Refusals {
			refused += n
		}
		// The store refuses the other spelling and the unusable public
		// IPv6 addresses (link-local, loopback, multicast) as unreadable;
		// admission the rest.
		want := uint64(len(leases))
		if refused != want || s.Refusals[admission.Unreadable] != 4 || s.Refusals[admission.PublicIPTaken] != 1 || s.Refusals[admission.Overlap] != 1 ||
			backend == "vxlan" && s.Refusals[admission.BackendDataTaken] != 1 {
			t.Errorf("h%d: refusals %v (%d), want %d; refused now %v", i, s.Refusals, refused, want, s.Refused)
		}
		for sn, why := range s.Refused {
			if strings.HasPrefix(why, admission.IPv6) {
				t.Errorf("h%d: %s refused as %q", i, sn, why)
			}
		}
	}
	if sent, lost := traffic(); sent == 0 || lost != 0 {
		t.Errorf("pings while hostile leases were written: %d sent, %d lost", sent, lost)
	}
	k.stop(1, 2)
}
