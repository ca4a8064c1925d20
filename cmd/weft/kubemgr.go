package main

import (
	"log/slog"

	"k8s.io/klog/v2"

	"github.com/weft-net/weft/lease"
	"github.com/weft-net/weft/lease/kube"
)

// kubeManager builds the Kubernetes subnet manager from flanneld's
// flags; the node name comes from NODE_NAME or POD_NAME/POD_NAMESPACE.
func (f *runFlags) kubeManager(log *slog.Logger) (lease.Manager, error) {
	// client-go's transport logs through klog (an exec credential
	// plugin's failure, for one): into weft's log, in its format.
	klog.SetSlogLogger(log.With("component", "client-go"))
	return kube.New(kube.Options{
		APIURL:                    f.kubeAPIURL,
		Kubeconfig:                f.kubeconfigFile,
		AnnotationPrefix:          f.kubeAnnotationPrefix,
		NetConfPath:               f.netConfigPath,
		SetNodeNetworkUnavailable: f.setNodeNetUnavailable,
		Logger:                    log,
	})
}
