package kube

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/weft-net/weft/lease/internal/backoff"
)

// The Node watch: what client-go's Reflector does for an informer (a
// paged list, then a watch from the list's resourceVersion with
// bookmarks, resumed from the last resourceVersion seen when it ends or
// breaks, a new list when the server no longer has that version), read
// straight into the few fields the store keeps, one Node at a time: no
// Node is ever decoded whole, and no list is held in memory. Both ask
// for protobuf (protobuf.go: the decoder steps over the kilobytes of
// images, conditions and managedFields that JSON must scan) and read
// JSON (wireNode) when that is what the server or a proxy answers.

// listPage is how many Nodes one list request returns: a page is read
// one Node at a time, so its size bounds nothing but the requests.
const listPage = 500

// Watch timeouts: each watch asks the server to end it after
// watchTimeout to 2×watchTimeout (random, as client-go's 5 to 10 min,
// so that daemons started together do not come back together), and the
// client gives up on one after watchGrace more (a connection that died
// without a word).
const (
	watchTimeout = 5 * time.Minute
	watchGrace   = 30 * time.Second
)

// Retry backoff while the API server is unreachable or refuses: from
// retryFirst, doubling to retryCap, ±20%. client-go's default grows to
// 30 s with up to 100% jitter, so after an outage the peers could be a
// minute stale; weft retries within 5 s. Each attempt is one request.
const (
	retryFirst = 500 * time.Millisecond
	retryCap   = 5 * time.Second
)

func nextRetry(d time.Duration) time.Duration {
	if d == 0 {
		return retryFirst
	}
	return min(2*d, retryCap)
}

// run lists and watches all Nodes into c until ctx ends.
func (c *nodeCache) run(ctx context.Context) {
	var rv string // the resourceVersion to watch from; "" to list first
	var delay time.Duration
	for {
		if delay > 0 {
			select {
			case <-time.After(backoff.Jitter(delay)):
			case <-ctx.Done():
				return
			}
		}
		if rv == "" {
			var err error
			rv, err = c.list(ctx)
			if ctx.Err() != nil {
				return
			}
			c.apiResult("list", err)
			if err != nil {
				delay = nextRetry(delay)
				continue
			}
			delay = 0
		}
		began := time.Now()
		next, events, err := c.watch(ctx, rv)
		if ctx.Err() != nil {
			return
		}
		rv = next
		switch {
		case gone(err):
			// The server no longer has rv (compacted, or an etcd
			// restored): list anew, now.
			c.s.log.Info("the Node watch's resourceVersion is gone; listing the Nodes again", "err", err)
			rv, delay = "", 0
		case err != nil:
			c.apiResult("watch", err)
			delay = nextRetry(delay)
		case events == 0 && time.Since(began) < time.Second:
			// Ended at once with nothing: do not spin.
			delay = nextRetry(delay)
		default:
			delay = 0
		}
	}
}

// gone tells an error that says the resourceVersion asked for is no
// longer there (410 Gone, Expired) or not yet (an etcd restored from a
// backup: "Too large resource version"): only a new list helps.
func gone(err error) bool {
	return err != nil && (apierrors.IsResourceExpired(err) || apierrors.IsGone(err) ||
		apierrors.HasStatusCause(err, metav1.CauseTypeResourceVersionTooLarge))
}

// list lists all Nodes, page by page, applying each as it is read, then
// drops the Nodes not in the list. It returns the list's
// resourceVersion. The pages are one consistent read (resourceVersion
// "", then continue tokens): the API server's watch cache answers
// resourceVersion "0" in one piece whatever the limit.
func (c *nodeCache) list(ctx context.Context) (string, error) {
	seen := make(map[string]struct{}, c.len())
	var rv, cont string
	for {
		q := url.Values{"limit": {strconv.Itoa(listPage)}}
		if cont != "" {
			q.Set("continue", cont)
		}
		meta, err := c.listPage(ctx, q, seen)
		if err != nil {
			return "", err
		}
		if rv == "" {
			rv = meta.ResourceVersion
		}
		if cont = meta.Continue; cont == "" {
			break
		}
	}
	if rv == "" {
		return "", errors.New("list of Nodes: no resourceVersion")
	}
	c.listDone(seen)
	return rv, nil
}

// listMeta is the metadata of a list.
type listMeta struct {
	ResourceVersion string `json:"resourceVersion"`
	Continue        string `json:"continue"`
}

// listPage reads one page of the list, putting each Node as it is read.
func (c *nodeCache) listPage(ctx context.Context, q url.Values, seen map[string]struct{}) (listMeta, error) {
	var meta listMeta
	body, ctype, err := c.s.api.open(ctx, request{method: http.MethodGet, path: "/api/v1/nodes", query: q,
		accept: c.s.api.nodesAccept, resource: "nodes"})
	if err != nil {
		return meta, err
	}
	defer body.Close()
	put := func(n *node) error {
		if n.Name == "" {
			return errors.New("an item without a name")
		}
		seen[n.Name] = struct{}{}
		c.put(n)
		return nil
	}
	read := readNodeListJSON
	if isProtobuf(ctype) {
		read = readNodeList
	}
	meta, err = read(body, c.s.ann.prefix(), put)
	if err != nil {
		return meta, fmt.Errorf("list of Nodes: %w", err)
	}
	return meta, nil
}

