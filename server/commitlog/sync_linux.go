//go:build linux

package commitlog

import (
	"errors"
	"os"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/forestbus/forestbus/internal/flushhook"
	"github.com/forestbus/forestbus/internal/uring"
)

// fdCall runs call on f's descriptor, again while it fails with EINTR; a
// failure comes back as an *os.PathError for op.
func fdCall(f *os.File, op string, call func(fd int) error) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		for {
			serr = call(int(fd))
			if serr != syscall.EINTR {
				return
			}
		}
	}); err != nil {
		return err
	}
	if serr != nil {
		return &os.PathError{Op: op, Path: f.Name(), Err: serr}
	}
	return nil
}

// fdatasync flushes f's data (and the metadata needed to read it back).
func fdatasync(f *os.File) error {
	err := fdCall(f, "fdatasync", datasync)
	if err == nil {
		flushhook.Flushed(f, "")
	}
	return err
}

// datasync is fdatasync(2) on fd, made through io_uring where it can be
// (package uring says why).
func datasync(fd int) error {
	if ok, err := uring.Fdatasync(fd); ok {
		return err
	}
	return syscall.Fdatasync(fd)
}

// allocate gives f blocks for [off, off+n), extending its size, without
// writing them (they read as zeros). ok is false where the filesystem cannot
// (the caller then appends without preallocation).
func allocate(f *os.File, off, n int64) (ok bool, err error) {
	err = fdCall(f, "fallocate", func(fd int) error { return syscall.Fallocate(fd, 0, off, n) })
	if errors.Is(err, syscall.EOPNOTSUPP) || errors.Is(err, syscall.ENOSYS) {
		return false, nil
	}
	return err == nil, err
}

// dropPages asks the kernel to drop f's cached pages in [off, off+n)
// (clean ones; dirty ones are queued for writeback instead).
func dropPages(f *os.File, off, n int64) {
	_ = fdCall(f, "fadvise", func(fd int) error { return unix.Fadvise(fd, off, n, unix.FADV_DONTNEED) })
}

// startWriteback starts writing f's dirty pages in [off, off+n) back to
// disk, without waiting for it (sync_file_range: no metadata, no device
// flush; not a durability point).
func startWriteback(f *os.File, off, n int64) {
	_ = fdCall(f, "sync_file_range", func(fd int) error {
		return unix.SyncFileRange(fd, off, n, unix.SYNC_FILE_RANGE_WRITE)
	})
}
