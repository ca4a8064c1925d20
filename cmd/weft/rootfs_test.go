package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// TestRootfsLayout runs `make rootfs` into a temporary directory, as the
// Dockerfile does into the image, and checks the layout kube-flannel.yml
// relies on: /opt/bin/flanneld runs weft as flanneld (--version, --help),
// /opt/bin/weft beside it; every absolute command of deploy/kube-weft.yml
// exists there; the Dockerfile copies this root and nothing else of weft.
func TestRootfsLayout(t *testing.T) {
	if _, err := exec.LookPath("make"); err != nil {
		t.Fatalf("make rootfs needs make: %v", err)
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	out, err := exec.Command("make", "-C", root, "rootfs", "DIR="+dir, "VERSION=v0.0.0-rootfs-test").CombinedOutput()
	if err != nil {
		t.Fatalf("make rootfs: %v\n%s", err, out)
	}
	bin := filepath.Join(dir, "opt/bin")
	if fi, err := os.Stat(filepath.Join(bin, "weft")); err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
		t.Fatalf("/opt/bin/weft: %v %v", fi, err)
	}
	// A relative link, so it resolves inside the image, not on the builder.
	if target, err := os.Readlink(filepath.Join(bin, "flanneld")); err != nil || target != "weft" {
		t.Fatalf("/opt/bin/flanneld -> %q (%v), want a link to weft", target, err)
	}
	flanneld := filepath.Join(bin, "flanneld")
	out, err = exec.Command(flanneld, "--version").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "v0.0.0-rootfs-test" {
		t.Fatalf("flanneld --version: %q, %v", out, err)
	}
	out, err = exec.Command(flanneld, "--help").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "-iface") || !strings.Contains(string(out), "-etcd-endpoints") {
		t.Fatalf("flanneld --help (weft run's flags): %v\n%s", err, out)
	}
	// Only weft's own files: the base image brings the rest.
	var files []string
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			rel, _ := filepath.Rel(dir, p)
			files = append(files, rel)
		}
		return err
	})
	if strings.Join(files, " ") != "opt/bin/flanneld opt/bin/weft" {
		t.Errorf("rootfs holds %v, want opt/bin/flanneld and opt/bin/weft", files)
	}

	manifest, err := os.ReadFile(filepath.Join(root, "deploy/kube-weft.yml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, doc := range strings.Split(string(manifest), "\n---\n") {
		var ds struct {
			Kind string
			Spec struct {
				Template struct {
					Spec struct {
						InitContainers, Containers []struct {
							Name    string
							Command []string
						}
					}
				}
			}
		}
		if err := yaml.Unmarshal([]byte(doc), &ds); err != nil || ds.Kind != "DaemonSet" {
			continue
		}
		spec := ds.Spec.Template.Spec
		for _, c := range append(spec.InitContainers, spec.Containers...) {
			if len(c.Command) == 0 {
				t.Errorf("container %s has no command (the image's entrypoint is flanneld)", c.Name)
				continue
			}
			switch cmd := c.Command[0]; {
			case strings.HasPrefix(cmd, "/"):
				if _, err := os.Stat(filepath.Join(dir, cmd)); err != nil {
					t.Errorf("container %s runs %s, which the image does not have", c.Name, cmd)
				}
			case cmd != "cp": // install-cni: the base image's
				t.Errorf("container %s runs %s, from no known place", c.Name, cmd)
			}
		}
	}

	docker, err := os.ReadFile(filepath.Join(root, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"make rootfs DIR=/rootfs", "COPY --from=build /rootfs/ /", `ENTRYPOINT ["/opt/bin/flanneld"]`, "iptables", "nftables"} {
		if !strings.Contains(string(docker), want) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}
}
