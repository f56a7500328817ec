package commitlog

import (
	"os"
	"sync"
)

// SyncMany's shared flush and writeback errors. When the kernel fails to
// write a file's pages back, it marks them clean and records the error on
// the file and on its filesystem. fdatasync reports the file's error to
// every descriptor of that file opened before it, once each; syncfs
// reports the filesystem's error once per descriptor it runs through, and
// only errors after that descriptor was opened. A syncfs that succeeds can
// therefore follow a writeback failure that lost another log's records: a
// later syncfs through a descriptor that already reported the error, or
// was opened after it, succeeds, and that log would be marked durable.
//
// So SyncMany runs syncfs through one descriptor per filesystem, opened by
// the first log there before that log writes anything, and after one
// failure never again on that filesystem: every log there then syncs its
// own files, and one whose records a failed writeback dropped gets the
// error from its own fdatasync.
var syncDevs = struct {
	mu sync.Mutex
	m  map[uint64]*syncDev
}{m: make(map[uint64]*syncDev)}

// syncDev is a filesystem's descriptor for SyncMany's syncfs. mu makes the
// syncfs calls on it one at a time: the kernel reports an error to the
// descriptor once, so of two calls at once (engines sharing a process) one
// could take the error and the other report success for logs whose
// writeback failed. A caller that waited finds f nil after a failure.
type syncDev struct {
	mu sync.Mutex
	f  *os.File // nil once a syncfs on the filesystem failed
}

// registerSyncDev returns dev's entry, opening its descriptor through
// dir, a directory on it, the first time; nil when SyncMany must not use
// syncfs there (dev unknown, a kernel whose syncfs reports no errors, or a
// directory it could not open).
func registerSyncDev(dev uint64, dir string) *syncDev {
	if dev == 0 || !syncfsUsable(dev) {
		return nil
	}
	syncDevs.mu.Lock()
	defer syncDevs.mu.Unlock()
	if d, ok := syncDevs.m[dev]; ok {
		return d
	}
	var d *syncDev // nil: the logs there sync on their own
	if f, err := os.Open(dir); err == nil {
		d = &syncDev{f: f}
	}
	syncDevs.m[dev] = d
	return d
}

// syncfs runs syncfs through d's descriptor, alone. ok is false when syncfs
// is not used on the filesystem (d nil, or its descriptor gone: the caller
// syncs each log's files), and after a failure, which turns it off for
// good.
func (d *syncDev) syncfs() (ok bool, err error) {
	if d == nil {
		return false, nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.f == nil {
		return false, nil
	}
	syncfsCalls.Add(1)
	if err := syncfsFunc(d.f); err != nil {
		_ = d.f.Close() // d.mu held: no syncfs is using it
		d.f = nil
		return false, err
	}
	return true, nil
}
