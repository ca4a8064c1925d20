// Package memcg runs a process of the benches and tests in a memory cgroup
// with a hard limit, as a pod's container is (kube-flannel.yml limits
// flanneld's to 50 MiB), and reads what the kernel charged it. The scale
// bench (etcd mode) and the e2e kube scale test both use it.
package memcg

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Cgroup is a memory cgroup with a hard limit that weft run is started
// in, as a pod's container is (kube-flannel.yml limits flanneld's to 50
// MiB): it shows whether weft lives within such a limit, where the kernel
// reclaims the binary's pages before it kills, which VmRSS alone cannot.
// cgroup v2 (a child of the root) or v1 (a child of this process's memory
// cgroup).
type Cgroup struct {
	dir string
	v2  bool
}

// New creates the cgroup name with the hard limit limit (bytes).
func New(limit int64, name string) (*Cgroup, error) {
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil {
		ctl, _ := os.ReadFile("/sys/fs/cgroup/cgroup.subtree_control")
		if !strings.Contains(" "+string(ctl)+" ", " memory ") {
			if err := os.WriteFile("/sys/fs/cgroup/cgroup.subtree_control", []byte("+memory"), 0); err != nil {
				return nil, fmt.Errorf("cgroup v2: enabling the memory controller: %v", err)
			}
		}
		cg := &Cgroup{dir: filepath.Join("/sys/fs/cgroup", name), v2: true}
		return cg, cg.make("memory.max", limit)
	}
	self, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return nil, err
	}
	for _, line := range strings.Split(string(self), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) == 3 && strings.Contains(","+parts[1]+",", ",memory,") {
			cg := &Cgroup{dir: filepath.Join("/sys/fs/cgroup/memory", parts[2], name)}
			return cg, cg.make("memory.limit_in_bytes", limit)
		}
	}
	return nil, errors.New("no memory cgroup (neither v2 nor v1's memory controller)")
}

func (c *Cgroup) make(file string, limit int64) error {
	if err := os.Mkdir(c.dir, 0o755); err != nil {
		return fmt.Errorf("memory cgroup: %v", err)
	}
	if err := os.WriteFile(filepath.Join(c.dir, file), []byte(strconv.FormatInt(limit, 10)), 0); err != nil {
		c.Remove()
		return fmt.Errorf("memory cgroup: setting %s: %v", file, err)
	}
	return nil
}

// Wrap writes an executable beside bin that waits until it is in the
// cgroup, then runs bin. The lab starts processes through ip netns exec,
// which mounts the namespace's own /sys (no cgroupfs), so a process cannot
// join by itself: the caller moves it (Join), and weft starts only then,
// charged from its first page and seeing its limit.
func (c *Cgroup) Wrap(bin string) (string, error) {
	script := bin + "-in-cgroup"
	// ip netns exec's fresh /sys has no cgroupfs: mount the hierarchy
	// again, in its private mount namespace, so weft sees its limit as it
	// would in a pod.
	mount := "mount -t cgroup2 none /sys/fs/cgroup"
	if !c.v2 {
		mount = "mount -t tmpfs none /sys/fs/cgroup && mkdir /sys/fs/cgroup/memory && mount -t cgroup -o memory none /sys/fs/cgroup/memory"
	}
	s := "#!/bin/sh\n" +
		"while ! grep -q '/" + filepath.Base(c.dir) + "$' /proc/$$/cgroup; do sleep 0.01; done\n" +
		mount + " || exit 1\n" +
		"exec " + bin + " \"$@\"\n"
	return script, os.WriteFile(script, []byte(s), 0o755)
}

// Join moves the process pid into the cgroup.
func (c *Cgroup) Join(pid int) error {
	if err := os.WriteFile(filepath.Join(c.dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0); err != nil {
		return fmt.Errorf("memory cgroup: moving weft run in: %v", err)
	}
	return nil
}

// Peak is the most memory the cgroup was charged (its processes' memory
// and the page cache they brought in), and ooms how often the kernel
// killed in it.
func (c *Cgroup) Peak() (peak uint64, ooms uint64) {
	file, events, key := "memory.max_usage_in_bytes", "memory.oom_control", "oom_kill"
	if c.v2 {
		file, events = "memory.peak", "memory.events"
	}
	if b, err := os.ReadFile(filepath.Join(c.dir, file)); err == nil {
		peak, _ = strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	}
	if b, err := os.ReadFile(filepath.Join(c.dir, events)); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, key+" "); ok {
				ooms, _ = strconv.ParseUint(v, 10, 64)
			}
		}
	}
	return peak, ooms
}

// Charge is what the cgroup is charged now, and of it the anonymous
// memory (heap, stacks: reclaimable only by swapping) and the page cache
// (the binary's pages, files written: the kernel reclaims these first, so
// a cgroup at its limit is not yet one about to be OOM-killed).
func (c *Cgroup) Charge() (usage, anon, file uint64) {
	cur, anonKey, fileKey := "memory.usage_in_bytes", "total_rss", "total_cache"
	if c.v2 {
		cur, anonKey, fileKey = "memory.current", "anon", "file"
	}
	if b, err := os.ReadFile(filepath.Join(c.dir, cur)); err == nil {
		usage, _ = strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	}
	if b, err := os.ReadFile(filepath.Join(c.dir, "memory.stat")); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			k, v, _ := strings.Cut(line, " ")
			switch k {
			case anonKey:
				anon, _ = strconv.ParseUint(v, 10, 64)
			case fileKey:
				file, _ = strconv.ParseUint(v, 10, 64)
			}
		}
	}
	return usage, anon, file
}

// Remove removes the cgroup once its processes are gone.
func (c *Cgroup) Remove() { os.Remove(c.dir) }

// ColdCopy copies the executable src to dst and drops dst's pages from the
// page cache, so a process that runs it starts as on a freshly booted
// host: the labs run other processes (weft etcd) from the same file, and
// the kernel maps the cached pages around each one a process touches
// (fault-around) and charges a page to the cgroup that first read it, so
// on a shared file the process's RSS and its cgroup's charge would not be
// its own.
func ColdCopy(src, dst string) (string, error) {
	in, err := os.Open(src)
	if err != nil {
		return "", err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o755)
	if err != nil {
		return "", err
	}
	_, err = io.Copy(out, in)
	if err == nil {
		err = out.Sync()
	}
	if err == nil {
		err = unix.Fadvise(int(out.Fd()), 0, 0, unix.FADV_DONTNEED)
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", fmt.Errorf("copying %s: %v", src, err)
	}
	return dst, nil
}

// ParseSize reads a size as GOMEMLIMIT does: a number with an optional
// unit suffix B, KiB, MiB or GiB (50MiB).
func ParseSize(s string) (int64, error) {
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"B", 1}} {
		if v, ok := strings.CutSuffix(s, u.suffix); ok {
			s, mult = v, u.mult
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("%q: not a size", s)
	}
	return n * mult, nil
}
