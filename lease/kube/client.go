package kube

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/rest"
)

// apiClient makes the store's few requests to the API server: through
// client-go's transport for rest.Config (TLS, tokens, exec plugins,
// impersonation, the user agent), each answer decoded into only the
// fields the store reads: the list and watch of Nodes in protobuf where
// the server answers it (protobuf.go), the rest in JSON.
//
// Why not client-go's typed clientset: it links (and initialises, in
// every process) the Go types, protobuf code and scheme registrations of
// every Kubernetes API group, and decodes each Node of a watch in full
// (images, conditions, managedFields) before the store keeps a few
// hundred bytes of it. In kube-flannel.yml's 50 MiB that code and heap
// crowded out the daemon's own working set (docs/kubernetes.md).
type apiClient struct {
	base *url.URL // the server's URL, with any path prefix
	http *http.Client
	// nodesAccept is the Accept header of the list and the watch of
	// Nodes: protobuf, else JSON (tests ask for JSON alone).
	nodesAccept string
}

func newAPIClient(cfg *rest.Config) (*apiClient, error) {
	hc, err := rest.HTTPClientFor(cfg)
	if err != nil {
		return nil, err
	}
	base, _, err := rest.DefaultServerUrlFor(cfg)
	if err != nil {
		return nil, err
	}
	return &apiClient{base: base, http: hc, nodesAccept: acceptProtobuf}, nil
}

// maxErrorBody bounds how much of an error answer is read.
const maxErrorBody = 64 << 10

// request is one API request: path below the server's URL (unescaped,
// as client-go builds it: names are DNS subdomains), query, and a JSON
// body (nil for none) of content type contentType. accept is the Accept
// header ("": JSON).
type request struct {
	method, path string
	query        url.Values
	accept       string
	contentType  string
	body         []byte
	// resource and name describe the object for errors that carry no
	// Status of the server's ("nodes", "h1").
	resource, name string
}

// open sends r and returns the answer's body and Content-Type when the
// status is 2xx; else an *apierrors.StatusError as client-go's would be:
// the server's Status (JSON or protobuf) when it sent one (its message
// names the user and the verb a Forbidden lacks), else a generic one for
// the HTTP status.
func (c *apiClient) open(ctx context.Context, r request) (io.ReadCloser, string, error) {
	u := *c.base
	u.Path = strings.TrimSuffix(u.Path, "/") + r.path
	u.RawQuery = r.query.Encode()
	var body io.Reader
	if r.body != nil {
		body = bytes.NewReader(r.body)
	}
	req, err := http.NewRequestWithContext(ctx, r.method, u.String(), body)
	if err != nil {
		return nil, "", err
	}
	if r.accept == "" {
		r.accept = "application/json"
	}
	req.Header.Set("Accept", r.accept)
	if r.body != nil {
		req.Header.Set("Content-Type", r.contentType)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, "", err
	}
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return resp.Body, resp.Header.Get("Content-Type"), nil
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	return nil, "", statusError(resp, b, r)
}

// statusError is the error of a non-2xx answer with body b.
func statusError(resp *http.Response, b []byte, r request) error {
	var st metav1.Status
	var ok bool
	if isProtobuf(resp.Header.Get("Content-Type")) {
		var err error
		st, err = decodeStatusObject(b)
		ok = err == nil && st.Status == metav1.StatusFailure
	} else {
		ok = json.Unmarshal(b, &st) == nil && st.Kind == "Status" && st.Status == metav1.StatusFailure
	}
	if ok {
		if st.Code == 0 {
			st.Code = int32(resp.StatusCode)
		}
		return &apierrors.StatusError{ErrStatus: st}
	}
	retry := 0
	if s := resp.Header.Get("Retry-After"); s != "" {
		fmt.Sscan(s, &retry)
	}
	isText := strings.HasPrefix(resp.Header.Get("Content-Type"), "text/")
	return apierrors.NewGenericServerResponse(resp.StatusCode, r.method, schema.GroupResource{Resource: r.resource}, r.name, strings.TrimSpace(string(b)), retry, isText)
}

// do sends r and decodes the answer's JSON into out (nil: discarded).
func (c *apiClient) do(ctx context.Context, r request, out any) error {
	body, _, err := c.open(ctx, r)
	if err != nil {
		return err
	}
	defer body.Close()
	if out == nil {
		_, err = io.Copy(io.Discard, body)
		return err
	}
	if err := json.NewDecoder(body).Decode(out); err != nil {
		return fmt.Errorf("%s %s: decoding the answer: %w", r.method, r.path, err)
	}
	return nil
}

// The store's requests, with the fields it reads of their answers.

// podNodeName is the spec.nodeName of Pod name in namespace ns.
func (c *apiClient) podNodeName(ctx context.Context, ns, name string) (string, error) {
	var p struct {
		Spec struct {
			NodeName string `json:"nodeName"`
		} `json:"spec"`
	}
	err := c.do(ctx, request{method: http.MethodGet, path: "/api/v1/namespaces/" + ns + "/pods/" + name,
		resource: "pods", name: name}, &p)
	return p.Spec.NodeName, err
}

// patchNodeStatus sends a strategic-merge patch of nodes/<name>/status.
func (c *apiClient) patchNodeStatus(ctx context.Context, name string, patch []byte) error {
	return c.do(ctx, request{method: http.MethodPatch, path: "/api/v1/nodes/" + name + "/status",
		contentType: "application/strategic-merge-patch+json", body: patch, resource: "nodes", name: name}, nil)
}

// allowed asks the API server (a SelfSubjectAccessReview) whether this
// client may do p.
func (c *apiClient) allowed(ctx context.Context, p Permission) (bool, error) {
	type attrs struct {
		Verb        string `json:"verb"`
		Resource    string `json:"resource"`
		Subresource string `json:"subresource,omitempty"`
	}
	body, err := json.Marshal(struct {
		Kind       string `json:"kind"`
		APIVersion string `json:"apiVersion"`
		Spec       struct {
			ResourceAttributes attrs `json:"resourceAttributes"`
		} `json:"spec"`
	}{Kind: "SelfSubjectAccessReview", APIVersion: "authorization.k8s.io/v1", Spec: struct {
		ResourceAttributes attrs `json:"resourceAttributes"`
	}{attrs(p)}})
	if err != nil {
		return false, err
	}
	var r struct {
		Status struct {
			Allowed bool `json:"allowed"`
		} `json:"status"`
	}
	err = c.do(ctx, request{method: http.MethodPost, path: "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
		contentType: "application/json", body: body, resource: "selfsubjectaccessreviews"}, &r)
	return r.Status.Allowed, err
}

// username is this client's user as the API server authenticates it (a
// SelfSubjectReview).
func (c *apiClient) username(ctx context.Context) (string, error) {
	var r struct {
		Status struct {
			UserInfo struct {
				Username string `json:"username"`
			} `json:"userInfo"`
		} `json:"status"`
	}
	err := c.do(ctx, request{method: http.MethodPost, path: "/apis/authentication.k8s.io/v1/selfsubjectreviews",
		contentType: "application/json", body: []byte(`{"kind":"SelfSubjectReview","apiVersion":"authentication.k8s.io/v1"}`),
		resource: "selfsubjectreviews"}, &r)
	return r.Status.UserInfo.Username, err
}
