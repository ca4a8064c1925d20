// Package excerpt quotes untrusted bytes for a log line or an error with a
// bound: etcd keys and values come from anyone who can write to the
// cluster's prefix, and a value may be 1.5 MiB (etcd's request limit).
package excerpt

import (
	"strconv"
	"unicode/utf8"
)

// Max is how many bytes of a value Quote shows by default.
const Max = 256

// Quote returns v quoted as Go would (%q), cut to its first max bytes
// (never inside a UTF-8 sequence) with "..." and v's length appended when
// it is longer.
func Quote[T ~string | ~[]byte](v T, max int) string {
	if len(v) <= max {
		return strconv.Quote(string(v))
	}
	cut := max
	for cut > 0 && cut > max-utf8.UTFMax && !utf8.RuneStart(v[cut]) {
		cut--
	}
	return strconv.Quote(string(v[:cut])) + "... (" + strconv.Itoa(len(v)) + " bytes)"
}
