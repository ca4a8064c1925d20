package memcg

import "testing"

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"50MiB": 50 << 20, "1GiB": 1 << 30, "4096": 4096, "8KiB": 8 << 10, "100B": 100} {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "MiB", "50MB", "-1MiB", "0", "50 MiB", "9999999999GiB"} {
		if got, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) = %d, want an error", in, got)
		}
	}
}
