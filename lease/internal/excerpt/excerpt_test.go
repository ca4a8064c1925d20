package excerpt

import (
	"strings"
	"testing"
)

func TestQuote(t *testing.T) {
	for _, c := range []struct {
		in   string
		max  int
		want string
	}{
		{"abc", 3, `"abc"`},
		{"abcd", 3, `"abc"... (4 bytes)`},
		{"a\x00b", 8, `"a\x00b"`},
		{"aé", 2, `"a"... (3 bytes)`}, // é is 2 bytes: not cut inside it
		{"", 0, `""`},
	} {
		if got := Quote(c.in, c.max); got != c.want {
			t.Errorf("Quote(%q, %d) = %s, want %s", c.in, c.max, got, c.want)
		}
	}
	big := []byte(strings.Repeat("x", 1<<20))
	if got := Quote(big, Max); len(got) > Max+32 {
		t.Errorf("1 MiB quoted to %d bytes", len(got))
	}
}
