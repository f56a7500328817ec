//go:build unix

package server

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
)

// flock is unix.Flock (a variable for tests).
var flock = unix.Flock

// errNoLocks: the data directory's filesystem does not support flock.
var errNoLocks = errors.New("server: no file locks on this filesystem")

// dataLockFile is the file in the data directory that a running node
// holds an exclusive flock on, and whose content is that node's PID.
const dataLockFile = "LOCK"

// lockDataDir takes the data directory for this process (as Kafka's
// .lock, etcd's WAL lock): a second node started on the same directory,
// by mistake or a supervisor restarting one that still stops, fails here
// instead of writing into the first one's logs, which would give IDs two
// different messages and leave logs a restart refuses. The lock is the
// open file's: the kernel drops it when the process ends, however it
// ends, so a kill -9 leaves no stale lock. Close the file to release it.
func lockDataDir(dir string) (*os.File, error) {
	path := filepath.Join(dir, dataLockFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("server: data directory lock: %w", err)
	}
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("server: data directory lock: %w", err)
	}
	var lockErr error
	if err := rc.Control(func(fd uintptr) { lockErr = flock(int(fd), unix.LOCK_EX|unix.LOCK_NB) }); err != nil {
		lockErr = err
	}
	if lockErr != nil {
		holder := ""
		if b, err := os.ReadFile(path); err == nil {
			if pid, err := strconv.Atoi(string(bytes.TrimSpace(b))); err == nil && pid > 0 {
				holder = fmt.Sprintf(" (PID %d)", pid)
			}
		}
		f.Close()
		switch {
		case errors.Is(lockErr, unix.EWOULDBLOCK):
			return nil, fmt.Errorf("server: data directory %s is in use by another node process%s: stop it first, or give this node a directory of its own", dir, holder)
		case errors.Is(lockErr, unix.ENOLCK), errors.Is(lockErr, unix.ENOTSUP), errors.Is(lockErr, unix.ENOSYS), errors.Is(lockErr, unix.EOPNOTSUPP):
			// Some network and FUSE filesystems: the node runs unlocked.
			return nil, fmt.Errorf("%w: %s: %v", errNoLocks, path, lockErr)
		}
		return nil, fmt.Errorf("server: locking data directory %s: %w", dir, lockErr)
	}
	// The holder's PID, for the message above (informational only: the
	// flock is the lock).
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return f, nil
}
