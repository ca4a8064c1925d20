package etcdstore

import (
	"cmp"
	"net/netip"
	"slices"
	"strings"

	"github.com/weft-net/weft/internal/claim"
	"github.com/weft-net/weft/lease"
	"github.com/weft-net/weft/lease/internal/excerpt"
)

// aged is what orders a key by age: its name and revisions (the lease
// itself stays in watchState.leases).
type aged struct {
	name         string
	created, rev int64
}

func agedOf(name string, l lease.Lease) *aged { return &aged{name, created(l), l.Revision} }

// olderNamed is snapshot's age order: created first, then modified first,
// then by name.
func olderNamed(a, b *aged) int {
	if c := cmp.Compare(a.created, b.created); c != 0 {
		return c
	}
	if c := cmp.Compare(a.rev, b.rev); c != 0 {
		return c
	}
	return strings.Compare(a.name, b.name)
}

// subnetsOf are the subnets a lease claims: one lease per subnet.
func subnetsOf(l lease.Lease) []netip.Prefix {
	k := make([]netip.Prefix, 0, 2)
	if l.Subnet.IsValid() {
		k = append(k, l.Subnet)
	}
	if l.IPv6Subnet.IsValid() {
		k = append(k, l.IPv6Subnet)
	}
	return k
}

func (st *watchState) viewPut(name string, l lease.Lease) {
	if st.view != nil {
		st.view.Put(name, agedOf(name, l), subnetsOf(l), true)
	}
}

func (st *watchState) viewDelete(name string) {
	if st.view != nil {
		st.view.Delete(name)
	}
}

// changes is what changed in the leases standing since the last call
// (lease.Changes): the whole set the first time and after a listing,
// else only the subnets of the keys that changed, and of those whose
// standing their change moved. Of keys sharing a subnet the oldest
// stands, as in snapshot; the others are logged once.
func (m *Store) changes(st *watchState) lease.Changes {
	if st.view == nil {
		st.view = claim.New[string, netip.Prefix](olderNamed)
		for name, l := range st.leases {
			st.view.Put(name, agedOf(name, l), subnetsOf(l), true)
		}
		st.view.Settle()
		c := lease.Changes{Full: true, Put: make([]lease.Lease, 0, len(st.leases))}
		for name, l := range st.leases {
			if st.view.Holds(name) {
				c.Put = append(c.Put, l)
			} else {
				m.logDup(st, name, l)
			}
		}
		slices.SortFunc(c.Put, lease.CompareID)
		return c
	}
	var c lease.Changes
	done := map[netip.Prefix]bool{}
	for _, name := range st.view.Settle() {
		l, ok := st.leases[name]
		var ids []netip.Prefix
		if ok {
			ids = subnetsOf(l)
			if !st.view.Holds(name) {
				m.logDup(st, name, l)
			}
		} else if v4, v6, err := lease.ParseSubnetKey(name); err == nil {
			ids = subnetsOf(lease.Lease{Subnet: v4, IPv6Subnet: v6})
		}
		// Every subnet of the key, as its holder's lease's ID or as gone:
		// the IPv6 subnet of a dual-stack key may be an IPv6-only
		// lease's ID.
		for _, id := range ids {
			if done[id] {
				continue
			}
			done[id] = true
			if h, ok := st.view.Holder(id); ok && st.leases[h].ID() == id {
				c.Put = append(c.Put, st.leases[h])
			} else {
				c.Deleted = append(c.Deleted, id)
			}
		}
	}
	return c
}

// logDup logs, once, a key left out because an older key holds one of its
// subnets.
func (m *Store) logDup(st *watchState, name string, l lease.Lease) {
	_, by, ok := st.view.Blocker(name)
	if !ok {
		return
	}
	held := st.leases[by]
	subnet := l.Subnet
	if !slices.Contains(subnetsOf(held), subnet) {
		subnet = l.IPv6Subnet
	}
	m.noteDuplicate(st, name, l, subnet, held)
}

// noteDuplicate records that key name, lease l, is left out because
// heldBy holds subnet: logged and counted once per key.
func (m *Store) noteDuplicate(st *watchState, name string, l lease.Lease, subnet netip.Prefix, heldBy lease.Lease) {
	if st.dup == nil {
		st.dup = map[string]bool{}
	}
	if !st.dup[name] {
		st.dup[name] = true
		m.duplicates.Add(1)
		m.log.Error("ignoring a second lease for a subnet", "key", excerpt.Quote(name, logKeyMax),
			"subnet", subnet, "publicIP", l.Attrs.PublicIP, "heldBy", heldBy.Attrs.PublicIP, "heldByLease", heldBy.String())
	}
}
