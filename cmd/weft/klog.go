package main

import (
	"flag"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
)

// flanneld registers only three of klog's flags on its own flag set
// (flannel v0.28.9 main.go: copyFlag("v"), copyFlag("vmodule"),
// copyFlag("log_backtrace_at"); the others, --logtostderr, --log_dir,
// --alsologtostderr, --stderrthreshold, ..., make flanneld exit with "flag
// provided but not defined"). weft run takes the same three, with klog's
// syntax, so a kube-flannel.yml command line or FLANNELD_V,
// FLANNELD_VMODULE and FLANNELD_LOG_BACKTRACE_AT (flanneld reads them
// through flagutil.SetFlagsFromEnv) work unchanged:
//
//   - -v N: 0 logs at slog's Info level, 1 or more at Debug (weft has no
//     finer verbosity levels; everything flanneld logs at V(1) and above
//     is Debug in weft).
//   - --vmodule and --log_backtrace_at are checked as klog checks them and
//     otherwise have no effect (slog has no per-file levels or backtraces);
//     weft says so once at startup.

// logLevel is klog's -v N as an slog level.
func logLevel(v int) slog.Level {
	if v > 0 {
		return slog.LevelDebug
	}
	return slog.LevelInfo
}

// vmoduleFlag is klog's --vmodule: a comma-separated list of pattern=N.
type vmoduleFlag struct{ s string }

func (f *vmoduleFlag) String() string { return f.s }
func (f *vmoduleFlag) Set(v string) error {
	for _, pat := range strings.Split(v, ",") {
		if pat == "" {
			continue // klog allows empty entries ("a=1,,b=2")
		}
		name, level, ok := strings.Cut(pat, "=")
		if n, err := strconv.ParseInt(level, 10, 32); !ok || name == "" || err != nil || n < 0 {
			return fmt.Errorf("syntax error: expect comma-separated list of filename=N (klog's --vmodule), got %q", pat)
		}
	}
	f.s = v
	return nil
}

// backtraceFlag is klog's --log_backtrace_at: file.go:N, or empty.
type backtraceFlag struct{ s string }

func (f *backtraceFlag) String() string { return f.s }
func (f *backtraceFlag) Set(v string) error {
	if v != "" {
		file, line, ok := strings.Cut(v, ":")
		if n, err := strconv.Atoi(line); !ok || file == "" || strings.Contains(line, ":") || err != nil || n <= 0 {
			return fmt.Errorf("syntax error: expect file.go:234 (klog's --log_backtrace_at), got %q", v)
		}
	}
	f.s = v
	return nil
}

// klogFlags are the klog flags beside -v that flanneld takes.
type klogFlags struct {
	vmodule   vmoduleFlag
	backtrace backtraceFlag
}

func (k *klogFlags) register(fs *flag.FlagSet) {
	fs.Var(&k.vmodule, "vmodule", "accepted for flanneld (klog) compatibility and checked, no effect: comma-separated list of pattern=N")
	fs.Var(&k.backtrace, "log_backtrace_at", "accepted for flanneld (klog) compatibility and checked, no effect: file.go:N")
}

// warnUnused says, once, which of them were given and do nothing.
func (k *klogFlags) warnUnused(log *slog.Logger) {
	if k.vmodule.s != "" {
		log.Info("--vmodule has no effect in weft (slog has no per-file levels); -v sets the level", "vmodule", k.vmodule.s)
	}
	if k.backtrace.s != "" {
		log.Info("--log_backtrace_at has no effect in weft", "log_backtrace_at", k.backtrace.s)
	}
}
