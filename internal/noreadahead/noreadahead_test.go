package noreadahead

import (
	"os"
	"strings"
	"testing"
)

// The test binary's own mappings are advised, and the kernel shows it: a
// VMA with MADV_RANDOM carries the "rr" flag in smaps' VmFlags.
func TestAdvise(t *testing.T) {
	if n := Advise(); n == 0 {
		t.Fatal("no mapping of the executable was advised")
	}
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		t.Fatal(err)
	}
	inExe, checked := false, 0
	for _, line := range strings.Split(string(b), "\n") {
		fields := strings.Fields(line)
		if len(fields) > 0 && strings.Contains(fields[0], "-") && !strings.HasSuffix(fields[0], ":") {
			inExe = len(fields) == 6 && fields[5] == exe
			continue
		}
		if inExe && len(fields) > 0 && fields[0] == "VmFlags:" {
			checked++
			if !strings.Contains(line, " rr") {
				t.Errorf("a mapping of %s is not advised random: %s", exe, line)
			}
		}
	}
	if checked == 0 {
		t.Fatal("no mapping of the executable in smaps")
	}
}
