package e2e

import (
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/weft-net/weft/bench/lab"
)

// defaultFlanneld is where hack/flanneld.sh (`make flanneld`, .ci/run)
// builds the pinned flanneld.
const defaultFlanneld = "/var/cache/weft-ci/flanneld-v0.28.9/flanneld"

// flanneldBinary is the real flanneld the interop tests run beside weft:
// $WEFT_FLANNELD, else defaultFlanneld. Missing, the test fails under
// CI=true and skips otherwise, saying how to build it.
func flanneldBinary(t *testing.T) string {
	t.Helper()
	bin := os.Getenv("WEFT_FLANNELD")
	if bin == "" {
		bin = defaultFlanneld
	}
	if st, err := os.Stat(bin); err != nil || st.Mode()&0o111 == 0 {
		msg := fmt.Sprintf("no flanneld at %s (build the pinned one with `make flanneld`, or set WEFT_FLANNELD)", bin)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return bin
}

// TestFlanneldInterop runs a real flanneld v0.28.9 beside weft in one
// cluster, for every backend both have, IPv4 and dual-stack: each admits
// the other's lease, and pods on the two hosts reach each other both ways
// (ping, and a verified TCP stream) over every family the network has.
func TestFlanneldInterop(t *testing.T) {
	flanneld := flanneldBinary(t)
	for _, tc := range []struct {
		backend string
		dual    bool
	}{{"udp", false}, {"vxlan", false}, {"host-gw", false}, {"vxlan", true}, {"host-gw", true}} {
		name := tc.backend
		if tc.dual {
			name += "-dualstack"
		}
		t.Run(name, func(t *testing.T) {
			conf := fmt.Sprintf(`{"Network":"10.5.0.0/16","SubnetLen":24,"Backend":{"Type":%q}}`, tc.backend)
			if tc.dual {
				conf = dualStackConf(tc.backend)
			}
			k := newKClusterOpts(t, lab.Options{Hosts: 2, IPv6: tc.dual}, conf, nil)
			k.Flanneld = flanneld
			k.start(nil, 1)
			if err := k.StartFlanneld(k.Lab.Host(2)); err != nil {
				t.Fatal(err)
			}
			k.waitSubnets()
			if tc.dual && !k.Envs[1].IPv6Subnet.IsValid() {
				t.Fatalf("flanneld wrote no IPv6 subnet: %+v", k.Envs[1])
			}
			k.eventually("weft admits flanneld's lease", 10*time.Second, func() (bool, string) {
				s := k.stats(1)
				return len(s.Peers) == 1 && s.Peers[0].Subnet == k.Envs[1].Subnet, fmt.Sprintf("%+v %v", s.Peers, s.Refused)
			})
			k.ping(1, 2)
			k.ping(2, 1)
			k.tcp(1, 2, 4<<20)
			k.tcp(2, 1, 4<<20)
			if tc.dual {
				k.ping6(1, 2)
				k.ping6(2, 1)
				k.tcpTo(1, 2, k.Lab.Host(2).PodIP6, 4<<20)
				k.tcpTo(2, 1, k.Lab.Host(1).PodIP6, 4<<20)
			}
			if p := k.Runs[1]; p.Exited() {
				t.Fatalf("flanneld exited:\n%s", p.Log())
			}
			k.stop(1)
			k.Runs[1].Stop()
		})
	}
}
