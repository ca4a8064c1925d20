// Package claim settles, incrementally, who holds what among items that
// claim keys: taken oldest first, an eligible item holds all its keys
// when no older item holding one of them (and no reserved key) stands in
// its way, and then holds them all; otherwise it holds none. That is the
// rule of admission (a lease's subnets and public IPs: "the older lease
// wins") and of the etcd store (one lease per subnet). Deciding it over a
// whole set costs a sort of the set; a Set decides again only the items a
// change can reach (those that share a key with an item whose standing
// changed, younger than it), so one lease event costs the same at 5,000
// leases as at 5.
package claim

import (
	"container/heap"
	"fmt"
)

// Set is the items and their standing. The zero value is not ready: use
// New. Not safe for concurrent use.
type Set[ID comparable, K comparable, V any] struct {
	older    func(a, b V) int // <0: a is older
	items    map[ID]*item[ID, K, V]
	claims   map[K]claimants[ID, K, V]
	reserved map[K]bool
	queue    queue[ID, K, V]
	changed  []ID
}

// claimants are the items claiming one key: nearly always one, kept
// without a slice of its own.
// (The others sit behind a pointer: the map holds one of these per key,
// three or more per lease, so its size is what a lease costs.)
type claimants[ID comparable, K comparable, V any] struct {
	one  *item[ID, K, V]
	more *[]*item[ID, K, V]
}

// rest are the claimants after one.
func (c claimants[ID, K, V]) rest() []*item[ID, K, V] {
	if c.more == nil {
		return nil
	}
	return *c.more
}

func (c claimants[ID, K, V]) all() []*item[ID, K, V] {
	if c.more == nil {
		if c.one == nil {
			return nil
		}
		return []*item[ID, K, V]{c.one}
	}
	return append([]*item[ID, K, V]{c.one}, *c.more...)
}

// drop removes it from the claimants.
func (c *claimants[ID, K, V]) drop(it *item[ID, K, V]) {
	rest := c.rest()
	if c.one == it {
		c.one = nil
		if n := len(rest); n > 0 {
			c.one = rest[n-1]
			rest[n-1] = nil
			rest = rest[:n-1]
		}
	} else {
		for i, o := range rest {
			if o == it {
				rest[i] = rest[len(rest)-1]
				rest[len(rest)-1] = nil
				rest = rest[:len(rest)-1]
				break
			}
		}
	}
	if len(rest) == 0 {
		c.more = nil
	} else {
		*c.more = rest
	}
}

type item[ID comparable, K comparable, V any] struct {
	id       ID
	v        V
	keys     []K
	eligible bool
	holds    bool
	queued   bool
	gone     bool // deleted while queued
	set      *Set[ID, K, V]
}

// New returns an empty set whose items are ordered by age with older
// (negative: a is older). Ties must not happen: older is a total order
// of the items (break them by ID).
func New[ID comparable, K comparable, V any](older func(a, b V) int) *Set[ID, K, V] {
	return &Set[ID, K, V]{older: older, items: map[ID]*item[ID, K, V]{}, claims: map[K]claimants[ID, K, V]{}, reserved: map[K]bool{}}
}

// Reserve marks k as held before every item (this host's public IP).
// Call it before adding items.
func (s *Set[ID, K, V]) Reserve(k K) { s.reserved[k] = true }

// Len is the number of items.
func (s *Set[ID, K, V]) Len() int { return len(s.items) }

// Put adds the item id, or replaces it, with its value, keys (the set
// keeps the slice) and eligibility. Its standing, and that of the items
// it reaches, is decided by the next Settle.
func (s *Set[ID, K, V]) Put(id ID, v V, keys []K, eligible bool) {
	s.Delete(id)
	it := &item[ID, K, V]{id: id, v: v, keys: keys, eligible: eligible, set: s}
	s.items[id] = it
	for _, k := range keys {
		c := s.claims[k]
		switch {
		case c.one == nil:
			c.one = it
		case c.more == nil:
			c.more = &[]*item[ID, K, V]{it}
		default:
			*c.more = append(*c.more, it)
		}
		s.claims[k] = c
	}
	s.push(it)
	s.changed = append(s.changed, id)
}

