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
	m  map[uint64]*os.File // nil once a syncfs on the filesystem failed
}{m: make(map[uint64]*os.File)}

// registerSyncDev opens dev's descriptor through dir, a directory on it,
// unless dev has one (or had and failed).
func registerSyncDev(dev uint64, dir string) {
	if dev == 0 || !syncfsWorks {
		return
	}
	syncDevs.mu.Lock()
	defer syncDevs.mu.Unlock()
	if _, ok := syncDevs.m[dev]; ok {
		return
	}
	f, err := os.Open(dir)
	if err != nil {
		f = nil // the logs there sync on their own
	}
	syncDevs.m[dev] = f
}

// syncDevFile is the descriptor SyncMany runs syncfs through for dev; nil
// when it must not use syncfs there.
func syncDevFile(dev uint64) *os.File {
	syncDevs.mu.Lock()
	defer syncDevs.mu.Unlock()
	return syncDevs.m[dev]
}

// failSyncDev stops SyncMany's use of syncfs on dev for good. The
// descriptor stays open: another SyncMany may be using it.
func failSyncDev(dev uint64) {
	syncDevs.mu.Lock()
	defer syncDevs.mu.Unlock()
	syncDevs.m[dev] = nil
}
