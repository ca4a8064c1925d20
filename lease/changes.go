package lease

import (
	"context"
	"net/netip"
)

// Changes is what changed in a store's leases since the Changes before it
// on the same watch. Put holds the leases that are new or changed (at most
// one per ID), Deleted the IDs (Lease.ID) of those gone; a receiver
// applies Deleted first, then Put, and ends up with the store's set. A
// Put may repeat a lease the receiver holds, and Deleted may name an ID
// it does not hold: both are no-ops. With Full, Put is the whole set
// (Deleted is empty) and replaces what the receiver held: the first
// Changes of a watch, and each after the store listed every lease anew
// (a reconnect that lost revisions, a compaction).
type Changes struct {
	Full    bool
	Put     []Lease
	Deleted []netip.Prefix
}

// Len is how many leases the change names.
func (c Changes) Len() int { return len(c.Put) + len(c.Deleted) }

// ApplyTo applies c to held, a receiver's leases by ID (Lease.ID), as a
// receiver must: a Full change replaces them all, then the deletions go,
// then the puts come.
func (c Changes) ApplyTo(held map[netip.Prefix]Lease) {
	if c.Full {
		clear(held)
	}
	for _, id := range c.Deleted {
		delete(held, id)
	}
	for _, l := range c.Put {
		held[l.ID()] = l
	}
}

// ChangeWatcher is the optional interface of a Manager that can send
// changes rather than snapshots: a receiver's work per lease event is then
// the size of the event, not of the cluster.
type ChangeWatcher interface {
	// WatchChanges sends the leases as Watch does, as Changes: first a
	// Full one, then one per batch of changes. While the receiver is
	// busy, changes accumulate into the next one (it is the latest state,
	// never a backlog). It returns when ctx ends.
	WatchChanges(ctx context.Context, out chan<- Changes) error
}

// WatchChanges follows m's leases as Changes: through m's own
// WatchChanges when it has one, else each snapshot of Watch as a Full
// change.
func WatchChanges(ctx context.Context, m Manager, out chan<- Changes) error {
	if w, ok := m.(ChangeWatcher); ok {
		return w.WatchChanges(ctx, out)
	}
	snaps := make(chan []Lease, 1)
	errc := make(chan error, 1)
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { errc <- m.Watch(wctx, snaps) }()
	for {
		select {
		case snap := <-snaps:
			select {
			case out <- Changes{Full: true, Put: snap}:
			case <-ctx.Done():
				cancel()
				return <-errc
			}
		case err := <-errc:
			return err
		}
	}
}
