package engine

import (
	"fmt"
	"runtime"
	"time"

	"golang.org/x/sys/unix"
)

type pollFD = unix.PollFd

// enterRealtime puts the calling loop on its own thread at SCHED_FIFO
// priority prio. It locks the goroutine to the thread for good: when the
// loop returns the thread exits with it, so no goroutine ever runs on a
// realtime thread the runtime reuses. On failure (no CAP_SYS_NICE, a
// cgroup without realtime runtime) the thread is left as it was.
func enterRealtime(prio int) error {
	runtime.LockOSThread()
	if err := setFIFO(prio); err != nil {
		runtime.UnlockOSThread()
		return err
	}
	return nil
}

// setFIFO sets the calling thread's policy: SCHED_FIFO at prio, or
// SCHED_OTHER (nice 0) for prio 0.
func setFIFO(prio int) error {
	attr := unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: unix.SCHED_FIFO, Priority: uint32(prio)}
	if prio == 0 {
		attr.Policy = unix.SCHED_NORMAL
	}
	if err := unix.SchedSetAttr(0, &attr, 0); err != nil {
		return fmt.Errorf("sched_setattr SCHED_FIFO %d: %w", prio, err)
	}
	return nil
}

// wait blocks until r.w's descriptor or the engine's wake descriptor is
// readable (at once if the loop is not realtime). It returns errClosed once
// the engine is closing; any other error is the loop's end.
func (r *realtimeState) wait(e *Engine) error {
	if r.w == nil {
		return nil
	}
	fd := r.w.WaitFD()
	if fd < 0 {
		return nil
	}
	r.pf[0] = unix.PollFd{Fd: int32(fd), Events: unix.POLLIN}
	r.pf[1] = unix.PollFd{Fd: int32(e.wake), Events: unix.POLLIN}
	timeout := 0 // first: is anything there?
	for {
		n, err := unix.Poll(r.pf[:], timeout)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("poll: %w", err)
		}
		if r.pf[1].Revents != 0 {
			return errClosed
		}
		if n > 0 {
			// Readable, or an error or hang-up the read will report.
			if timeout == 0 {
				r.busy(time.Now())
			} else {
				r.woke(time.Now())
			}
			return nil
		}
		r.idle()
		timeout = -1
	}
}

// openWake returns the descriptor Close makes readable to end every
// realtime loop's poll: closing a descriptor does not wake a poll(2) on
// it. It is never read, so it stays readable once signalled.
func openWake() (int, error) {
	return unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
}

func signalWake(fd int) {
	var one = [8]byte{1}
	_, _ = unix.Write(fd, one[:])
}

func closeWake(fd int) { _ = unix.Close(fd) }
