package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
)

// registryDir holds one file per live lab, naming its owner and state dir,
// so Cleanup("") can tell a crashed run from a running one.
const registryDir = "/run/weft-lab"

type registration struct {
	Pid    int    `json:"pid"`
	Dir    string `json:"dir"`
	OwnDir bool   `json:"own_dir"`
}

func (l *Lab) register() error {
	if err := os.MkdirAll(registryDir, 0o755); err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	b, _ := json.Marshal(registration{Pid: os.Getpid(), Dir: l.Dir, OwnDir: l.ownDir && !l.keepDir})
	if err := os.WriteFile(filepath.Join(registryDir, l.Prefix), b, 0o644); err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	return nil
}

func registered(prefix string) bool {
	_, err := os.Stat(filepath.Join(registryDir, prefix))
	return err == nil
}

// Close stops every process (SIGTERM, then SIGKILL after StopGrace), kills
// anything else still running in the lab's namespaces, deletes the
// namespaces (and with them every link of the lab) and the state directory
// if the lab created it. It is safe to call more than once and from several
// goroutines; later calls return the first call's error.
func (l *Lab) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return l.closeErr
	}
	l.closed = true

	var errs []error
	var wg sync.WaitGroup
	var emu sync.Mutex
	for _, p := range l.procs {
		wg.Go(func() {
			if err := p.Stop(); err != nil {
				emu.Lock()
				errs = append(errs, err)
				emu.Unlock()
			}
		})
	}
	wg.Wait()
	// Delete in reverse order: pods and hosts before the switch.
	for i := len(l.namespaces) - 1; i >= 0; i-- {
		if err := removeNamespace(l.namespaces[i]); err != nil {
			errs = append(errs, err)
		}
	}
	if l.ownDir && !l.keepDir && l.Dir != "" {
		if err := os.RemoveAll(l.Dir); err != nil {
			errs = append(errs, fmt.Errorf("lab: remove %s: %w", l.Dir, err))
		}
	}
	if err := os.Remove(filepath.Join(registryDir, l.Prefix)); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	l.closeErr = errors.Join(errs...)
	return l.closeErr
}

// removeNamespace kills whatever still runs in the namespace and deletes it.
func removeNamespace(name string) error {
	if !nsExists(name) {
		return nil
	}
	for range 3 {
		pids := nsPids(name)
		if len(pids) == 0 {
			break
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nsDel(name)
}

// Cleanup removes what a lab with the given prefix left behind after a
// crash: its processes, namespaces, any link named after it in the
// caller's namespace, its registration and its generated state dir. With
// prefix "", it removes every lab whose prefix New generated and whose
// owning process is gone; labs of live processes are left alone. It
// returns the namespaces it removed.
func Cleanup(prefix string) ([]string, error) {
	if prefix != "" && !validPrefix.MatchString(prefix) {
		return nil, fmt.Errorf("lab: Cleanup: bad prefix %q", prefix)
	}
	names, err := listNamespaces()
	if err != nil {
		return nil, fmt.Errorf("lab: Cleanup: %w", err)
	}
	prefixes := map[string]bool{}
	if prefix != "" {
		prefixes[prefix] = true
	} else {
		for _, n := range names {
			if p, _, ok := strings.Cut(n, "-"); ok && GeneratedPrefix.MatchString(p) {
				prefixes[p] = true
			}
		}
		if ents, err := os.ReadDir(registryDir); err == nil {
			for _, e := range ents {
				if GeneratedPrefix.MatchString(e.Name()) {
					prefixes[e.Name()] = true
				}
			}
		}
		for p := range prefixes {
			if r, ok := readRegistration(p); ok && alive(r.Pid) {
				delete(prefixes, p)
			}
		}
	}

	var removed []string
	var errs []error
	for p := range prefixes {
		for _, n := range names {
			if strings.HasPrefix(n, p+"-") {
				if err := removeNamespace(n); err != nil {
					errs = append(errs, err)
				} else {
					removed = append(removed, n)
				}
			}
		}
		// Only names New gives links, so a user's "wlan0" never matches.
		labLink := regexp.MustCompile("^" + p + `(br|[hsp][0-9]+p?)$`)
		if links, err := netlink.LinkList(); err == nil || errors.Is(err, netlink.ErrDumpInterrupted) {
			for _, link := range links {
				if labLink.MatchString(link.Attrs().Name) {
					if err := netlink.LinkDel(link); err != nil {
						errs = append(errs, fmt.Errorf("lab: Cleanup: delete link %s: %w", link.Attrs().Name, err))
					}
				}
			}
		}
		if r, ok := readRegistration(p); ok && r.OwnDir && strings.Contains(r.Dir, "weft-lab-"+p) {
			_ = os.RemoveAll(r.Dir)
		}
		_ = os.Remove(filepath.Join(registryDir, p))
	}
	return removed, errors.Join(errs...)
}

func readRegistration(prefix string) (registration, bool) {
	var r registration
	b, err := os.ReadFile(filepath.Join(registryDir, prefix))
	if err != nil || json.Unmarshal(b, &r) != nil {
		return r, false
	}
	return r, true
}

func alive(pid int) bool {
	return pid > 0 && syscall.Kill(pid, 0) == nil
}

// Guard ties labs to SIGINT and SIGTERM for commands. The first signal
// cancels the Guard's context, so the command unwinds and closes its labs
// in order (normally a deferred Close). If the command has not finished
// within the grace period, or a second signal arrives, the Guard closes the
// labs itself and exits with status 130.
type Guard struct {
	mu     sync.Mutex
	labs   []*Lab
	stop   chan struct{}
	once   sync.Once
	sigs   chan os.Signal
	cancel context.CancelFunc
}

// NewGuard starts watching for signals. Call it before New, so a Ctrl-C
// during setup is caught too, then Add each lab.
func NewGuard(parent context.Context, grace time.Duration) (context.Context, *Guard) {
	ctx, cancel := context.WithCancel(parent)
	g := &Guard{stop: make(chan struct{}), sigs: make(chan os.Signal, 2), cancel: cancel}
	signal.Notify(g.sigs, syscall.SIGINT, syscall.SIGTERM)
	go g.watch(grace)
	return ctx, g
}

// Add puts l under the Guard.
func (g *Guard) Add(l *Lab) {
	g.mu.Lock()
	g.labs = append(g.labs, l)
	g.mu.Unlock()
}

// Stop stops watching and restores default signal handling.
func (g *Guard) Stop() {
	g.once.Do(func() {
		signal.Stop(g.sigs)
		close(g.stop)
		g.cancel()
	})
}

func (g *Guard) watch(grace time.Duration) {
	select {
	case <-g.stop:
		return
	case sig := <-g.sigs:
		fmt.Fprintf(os.Stderr, "\nweft: %v: tearing the lab down (again to force)\n", sig)
		g.cancel()
	}
	select {
	case <-g.stop:
		return
	case <-g.sigs:
	case <-time.After(grace):
	}
	g.mu.Lock()
	labs := append([]*Lab(nil), g.labs...)
	g.mu.Unlock()
	for _, l := range labs {
		if err := l.Close(); err != nil {
			fmt.Fprintf(os.Stderr, "weft: teardown: %v\n", err)
		}
	}
	os.Exit(130)
}
