package scale

import (
	"context"
	"encoding/json"
	"fmt"
	"time"
)

// Restart is how a restart of weft on a host with every peer's state
// went: weft stopped (SIGTERM) and started again on the same leases and,
// for the kernel backends, the kernel state it left.
type Restart struct {
	// Took is from the new process's start until it holds every peer
	// again: udp, its table; the kernel backends, the kernel's state
	// and the reconciler's first full pass done.
	Took time.Duration `json:"took_ns"`
	// KernelChanges is what that first pass changed in the kernel
	// (entries programmed, repaired or removed as stale): 0 when a
	// restart leaves the data path alone, as it should.
	KernelChanges uint64 `json:"kernel_changes"`
}

// restart stops h's weft and starts it again, and waits for the full
// state.
func (h *host) restart(ctx context.Context) (Restart, error) {
	var r Restart
	if err := h.run.Stop(); err != nil {
		return r, err
	}
	if err := h.run.Wait(); err != nil {
		return r, fmt.Errorf("weft run did not stop cleanly: %v\n%s", err, h.run.Log())
	}
	t0 := time.Now()
	if err := h.c.StartWeft(h.lab.Hosts[0], h.flags()...); err != nil {
		return r, err
	}
	h.run = h.c.Runs[0]
	if h.cg != nil {
		if err := h.cg.Join(h.run.Pid()); err != nil {
			return r, err
		}
	}
	deadline := time.Now().Add(h.o.Timeout)
	for {
		if h.run.Exited() {
			return r, fmt.Errorf("weft run exited: %v\n%s", h.run.Wait(), h.run.Log())
		}
		ok, why, err := h.chk.correct(h.want)
		if err == nil && ok && kernelBackend(h.typ) {
			var st reconcileStats
			st, err = h.reconcileStats()
			ok = err == nil && st.Passes > 0
			r.KernelChanges = st.Programmed + st.Repairs + st.StaleRemoved
			why = "no full pass yet"
		}
		if err == nil && ok {
			r.Took = time.Since(t0)
			return r, nil
		}
		if err != nil {
			why = err.Error() // the debug socket is not up yet, at first
		}
		if time.Now().After(deadline) {
			return r, fmt.Errorf("restart: state not complete after %v: %s", h.o.Timeout, why)
		}
		select {
		case <-ctx.Done():
			return r, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// reconcileStats are the kernel reconciler's counters a kernel backend's
// status carries (encap/kernel.Stats).
type reconcileStats struct {
	Passes       uint64 `json:"passes"`
	Programmed   uint64 `json:"programmed"`
	Repairs      uint64 `json:"repairs"`
	StaleRemoved uint64 `json:"stale_removed"`
}

func (h *host) reconcileStats() (reconcileStats, error) {
	b, err := h.chk.status.Get("/status")
	if err != nil {
		return reconcileStats{}, err
	}
	var s struct {
		Backend struct {
			Reconcile *reconcileStats `json:"reconcile"`
		} `json:"backend_status"`
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return reconcileStats{}, err
	}
	if s.Backend.Reconcile == nil {
		return reconcileStats{}, fmt.Errorf("no reconcile counters in the %s backend's status", h.typ)
	}
	return *s.Backend.Reconcile, nil
}
