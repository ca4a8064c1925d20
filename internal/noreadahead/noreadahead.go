// Package noreadahead stops the kernel from reading the weft binary ahead
// of use. Its init asks for random access (MADV_RANDOM) on the
// executable's file mappings, so a page fault there reads that page alone
// instead of a readahead window.
//
// Why: the binary is ~90 MB, of which a running daemon uses ~2.5 MB (code
// and read-only data referenced in 10 s of steady work at 5,000 peers),
// but a fault reads the device's read_ahead_kb around the page (128 KiB by
// default, 8 MiB on some virtual disks). In a memory cgroup the read-ahead
// pages are charged to the pod: limited to kube-flannel.yml's 50 MiB on a
// disk with 8 MiB readahead, each fault read 8 MiB that pushed out the pages
// in use, and weft spent minutes in major faults without finishing its
// start. Without the limit it only inflates RSS.
//
// Import it for its side effect, as early as possible: what the runtime
// and the packages initialized before it touched has been read already
// (packages are initialized in import-path order as their dependencies
// allow, so this one comes before most of the large ones).
package noreadahead

import (
	"bufio"
	"os"
	"strconv"
	"strings"
	"syscall"
)

func init() { Advise() }

// Advise applies MADV_RANDOM to the executable's file-backed mappings and
// reports how many it advised. On failure the kernel's default stays.
func Advise() int {
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		return 0
	}
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		return 0
	}
	defer f.Close()
	n := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// 00400000-01c3d000 r-xp 00000000 fe:01 1234 /usr/bin/weft
		fields := strings.Fields(sc.Text())
		if len(fields) != 6 || fields[5] != exe {
			continue
		}
		lo, hi, ok := strings.Cut(fields[0], "-")
		if !ok {
			continue
		}
		start, err1 := strconv.ParseUint(lo, 16, 64)
		end, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 != nil || err2 != nil || end <= start {
			continue
		}
		if _, _, e := syscall.Syscall(syscall.SYS_MADVISE, uintptr(start), uintptr(end-start), syscall.MADV_RANDOM); e == 0 {
			n++
		}
	}
	return n
}
