//go:build unix

package server

import "golang.org/x/sys/unix"

// openFileLimit returns the process's open-file limit: RLIMIT_NOFILE's
// soft limit, which the Go runtime raises to about the hard limit at start
// (ulimit -Hn). ok is false when it cannot be read or is unlimited.
var openFileLimit = func() (limit uint64, ok bool) {
	var r unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &r); err != nil || uint64(r.Cur) == uint64(unix.RLIM_INFINITY) {
		return 0, false
	}
	return uint64(r.Cur), true // int64 on some systems (FreeBSD)
}
