// Package backoff spreads the stores' retry waits.
package backoff

import (
	"math/rand/v2"
	"time"
)

// Jitter is d ±20%, at random. Every host of a cluster loses its
// connection to etcd or the API server at the same moment when the server
// restarts or changes leader; without jitter all of them would come back
// at the same instants of their doubling backoff, thousands of requests at
// once, and a re-list after a compaction would be as many at once.
func Jitter(d time.Duration) time.Duration {
	return time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
}
