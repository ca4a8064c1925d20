package kube

import (
	"context"
	"encoding/json"
	"maps"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/weft-net/weft/lease"
	"github.com/weft-net/weft/lease/kube/kubetest"
)

// heldLeases is what a receiver of Changes holds, by lease ID.
type heldLeases map[netip.Prefix]lease.Lease

// apply applies c as lease.Changes says a receiver does.
func (h heldLeases) apply(c lease.Changes) { c.ApplyTo(h) }

func (h heldLeases) sorted() []lease.Lease {
	out := slices.Collect(maps.Values(h))
	slices.SortFunc(out, lease.CompareID)
	return out
}

// randomNode is a Node of a small pool of names, pod CIDRs (IPv4, IPv6,
// dual-stack; shared between Nodes, so IDs collide) and creation times,
// annotated as a peer or not, with readable or hostile annotations.
func randomNode(r *rand.Rand, rv int) *v1.Node {
	pick := func(vs ...string) string { return vs[r.IntN(len(vs))] }
	v4 := pick("10.244.1.0/24", "10.244.2.0/24", "10.244.3.0/24")
	v6 := pick("fd00:10:244:1::/64", "fd00:10:244:2::/64", "fd00:10:244:3::/64")
	var cidrs []string
	switch r.IntN(5) {
	case 0:
		cidrs = []string{v4}
	case 1:
		cidrs = []string{v6}
	case 2:
		cidrs = []string{v6, v4}
	case 3:
		cidrs = nil // not assigned yet
	default:
		cidrs = []string{v4, v6}
	}
	p := DefaultAnnotationPrefix + "/"
	ann := map[string]string{}
	// Each annotation mostly readable, else absent or hostile.
	set := func(k, good string, bad ...string) {
		v := good
		if r.IntN(8) == 0 {
			v = pick(append(bad, "<absent>")...)
		}
		if v != "<absent>" {
			ann[p+k] = v
		}
	}
	set("kube-subnet-manager", "true", "false")
	set("public-ip", "192.0.2."+strconv.Itoa(1+r.IntN(3)), "0.0.0.0", "not-an-ip", "2001:db8::1")
	set("public-ipv6", "2001:db8::"+strconv.Itoa(1+r.IntN(3)), "x", "192.0.2.1")
	set("backend-type", pick("vxlan", "host-gw"), "")
	set("backend-data", `{"VNI":1,"VtepMAC":"0a:58:00:00:00:0`+strconv.Itoa(r.IntN(3))+`"}`, "null", "{")
	set("backend-v6-data", `{"VNI":1,"VtepMAC":"0a:58:00:00:01:0`+strconv.Itoa(r.IntN(3))+`"}`, "null", "[")
	if r.IntN(10) == 0 {
		ann = nil // a Node with no annotations at all
	}
	n := nodeWith("n"+strconv.Itoa(r.IntN(8)), cidrs, ann)
	n.ResourceVersion = strconv.Itoa(rv)
	n.CreationTimestamp = metav1.NewTime(time.Unix(1_700_000_000+int64(r.IntN(4)), 0))
	return n
}

