package backoff

import (
	"testing"
	"time"
)

func TestJitterStaysWithin20Percent(t *testing.T) {
	seen := map[bool]bool{}
	for range 1000 {
		d := Jitter(time.Second)
		if d < 800*time.Millisecond || d > 1200*time.Millisecond {
			t.Fatalf("Jitter(1s) = %v", d)
		}
		seen[d > time.Second] = true
	}
	if !seen[true] || !seen[false] {
		t.Fatal("Jitter never went both ways of 1s in 1000 draws")
	}
}
