package main

import (
	"bytes"
	"flag"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/weft-net/weft/lease"
)

// checkRunArgs parses args as weft run would, so a flag renamed or
// dropped breaks the deploy files' test, not a user's node.
func checkRunArgs(t *testing.T, where string, args []string) {
	t.Helper()
	fs := flag.NewFlagSet("weft run", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var f runFlags
	f.register(fs)
	if err := fs.Parse(args); err != nil {
		t.Errorf("%s: weft run refuses %q: %v", where, args, err)
		return
	}
	if len(f.refused) > 0 {
		t.Errorf("%s: uses refused flag --%s", where, f.refused[0])
	}
	if err := f.validate(); err != nil {
		t.Errorf("%s: %v", where, err)
	}
}

// unitValues reads a systemd unit's keys (last value wins, as systemd
// does for single-valued keys) per section.
func unitValues(t *testing.T, b []byte) map[string]string {
	t.Helper()
	out := map[string]string{}
	section := ""
	for n, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = line
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("weft.service line %d: %q is not key=value in a section", n+1, line)
			}
			out[section+k] = v
		}
	}
	return out
}

// TestSystemdUnit: deploy/weft.service is Type=notify (weft sends READY=1,
// see TestReadiness), reads FLANNELD_* from an EnvironmentFile, restarts
// on failure, keeps only CAP_NET_ADMIN and CAP_NET_RAW, runs weft run
// with flags weft has, and passes systemd-analyze verify.
func TestSystemdUnit(t *testing.T) {
	b, err := os.ReadFile("../../deploy/weft.service")
	if err != nil {
		t.Fatal(err)
	}
	u := unitValues(t, b)
	for k, want := range map[string]string{
		"[Service]Type":                     "notify",
		"[Service]Restart":                  "on-failure",
		"[Service]EnvironmentFile":          "-/etc/default/weft",
		"[Service]CapabilityBoundingSet":    "CAP_NET_ADMIN CAP_NET_RAW",
		"[Service]AmbientCapabilities":      "CAP_NET_ADMIN CAP_NET_RAW",
		"[Install]WantedBy":                 "multi-user.target",
		"[Service]RuntimeDirectoryPreserve": "yes",
	} {
		if u[k] != want {
			t.Errorf("weft.service %s = %q, want %q", k, u[k], want)
		}
	}
	exe := strings.Fields(u["[Service]ExecStart"])
	if len(exe) < 2 || filepath.Base(exe[0]) != "weft" || exe[1] != "run" {
		t.Fatalf("ExecStart %q does not run weft run", u["[Service]ExecStart"])
	}
	checkRunArgs(t, "weft.service ExecStart", exe[2:])
	// The example EnvironmentFile sets only variables weft reads.
	env, err := os.ReadFile("../../deploy/weft.env")
	if err != nil {
		t.Fatal(err)
	}
	checkEnvFile(t, env)

	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("systemd-analyze is needed under CI (.ci/run installs systemd):", err)
		}
		t.Log("systemd-analyze not installed: structural checks only")
		return
	}
	// verify wants the ExecStart binary to exist: point it at this one.
	self, _ := os.Executable()
	dir := t.TempDir()
	unit := bytes.Replace(b, []byte("/usr/local/bin/weft"), []byte(self), -1)
	if err := os.WriteFile(filepath.Join(dir, "weft.service"), unit, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("systemd-analyze", "verify", "--man=no", filepath.Join(dir, "weft.service"))
	out, err := cmd.CombinedOutput()
	// verify exits 0 on unknown keys and bad values ("..., ignoring"):
	// any line it prints is a fault.
	faults := lines(string(out))
	if err != nil || len(faults) > 0 {
		t.Errorf("systemd-analyze verify weft.service: %v\n%s", err, out)
	}
}

func checkEnvFile(t *testing.T, env []byte) {
	t.Helper()
	fs := flag.NewFlagSet("weft run", flag.ContinueOnError)
	var f runFlags
	f.register(fs)
	known := map[string]bool{}
	fs.VisitAll(func(fl *flag.Flag) {
		known[envName(fl.Name)] = true
	})
	for _, l := range lines(string(env)) {
		if strings.HasPrefix(l, "#") {
			l = strings.TrimPrefix(l, "#")
			if !strings.Contains(l, "=") || strings.Contains(l, " ") {
				continue // prose
			}
		}
		k, v, ok := strings.Cut(l, "=")
		if !ok {
			t.Errorf("weft.env: %q is not KEY=VALUE", l)
			continue
		}
		if goRuntimeEnv[k] {
			continue // read by the Go runtime, not by weft's flags
		}
		if !known[k] {
			t.Errorf("weft.env: %s is not a variable weft run reads", k)
		}
		if err := fs.Set(strings.ToLower(strings.ReplaceAll(strings.TrimPrefix(strings.TrimPrefix(k, "FLANNELD_"), "WEFT_"), "_", "-")), v); err != nil {
			t.Errorf("weft.env: %s=%s: %v", k, v, err)
		}
	}
}

// TestDaemonSet: deploy/kube-weft.yml is valid YAML, modelled on
// kube-flannel.yml: a DaemonSet on the host network with NET_ADMIN and
// NET_RAW and nothing else, /run/flannel from the host, probes on
// /readyz and /healthz at weft's --healthz-port, a net-conf.json weft
// accepts and weft run flags weft has.
// goRuntimeEnv are variables the Go runtime reads, which weft.env may set.
var goRuntimeEnv = map[string]bool{"GOMAXPROCS": true, "GOMEMLIMIT": true, "GOGC": true, "GODEBUG": true}

