package kube

import (
	"context"
	"errors"
	"fmt"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
)

// Permission is one thing the store does on the API server.
type Permission struct {
	Verb, Resource, Subresource string
}

func (p Permission) String() string {
	r := p.Resource
	if p.Subresource != "" {
		r += "/" + p.Subresource
	}
	return p.Verb + " " + r
}

// Needed are the permissions the store needs on cluster-scoped Nodes,
// all of them (deploy/'s ClusterRole grants exactly these, plus get pods
// for POD_NAME): list and watch feed the Node watch, patch nodes/status
// writes the annotations and the NetworkUnavailable condition. Unlike
// flanneld, weft never GETs a Node: it reads its own from the Node watch.
var Needed = []Permission{
	{Verb: "list", Resource: "nodes"},
	{Verb: "watch", Resource: "nodes"},
	{Verb: "patch", Resource: "nodes", Subresource: "status"},
}

// checkAccess asks the API server (SelfSubjectAccessReview) whether this
// client may do each of Needed, so that a missing permission fails the
// start naming it, instead of a Node watch retrying a forbidden list
// forever or a patch failing after the data path is up.
func (s *Store) checkAccess(ctx context.Context) error {
	var missing []string
	for _, p := range Needed {
		allowed, err := s.api.allowed(ctx, p)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			// Every authenticated user may normally ask; if this
			// one may not, the requests themselves will tell.
			s.log.Warn("cannot check permissions (SelfSubjectAccessReview)", "err", err)
			return nil
		}
		if !allowed {
			missing = append(missing, p.String())
		}
	}
	if len(missing) == 0 {
		return nil
	}
	return fmt.Errorf("kube subnet manager: RBAC: %s may not %s (the ClusterRole must allow: list, watch nodes; patch nodes/status; and get pods when POD_NAME names the node)",
		s.whoAmI(ctx), strings.Join(missing, ", "))
}

// whoAmI names this client's user for an error message.
func (s *Store) whoAmI(ctx context.Context) string {
	name, err := s.api.username(ctx)
	if err != nil || name == "" {
		return "this client"
	}
	return "user " + name
}

// forbiddenHint explains a Forbidden error as a missing RBAC permission.
func forbiddenHint(err error, verb, resource string) string {
	var se *apierrors.StatusError
	if errors.As(err, &se) && apierrors.IsForbidden(err) {
		return fmt.Sprintf(" (RBAC: the ClusterRole must allow %s %s)", verb, resource)
	}
	return ""
}