// readNodeListJSON reads a list page's JSON body, calling put for each
// Node as it is read, and returns the list's metadata.
func readNodeListJSON(body io.Reader, prefix string, put func(*node) error) (listMeta, error) {
	var meta listMeta
	dec := json.NewDecoder(body)
	if err := delim(dec, '{'); err != nil {
		return meta, err
	}
	for dec.More() {
		key, err := dec.Token()
		if err != nil {
			return meta, err
		}
		switch key {
		case "metadata":
			err = dec.Decode(&meta)
		case "items":
			if err = delim(dec, '['); err != nil {
				return meta, err
			}
			for dec.More() {
				var w wireNode
				if err := dec.Decode(&w); err != nil {
					return meta, err
				}
				if err := put(w.node(prefix)); err != nil {
					return meta, err
				}
			}
			err = delim(dec, ']')
		default:
			var skip json.RawMessage
			err = dec.Decode(&skip)
		}
		if err != nil {
			return meta, err
		}
	}
	return meta, delim(dec, '}')
}

// delim reads the JSON delimiter d.
func delim(dec *json.Decoder, d json.Delim) error {
	t, err := dec.Token()
	if err != nil {
		return err
	}
	if t != d {
		return fmt.Errorf("want %v, have %v", d, t)
	}
	return nil
}

// watchEvent is one event of a watch of Nodes in JSON: its object is a
// Node (ADDED, MODIFIED, DELETED; BOOKMARK, of which only the
// resourceVersion counts) or a Status (ERROR).
type watchEvent struct {
	Type   string `json:"type"`
	Object struct {
		wireNode
		// A Status's.
		Code    int32                 `json:"code"`
		Reason  string                `json:"reason"`
		Message string                `json:"message"`
		Details *metav1.StatusDetails `json:"details"`
	} `json:"object"`
}

// jsonEvents reads a JSON watch stream.
type jsonEvents struct {
	dec    *json.Decoder
	prefix string
}

// next reads the next event; io.EOF when the stream ends between events.
func (j *jsonEvents) next() (event, error) {
	var e watchEvent
	if err := j.dec.Decode(&e); err != nil {
		return event{}, err
	}
	o := &e.Object
	if e.Type == "ERROR" {
		return event{typ: e.Type, status: metav1.Status{
			Status: metav1.StatusFailure, Code: o.Code, Reason: metav1.StatusReason(o.Reason), Message: o.Message, Details: o.Details,
		}}, nil
	}
	return event{typ: e.Type, node: o.node(j.prefix)}, nil
}

// watch watches Nodes from resourceVersion rv until the server ends the
// watch (nil error), it breaks, or the server sends an error, applying
// each event. It returns the last resourceVersion seen and how many
// events came.
func (c *nodeCache) watch(ctx context.Context, rv string) (string, int, error) {
	timeout := watchTimeout + rand.N(watchTimeout)
	ctx, cancel := context.WithTimeout(ctx, timeout+watchGrace)
	defer cancel()
	q := url.Values{
		"watch": {"true"}, "allowWatchBookmarks": {"true"}, "resourceVersion": {rv},
		"timeoutSeconds": {strconv.Itoa(int(timeout / time.Second))},
	}
	body, ctype, err := c.s.api.open(ctx, request{method: http.MethodGet, path: "/api/v1/nodes", query: q,
		accept: c.s.api.nodesAccept, resource: "nodes"})
	if err != nil {
		return rv, 0, err
	}
	defer body.Close()
	c.apiResult("watch", nil)
	prefix := c.s.ann.prefix()
	var events interface{ next() (event, error) }
	if isProtobuf(ctype) {
		events = newProtoEvents(body, prefix)
	} else {
		events = &jsonEvents{dec: json.NewDecoder(body), prefix: prefix}
	}
	for count := 0; ; count++ {
		e, err := events.next()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = nil // the server's timeout
			}
			return rv, count, err
		}
		switch e.typ {
		case "ADDED", "MODIFIED", "DELETED":
			if e.node.Name == "" {
				return rv, count, fmt.Errorf("watch of Nodes: a %s event of an object without a name", e.typ)
			}
			if e.typ == "DELETED" {
				c.delete(e.node)
			} else {
				c.put(e.node)
			}
		case "BOOKMARK":
		case "ERROR":
			return rv, count, &apierrors.StatusError{ErrStatus: e.status}
		default:
			return rv, count, fmt.Errorf("watch of Nodes: an event of unknown type %q", e.typ)
		}
		if v := e.node.ResourceVersion; v != "" {
			rv = v
		}
	}
}
