//go:build linux

package commitlog

import (
	"os"
	"syscall"
)

// fdatasync flushes f's data (and the metadata needed to read it back).
func fdatasync(f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		for {
			serr = syscall.Fdatasync(int(fd))
			if serr != syscall.EINTR {
				return
			}
		}
	}); err != nil {
		return err
	}
	if serr != nil {
		return &os.PathError{Op: "fdatasync", Path: f.Name(), Err: serr}
	}
	return nil
}

// allocate gives f blocks for [off, off+n), extending its size, without
// writing them (they read as zeros). ok is false where the filesystem cannot
// (the caller then appends without preallocation).
func allocate(f *os.File, off, n int64) (ok bool, err error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return false, err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		for {
			serr = syscall.Fallocate(int(fd), 0, off, n)
			if serr != syscall.EINTR {
				return
			}
		}
	}); err != nil {
		return false, err
	}
	switch serr {
	case nil:
		return true, nil
	case syscall.EOPNOTSUPP, syscall.ENOSYS:
		return false, nil
	}
	return false, &os.PathError{Op: "fallocate", Path: f.Name(), Err: serr}
}
