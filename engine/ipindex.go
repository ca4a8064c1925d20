package engine

// ipIndex maps peers' public addresses to peers. NewTableFor builds one
// flat map (compact: a full table is built at start and on a re-list);
// the first Update spreads it into ipShards maps, chosen by a fold of the
// address, so that each table made by Update copies only the shards its
// change touches (at 5,000 peers about 5 entries each: one small map),
// not a map of every peer. Read-only once its table is published.
type ipIndex[K comparable] struct {
	flat   map[K]*Peer
	shards *[ipShards]map[K]*Peer // nil: flat holds them
	hash   func(K) uint32
}

const ipShards = 1024

func hash4(a uint32) uint32 { return (a ^ a>>10 ^ a>>20 ^ a>>30) & (ipShards - 1) }

func hash6(a addr6) uint32 {
	x := a.hi ^ a.lo
	x ^= x >> 32
	return hash4(uint32(x))
}

func (x *ipIndex[K]) get(k K) *Peer {
	if x.shards == nil {
		return x.flat[k]
	}
	return x.shards[x.hash(k)][k]
}

// add puts p under k in the flat map: for a table being built.
func (x *ipIndex[K]) add(k K, p *Peer) {
	if x.flat == nil {
		x.flat = map[K]*Peer{}
	}
	x.flat[k] = p
}

// set puts p (nil: removes) under k in the shards, in place.
func (x *ipIndex[K]) set(k K, p *Peer) {
	if x.shards == nil {
		if p == nil {
			return
		}
		x.shards = new([ipShards]map[K]*Peer)
	}
	h := x.hash(k)
	if p == nil {
		delete(x.shards[h], k)
		return
	}
	if x.shards[h] == nil {
		x.shards[h] = map[K]*Peer{}
	}
	x.shards[h][k] = p
}

// ipWriter changes a copy of an ipIndex, copying each shard the first
// time it writes to it.
type ipWriter[K comparable] struct {
	x      *ipIndex[K]
	copied [ipShards]bool
}

func (w *ipWriter[K]) start(from ipIndex[K]) {
	w.x.hash = from.hash
	if from.shards != nil {
		s := *from.shards
		w.x.shards = &s
		return
	}
	// The first update after a full build: spread the flat map, once.
	for k, p := range from.flat {
		w.x.set(k, p)
	}
	w.copied = [ipShards]bool{}
	for i := range w.copied {
		w.copied[i] = w.x.shards != nil // all new
	}
}

func (w *ipWriter[K]) set(k K, p *Peer) {
	if w.x.shards == nil {
		w.x.set(k, p)
		w.copied = [ipShards]bool{}
		for i := range w.copied {
			w.copied[i] = true // all new
		}
		return
	}
	h := w.x.hash(k)
	if !w.copied[h] {
		old := w.x.shards[h]
		m := make(map[K]*Peer, len(old)+1)
		for k, v := range old {
			m[k] = v
		}
		w.x.shards[h] = m
		w.copied[h] = true
	}
	w.x.set(k, p)
}
