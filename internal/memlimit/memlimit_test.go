package memlimit

import (
	"context"
	"os"
	"path/filepath"
	"runtime/debug"
	"testing"
	"time"
)

func write(t *testing.T, name, s string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(name), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(name, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestLimit(t *testing.T) {
	for _, tc := range []struct {
		name   string
		files  map[string]string
		cgroup string
		want   int64
		ok     bool
	}{
		{"v2 pod", map[string]string{"kubepods/pod1/c1/memory.max": "52428800\n", "kubepods/memory.max": "max\n"},
			"0::/kubepods/pod1/c1\n", 52428800, true},
		{"v2 an ancestor is smaller", map[string]string{"a/b/memory.max": "max\n", "a/memory.max": "1048576\n"},
			"0::/a/b\n", 1048576, true},
		{"v2 no limit", map[string]string{"a/memory.max": "max\n"}, "0::/a\n", 0, false},
		{"v2 namespaced: the container's cgroup is the mount's root", map[string]string{"memory.max": "41943040\n"},
			"0::/\n", 41943040, true},
		{"v1 pod", map[string]string{"memory/kubepods/p/memory.limit_in_bytes": "52428800\n"},
			"12:cpu,cpuacct:/kubepods/p\n4:memory:/kubepods/p\n", 52428800, true},
		{"v1 unlimited", map[string]string{"memory/x/memory.limit_in_bytes": "9223372036854771712\n"},
			"4:memory:/x\n", 0, false},
		{"v1 mounted at the container's cgroup", map[string]string{"memory/memory.limit_in_bytes": "104857600\n"},
			"4:memory:/docker/abc\n", 104857600, true},
		{"hybrid: the smaller of v1 and v2", map[string]string{"memory/x/memory.limit_in_bytes": "200\n", "x/memory.max": "100\n"},
			"4:memory:/x\n0::/x\n", 100, true},
		{"garbage", map[string]string{"memory.max": "lots\n"}, "0::/\nnonsense\n::\n", 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			for name, s := range tc.files {
				write(t, filepath.Join(root, name), s)
			}
			got, ok := Limit(root, tc.cgroup)
			if got != tc.want || ok != tc.ok {
				t.Errorf("Limit = %d, %v; want %d, %v", got, ok, tc.want, tc.ok)
			}
		})
	}
}

func TestSoft(t *testing.T) {
	for _, tc := range []struct{ cgroup, want int64 }{
		{50 << 20, 36 << 20}, // kube-flannel.yml's limit
		{100 << 20, 86 << 20},
		{20 << 20, 10 << 20},
		{1 << 30, 1<<30 - 14<<20},
	} {
		if got := Soft(tc.cgroup); got != tc.want {
			t.Errorf("Soft(%d MiB) = %d MiB; want %d MiB", tc.cgroup>>20, got>>20, tc.want>>20)
		}
	}
}

func TestLean(t *testing.T) {
	for _, tc := range []struct {
		live    uint64
		ceiling int64
		want    int64
	}{
		{0, 0, LeanFloor},
		{15 << 20, 0, LeanFloor}, // 5,000 peers
		{16 << 20, 0, LeanFloor},
		{40 << 20, 0, 80 << 20}, // a larger cluster: GOGC=100's room
		{1 << 63, 0, 1 << 62},   // no overflow
		{15 << 20, Soft(50 << 20), LeanFloor},
		{20 << 20, Soft(50 << 20), 36 << 20}, // kube-flannel.yml's pod: the cgroup's soft limit caps it
		{0, Soft(40 << 20), 26 << 20},
	} {
		if got := Lean(tc.live, tc.ceiling); got != tc.want {
			t.Errorf("Lean(%d MiB, %d MiB) = %d MiB; want %d MiB", tc.live>>20, tc.ceiling>>20, got>>20, tc.want>>20)
		}
	}
}

// FollowLive sets the limit from the live heap and stops with its context.
func TestFollowLive(t *testing.T) {
	prev := debug.SetMemoryLimit(-1)
	defer debug.SetMemoryLimit(prev)
	debug.SetMemoryLimit(1 << 40)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { FollowLive(ctx, time.Millisecond, 0); close(done) }()
	for deadline := time.Now().Add(10 * time.Second); debug.SetMemoryLimit(-1) == 1<<40; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the limit was never set")
		}
	}
	if got := debug.SetMemoryLimit(-1); got < LeanFloor {
		t.Errorf("limit %d, below LeanFloor", got)
	}
	cancel()
	<-done
}
