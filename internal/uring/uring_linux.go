//go:build linux

// Package uring makes fdatasync through io_uring, so that a sync in flight
// holds no thread of the Go runtime in a system call.
//
// Why: a goroutine in a blocking system call keeps its thread, and after 20
// µs the runtime's sysmon thread takes its P away and starts another thread
// for the P's goroutines; sysmon then polls every 20 µs for a millisecond
// or more. A node's syncs last 0.3–2 ms, hundreds a second, and on the
// project's benchmark host (a virtual machine, where a context switch
// costs several times bare metal) sysmon alone used 9–11 % of the nodes'
// CPU under W1. Through io_uring the sync runs on a kernel worker, and the
// goroutine waits on an eventfd in the network poller like any socket
// read. Measured (the same fbnode with -io-uring off and on, fresh 3-node
// clusters, fsync mode, alternating pairs): W1 ×1.05–1.20 in 7 pairs, W4
// ×0.92–1.11, W2's max 8.0–8.7 ms against 10.2–12.8 ms (see BENCHMARKS.md).
//
// Each ring carries one request at a time: a call takes a free ring from a
// pool (making one when none is free), submits its request, waits for the
// completion on the ring's eventfd, and gives the ring back. No completion
// is ever routed between goroutines. A ring that misbehaves is closed and
// the call makes the system call instead; one that cannot run the request
// at all (the kernel refuses the operation or cannot start a worker) turns
// io_uring off for the process.
package uring

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The kernel's ABI (include/uapi/linux/io_uring.h).
const (
	sysSetup    = unix.SYS_IO_URING_SETUP
	sysEnter    = unix.SYS_IO_URING_ENTER
	sysRegister = unix.SYS_IO_URING_REGISTER

	// ringEntries sizes each ring. One request is in flight per ring, but
	// the kernel also sizes from it the pool of workers that run the
	// fsyncs a thread submits (min(entries, 4 × CPUs)): with 2, a thread
	// submitting for several rings ran two fsyncs at a time.
	ringEntries = 32
	// maxFree caps the idle rings kept for reuse; more are closed.
	maxFree = 16

	opFsync          = 3 // IORING_OP_FSYNC
	fsyncDatasync    = 1 // IORING_FSYNC_DATASYNC
	registerEventfd  = 4 // IORING_REGISTER_EVENTFD
	featSingleMmap   = 1 // IORING_FEAT_SINGLE_MMAP
	offSQRing        = 0
	offCQRing        = 0x8000000
	offSQEs          = 0x10000000
	sqeSize, cqeSize = 64, 16
)

// params is struct io_uring_params; sqOff and cqOff are struct
// io_sqring_offsets and io_cqring_offsets as words.
type params struct {
	sqEntries, cqEntries, flags, sqThreadCPU, sqThreadIdle, features, wqFd uint32
	resv                                                                   [3]uint32
	sqOff                                                                  [10]uint32 // head, tail, ring_mask, ring_entries, flags, dropped, array, resv1, user_addr (2 words)
	cqOff                                                                  [10]uint32 // head, tail, ring_mask, ring_entries, overflow, cqes, flags, resv1, user_addr (2 words)
}

type ring struct {
	fd             int
	maps           [][]byte // to unmap at close
	sqHead, sqTail *uint32
	sqMask         uint32
	sqArray, sqes  unsafe.Pointer
	cqHead, cqTail *uint32
	cqMask         uint32
	cqes           unsafe.Pointer
	efd            *os.File // non-blocking: reads wait in the network poller
}

var pool struct {
	mu       sync.Mutex
	free     []*ring
	made     bool  // a ring was set up once: a later failure is transient
	disabled error // why io_uring is off for the process (not available, or refused a request); nil: on
}

var off atomic.Bool // SetEnabled(false)

// SetEnabled turns the use of io_uring on (the default) or off; off,
// Fdatasync reports ok false and callers make the system call.
func SetEnabled(on bool) { off.Store(!on) }

// Available reports whether Fdatasync can use io_uring here (setting up a
// ring if none was yet); when not, the error says why.
func Available() (bool, error) {
	r, err := get()
	if r == nil {
		return false, err
	}
	put(r)
	return true, nil
}

