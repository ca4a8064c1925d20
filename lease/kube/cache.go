package kube

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"
)

// nodeCache is the store a client-go Reflector (list, then watch, of all
// Nodes, as flanneld's informer does) writes into: each change is applied
// to the lease set as it arrives. Unlike a SharedIndexInformer there is
// no DeltaFIFO queue between the watch and the handler holding a second
// copy of every object, and the reflector's retry backoff is weft's (see
// reflectorBackoff). Of the Nodes it keeps only the names (a relist tells
// the gone ones by them) and this host's own Node (Config, Acquire and
// Keep read it): a peer's lease is read from the event and kept in the
// lease set, so a compact copy of every Node (~1 KiB each with its
// annotations) would be the cache's memory spent twice.
type nodeCache struct {
	s      *Store
	failed atomic.Int64 // unix time of the last logged failure; 0 while the API answers
	mu     sync.Mutex
	node   string              // this host's Node's name
	names  map[string]struct{} // every Node's
	own    *cachedNode         // this host's Node; nil while there is none
	synced atomic.Bool
}

// cachedNode is what is kept of this host's Node: a v1.Node, even
// stripped, is ~1.5 KiB of mostly empty fields.
type cachedNode struct {
	uid, rv     string
	created     time.Time
	podCIDR     string
	podCIDRs    []string
	annotations map[string]string // only those under the prefix; nil if none
}

func compact(n *v1.Node) cachedNode {
	return cachedNode{uid: string(n.UID), rv: n.ResourceVersion, created: n.CreationTimestamp.Time,
		podCIDR: n.Spec.PodCIDR, podCIDRs: n.Spec.PodCIDRs, annotations: n.Annotations}
}

// node rebuilds the stripped Node.
func (c cachedNode) node(name string) *v1.Node {
	return &v1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, UID: types.UID(c.uid), ResourceVersion: c.rv,
			CreationTimestamp: metav1.NewTime(c.created), Annotations: c.annotations},
		Spec: v1.NodeSpec{PodCIDR: c.podCIDR, PodCIDRs: c.podCIDRs},
	}
}

// reflectorBackoff bounds the wait between list/watch attempts while the
// API server is unreachable. client-go's default grows to 30 s with up to
// 100% jitter, so after an outage the peers could be a minute stale;
// weft retries within 5 s. Each attempt is one request.
var reflectorBackoff = wait.Backoff{Duration: 500 * time.Millisecond, Factor: 2, Jitter: 0.2, Steps: 10, Cap: 5 * time.Second}

var (
	_ cache.ReflectorStore    = (*nodeCache)(nil)
	_ cache.TransformingStore = (*nodeCache)(nil)
)

func newNodeCache(s *Store, node string) *nodeCache {
	return &nodeCache{s: s, node: node, names: map[string]struct{}{}}
}

// reflector lists and watches all Nodes into c.
func (c *nodeCache) reflector() *cache.Reflector {
	nodes := c.s.cli.CoreV1().Nodes()
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			l, err := c.list(ctx, o)
			c.apiResult("list", err)
			return l, err
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			w, err := nodes.Watch(ctx, o)
			c.apiResult("watch", err)
			return w, err
		},
	}
	b := reflectorBackoff
	return cache.NewReflectorWithOptions(lw, &v1.Node{}, c, cache.ReflectorOptions{
		Name: "weft-nodes", TypeDescription: "*v1.Node", Backoff: &b,
	})
}

// listPage is how many Nodes one list request returns.
const listPage = 500

// list lists all Nodes in pages, stripping each page before asking for
// the next: a Node of a real cluster is ~10 KiB of JSON (mostly images),
// so 5,000 Nodes decoded at once would be ~100 MiB of heap for a moment,
// and the daemon's RSS would keep much of it. The pages are a
// consistent read (resourceVersion ""): the API server's watch cache
// answers resourceVersion "0" in one piece whatever the limit.
func (c *nodeCache) list(ctx context.Context, o metav1.ListOptions) (*v1.NodeList, error) {
	o.ResourceVersion, o.ResourceVersionMatch, o.Limit, o.Continue = "", "", listPage, ""
	out := &v1.NodeList{}
	for {
		page, err := c.s.cli.CoreV1().Nodes().List(ctx, o)
		if err != nil {
			return nil, err
		}
		if out.ResourceVersion == "" {
			out.ListMeta = page.ListMeta
		}
		for i := range page.Items {
			st, _ := c.s.strip(&page.Items[i])
			out.Items = append(out.Items, *st.(*v1.Node))
		}
		if page.Continue == "" {
			out.Continue = ""
			return out, nil
		}
		o.Continue = page.Continue
	}
}

// Transformer strips Nodes also inside the reflector (a streaming list
// keeps its own temporary store).
func (c *nodeCache) Transformer() cache.TransformFunc { return c.s.strip }

func (c *nodeCache) Add(obj any) error    { return c.put(obj) }
func (c *nodeCache) Update(obj any) error { return c.put(obj) }
func (c *nodeCache) Resync() error        { return nil }

func (c *nodeCache) put(obj any) error {
	st, err := c.s.strip(obj)
	if err != nil {
		return err
	}
	n, ok := st.(*v1.Node)
	if !ok {
		return nil
	}
	c.mu.Lock()
	c.names[n.Name] = struct{}{}
	if n.Name == c.node {
		own := compact(n)
		c.own = &own
	}
	c.mu.Unlock()
	c.s.update(n, false)
	return nil
}

func (c *nodeCache) Delete(obj any) error {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	n, ok := obj.(*v1.Node)
	if !ok {
		return nil
	}
	c.mu.Lock()
	c.forget(n.Name)
	c.mu.Unlock()
	c.s.update(n, true)
	return nil
}

// Replace is a (re)list: the Nodes not in it are gone.
func (c *nodeCache) Replace(list []any, _ string) error {
	keep := make(map[string]bool, len(list))
	for _, obj := range list {
		if n, ok := obj.(*v1.Node); ok {
			keep[n.Name] = true
		}
		if err := c.put(obj); err != nil {
			return err
		}
	}
	c.mu.Lock()
	var gone []*v1.Node
	for name := range c.names {
		if !keep[name] {
			gone = append(gone, &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}})
			c.forget(name)
		}
	}
	c.mu.Unlock()
	for _, n := range gone {
		c.s.update(n, true)
	}
	// Each change above reached the watchers as it was made; a relist
	// is also where a receiver starts over from the whole set, as after
	// an etcd listing.
	c.s.relisted()
	c.synced.Store(true)
	return nil
}

// forget drops a deleted Node. Called with c.mu held.
func (c *nodeCache) forget(name string) {
	delete(c.names, name)
	if name == c.node {
		c.own = nil
	}
}

// ownNode is this host's Node as cached (stripped), if there is one.
func (c *nodeCache) ownNode() (*v1.Node, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.own == nil {
		return nil, false
	}
	return c.own.node(c.node), true
}

func (c *nodeCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.names)
}

// apiResult logs the API server becoming unreachable (then at most every
// 30 s while it stays so) and reachable again: client-go's reflector
// retries silently.
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