// TestChangesMatchSnapshot: a receiver applying every Changes the store
// sends holds exactly Watch's snapshot of the same state, on IPv4,
// dual-stack and IPv6-only networks, through Node events (creates,
// updates making a lease, changing it, making it unreadable or no
// longer annotated, deletions), Nodes claiming one ID (the older
// stands), and relists (Replace, after which the Changes is Full). The
// Changes are taken after a random number of events, as from a busy
// receiver; each names only the IDs those events touched.
func TestChangesMatchSnapshot(t *testing.T) {
	for _, conf := range []string{"net-conf-vxlan.json", dualNetConf, "net-conf-ipv6only.json"} {
		t.Run(conf, func(t *testing.T) {
			peers, fulls := 0, 0
			for seed := range uint64(200) {
				r := rand.New(rand.NewPCG(seed, 16))
				s := testStore(t, conf)
				if seed%2 == 1 {
					s.node = "n0" // this host's Node stands whatever its age
				}
				c := newNodeCache(s, s.node)
				c.listDone(nil)
				w := s.addWatcher()
				held := heldLeases{}
				cluster := map[string]*v1.Node{} // what the API server holds
				rv := 1
				for step := range 60 {
					events, relist := 0, false
					for range 1 + r.IntN(4) {
						rv++
						n := randomNode(r, rv)
						switch {
						case r.IntN(60) == 0:
							// A relist: the Nodes as they are now, some
							// of them changed or deleted meanwhile.
							for name := range cluster {
								if r.IntN(3) == 0 {
									delete(cluster, name)
								}
							}
							cluster[n.Name] = n
							seen := map[string]struct{}{}
							for _, n := range cluster {
								seen[n.Name] = struct{}{}
								c.put(asNode(n))
							}
							c.listDone(seen)
							relist = true
						case cluster[n.Name] != nil && r.IntN(4) == 0:
							c.delete(asNode(cluster[n.Name]))
							delete(cluster, n.Name)
						case cluster[n.Name] != nil:
							if r.IntN(3) == 0 {
								n.CreationTimestamp = cluster[n.Name].CreationTimestamp
							}
							c.put(asNode(n))
							cluster[n.Name] = n
						default:
							c.put(asNode(n))
							cluster[n.Name] = n
						}
						events++
					}
					s.mu.Lock()
					ch := s.takeChanges(w)
					s.mu.Unlock()
					if ch.Full != (step == 0 || relist) {
						t.Fatalf("seed %d step %d: Full %v after a relist %v", seed, step, ch.Full, relist)
					}
					if !ch.Full && ch.Len() > 2*events {
						t.Fatalf("seed %d step %d: %d events, a change of %d leases", seed, step, events, ch.Len())
					}
					if ch.Full {
						fulls++
					}
					held.apply(ch)
					got, want := held.sorted(), mustSnapshot(s)
					if len(got)+len(want) > 0 && !reflect.DeepEqual(got, want) {
						t.Fatalf("seed %d step %d: changes give\n %v\nsnapshot\n %v", seed, step, got, want)
					}
					for _, l := range got {
						if o := s.Origin(l.ID()); o == "" {
							t.Fatalf("seed %d step %d: no origin for %v", seed, step, l.ID())
						}
					}
					// The Nodes logged and counted as left out are those
					// whose lease the snapshot leaves out.
					s.mu.Lock()
					for name, nl := range s.leases {
						left := s.claims[nl.lease.ID()][0] != name
						if sh, ok := s.shadowed[name]; left != ok || ok && sh != nl.lease.ID() {
							t.Fatalf("seed %d step %d: %s left out %v, shadowed %v", seed, step, name, left, sh)
						}
					}
					for name := range s.shadowed {
						if _, ok := s.leases[name]; !ok {
							t.Fatalf("seed %d step %d: %s shadowed without a lease", seed, step, name)
						}
					}
					s.mu.Unlock()
					peers += len(got)
				}
			}
			t.Logf("%d peers held over all steps, %d Full changes", peers, fulls)
		})
	}
}

func mustSnapshot(s *Store) []lease.Lease {
	snap, _ := s.snapshot()
	return snap
}

// follower is a receiver of one store's Changes, busy for a random while
// after each, so that events coalesce.
type follower struct {
	name                  string // the network config's file
	s                     *Store
	mu                    sync.Mutex
	held                  heldLeases
	changes, fulls, named int // Changes taken, Full ones, leases named by the others
}

func (f *follower) run(ctx context.Context, t *testing.T, seed uint64) {
	out := make(chan lease.Changes)
	go func() {
		if err := f.s.WatchChanges(ctx, out); err != nil && ctx.Err() == nil {
			t.Errorf("WatchChanges: %v", err)
		}
	}()
	go func() {
		r := rand.New(rand.NewPCG(seed, 1))
		for {
			select {
			case c := <-out:
				f.mu.Lock()
				f.held.apply(c)
				f.changes++
				if c.Full {
					f.fulls++
				} else {
					f.named += c.Len()
				}
				f.mu.Unlock()
				time.Sleep(time.Duration(r.IntN(20)) * time.Millisecond)
			case <-ctx.Done():
				return
			}
		}
	}()
}

// wantLeases are the leases a store on s's network config must hold for
// the Nodes the API server lists: each peer Node's lease, one per ID
// (the oldest Node's).
func wantLeases(t *testing.T, s *Store, nodes []v1.Node) []lease.Lease {
	t.Helper()
	slices.SortFunc(nodes, func(a, b v1.Node) int {
		if c := a.CreationTimestamp.Compare(b.CreationTimestamp.Time); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	})
	seen := map[netip.Prefix]bool{}
	var out []lease.Lease
	for i := range nodes {
		n := &node{Name: nodes[i].Name, Created: nodes[i].CreationTimestamp.Time, PodCIDR: nodes[i].Spec.PodCIDR, PodCIDRs: nodes[i].Spec.PodCIDRs,
			Annotations: keepAnnotations(nodes[i].Annotations, s.ann.prefix())}
		if n.Annotations[s.ann.SubnetKubeManaged] != "true" {
			continue
		}
		nl, err := s.nodeToLease(n)
		if err != nil || seen[nl.lease.ID()] {
			continue
		}
		seen[nl.lease.ID()] = true
		out = append(out, nl.lease)
	}
	slices.SortFunc(out, lease.CompareID)
	return out
}

