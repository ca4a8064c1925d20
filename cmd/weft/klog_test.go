package main

import (
	"flag"
	"io"
	"log/slog"
	"strings"
	"testing"
)

func parseRun(t *testing.T, args []string) (*runFlags, error) {
	t.Helper()
	fs := flag.NewFlagSet("weft run", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var f runFlags
	f.register(fs)
	if err := fs.Parse(args); err != nil {
		return &f, err
	}
	return &f, applyEnv(fs, envName)
}

// TestKlogFlags: the klog flags flanneld v0.28.9 takes (-v, --vmodule,
// --log_backtrace_at, copied onto its flag set in main.go) are accepted
// with klog's syntax, from the command line or FLANNELD_*; klog's others
// are refused as flanneld refuses them.
func TestKlogFlags(t *testing.T) {
	f, err := parseRun(t, []string{"-v", "2", "--vmodule=vxlan*=4,main=2", "--log_backtrace_at=main.go:229"})
	if err != nil || f.verbosity != 2 || f.klog.vmodule.s != "vxlan*=4,main=2" || f.klog.backtrace.s != "main.go:229" {
		t.Fatalf("command line: %+v %v", f.klog, err)
	}
	t.Setenv("FLANNELD_V", "4")
	t.Setenv("FLANNELD_VMODULE", "iptables=3")
	t.Setenv("FLANNELD_LOG_BACKTRACE_AT", "vxlan.go:128")
	f, err = parseRun(t, nil)
	if err != nil || f.verbosity != 4 || f.klog.vmodule.s != "iptables=3" || f.klog.backtrace.s != "vxlan.go:128" {
		t.Fatalf("environment: v %d, %+v, %v", f.verbosity, f.klog, err)
	}
	t.Setenv("FLANNELD_V", "")
	t.Setenv("FLANNELD_VMODULE", "")
	t.Setenv("FLANNELD_LOG_BACKTRACE_AT", "")
	for args, want := range map[string]string{
		"--vmodule=vxlan":               "vmodule",
		"--vmodule=vxlan=x":             "vmodule",
		"--log_backtrace_at=main.go":    "log_backtrace_at",
		"--log_backtrace_at=main.go:-1": "log_backtrace_at",
		"-v=high":                       "-v",
		"--logtostderr":                 "logtostderr",
		"--log_dir=/tmp":                "log_dir",
		"--alsologtostderr":             "alsologtostderr",
		"--stderrthreshold=1":           "stderrthreshold",
	} {
		if _, err := parseRun(t, strings.Fields(args)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v; want an error naming %s", args, err, want)
		}
	}
	for v, want := range map[int]slog.Level{0: slog.LevelInfo, 1: slog.LevelDebug, 10: slog.LevelDebug} {
		if got := logLevel(v); got != want {
			t.Errorf("-v %d: level %v, want %v", v, got, want)
		}
	}
	for name, env := range map[string]string{"vmodule": "FLANNELD_VMODULE", "log_backtrace_at": "FLANNELD_LOG_BACKTRACE_AT"} {
		if got := envName(name); got != env {
			t.Errorf("--%s reads %s, want %s", name, got, env)
		}
	}
}
