package main

import (
	"os"
	"strings"
	"testing"
)

// TestHelpExitsZero: every command answers -h and --help with its usage
// and exit code 0, as does weft itself; --version and version print it,
// and weft run (flanneld) takes --version anywhere on its command line.
func TestHelpExitsZero(t *testing.T) {
	stderr := os.Stderr
	os.Stderr, _ = os.Open(os.DevNull)
	defer func() { os.Stderr = stderr }()
	for name := range commands {
		for _, h := range []string{"-h", "--help"} {
			if code := dispatch([]string{"weft", name, h}); code != 0 {
				t.Errorf("weft %s %s: exit %d", name, h, code)
			}
		}
	}
	for _, argv := range [][]string{{"weft", "-h"}, {"weft", "--help"}, {"weft", "--version"}, {"weft", "version"},
		{"/opt/bin/flanneld", "--version"}, {"/opt/bin/flanneld", "-h"},
		{"/opt/bin/flanneld", "--ip-masq", "--kube-subnet-mgr", "-v", "2", "--version"}, {"weft", "run", "--iface", "eth0", "-version"}} {
		if code := dispatch(argv); code != 0 {
			t.Errorf("%v: exit %d", argv, code)
		}
	}
	if code := dispatch([]string{"weft", "no-such-command"}); code != 2 {
		t.Errorf("unknown command: exit %d", code)
	}
}

// weft capture refuses a queue the daemon would refuse, before connecting.
func TestCaptureBufferSizeBound(t *testing.T) {
	err := runCapture([]string{"--debug-socket", t.TempDir() + "/none.sock", "--buffer-size", "1099511627776"})
	if err == nil || !strings.Contains(err.Error(), "--buffer-size") {
		t.Fatalf("%v", err)
	}
}
