package kube

import (
	"errors"
	"regexp"
	"strings"
)

// DefaultAnnotationPrefix is flanneld's --kube-annotation-prefix default.
const DefaultAnnotationPrefix = "flannel.alpha.coreos.com"

// annotations are the Node annotation keys of one prefix.
type annotations struct {
	SubnetKubeManaged        string // "true" on Nodes whose daemon runs in kube mode
	BackendData              string
	BackendType              string
	BackendPublicIP          string
	BackendNodePublicIP      string // set by an operator: this Node's public IP
	BackendPublicIPOverwrite string // set by an operator: overrides everything

	// The IPv6 counterparts, written and read when the network has IPv6
	// (flanneld's names).
	BackendV6Data              string
	BackendPublicIPv6          string
	BackendNodePublicIPv6      string // set by an operator: this Node's public IPv6
	BackendPublicIPv6Overwrite string // set by an operator: overrides everything
}

// prefixFormat is flanneld's check of the completed prefix: a DNS-like
// name, one slash, and an optional name part ending in "-". flanneld's
// regexp is not anchored at the start, so it takes "Example.com" or
// "a b.example.com", which the API server then refuses as annotation
// keys on every patch; anchored, weft refuses them at start.
var prefixFormat = regexp.MustCompile(`^(?:[a-z0-9_-]+\.)+[a-z0-9_-]+/(?:[a-z0-9_-]+-)?$`)

// newAnnotations completes prefix as flanneld does ("example.com" becomes
// "example.com/", "example.com/net" becomes "example.com/net-") and
// refuses what flanneld refuses, with its messages.
func newAnnotations(prefix string) (annotations, error) {
	slashes := strings.Count(prefix, "/")
	if slashes > 1 {
		return annotations{}, errors.New("--kube-annotation-prefix: prefix can contain at most single slash")
	}
	if slashes == 0 {
		prefix += "/"
	}
	if !strings.HasSuffix(prefix, "/") && !strings.HasSuffix(prefix, "-") {
		prefix += "-"
	}
	if !prefixFormat.MatchString(prefix) {
		return annotations{}, errors.New("--kube-annotation-prefix: prefix must be in a format: fqdn/[0-9a-z-_]*")
	}
	return annotations{
		SubnetKubeManaged:        prefix + "kube-subnet-manager",
		BackendData:              prefix + "backend-data",
		BackendType:              prefix + "backend-type",
		BackendPublicIP:          prefix + "public-ip",
		BackendNodePublicIP:      prefix + "node-public-ip",
		BackendPublicIPOverwrite: prefix + "public-ip-overwrite",

		BackendV6Data:              prefix + "backend-v6-data",
		BackendPublicIPv6:          prefix + "public-ipv6",
		BackendNodePublicIPv6:      prefix + "node-public-ipv6",
		BackendPublicIPv6Overwrite: prefix + "public-ipv6-overwrite",
	}, nil
}

// CheckAnnotationPrefix reports why prefix is not a valid
// --kube-annotation-prefix.
func CheckAnnotationPrefix(prefix string) error {
	_, err := newAnnotations(prefix)
	return err
}

// prefix is the annotation prefix itself ("flannel.alpha.coreos.com/").
func (a annotations) prefix() string {
	return strings.TrimSuffix(a.SubnetKubeManaged, "kube-subnet-manager")
}
