//go:build !unix

package server

// openFileLimit: no RLIMIT_NOFILE here.
var openFileLimit = func() (limit uint64, ok bool) { return 0, false }
