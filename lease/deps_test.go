package lease

import (
	"os/exec"
	"strings"
	"testing"
)

// The data path and the lease types must not link etcd: etcd's server
// and bbolt alone are ~400 packages, and the engine has no use for them.
// Only cmd/weft (and tests) link lease/etcdserver.
func TestDependencies(t *testing.T) {
	for _, c := range []struct {
		pkgs      []string
		forbidden []string
	}{
		{
			pkgs:      []string{"./engine/...", "./encap/...", "./tunio/...", "./lease/etcdstore", "./lease/kube"},
			forbidden: []string{"go.etcd.io/etcd/server", "go.etcd.io/bbolt"},
		},
		{
			// The light package: lease types, config, subnet file.
			pkgs:      []string{"./lease"},
			forbidden: []string{"go.etcd.io/", "google.golang.org/grpc", "go.uber.org/zap"},
		},
	} {
		// go test puts its own go first in PATH.
		cmd := exec.Command("go", append([]string{"list", "-deps"}, c.pkgs...)...)
		cmd.Dir = ".." // the module root
		out, err := cmd.Output()
		if err != nil {
			var stderr string
			if ee, ok := err.(*exec.ExitError); ok {
				stderr = string(ee.Stderr)
			}
			t.Fatalf("go list -deps %s: %v\n%s", strings.Join(c.pkgs, " "), err, stderr)
		}
		deps := strings.Fields(string(out))
		if len(deps) < 10 {
			t.Fatalf("go list -deps %s listed only %q", strings.Join(c.pkgs, " "), deps)
		}
		for _, d := range deps {
			for _, f := range c.forbidden {
				if strings.HasPrefix(d, f) {
					t.Errorf("%s depends on %s (nothing under %s may be linked)", strings.Join(c.pkgs, " "), d, f)
				}
			}
		}
	}
}
