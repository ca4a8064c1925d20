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
// relies on: /opt/bin/flanneld runs weft as flanneld (--version, --help,
// the klog flags flanneld takes), /opt/bin/install-conf copies the CNI
// config as flannel's does, /opt/bin/weft beside them; every absolute
// command that flannel v0.28.9's own kube-flannel.yml (testdata) runs from
// the flannel image, and every one of deploy/kube-weft.yml, exists there;
// the Dockerfile copies this root and nothing else of weft.
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
	// Relative links, so they resolve inside the image, not on the builder.
	for _, name := range []string{"flanneld", "install-conf"} {
		if target, err := os.Readlink(filepath.Join(bin, name)); err != nil || target != "weft" {
			t.Fatalf("/opt/bin/%s -> %q (%v), want a link to weft", name, target, err)
		}
	}
	flanneld := filepath.Join(bin, "flanneld")
	// flanneld prints its version on standard error, wherever --version
	// is, after parsing the klog flags it takes.
	for _, args := range [][]string{{"--version"}, {"--ip-masq", "--kube-subnet-mgr", "-v", "2", "--vmodule=vxlan*=4", "--log_backtrace_at=main.go:229", "--version"}} {
		cmd := exec.Command(flanneld, args...)
		var stdout, stderr strings.Builder
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil || stdout.Len() != 0 || strings.TrimSpace(stderr.String()) != "v0.0.0-rootfs-test" {
			t.Fatalf("flanneld %v: stdout %q, stderr %q, %v", args, stdout.String(), stderr.String(), err)
		}
	}
	out, err = exec.Command(flanneld, "--help").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "-iface") || !strings.Contains(string(out), "-etcd-endpoints") {
		t.Fatalf("flanneld --help (weft run's flags): %v\n%s", err, out)
	}
	// klog flags flanneld does not take are refused by both.
	if out, err := exec.Command(flanneld, "--logtostderr", "--version").CombinedOutput(); err == nil || !strings.Contains(string(out), "logtostderr") {
		t.Fatalf("flanneld --logtostderr: %v\n%s", err, out)
	}

	// install-cni's command line, as kube-flannel.yml gives it: the
	// ConfigMap's file (a link into ..data, as the kubelet mounts it)
	// replaces the one in /etc/cni/net.d whole, with the source's mode.
	cfg := t.TempDir()
	if err := os.Mkdir(filepath.Join(cfg, "..data"), 0o755); err != nil {
		t.Fatal(err)
	}
	conf := `{"name":"cbr0","cniVersion":"0.3.1","plugins":[{"type":"flannel"}]}`
	if err := os.WriteFile(filepath.Join(cfg, "..data/cni-conf.json"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("..data/cni-conf.json", filepath.Join(cfg, "cni-conf.json")); err != nil {
		t.Fatal(err)
	}
	netd := t.TempDir()
	dest := filepath.Join(netd, "10-flannel.conflist")
	if err := os.WriteFile(dest, []byte("an older, longer config"), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(filepath.Join(bin, "install-conf"), filepath.Join(cfg, "cni-conf.json"), dest).CombinedOutput(); err != nil {
		t.Fatalf("install-conf: %v\n%s", err, out)
	}
	if got, err := os.ReadFile(dest); err != nil || string(got) != conf {
		t.Fatalf("installed %q, %v; want %q", got, err, conf)
	}
	if fi, err := os.Lstat(dest); err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o644 {
		t.Fatalf("installed file %v, %v: want a regular file of mode 0644", fi.Mode(), err)
	}
	if ents, _ := os.ReadDir(netd); len(ents) != 1 {
		t.Fatalf("/etc/cni/net.d holds %v: a temporary file was left", ents)
	}
	if out, err := exec.Command(filepath.Join(bin, "install-conf"), dest).CombinedOutput(); err == nil || !strings.Contains(string(out), "usage") {
		t.Fatalf("install-conf with one argument: %v\n%s", err, out)
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
	if strings.Join(files, " ") != "opt/bin/flanneld opt/bin/install-conf opt/bin/weft" {
		t.Errorf("rootfs holds %v, want opt/bin/flanneld, opt/bin/install-conf and opt/bin/weft", files)
	}

	// flannel's manifest with only the image swapped: the containers of
	// flannel's image (not flannel-cni-plugin's, which stays) run what
	// weft's image has.
	checkManifestCommands(t, dir, "testdata/kube-flannel-v0.28.9.yml", "ghcr.io/flannel-io/flannel:")
	checkManifestCommands(t, dir, filepath.Join(root, "deploy/kube-weft.yml"), "ghcr.io/weft-net/weft:")

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

// checkManifestCommands checks that every container of path's DaemonSet
// whose image starts with image runs a command the root filesystem dir
// has (an absolute path) or the base image has (cp).
func checkManifestCommands(t *testing.T, dir, path, image string) {
	t.Helper()
	manifest, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, doc := range strings.Split(string(manifest), "\n---\n") {
		var ds struct {
			Kind string
			Spec struct {
				Template struct {
					Spec struct {
						InitContainers, Containers []struct {
							Name, Image string
							Command     []string
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
			if !strings.HasPrefix(c.Image, image) {
				continue
			}
			n++
			if len(c.Command) == 0 {
				t.Errorf("%s: container %s has no command (the image's entrypoint is flanneld)", path, c.Name)
				continue
			}
			switch cmd := c.Command[0]; {
			case strings.HasPrefix(cmd, "/"):
				if _, err := os.Stat(filepath.Join(dir, cmd)); err != nil {
					t.Errorf("%s: container %s runs %s, which the image does not have", path, c.Name, cmd)
				}
			case cmd != "cp": // the base image's
				t.Errorf("%s: container %s runs %s, from no known place", path, c.Name, cmd)
			}
		}
	}
	if n < 2 {
		t.Errorf("%s: %d containers of %s*, want the init container and flanneld's", path, n, image)
	}
}
