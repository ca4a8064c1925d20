// Package exepages keeps the weft binary's pages in memory only while
// they are used. Its init asks for random access (MADV_RANDOM) on the
// executable's file mappings, so a page fault there reads that page alone
// instead of a readahead window; Release hands back the pages of code and
// read-only data that start-up touched and steady work does not.
//
// Why: the binary is ~50 MB, of which a running daemon uses a few MB (code
// and read-only data referenced in steady work at 5,000 peers), but:
//   - A fault reads the device's read_ahead_kb around the page (128 KiB by
//     default, 8 MiB on some virtual disks). In a memory cgroup the
//     read-ahead pages are charged to the pod: limited to kube-flannel.yml's
//     50 MiB on a disk with 8 MiB readahead, each fault read 8 MiB that
//     pushed out the pages in use, and weft spent minutes in major faults
//     without finishing its start.
//   - The runtime and ~700 package initializers touch code and data all
//     over the binary once, and the kernel maps the cached neighbours of
//     each page faulted in (fault-around, 64 KiB). After start ~25 MiB of
//     the binary stays mapped, counted in RSS, though never used again;
//     the kernel takes it back only under memory pressure.
//
// Import it for its side effect, as early as possible: what the runtime
// and the packages initialized before it touched has been read already
// (packages are initialized in import-path order as their dependencies
// allow, so this one comes before most of the large ones).
package exepages

import (
	"bufio"
	"errors"
	"os"
	"strconv"
	"strings"
	"syscall"
)

func init() { Advise() }

// madvPageout is MADV_PAGEOUT (Linux 5.4), which package syscall lacks.
const madvPageout = 21

// Advise applies MADV_RANDOM to the executable's file-backed mappings and
// reports how many it advised. On failure the kernel's default stays.
func Advise() int {
	n := 0
	_ = eachMapping(func(m mapping) {
		if madvise(m, syscall.MADV_RANDOM) == nil {
			n++
		}
	})
	return n
}

// Release reclaims the executable's read-only pages (code, read-only data,
// the runtime's tables) that only this process maps: MADV_PAGEOUT, or
// MADV_DONTNEED (unmapped, left in the page cache) on kernels before 5.4.
// The pages in use fault back in on their next use, one page each (see
// Advise); pages other processes map are left alone, and the writable
// data segment is never touched. It returns how many mappings it
// released. Call it once work that touched much of the binary (start, a
// relist) is done; it costs a walk of the page tables, and afterwards a
// fault per page of code in use.
func Release() (int, error) {
	n := 0
	var errs []error
	err := eachMapping(func(m mapping) {
		if m.writable {
			return
		}
		err := madvise(m, madvPageout)
		if errors.Is(err, syscall.EINVAL) {
			err = madvise(m, syscall.MADV_DONTNEED)
		}
		if err != nil {
			errs = append(errs, err)
			return
		}
		n++
	})
	return n, errors.Join(append(errs, err)...)
}

// mapping is one of the executable's file-backed mappings.
type mapping struct {
	start, end uintptr
	writable   bool
}

func madvise(m mapping, advice int) error {
	if _, _, e := syscall.Syscall(syscall.SYS_MADVISE, m.start, m.end-m.start, uintptr(advice)); e != 0 {
		return e
	}
	return nil
}

// eachMapping calls f for each mapping of the executable's file in
// /proc/self/maps.
func eachMapping(f func(mapping)) error {
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		return err
	}
	file, err := os.Open("/proc/self/maps")
	if err != nil {
		return err
	}
	defer file.Close()
	sc := bufio.NewScanner(file)
	for sc.Scan() {
		if m, ok := parseMapping(sc.Text(), exe); ok {
			f(m)
		}
	}
	return sc.Err()
}

// parseMapping reads a line of /proc/self/maps, e.g.
// "00400000-01c3d000 r-xp 00000000 fe:01 1234 /usr/bin/weft", if it maps
// the file exe.
func parseMapping(line, exe string) (mapping, bool) {
	fields := strings.Fields(line)
	if len(fields) != 6 || fields[5] != exe || len(fields[1]) < 2 {
		return mapping{}, false
	}
	lo, hi, ok := strings.Cut(fields[0], "-")
	if !ok {
		return mapping{}, false
	}
	start, err1 := strconv.ParseUint(lo, 16, 64)
	end, err2 := strconv.ParseUint(hi, 16, 64)
	if err1 != nil || err2 != nil || end <= start {
		return mapping{}, false
	}
	return mapping{start: uintptr(start), end: uintptr(end), writable: fields[1][1] == 'w'}, true
}
