package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// StopGrace is how long Stop and Close wait after SIGTERM before SIGKILL.
var StopGrace = 5 * time.Second

// Proc is a process started in a namespace of the lab.
type Proc struct {
	NS      string
	Name    string // log name
	Argv    []string
	LogPath string

	cmd  *exec.Cmd
	log  *os.File
	done chan struct{}
	err  error // exit status, valid after done
}

// Start runs argv in namespace ns (through `ip netns exec`, so /sys is the
// namespace's too), with stdout and stderr appended to LogDir()/logName.log.
// The process gets its own process group, so a Ctrl-C at the terminal
// reaches only the caller, which then tears the lab down in order. Close
// stops every process Start returned.
func (l *Lab) Start(ns, logName string, argv ...string) (*Proc, error) {
	if len(argv) == 0 {
		return nil, errors.New("lab: Start: empty argv")
	}
	if strings.ContainsAny(logName, "/\x00") || logName == "" {
		return nil, fmt.Errorf("lab: Start: bad log name %q", logName)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, errors.New("lab: Start: lab is closed")
	}
	path := filepath.Join(l.LogDir(), logName+".log")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lab: Start: %w", err)
	}
	fmt.Fprintf(f, "=== %s: ip netns exec %s %s\n", time.Now().Format(time.RFC3339Nano), ns, strings.Join(argv, " "))
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns}, argv...)...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("lab: start %s in %s: %w", argv[0], ns, err)
	}
	p := &Proc{NS: ns, Name: logName, Argv: argv, LogPath: path, cmd: cmd, log: f, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	l.procs = append(l.procs, p)
	return p, nil
}

// Pid is the process id (`ip netns exec` execs the command, so it is the
// command's own).
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has exited.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Wait waits for the process to exit and returns its exit status as
// exec.Cmd.Wait does.
func (p *Proc) Wait() error {
	<-p.done
	return p.err
}

// WaitContext is Wait bounded by ctx.
func (p *Proc) WaitContext(ctx context.Context) error {
	select {
	case <-p.done:
		return p.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Signal sends sig to the process group.
func (p *Proc) Signal(sig syscall.Signal) error {
	if p.Exited() {
		return nil
	}
	return syscall.Kill(-p.cmd.Process.Pid, sig)
}

// Stop sends SIGTERM to the process group, and SIGKILL after StopGrace. It
// returns nil if the process is gone, whatever its exit status: use Wait
// for that.
func (p *Proc) Stop() error {
	if p.Exited() {
		return nil
	}
	_ = p.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return nil
	case <-time.After(StopGrace):
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	select {
	case <-p.done:
		return nil
	case <-time.After(5 * time.Second):
		return fmt.Errorf("lab: %s (pid %d) survived SIGKILL", p.Name, p.Pid())
	}
}

// Log returns the process's log so far (for test failure messages): at
// most the last 64 KiB.
func (p *Proc) Log() string { return tail(p.LogPath, 64<<10) }

func tail(path string, max int64) string {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	off := int64(0)
	if st.Size() > max {
		off = st.Size() - max
	}
	b, _ := io.ReadAll(io.NewSectionReader(f, off, st.Size()-off))
	if off > 0 {
		return "...\n" + string(b)
	}
	return string(b)
}

// Procs returns the processes started so far.
func (l *Lab) Procs() []*Proc {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]*Proc(nil), l.procs...)
}

// Logs returns every process's log, each under a header, for a test's
// failure message.
func (l *Lab) Logs() string {
	var b strings.Builder
	for _, p := range l.Procs() {
		state := "running"
		if p.Exited() {
			state = fmt.Sprint("exited: ", p.err)
			if p.err == nil {
				state = "exited: status 0"
			}
		}
		fmt.Fprintf(&b, "----- %s in %s (%s): %s\n%s\n", p.Name, p.NS, state, strings.Join(p.Argv, " "), p.Log())
	}
	return b.String()
}

// Exec runs argv in namespace ns and waits for it. The error includes the
// command's output.
func (l *Lab) Exec(ns string, argv ...string) ([]byte, error) {
	return l.ExecContext(context.Background(), ns, argv...)
}

// ExecContext is Exec, killed when ctx ends.
func (l *Lab) ExecContext(ctx context.Context, ns string, argv ...string) ([]byte, error) {
	if len(argv) == 0 {
		return nil, errors.New("lab: Exec: empty argv")
	}
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns}, argv...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil {
		return []byte(out.String()), fmt.Errorf("lab: in %s: %s: %w: %s", ns, strings.Join(argv, " "), err, strings.TrimSpace(errb.String()+out.String()))
	}
	return []byte(out.String()), nil
}