// Fdatasync flushes the data of the file open as fd (and the metadata
// needed to read it), as fdatasync(2) does, through io_uring. ok is false,
// with nothing done, when io_uring is off or not available: the caller
// then makes the system call itself. With ok true, err is the sync's
// outcome (an errno as for fdatasync(2)), or, rarely, a failure to learn
// the outcome, which the caller must treat as a failed sync.
func Fdatasync(fd int) (ok bool, err error) {
	if off.Load() {
		return false, nil
	}
	r, _ := get()
	if r == nil {
		return false, nil
	}
	submitted, err := r.fdatasync(fd)
	switch {
	case !submitted:
		r.close()
		if err != nil && !transient(err) {
			disable(err)
		}
		return false, nil
	case errors.Is(err, errLost):
		r.close() // its state is unknown: never reused
		return true, err
	case errors.Is(err, syscall.ECANCELED), errors.Is(err, syscall.EINVAL), errors.Is(err, syscall.EOPNOTSUPP):
		// The fsync did not run: no worker could be started for it, or
		// the kernel (or a sandbox) refuses the operation. Nothing was
		// flushed and no writeback error was consumed, so the system
		// call, from now on, gives the true outcome.
		r.close()
		disable(err)
		return false, nil
	}
	put(r)
	return true, err
}

// transient reports whether a failed submission may succeed later.
func transient(err error) bool {
	return errors.Is(err, syscall.EAGAIN) || errors.Is(err, syscall.EBUSY) ||
		errors.Is(err, syscall.ENOMEM) || errors.Is(err, syscall.EINTR)
}

// disable turns io_uring off for the process.
func disable(err error) {
	pool.mu.Lock()
	defer pool.mu.Unlock()
	if pool.disabled == nil {
		pool.disabled = err
	}
	for _, r := range pool.free {
		r.close()
	}
	pool.free = nil
}

// errLost: the request was submitted but its completion could not be read.
var errLost = errors.New("uring: completion lost")

func get() (*ring, error) {
	pool.mu.Lock()
	if err := pool.disabled; err != nil {
		pool.mu.Unlock()
		return nil, err
	}
	if n := len(pool.free); n > 0 {
		r := pool.free[n-1]
		pool.free = pool.free[:n-1]
		pool.mu.Unlock()
		return r, nil
	}
	pool.mu.Unlock()
	r, err := newRing()
	pool.mu.Lock()
	defer pool.mu.Unlock()
	if err != nil {
		if !pool.made {
			// Not available here (an old kernel, a seccomp filter, the
			// io_uring_disabled sysctl): not tried again. After a ring
			// worked, a failure (out of descriptors, say) is this call's.
			pool.disabled = err
		}
		return nil, err
	}
	pool.made = true
	return r, nil
}

func put(r *ring) {
	pool.mu.Lock()
	defer pool.mu.Unlock()
	if pool.disabled != nil || len(pool.free) >= maxFree {
		r.close()
		return
	}
	pool.free = append(pool.free, r)
}

