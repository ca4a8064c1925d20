package etcdstore

import (
	"log/slog"
	"maps"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"testing"

	"github.com/weft-net/weft/lease"
)

// TestChangesMatchSnapshot: a receiver applying every Changes holds
// exactly the snapshot of the same state, keys sharing subnets (one per
// family, dual-stack and IPv6-only keys among them) included.
func TestChangesMatchSnapshot(t *testing.T) {
	m := &Store{log: slog.New(slog.DiscardHandler)}
	v4 := []string{"10.5.1.0/24", "10.5.2.0/24", "10.5.3.0/24"}
	v6 := []string{"fd00::/64", "fd00:1::/64", "fd00:2::/64"}
	for seed := range uint64(300) {
		r := rand.New(rand.NewPCG(seed, 19))
		st := &watchState{leases: map[string]lease.Lease{}}
		held := map[netip.Prefix]lease.Lease{}
		rev := int64(0)
		for step := range 40 {
			var c lease.Changes
			if step == 0 || r.IntN(15) == 0 {
				st.view = nil // as after a listing
			} else {
				for range 1 + r.IntN(3) {
					var sn, sn6 netip.Prefix
					switch r.IntN(3) {
					case 0:
						sn = netip.MustParsePrefix(v4[r.IntN(3)])
					case 1:
						sn6 = netip.MustParsePrefix(v6[r.IntN(3)])
					default:
						sn, sn6 = netip.MustParsePrefix(v4[r.IntN(3)]), netip.MustParsePrefix(v6[r.IntN(3)])
					}
					name := lease.LeaseKey(sn, sn6)
					if _, ok := st.leases[name]; ok && r.IntN(2) == 0 {
						delete(st.leases, name)
						st.viewDelete(name)
						continue
					}
					rev++
					created := int64(r.IntN(5))
					if old, ok := st.leases[name]; ok {
						created = old.CreateRevision
					}
					l := lease.Lease{Subnet: sn, IPv6Subnet: sn6, Revision: rev, CreateRevision: created}
					st.leases[name] = l
					st.viewPut(name, l)
				}
			}
			c = m.changes(st)
			c.ApplyTo(held)
			got := slices.Collect(maps.Values(held))
			slices.SortFunc(got, lease.CompareID)
			if want := m.snapshot(st); len(got)+len(want) > 0 && !reflect.DeepEqual(got, want) {
				t.Fatalf("seed %d step %d: changes give\n %v\nsnapshot\n %v\nkeys %v", seed, step, got, want, slices.Collect(maps.Keys(st.leases)))
			}
		}
	}
}
