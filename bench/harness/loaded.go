package harness

import (
	"context"
	"fmt"
	"time"

	"github.com/weft-net/weft/bench/traffic"
)

// loadRamp is how long the bulk streams run before the round trips
// start, so the tunnel's queues are in their steady state when measured.
const loadRamp = 500 * time.Millisecond

// loadedRR measures request/response (rrArgs) while four bulk TCP streams
// run on the same path, from the same client to the same server: the
// round trip's packets share every queue with the bulk data. The bulk
// streams must succeed too, or the figure would be of an idle path.
func (bl *benchLab) loadedRR(ctx context.Context, to string, d time.Duration, rrArgs []string) (*traffic.Result, error) {
	bulkDur := loadRamp + d + loadRamp
	bulk := make(chan error, 1)
	go func() {
		_, err := bl.c.Traffic(ctx, bl.path.ClientNS, "tcp", "--to", to, "--duration", bulkDur.String(),
			"--streams", "4", "--verify", "none")
		bulk <- err
	}()
	select {
	case <-time.After(loadRamp):
	case err := <-bulk:
		return nil, fmt.Errorf("bulk streams ended before the round trips started: %v", err)
	}
	res, err := bl.c.Traffic(ctx, bl.path.ClientNS, rrArgs...)
	if berr := <-bulk; berr != nil && err == nil {
		err = fmt.Errorf("bulk streams under the round trips: %w", berr)
	}
	return res, err
}
