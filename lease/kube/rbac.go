package kube

import (
	"context"
	"errors"
	"fmt"
	"strings"

	authnv1 "k8s.io/api/authentication/v1"
	authzv1 "k8s.io/api/authorization/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
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
// for POD_NAME): list and watch feed the informer, patch nodes/status
// writes the annotations and the NetworkUnavailable condition. Unlike
// flanneld, weft never GETs a Node: it reads its own from the informer.
var Needed = []Permission{
	{Verb: "list", Resource: "nodes"},
	{Verb: "watch", Resource: "nodes"},
	{Verb: "patch", Resource: "nodes", Subresource: "status"},
}

// checkAccess asks the API server (SelfSubjectAccessReview) whether this
// client may do each of Needed, so that a missing permission fails the
// start naming it, instead of an informer retrying a forbidden list
// forever or a patch failing after the data path is up.
func (s *Store) checkAccess(ctx context.Context) error {
	var missing []string
	for _, p := range Needed {
		r, err := s.cli.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authzv1.SelfSubjectAccessReview{
			Spec: authzv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &authzv1.ResourceAttributes{
				Verb: p.Verb, Resource: p.Resource, Subresource: p.Subresource,
			}},
		}, metav1.CreateOptions{})
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			// Every authenticated user may normally ask; if this
			// one may not, the requests themselves will tell.
			s.log.Warn("cannot check permissions (SelfSubjectAccessReview)", "err", err)
			return nil
		}
		if !r.Status.Allowed {
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
	r, err := s.cli.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authnv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil || r.Status.UserInfo.Username == "" {
		return "this client"
	}
	return "user " + r.Status.UserInfo.Username
}

// forbiddenHint explains a Forbidden error as a missing RBAC permission.
func forbiddenHint(err error, verb, resource string) string {
	var se *apierrors.StatusError
	if errors.As(err, &se) && apierrors.IsForbidden(err) {
		return fmt.Sprintf(" (RBAC: the ClusterRole must allow %s %s)", verb, resource)
	}
	return ""
}