// TestChangesMatchAPIServer: stores on an IPv4, a dual-stack and an
// IPv6-only network follow a real API server's Nodes through random
// creates (assigned podCIDRs or none yet, peers or not, readable or
// hostile annotations, IDs shared between Nodes), annotation updates
// (a peer becoming unreadable, no longer annotated, changed),
// podCIDRs assigned later, unrelated updates (heartbeats) and deletions.
// Receivers, busy between Changes, apply every Changes in order; at
// checkpoints each holds what the API server's Nodes make (each peer
// Node's lease, one per ID) and exactly Watch's snapshot. After the first
// (Full) Changes every one names only the leases the events touched.
func TestChangesMatchAPIServer(t *testing.T) {
	srv := kubetest.Start(t)
	admin := srv.Client(t, kubetest.Admin)
	grantDeployRBAC(t, admin, nil)
	ctx := kubetest.Ctx(t, 5*time.Minute)
	nodes := admin.CoreV1().Nodes()
	var fs []*follower
	for i, conf := range []string{"net-conf-vxlan.json", dualNetConf, "net-conf-ipv6only.json"} {
		f := &follower{name: conf, s: newTestStore(t, srv, storeOpts{netConf: conf}), held: heldLeases{}}
		f.run(ctx, t, uint64(i))
		fs = append(fs, f)
	}
	r := rand.New(rand.NewPCG(16, 19))
	p := DefaultAnnotationPrefix + "/"
	keys := []string{"kube-subnet-manager", "public-ip", "public-ipv6", "backend-type", "backend-data", "backend-v6-data"}
	patch := func(name string, body map[string]any) {
		b, _ := json.Marshal(body)
		if _, err := nodes.Patch(ctx, name, types.MergePatchType, b, metav1.PatchOptions{}); err != nil {
			t.Fatalf("patch %s %s: %v", name, b, err)
		}
	}
	checkpoint := func(step int) {
		list, err := nodes.List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range fs {
			want := wantLeases(t, f.s, list.Items)
			for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
				f.mu.Lock()
				got := f.held.sorted()
				f.mu.Unlock()
				snap, _ := f.s.snapshot()
				if slices.EqualFunc(got, want, sameLease) && reflect.DeepEqual(got, snap) {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("%s, step %d: changes give\n %v\nsnapshot\n %v\nthe API server's Nodes make\n %v", f.name, step, got, snap, want)
				}
			}
		}
	}
	const steps = 240
	events := 0
	for step := range steps {
		n := randomNode(r, 0)
		name := "p" + strconv.Itoa(r.IntN(12))
		cur, err := nodes.Get(ctx, name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			n.Name, n.ResourceVersion, n.CreationTimestamp = name, "", metav1.Time{}
			n.Labels = map[string]string{"kubernetes.io/hostname": name}
			if _, err := nodes.Create(ctx, n, metav1.CreateOptions{}); err != nil {
				t.Fatalf("create %s: %v", name, err)
			}
		case err != nil:
			t.Fatal(err)
		case r.IntN(5) == 0:
			if err := nodes.Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
		case r.IntN(5) == 0:
			// Not the lease: a kubelet's heartbeat-like change.
			patch(name, map[string]any{"metadata": map[string]any{"labels": map[string]any{"beat": strconv.Itoa(step)}}})
		case cur.Spec.PodCIDR == "" && len(n.Spec.PodCIDRs) > 0:
			// The IPAM controller assigns the podCIDRs.
			patch(name, map[string]any{"spec": map[string]any{"podCIDR": n.Spec.PodCIDR, "podCIDRs": n.Spec.PodCIDRs}})
		default:
			// New annotations under the prefix; absent ones removed.
			ann := map[string]any{}
			for _, k := range keys {
				if v, ok := n.Annotations[p+k]; ok {
					ann[p+k] = v
				} else {
					ann[p+k] = nil
				}
			}
			patch(name, map[string]any{"metadata": map[string]any{"annotations": ann}})
		}
		events++
		if step%30 == 29 {
			checkpoint(step)
		}
	}
	checkpoint(steps)
	for _, f := range fs {
		f.mu.Lock()
		t.Logf("%s: %d API events, %d Changes (%d Full), %d leases named after the first, %d peers now", f.name, events, f.changes, f.fulls, f.named, len(f.held))
		if f.fulls != 1 {
			t.Errorf("%s: %d Full changes, want 1 (no relist here)", f.name, f.fulls)
		}
		if f.named > 2*events {
			t.Errorf("%s: %d leases named for %d Node events: not changes", f.name, f.named, events)
		}
		f.mu.Unlock()
	}
}
