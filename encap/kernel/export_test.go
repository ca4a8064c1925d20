package kernel

import "context"

// Deletion is what the loop's filtered subscription reports, for tests.
type Deletion struct {
	Type  uint16
	Link  int
	Proto uint8
	Key   string // the entry's ownKey form, as a State key
	NH    uint32
}

// WatchDeletions runs the loop's deletion subscription, calling fn per
// message it lets through, until ctx ends.
func (n *Netlink) WatchDeletions(ctx context.Context, fn func(Deletion)) error {
	s, err := n.subscribeDeletions()
	if err != nil {
		return err
	}
	return readDeletions(ctx, s, func(d deletion) {
		fn(Deletion{Type: d.typ, Link: d.link, Proto: d.proto, Key: d.e.key(), NH: d.nh})
	})
}

// key names an ownKey-form entry by what it holds.
func (e entry) key() string {
	switch e.kind {
	case kindRoute:
		return "route " + e.dst.String()
	case kindNeigh:
		return "neigh " + e.ip.String()
	case kindFDB:
		return "fdb " + e.mac.hw().String() + " " + e.ip.String()
	}
	return "?"
}
