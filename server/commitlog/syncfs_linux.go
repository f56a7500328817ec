//go:build linux

package commitlog

import (
	"errors"
	"os"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/forestbus/forestbus/internal/flushhook"
)

// syncfsWorks: syncfs(2) reports writeback errors only since Linux 5.8;
// before that it always succeeded, so SyncMany must not trust it.
var syncfsWorks = kernelAtLeast(5, 8)

func kernelAtLeast(major, minor int) bool {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return false
	}
	var maj, min int
	rel := unix.ByteSliceToString(u.Release[:])
	i := 0
	for ; i < len(rel) && rel[i] >= '0' && rel[i] <= '9'; i++ {
		maj = maj*10 + int(rel[i]-'0')
	}
	if i >= len(rel) || rel[i] != '.' {
		return false
	}
	for i++; i < len(rel) && rel[i] >= '0' && rel[i] <= '9'; i++ {
		min = min*10 + int(rel[i]-'0')
	}
	return maj > major || maj == major && min >= minor
}

// syncfsRefused holds the filesystems (device IDs) whose syncfs startSync
// found refused (seccomp): logs there do not use the node journal, whose
// checkpoint needs it.
var syncfsRefused sync.Map

// syncfsUsable reports whether syncfs flushes the filesystem dev, and
// reports its errors: a kernel from 5.8 on, not refused at start.
func syncfsUsable(dev uint64) bool {
	_, refused := syncfsRefused.Load(dev)
	return syncfsWorks && !refused
}

// syncfs flushes the whole filesystem holding f: data, metadata and the
// journal of every file on it.
func syncfs(f *os.File) error {
	err := fdCall(f, "syncfs", unix.Syncfs)
	if err == nil {
		flushhook.Flushed(nil, "")
	}
	return err
}

// deviceOf returns the ID of the filesystem holding path, 0 if unknown.
func deviceOf(path string) uint64 {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0
	}
	return uint64(st.Dev)
}

// syncFilesystem syncs the filesystem holding dir (startSync): syncfs
// through a descriptor of dir, or sync(2), every filesystem, where syncfs
// is refused (seccomp).
func syncFilesystem(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	err = syncfsFunc(f)
	if errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EPERM) {
		syncfsRefused.Store(deviceOf(dir), true)
		unix.Sync()
		flushhook.Flushed(nil, "")
		return nil
	}
	return err
}
