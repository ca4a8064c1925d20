package harness

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/weft-net/weft/bench/report"
)

// DefaultMemEvery is how often the bench reads the engines' resident sets
// during a run: often enough that a 10-minute run gives a first and a last
// minute of a dozen readings each, rarely enough to cost nothing.
const DefaultMemEvery = 5 * time.Second

// procMem reads VmRSS and VmHWM (KiB) from /proc/PID/status. VmHWM is the
// kernel's own high-water mark of the resident set (mm->hiwater_rss), so
// a peak between two readings is not missed.
func procMem(pid int) (rss, hwm int64, err error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, 0, err
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := bytes.Cut(sc.Bytes(), []byte(":"))
		if !ok {
			continue
		}
		var dst *int64
		switch string(k) {
		case "VmRSS":
			dst = &rss
		case "VmHWM":
			dst = &hwm
		default:
			continue
		}
		f := bytes.Fields(v) // "12345", "kB"
		if len(f) != 2 || string(f[1]) != "kB" {
			return 0, 0, fmt.Errorf("/proc/%d/status: %s: %q", pid, k, v)
		}
		if *dst, err = strconv.ParseInt(string(f[0]), 10, 64); err != nil {
			return 0, 0, fmt.Errorf("/proc/%d/status: %s: %w", pid, k, err)
		}
	}
	if rss == 0 || hwm == 0 {
		// A kernel thread or a zombie has no memory lines.
		return 0, 0, fmt.Errorf("/proc/%d/status: no VmRSS/VmHWM", pid)
	}
	return rss, hwm, nil
}

// engineMem reads the memory of every running engine of the lab, in host
// order; nil when the backend runs none (the kernel ones).
func (bl *benchLab) engineMem() []report.EngineMem {
	var out []report.EngineMem
	for i, p := range bl.c.Runs {
		if p == nil || p.Exited() {
			continue
		}
		if rss, hwm, err := procMem(p.Pid()); err == nil {
			out = append(out, report.EngineMem{Host: i + 1, RSSKiB: rss, HWMKiB: hwm})
		}
	}
	return out
}

// rssPoint reads every engine's VmRSS at t seconds into the run; nil when
// the backend runs no engine.
func (bl *benchLab) rssPoint(t float64) *report.MemPoint {
	p := report.MemPoint{Seconds: t, RSSKiB: make([]int64, len(bl.c.Runs))}
	found := false
	for i, proc := range bl.c.Runs {
		if proc == nil || proc.Exited() {
			continue
		}
		if rss, _, err := procMem(proc.Pid()); err == nil {
			p.RSSKiB[i] = rss
			found = true
		}
	}
	if !found {
		return nil
	}
	return &p
}

// watchRSS reads the engines' resident sets now and every `every` until
// the returned stop is called, which reads them once more and returns
// the series.
func (bl *benchLab) watchRSS(every time.Duration) (stop func() []report.MemPoint) {
	start := time.Now()
	var mu sync.Mutex
	var points []report.MemPoint
	add := func() {
		if p := bl.rssPoint(time.Since(start).Seconds()); p != nil {
			mu.Lock()
			points = append(points, *p)
			mu.Unlock()
		}
	}
	add()
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(every)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				add()
			}
		}
	})
	return func() []report.MemPoint {
		close(done)
		wg.Wait()
		add()
		return points
	}
}
