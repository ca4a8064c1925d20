package kube

import (
	"sync"
	"sync/atomic"
	"time"
)

// nodeCache is what the Node watch (listwatch.go: a list, then a watch,
// of all Nodes, as flanneld's informer does) writes into: each change is
// applied to the lease set as it arrives, with no queue between the
// watch and the store holding a second copy of every object. Of the
// Nodes it keeps only the names (a relist tells the gone ones by them)
// and this host's own Node (Config, Acquire and Keep read it): a peer's
// lease is read from the event and kept in the lease set, so a copy of
// every Node would be the cache's memory spent twice.
type nodeCache struct {
	s      *Store
	failed atomic.Int64 // unix time of the last logged failure; 0 while the API answers
	mu     sync.Mutex
	node   string              // this host's Node's name
	names  map[string]struct{} // every Node's
	own    *node               // this host's Node; nil while there is none
	synced atomic.Bool
	// listed is closed when the first list is in.
	listed chan struct{}
}

func newNodeCache(s *Store, name string) *nodeCache {
	return &nodeCache{s: s, node: name, names: map[string]struct{}{}, listed: make(chan struct{})}
}

// put applies an added or changed Node. n is never changed afterwards:
// ownNode hands it out.
func (c *nodeCache) put(n *node) {
	c.mu.Lock()
	c.names[n.Name] = struct{}{}
	if n.Name == c.node {
		c.own = n
	}
	c.mu.Unlock()
	c.s.update(n, false)
}

// delete applies a deleted Node.
func (c *nodeCache) delete(n *node) {
	c.mu.Lock()
	c.forget(n.Name)
	c.mu.Unlock()
	c.s.update(n, true)
}

// listDone ends a (re)list, whose Nodes were each put: the Nodes not in
// it (seen) are gone.
func (c *nodeCache) listDone(seen map[string]struct{}) {
	c.mu.Lock()
	var gone []string
	for name := range c.names {
		if _, ok := seen[name]; !ok {
			gone = append(gone, name)
			c.forget(name)
		}
	}
	c.mu.Unlock()
	for _, name := range gone {
		c.s.update(&node{Name: name}, true)
	}
	// Each change above reached the watchers as it was made; a relist
	// is also where a receiver starts over from the whole set, as after
	// an etcd listing.
	c.s.relisted()
	if !c.synced.Swap(true) {
		close(c.listed)
	}
}

// forget drops a deleted Node. Called with c.mu held.
func (c *nodeCache) forget(name string) {
	delete(c.names, name)
	if name == c.node {
		c.own = nil
	}
}

// ownNode is this host's Node as cached (stripped), if there is one. The
// caller must not change it.
func (c *nodeCache) ownNode() (*node, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.own, c.own != nil
}

func (c *nodeCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.names)
}

// apiResult logs the API server becoming unreachable (then at most every
// 30 s while it stays so) and reachable again: the watch retries
// silently otherwise.
func (c *nodeCache) apiResult(verb string, err error) {
	if err == nil {
		if c.failed.Swap(0) != 0 {
			c.s.log.Info("Kubernetes API reachable again; Nodes are followed")
		}
		return
	}
	now := time.Now().Unix()
	if last := c.failed.Load(); last == 0 || now-last >= 30 {
		c.failed.Store(now)
		c.s.log.Warn("cannot "+verb+" Nodes; the data path keeps the last known peers, retrying", "err", err)
	}
}
