package main

import (
	"log/slog"

	"github.com/weft-net/weft/lease"
	"github.com/weft-net/weft/lease/kube"
)

// kubeManager builds the Kubernetes subnet manager from flanneld's
// flags; the node name comes from NODE_NAME or POD_NAME/POD_NAMESPACE.
func (f *runFlags) kubeManager(log *slog.Logger) (lease.Manager, error) {
	return kube.New(kube.Options{
		APIURL:                    f.kubeAPIURL,
		Kubeconfig:                f.kubeconfigFile,
		AnnotationPrefix:          f.kubeAnnotationPrefix,
		NetConfPath:               f.netConfigPath,
		SetNodeNetworkUnavailable: f.setNodeNetUnavailable,
		Logger:                    log,
	})
}
