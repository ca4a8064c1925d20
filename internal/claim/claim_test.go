package claim

import (
	"cmp"
	"math/rand/v2"
	"testing"
)

func TestStaleClaims(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	s := New[int, int](func(a, b int) int { return cmp.Compare(a, b) })
	for range 10000 {
		id := r.IntN(10)
		if r.IntN(3) == 0 {
			s.Delete(id)
		} else {
			keys := []int{r.IntN(5), 10 + r.IntN(5)}
			s.Put(id, id, keys, r.IntN(4) != 0)
		}
		s.Settle()
		s.check()
	}
}
