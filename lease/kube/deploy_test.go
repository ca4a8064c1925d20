package kube

import (
	"os"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"sigs.k8s.io/yaml"

	"github.com/weft-net/weft/lease/kube/kubetest"
)

// The DaemonSet manifests are valid to a real API server: every object
// of deploy/kube-weft.yml (kube mode) and kube-weft-etcd.yml passes its
// validation and admission (a dry-run create, the namespace created for
// real first).
func TestDeployManifestsAccepted(t *testing.T) {
	srv := kubetest.Start(t)
	dyn, err := dynamic.NewForConfig(srv.Config(kubetest.Admin))
	if err != nil {
		t.Fatal(err)
	}
	ctx := kubetest.Ctx(t, time.Minute)
	resources := map[string]schema.GroupVersionResource{
		"Namespace":          {Version: "v1", Resource: "namespaces"},
		"ServiceAccount":     {Version: "v1", Resource: "serviceaccounts"},
		"ConfigMap":          {Version: "v1", Resource: "configmaps"},
		"Secret":             {Version: "v1", Resource: "secrets"},
		"ClusterRole":        {Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "clusterroles"},
		"ClusterRoleBinding": {Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "clusterrolebindings"},
		"DaemonSet":          {Group: "apps", Version: "v1", Resource: "daemonsets"},
	}
	for _, file := range []string{"kube-weft.yml", "kube-weft-etcd.yml"} {
		b, err := os.ReadFile("../../deploy/" + file)
		if err != nil {
			t.Fatal(err)
		}
		for i, doc := range strings.Split(string(b), "\n---\n") {
			var obj unstructured.Unstructured
			if err := yaml.Unmarshal([]byte(doc), &obj.Object); err != nil {
				t.Fatalf("%s document %d: %v", file, i, err)
			}
			if obj.Object == nil {
				continue // the header comment
			}
			gvr, ok := resources[obj.GetKind()]
			if !ok {
				t.Errorf("%s: kind %s not known to this test", file, obj.GetKind())
				continue
			}
			var ri dynamic.ResourceInterface = dyn.Resource(gvr)
			if ns := obj.GetNamespace(); ns != "" {
				ri = dyn.Resource(gvr).Namespace(ns)
			}
			opts := metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}, FieldValidation: "Strict"}
			if obj.GetKind() == "Namespace" {
				opts.DryRun = nil // the namespaced objects need it
				if _, err := ri.Get(ctx, obj.GetName(), metav1.GetOptions{}); err == nil {
					continue
				}
			}
			if _, err := ri.Create(ctx, &obj, opts); err != nil {
				t.Errorf("%s: %s %s refused: %v", file, obj.GetKind(), obj.GetName(), err)
			}
		}
	}
}
