package kube

import (
	"context"
	"net/netip"
	"slices"
	"strings"

	"github.com/weft-net/weft/lease"
)

var _ lease.ChangeWatcher = (*Store)(nil)

// changeWatcher is one WatchChanges: what changed since the Changes it
// sent last. Guarded by Store.mu.
type changeWatcher struct {
	full  bool                      // the next Changes is Full: first, and after a relist
	dirty map[netip.Prefix]struct{} // lease IDs whose standing lease may have changed
	wake  chan struct{}             // cap 1: something is dirty
}

// dirtyKeep bounds the dirty set a watcher keeps for reuse: after a burst
// (a relist, thousands of Nodes joining) a cleared map would keep its
// buckets.
const dirtyKeep = 64

// WatchChanges is Watch sending changes (lease.ChangeWatcher): first the
// whole set (Full) once the first list of Nodes is in, and again after
// each relist (a watch the API server could not resume); then, per Node
// event, the lease ID or IDs it touched: the lease now standing for each
// (Put), or the ID gone (Deleted). A Node that stops being a peer (no
// longer annotated kube-subnet-manager=true, annotations or podCIDRs
// that make no lease, deleted) is a Deleted of the ID it stood for; of
// two Nodes claiming one ID the older stands, as in Watch's snapshots.
// While the receiver is busy, events accumulate into the next Changes,
// which is the latest state, never a backlog: an event costs the size of
// the change, not of the cluster. It returns ctx.Err() when ctx ends.
func (s *Store) WatchChanges(ctx context.Context, out chan<- lease.Changes) error {
	if err := s.start(ctx); err != nil {
		return err
	}
	w := s.addWatcher()
	defer s.removeWatcher(w)
	for {
		s.mu.Lock()
		c := s.takeChanges(w)
		s.mu.Unlock()
		if c.Full || c.Len() > 0 {
			select {
			case out <- c:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		select {
		case <-w.wake:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// addWatcher registers a watcher whose first Changes is Full.
func (s *Store) addWatcher() *changeWatcher {
	w := &changeWatcher{full: true, wake: make(chan struct{}, 1)}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.watchers == nil {
		s.watchers = map[*changeWatcher]struct{}{}
	}
	s.watchers[w] = struct{}{}
	return w
}

func (s *Store) removeWatcher(w *changeWatcher) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.watchers, w)
}

// takeChanges is what changed for w since its last Changes, and resets
// w. Called with s.mu held.
func (s *Store) takeChanges(w *changeWatcher) lease.Changes {
	if w.full {
		w.full = false
		w.dirty = nil
		c := lease.Changes{Full: true, Put: make([]lease.Lease, 0, len(s.claims))}
		for _, names := range s.claims {
			c.Put = append(c.Put, s.leases[names[0]].lease)
		}
		slices.SortFunc(c.Put, lease.CompareID)
		return c
	}
	var c lease.Changes
	for id := range w.dirty {
		if names := s.claims[id]; len(names) > 0 {
			c.Put = append(c.Put, s.leases[names[0]].lease)
		} else {
			c.Deleted = append(c.Deleted, id)
		}
	}
	if len(w.dirty) > dirtyKeep {
		w.dirty = nil
	} else {
		clear(w.dirty)
	}
	slices.SortFunc(c.Put, lease.CompareID)
	slices.SortFunc(c.Deleted, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	return c
}

// touched tells every watcher that the lease standing for id may have
// changed. Called with s.mu held.
func (s *Store) touched(id netip.Prefix) {
	for w := range s.watchers {
		if w.dirty == nil {
			w.dirty = map[netip.Prefix]struct{}{}
		}
		w.dirty[id] = struct{}{}
		w.poke()
	}
}

// relisted tells every watcher to send the whole set next: the Nodes were
// listed anew.
func (s *Store) relisted() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for w := range s.watchers {
		w.full = true
		w.poke()
	}
}

func (w *changeWatcher) poke() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// claim records that Node name's lease (in s.leases) has ID id. Of the
// Nodes claiming one ID, this host's own stands, else the oldest
// (creation time, then name), as in snapshot: s.claims[id] is kept in
// that order, nearly always one name. Called with s.mu held; call
// settle(id) after.
func (s *Store) claim(name string, id netip.Prefix) {
	if s.claims == nil {
		s.claims = map[netip.Prefix][]string{}
	}
	names := s.claims[id]
	i, _ := slices.BinarySearchFunc(names, name, s.standsBefore)
	s.claims[id] = slices.Insert(names, i, name)
}

// unclaim undoes claim. Called with s.mu held; call settle(id) after.
func (s *Store) unclaim(name string, id netip.Prefix) {
	names := s.claims[id]
	if i := slices.Index(names, name); i >= 0 {
		names = slices.Delete(names, i, i+1)
	}
	if len(names) == 0 {
		delete(s.claims, id)
	} else {
		s.claims[id] = names
	}
}

// settle logs and counts (Duplicates) each Node left out of id because
// another holds it, once while it stays left out of that ID, and tells
// the watchers that id's lease may have changed. Called with s.mu held.
func (s *Store) settle(id netip.Prefix) {
	names := s.claims[id]
	for i, n := range names {
		if i == 0 {
			delete(s.shadowed, n)
			continue
		}
		if was, ok := s.shadowed[n]; ok && was == id {
			continue
		}
		if s.shadowed == nil {
			s.shadowed = map[string]netip.Prefix{}
		}
		s.shadowed[n] = id
		s.duplicates.Add(1)
		s.log.Error("ignoring a second Node's lease for a subnet", "node", n, "subnet", id,
			"publicIP", s.leases[n].lease.Attrs.PublicIP, "heldBy", "node/"+names[0])
	}
	s.touched(id)
}

// standsBefore orders the Nodes claiming one ID: this host's first, then
// by age (created first, then by name).
func (s *Store) standsBefore(a, b string) int {
	if (a == s.node) != (b == s.node) {
		if a == s.node {
			return -1
		}
		return 1
	}
	if c := s.leases[a].created.Compare(s.leases[b].created); c != 0 {
		return c
	}
	return strings.Compare(a, b)
}

// Origin names the Node the lease with ID id (lease.Lease.ID) comes
// from, for status.
func (s *Store) Origin(id netip.Prefix) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if names := s.claims[id]; len(names) > 0 {
		return "node/" + names[0]
	}
	return ""
}
