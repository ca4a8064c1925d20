// Package labtest builds namespace labs for tests under the project's rules:
// under CI=true a test that needs root runs (and fails without it), never
// skips; elsewhere it skips when not root. Every lab is closed by
// t.Cleanup, also when the test fails midway, and a failed test gets the
// lab's process logs in its output.
package labtest

import (
	"os"
	"testing"

	"github.com/weft-net/weft/bench/lab"
)

// RequireRoot skips t when not root, unless CI=true, where it fails it.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("this test needs root (network namespaces); CI must run it as root")
	}
	t.Skip("needs root (network namespaces); run as root or with CI=true")
}

// New builds a lab for t and registers its teardown. The state dir is
// under t.TempDir unless opts.Dir is set.
func New(t testing.TB, opts lab.Options) *lab.Lab {
	t.Helper()
	RequireRoot(t)
	if opts.Dir == "" {
		opts.Dir = t.TempDir()
	}
	l, err := lab.New(opts)
	if err != nil {
		t.Fatalf("lab.New: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("lab %s process logs:\n%s", l.Prefix, l.Logs())
		}
		if err := l.Close(); err != nil {
			t.Errorf("lab %s: Close: %v", l.Prefix, err)
		}
	})
	return l
}