func newRing() (r *ring, err error) {
	var p params
	fd, _, e := syscall.Syscall(sysSetup, ringEntries, uintptr(unsafe.Pointer(&p)), 0)
	if e != 0 {
		return nil, os.NewSyscallError("io_uring_setup", e)
	}
	r = &ring{fd: int(fd)}
	defer func() {
		if err != nil {
			r.close()
			r = nil
		}
	}()
	sqSize := int(p.sqOff[6]) + int(p.sqEntries)*4
	cqSize := int(p.cqOff[5]) + int(p.cqEntries)*cqeSize
	mmap := func(off int64, size int) ([]byte, error) {
		b, err := unix.Mmap(r.fd, off, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
		if err != nil {
			return nil, os.NewSyscallError("mmap", err)
		}
		r.maps = append(r.maps, b)
		return b, nil
	}
	var sq, cq []byte
	if p.features&featSingleMmap != 0 {
		if sq, err = mmap(offSQRing, max(sqSize, cqSize)); err != nil {
			return nil, err
		}
		cq = sq
	} else {
		if sq, err = mmap(offSQRing, sqSize); err != nil {
			return nil, err
		}
		if cq, err = mmap(offCQRing, cqSize); err != nil {
			return nil, err
		}
	}
	sqes, err := mmap(offSQEs, int(p.sqEntries)*sqeSize)
	if err != nil {
		return nil, err
	}
	sqBase, cqBase := unsafe.Pointer(&sq[0]), unsafe.Pointer(&cq[0])
	r.sqHead = (*uint32)(unsafe.Add(sqBase, p.sqOff[0]))
	r.sqTail = (*uint32)(unsafe.Add(sqBase, p.sqOff[1]))
	r.sqMask = *(*uint32)(unsafe.Add(sqBase, p.sqOff[2]))
	r.sqArray = unsafe.Add(sqBase, p.sqOff[6])
	r.sqes = unsafe.Pointer(&sqes[0])
	r.cqHead = (*uint32)(unsafe.Add(cqBase, p.cqOff[0]))
	r.cqTail = (*uint32)(unsafe.Add(cqBase, p.cqOff[1]))
	r.cqMask = *(*uint32)(unsafe.Add(cqBase, p.cqOff[2]))
	r.cqes = unsafe.Add(cqBase, p.cqOff[5])

	efd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("eventfd", err)
	}
	r.efd = os.NewFile(uintptr(efd), "io_uring eventfd")
	if err := r.efd.SetReadDeadline(time.Time{}); err != nil {
		// Not in the network poller: a read would fail with EAGAIN
		// instead of waiting.
		return nil, fmt.Errorf("uring: eventfd not pollable: %w", err)
	}
	e32 := int32(efd)
	if _, _, e := syscall.Syscall6(sysRegister, fd, registerEventfd, uintptr(unsafe.Pointer(&e32)), 1, 0, 0); e != 0 {
		return nil, os.NewSyscallError("io_uring_register", e)
	}
	return r, nil
}

func (r *ring) close() {
	if r.efd != nil {
		r.efd.Close()
	}
	for _, b := range r.maps {
		_ = unix.Munmap(b)
	}
	r.maps = nil
	syscall.Close(r.fd)
}

// fdatasync submits an IORING_OP_FSYNC of fd with IORING_FSYNC_DATASYNC
// and waits for its completion. submitted is false when the kernel did not
// take the request.
func (r *ring) fdatasync(fd int) (submitted bool, err error) {
	tail := atomic.LoadUint32(r.sqTail)
	idx := tail & r.sqMask
	sqe := (*[sqeSize]byte)(unsafe.Add(r.sqes, uintptr(idx)*sqeSize))
	clear(sqe[:])
	sqe[0] = opFsync
	*(*int32)(unsafe.Pointer(&sqe[4])) = int32(fd)
	*(*uint32)(unsafe.Pointer(&sqe[28])) = fsyncDatasync
	*(*uint32)(unsafe.Add(r.sqArray, uintptr(idx)*4)) = idx
	atomic.StoreUint32(r.sqTail, tail+1)
	for {
		// min_complete 0: the submission does not wait; an fsync always
		// goes to a kernel worker.
		_, _, e := syscall.Syscall6(sysEnter, uintptr(r.fd), 1, 0, 0, 0, 0)
		if e == syscall.EINTR {
			continue
		}
		// Submitted when the kernel consumed the entry, whatever the call
		// returned.
		if atomic.LoadUint32(r.sqHead) != tail+1 {
			if e == 0 {
				return false, nil
			}
			return false, os.NewSyscallError("io_uring_enter", e)
		}
		break
	}
	var b [8]byte
	for {
		head := atomic.LoadUint32(r.cqHead)
		if head != atomic.LoadUint32(r.cqTail) {
			cqe := unsafe.Add(r.cqes, uintptr(head&r.cqMask)*cqeSize)
			res := *(*int32)(unsafe.Add(cqe, 8))
			atomic.StoreUint32(r.cqHead, head+1)
			if res < 0 {
				return true, syscall.Errno(-res)
			}
			return true, nil
		}
		if _, err := r.efd.Read(b[:]); err != nil && !errors.Is(err, syscall.EINTR) {
			return true, errors.Join(errLost, err)
		}
	}
}
