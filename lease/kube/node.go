package kube

import (
	"strings"
	"time"
)

// node is what the store reads of a Node object: its name, uid,
// resourceVersion and creation time, spec.podCIDR(s), and the
// annotations under the store's prefix (keepAnnotations). A Node of a
// real cluster carries kilobytes of images, conditions and managedFields
// besides, which in a large cluster would be most of the daemon's memory
// (kube-flannel.yml's 50 MiB limit is what OOM-kills flanneld): they are
// skipped while the JSON is read, never decoded.
type node struct {
	Name            string
	UID             string
	ResourceVersion string
	Created         time.Time
	PodCIDR         string
	PodCIDRs        []string
	Annotations     map[string]string
}

// wireNode is a Node's JSON as the API server sends it, with only the
// fields node keeps; encoding/json skips the rest (status, labels,
// managedFields, ...) without building them.
type wireNode struct {
	Metadata struct {
		Name              string            `json:"name"`
		UID               string            `json:"uid"`
		ResourceVersion   string            `json:"resourceVersion"`
		CreationTimestamp time.Time         `json:"creationTimestamp"`
		Annotations       map[string]string `json:"annotations"`
	} `json:"metadata"`
	Spec struct {
		PodCIDR  string   `json:"podCIDR"`
		PodCIDRs []string `json:"podCIDRs"`
	} `json:"spec"`
}

// node is w with only the annotations under prefix kept.
func (w *wireNode) node(prefix string) *node {
	return &node{
		Name: w.Metadata.Name, UID: w.Metadata.UID, ResourceVersion: w.Metadata.ResourceVersion,
		Created: w.Metadata.CreationTimestamp,
		PodCIDR: w.Spec.PodCIDR, PodCIDRs: w.Spec.PodCIDRs,
		Annotations: keepAnnotations(w.Metadata.Annotations, prefix),
	}
}

// keepAnnotations are the annotations of ann under prefix, in a map of
// their own (nil when there are none): other components' annotations
// (kubelet's, CSI drivers', cloud providers') can be large and are not
// the store's business.
func keepAnnotations(ann map[string]string, prefix string) map[string]string {
	var out map[string]string
	for k, v := range ann {
		if strings.HasPrefix(k, prefix) {
			if out == nil {
				out = make(map[string]string, 8)
			}
			out[k] = v
		}
	}
	return out
}
