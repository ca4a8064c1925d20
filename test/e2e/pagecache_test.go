package e2e

import (
	"debug/elf"
	"fmt"
	"os"
	"sort"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// cachedByPart says how much of the binary bin is in the page cache, by
// ELF section and, for .text, by the Go package whose functions the
// pages hold (the largest parts first): for a binary of its own, copied
// cold (memcg.ColdCopy), that is what the process read of it, so where
// its file-backed memory goes. Only mincore(2) on a mapping of the file
// is used: it faults nothing in.
func cachedByPart(bin string, top int) (string, error) {
	f, err := os.Open(bin)
	if err != nil {
		return "", err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", err
	}
	data, err := unix.Mmap(int(f.Fd()), 0, int(fi.Size()), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return "", err
	}
	defer unix.Munmap(data)
	page := os.Getpagesize()
	vec := make([]byte, (len(data)+page-1)/page)
	if _, _, e := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&data[0])), uintptr(len(data)), uintptr(unsafe.Pointer(&vec[0]))); e != 0 {
		return "", fmt.Errorf("mincore: %w", e)
	}
	ef, err := elf.NewFile(f)
	if err != nil {
		return "", err
	}
	// Each .text page goes to the package of the function it starts in.
	syms, _ := ef.Symbols()
	text := ef.Section(".text")
	type fn struct {
		off uint64
		pkg string
	}
	var fns []fn
	for _, s := range syms {
		if text != nil && elf.ST_TYPE(s.Info) == elf.STT_FUNC && s.Value >= text.Addr && s.Value < text.Addr+text.Size {
			fns = append(fns, fn{s.Value - text.Addr + text.Offset, goPackage(s.Name)})
		}
	}
	sort.Slice(fns, func(i, j int) bool { return fns[i].off < fns[j].off })
	parts := map[string]int{}
	total := 0
	for _, sec := range ef.Sections {
		if sec.Type == elf.SHT_NOBITS || sec.Flags&elf.SHF_ALLOC == 0 || sec.Size == 0 {
			continue
		}
		for p := sec.Offset / uint64(page); p*uint64(page) < sec.Offset+sec.Size && p < uint64(len(vec)); p++ {
			if vec[p]&1 == 0 {
				continue
			}
			name := sec.Name
			if sec == text {
				i := sort.Search(len(fns), func(i int) bool { return fns[i].off > p*uint64(page) }) - 1
				if i >= 0 {
					name = ".text " + fns[i].pkg
				}
			}
			parts[name] += page
			total += page
		}
	}
	names := make([]string, 0, len(parts))
	for n := range parts {
		names = append(names, n)
	}
	sort.Slice(names, func(i, j int) bool { return parts[names[i]] > parts[names[j]] })
	var b strings.Builder
	fmt.Fprintf(&b, "%d KiB cached of %d KiB", total>>10, len(data)>>10)
	for i, n := range names {
		if i == top {
			break
		}
		fmt.Fprintf(&b, "; %s %d KiB", n, parts[n]>>10)
	}
	return b.String(), nil
}

// goPackage is the package group of a Go symbol name: weft's package
// (weft/encap/kernel), the standard library's top package (runtime,
// crypto), else the first three path elements (go.etcd.io/etcd/server,
// k8s.io/apimachinery/pkg).
func goPackage(sym string) string {
	slash := strings.LastIndexByte(sym, '/')
	dot := strings.IndexByte(sym[slash+1:], '.')
	if dot < 0 {
		return sym
	}
	path := sym[:slash+1+dot]
	if p, ok := strings.CutPrefix(path, "github.com/weft-net/weft/"); ok {
		return "weft/" + p
	}
	el := strings.Split(path, "/")
	if !strings.Contains(el[0], ".") {
		return el[0]
	}
	return strings.Join(el[:min(3, len(el))], "/")
}