// kube-weft.yml runs the Kubernetes subnet manager with its net-conf
// mounted where --net-config-path defaults; kube-weft-etcd.yml is the
// etcd variant.
func TestDaemonSet(t *testing.T) {
	for _, name := range []string{"kube-weft.yml", "kube-weft-etcd.yml"} {
		t.Run(name, func(t *testing.T) { checkDaemonSet(t, "../../deploy/"+name, name == "kube-weft.yml") })
	}
}

func checkDaemonSet(t *testing.T, path string, kubeMode bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	type container struct {
		Name            string
		Command, Args   []string
		SecurityContext struct {
			Privileged   bool
			Capabilities struct{ Add, Drop []string }
		}
		VolumeMounts   []struct{ Name, MountPath string }
		ReadinessProbe struct {
			HTTPGet struct {
				Path string
				Port int
			}
		}
		LivenessProbe struct {
			HTTPGet struct {
				Path string
				Port int
			}
		}
	}
	var ds struct {
		Spec struct {
			Template struct {
				Spec struct {
					HostNetwork    bool
					Containers     []container
					InitContainers []container
					Volumes        []struct {
						Name     string
						HostPath *struct{ Path string }
					}
				}
			}
		}
	}
	kinds := map[string]int{}
	for i, doc := range strings.Split(string(b), "\n---\n") {
		var meta struct {
			Kind string
			Data map[string]string
		}
		if err := yaml.UnmarshalStrict([]byte(doc), &meta); err != nil {
			// Strict only about syntax here; fields are checked below.
			if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
				t.Fatalf("document %d: %v", i, err)
			}
		}
		kinds[meta.Kind]++
		switch meta.Kind {
		case "DaemonSet":
			if err := yaml.Unmarshal([]byte(doc), &ds); err != nil {
				t.Fatal(err)
			}
		case "ConfigMap":
			if _, err := lease.ParseConfig([]byte(meta.Data["net-conf.json"])); err != nil {
				t.Errorf("ConfigMap net-conf.json: %v", err)
			}
		}
	}
	for _, k := range []string{"Namespace", "ServiceAccount", "ConfigMap", "DaemonSet"} {
		if kinds[k] != 1 {
			t.Errorf("%d documents of kind %s, want 1", kinds[k], k)
		}
	}
	spec := ds.Spec.Template.Spec
	if !spec.HostNetwork {
		t.Error("the DaemonSet is not on the host network")
	}
	if len(spec.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(spec.Containers))
	}
	c := spec.Containers[0]
	if !slices.Equal(c.Command, []string{"/opt/bin/flanneld"}) { // kube-flannel.yml's, laid out by make rootfs
		t.Errorf("command %q", c.Command)
	}
	checkRunArgs(t, "DaemonSet args", c.Args)
	caps := c.SecurityContext.Capabilities
	slices.Sort(caps.Add)
	if c.SecurityContext.Privileged || !slices.Equal(caps.Add, []string{"NET_ADMIN", "NET_RAW"}) || !slices.Equal(caps.Drop, []string{"ALL"}) {
		t.Errorf("securityContext: privileged %v, add %v, drop %v; want unprivileged with only NET_ADMIN and NET_RAW", c.SecurityContext.Privileged, caps.Add, caps.Drop)
	}
	hostPaths := map[string]string{}
	for _, v := range spec.Volumes {
		if v.HostPath != nil {
			hostPaths[v.Name] = v.HostPath.Path
		}
	}
	mounted := map[string]string{}
	for _, m := range c.VolumeMounts {
		mounted[m.MountPath] = hostPaths[m.Name]
	}
	for _, p := range []string{"/run/flannel", "/dev/net/tun"} {
		if mounted[p] != p {
			t.Errorf("%s is not the host's %s (mounts %v)", p, p, mounted)
		}
	}
	if kubeMode {
		if !slices.Contains(c.Args, "--kube-subnet-mgr") || kinds["ClusterRole"] != 1 || kinds["ClusterRoleBinding"] != 1 {
			t.Errorf("not in kube mode: args %q, kinds %v", c.Args, kinds)
		}
		netConf := false
		for _, m := range c.VolumeMounts {
			netConf = netConf || (m.Name == "weft-cfg" && m.MountPath == "/etc/kube-flannel/")
		}
		if !netConf {
			t.Error("the ConfigMap's net-conf.json is not at --net-config-path's default /etc/kube-flannel/net-conf.json")
		}
	}
	port := 0
	for _, a := range c.Args {
		if v, ok := strings.CutPrefix(a, "--healthz-port="); ok {
			port, _ = strconv.Atoi(v)
		}
	}
	if c.ReadinessProbe.HTTPGet.Path != "/readyz" || c.ReadinessProbe.HTTPGet.Port != port || port == 0 {
		t.Errorf("readiness probe %+v, want /readyz on --healthz-port %d", c.ReadinessProbe, port)
	}
	if c.LivenessProbe.HTTPGet.Path != "/healthz" || c.LivenessProbe.HTTPGet.Port != port {
		t.Errorf("liveness probe %+v, want /healthz on --healthz-port %d", c.LivenessProbe, port)
	}
}

// lines are the non-empty lines of s, trimmed.
func lines(s string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return out
}
