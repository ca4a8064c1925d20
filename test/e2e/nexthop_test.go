package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/bench/harness"
)

// TestKernelNexthops runs two vxlan hosts with --route-nexthops: each
// peer route goes by a nexthop object of weft's (id = the destination's
// address), pods reach each other, an object deleted by hand comes back
// with its route, a restart without the flag keeps the routes as they are
// (nothing changes under traffic), and weft cleanup leaves no object.
func TestKernelNexthops(t *testing.T) {
	k := newKCluster(t, 2, `{"Network":"10.5.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan"}}`, nil)
	k.start([]string{"--route-nexthops"}, 1, 2)
	id := func(peer int) string {
		a := k.Envs[peer-1].Subnet.Addr().As4()
		return fmt.Sprint(uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3]))
	}
	route := func(on, peer int) string {
		sn := k.Envs[peer-1].Subnet
		return fmt.Sprintf("%s nhid %s via %s dev flannel.1 proto 87 onlink", sn, id(peer), sn.Addr())
	}
	for _, on := range []int{1, 2} {
		peer := 3 - on
		k.eventually(fmt.Sprintf("h%d's route to h%d by nexthop", on, peer), 10*time.Second, func() (bool, string) {
			r := k.sh(on, "ip", "route")
			return has(r, route(on, peer)), r
		})
	}
	k.ping(1, 2)
	k.ping(2, 1)

	k.sh(1, "ip", "nexthop", "del", "id", id(2))
	k.eventually("h1's object and route repaired", 10*time.Second, func() (bool, string) {
		r := k.sh(1, "ip", "route")
		return has(r, route(1, 2)), r
	})
	k.ping(1, 2)

	k.stop(1)
	k.start(nil, 1)
	k.eventually("h1 restarted without the flag, the route kept", 10*time.Second, func() (bool, string) {
		r := k.sh(1, "ip", "route")
		return has(r, route(1, 2)), r
	})
	k.ping(1, 2)

	k.stop(1, 2)
	for _, i := range []int{1, 2} {
		out := k.sh(i, k.Binary, "cleanup", "--debug-socket", harness.DebugSocket(k.Lab.Host(i)))
		if nh := k.sh(i, "ip", "nexthop"); strings.Contains(nh, "proto 87") {
			t.Errorf("h%d after weft cleanup:\n%s\n%s", i, out, nh)
		}
		if r := k.sh(i, "ip", "route"); strings.Contains(r, "proto 87") {
			t.Errorf("h%d after weft cleanup:\n%s", i, r)
		}
	}
}
