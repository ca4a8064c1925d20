package exepages

import (
	"os"
	"strconv"
	"strings"
	"testing"
)

// The test binary's own mappings are advised, and the kernel shows it: a
// VMA with MADV_RANDOM carries the "rr" flag in smaps' VmFlags.
func TestAdvise(t *testing.T) {
	if n := Advise(); n == 0 {
		t.Fatal("no mapping of the executable was advised")
	}
	exe, lines := smaps(t)
	inExe, checked := false, 0
	for _, line := range lines {
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

// written is a global in the writable data segment, which Release must
// leave alone.
var written = []int{1, 2, 3}

// Release takes the binary's read-only pages out of the process's RSS and
// leaves its data; the code runs on (its pages fault back in).
func TestRelease(t *testing.T) {
	written[1] = 42
	ro, rw := exeRss(t)
	if ro == 0 {
		t.Fatal("no resident read-only page of the executable before Release")
	}
	n, err := Release()
	if err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Fatal("no mapping released")
	}
	ro2, rw2 := exeRss(t)
	t.Logf("read-only: %d -> %d KiB resident; writable: %d -> %d KiB", ro, ro2, rw, rw2)
	// What the test itself runs between the two reads faults back in:
	// allow that, not the start-up's pages.
	if ro2 > ro/2 {
		t.Errorf("read-only pages resident after Release: %d KiB of %d before", ro2, ro)
	}
	if rw2 < rw/2 {
		t.Errorf("the writable segment was released: %d KiB resident of %d", rw2, rw)
	}
	if written[1] != 42 {
		t.Errorf("a written global reads %d after Release, want 42", written[1])
	}
}

// exeRss sums the resident KiB of the executable's read-only and writable
// mappings in /proc/self/smaps.
func exeRss(t *testing.T) (ro, rw int) {
	t.Helper()
	exe, lines := smaps(t)
	var cur *int
	for _, line := range lines {
		if m, ok := parseMapping(line, exe); ok {
			cur = &ro
			if m.writable {
				cur = &rw
			}
			continue
		}
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		if strings.Contains(fields[0], "-") && !strings.HasSuffix(fields[0], ":") {
			cur = nil // another mapping
			continue
		}
		if cur != nil && fields[0] == "Rss:" && len(fields) >= 2 {
			kb, err := strconv.Atoi(fields[1])
			if err != nil {
				t.Fatal(line)
			}
			*cur += kb
		}
	}
	return ro, rw
}

// smaps is the executable's path and the lines of /proc/self/smaps.
func smaps(t *testing.T) (exe string, lines []string) {
	t.Helper()
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		t.Fatal(err)
	}
	return exe, strings.Split(string(b), "\n")
}