// Delete removes the item id, if there is one. The items it held keys
// before are decided again by the next Settle.
func (s *Set[ID, K, V]) Delete(id ID) {
	it := s.items[id]
	if it == nil {
		return
	}
	delete(s.items, id)
	it.gone = true
	for _, k := range it.keys {
		cs := s.claims[k]
		cs.drop(it)
		if cs.one == nil {
			delete(s.claims, k)
		} else {
			s.claims[k] = cs
		}
		if it.holds && cs.one != nil {
			s.push(cs.one)
			for _, c := range cs.rest() {
				s.push(c)
			}
		}
	}
	s.changed = append(s.changed, id)
}

// Settle decides every item a Put or Delete since the last Settle can
// reach, oldest first, and returns the IDs of the items put, deleted, or
// decided again (an ID may appear more than once): whose standing, or
// the item in its way, may have changed. The caller owns the slice.
func (s *Set[ID, K, V]) Settle() []ID {
	for s.queue.Len() > 0 {
		it := heap.Pop(&s.queue).(*item[ID, K, V])
		it.queued = false
		if it.gone {
			continue
		}
		// Reported even when its standing holds: what stands in its way
		// may have changed.
		s.changed = append(s.changed, it.id)
		h := it.eligible && s.blocker(it) < 0
		if h == it.holds {
			continue
		}
		it.holds = h
		for _, k := range it.keys {
			cs := s.claims[k]
			if cs.one != it && cs.one != nil && s.older(it.v, cs.one.v) < 0 {
				s.push(cs.one)
			}
			for _, c := range cs.rest() {
				if c != it && s.older(it.v, c.v) < 0 {
					s.push(c)
				}
			}
		}
	}
	out := s.changed
	s.changed = s.changed[:0:0]
	return out
}

// Holds reports whether id is in the set and holds its keys (as of the
// last Settle).
func (s *Set[ID, K, V]) Holds(id ID) bool {
	it := s.items[id]
	return it != nil && it.holds
}

// Blocker returns, for an eligible item that does not hold its keys, the
// index in its keys of the first one reserved or held by an older item,
// and that item's ID (ok false for a reserved key); i is -1 otherwise.
func (s *Set[ID, K, V]) Blocker(id ID) (i int, by ID, ok bool) {
	it := s.items[id]
	if it == nil || !it.eligible || it.holds {
		return -1, by, false
	}
	i = s.blocker(it)
	if i < 0 {
		return -1, by, false
	}
	for _, c := range s.claims[it.keys[i]].all() {
		if c != it && c.holds && s.older(c.v, it.v) < 0 {
			return i, c.id, true
		}
	}
	return i, by, false
}

// blocker is the index of it's first key reserved or held by an older
// item, or -1.
func (s *Set[ID, K, V]) blocker(it *item[ID, K, V]) int {
	for i, k := range it.keys {
		if s.reserved[k] {
			return i
		}
		cs := s.claims[k]
		if c := cs.one; c != nil && c != it && c.holds && s.older(c.v, it.v) < 0 {
			return i
		}
		for _, c := range cs.rest() {
			if c != it && c.holds && s.older(c.v, it.v) < 0 {
				return i
			}
		}
	}
	return -1
}

func (s *Set[ID, K, V]) push(it *item[ID, K, V]) {
	if !it.queued {
		it.queued = true
		heap.Push(&s.queue, it)
	}
}

// queue is a heap of items, oldest first.
type queue[ID comparable, K comparable, V any] []*item[ID, K, V]

func (q queue[ID, K, V]) Len() int           { return len(q) }
func (q queue[ID, K, V]) Less(i, j int) bool { return q[i].set.older(q[i].v, q[j].v) < 0 }
func (q queue[ID, K, V]) Swap(i, j int)      { q[i], q[j] = q[j], q[i] }
func (q *queue[ID, K, V]) Push(x any)        { *q = append(*q, x.(*item[ID, K, V])) }
func (q *queue[ID, K, V]) Pop() any {
	old := *q
	it := old[len(old)-1]
	old[len(old)-1] = nil
	*q = old[:len(old)-1]
	return it
}

// check panics when the claims index an item the set does not hold.
func (s *Set[ID, K, V]) check() {
	for k, cs := range s.claims {
		for _, c := range cs.all() {
			if s.items[c.id] != c {
				panic(fmt.Sprintf("key %v claimed by a stale item %v", k, c.id))
			}
		}
	}
}

// Holder returns the item holding k, if one does.
func (s *Set[ID, K, V]) Holder(k K) (id ID, ok bool) {
	for _, c := range s.claims[k].all() {
		if c.holds {
			return c.id, true
		}
	}
	return id, false
}
