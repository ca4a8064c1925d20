package scale

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// memCgroup is a memory cgroup with a hard limit that weft run is started
// in, as a pod's container is (kube-flannel.yml limits flanneld's to 50
// MiB): it shows whether weft lives within such a limit, where the kernel
// reclaims the binary's pages before it kills, which VmRSS alone cannot.
// cgroup v2 (a child of the root) or v1 (a child of this process's memory
// cgroup).
type memCgroup struct {
	dir string
	v2  bool
}

func newMemCgroup(limit int64, name string) (*memCgroup, error) {
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil {
		ctl, _ := os.ReadFile("/sys/fs/cgroup/cgroup.subtree_control")
		if !strings.Contains(" "+string(ctl)+" ", " memory ") {
			if err := os.WriteFile("/sys/fs/cgroup/cgroup.subtree_control", []byte("+memory"), 0); err != nil {
				return nil, fmt.Errorf("cgroup v2: enabling the memory controller: %v", err)
			}
		}
		cg := &memCgroup{dir: filepath.Join("/sys/fs/cgroup", name), v2: true}
		return cg, cg.make("memory.max", limit)
	}
	self, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return nil, err
	}
	for _, line := range strings.Split(string(self), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) == 3 && strings.Contains(","+parts[1]+",", ",memory,") {
			cg := &memCgroup{dir: filepath.Join("/sys/fs/cgroup/memory", parts[2], name)}
			return cg, cg.make("memory.limit_in_bytes", limit)
		}
	}
	return nil, errors.New("no memory cgroup (neither v2 nor v1's memory controller)")
}

func (c *memCgroup) make(file string, limit int64) error {
	if err := os.Mkdir(c.dir, 0o755); err != nil {
		return fmt.Errorf("memory cgroup: %v", err)
	}
	if err := os.WriteFile(filepath.Join(c.dir, file), []byte(strconv.FormatInt(limit, 10)), 0); err != nil {
		c.remove()
		return fmt.Errorf("memory cgroup: setting %s: %v", file, err)
	}
	return nil
}

// wrap writes an executable beside bin that waits until it is in the
// cgroup, then runs bin. The lab starts processes through ip netns exec,
// which mounts the namespace's own /sys (no cgroupfs), so a process cannot
// join by itself: the bench moves it (join), and weft starts only then,
// charged from its first page and seeing its limit.
func (c *memCgroup) wrap(bin string) (string, error) {
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

// join moves the process pid into the cgroup.
func (c *memCgroup) join(pid int) error {
	if err := os.WriteFile(filepath.Join(c.dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0); err != nil {
		return fmt.Errorf("memory cgroup: moving weft run in: %v", err)
	}
	return nil
}

// peak is the most memory the cgroup was charged (its processes' memory
// and the page cache they brought in), and ooms how often the kernel
// killed in it.
func (c *memCgroup) peak() (peak uint64, ooms uint64) {
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

// remove removes the cgroup once its processes are gone.
func (c *memCgroup) remove() { os.Remove(c.dir) }
