//go:build linux

package uring

import (
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// needRing skips where the kernel or a seccomp filter refuses io_uring: the
// callers then make the system call, which the commit log's tests cover.
func needRing(t *testing.T) {
	t.Helper()
	if ok, err := Available(); !ok {
		t.Skipf("io_uring not available here: %v", err)
	}
}

func tempFile(t *testing.T) *os.File {
	t.Helper()
	f, err := os.Create(filepath.Join(t.TempDir(), "f"))
	require.NoError(t, err)
	t.Cleanup(func() { f.Close() })
	return f
}

// TestFdatasync: a sync through the ring succeeds on a written file and
// leaves the ring in the pool for the next one.
func TestFdatasync(t *testing.T) {
	needRing(t)
	f := tempFile(t)
	for i := range 3 {
		_, err := f.WriteAt([]byte("hello"), int64(i*5))
		require.NoError(t, err)
		ok, err := Fdatasync(int(f.Fd()))
		require.True(t, ok)
		require.NoError(t, err)
	}
	pool.mu.Lock()
	defer pool.mu.Unlock()
	assert.NotEmpty(t, pool.free, "the ring went back to the pool")
}

// TestFdatasyncReportsErrors: the kernel's error for the sync comes back as
// its errno, as from the system call, and the ring stays usable.
func TestFdatasyncReportsErrors(t *testing.T) {
	needRing(t)
	ok, err := Fdatasync(-1)
	require.True(t, ok)
	assert.ErrorIs(t, err, syscall.EBADF)

	g := tempFile(t)
	ok, err = Fdatasync(int(g.Fd()))
	require.True(t, ok)
	assert.NoError(t, err)
}

// TestFdatasyncConcurrent: concurrent callers each get a ring of their own
// (one request per ring), and every sync completes with its own result.
func TestFdatasyncConcurrent(t *testing.T) {
	needRing(t)
	const callers, syncs = 8, 40
	files := make([]*os.File, callers)
	for i := range files {
		files[i] = tempFile(t)
	}
	var wg sync.WaitGroup
	errs := make(chan error, callers*syncs)
	for i := range callers {
		wg.Go(func() {
			for k := range syncs {
				if _, err := files[i].WriteAt([]byte{byte(k)}, int64(k)); err != nil {
					errs <- err
					return
				}
				ok, err := Fdatasync(int(files[i].Fd()))
				if !ok {
					err = os.ErrInvalid
				}
				if err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	pool.mu.Lock()
	defer pool.mu.Unlock()
	assert.LessOrEqual(t, len(pool.free), callers, "no more rings than callers at once")
}

// TestDisabled: with io_uring off, Fdatasync does nothing and says so.
func TestDisabled(t *testing.T) {
	SetEnabled(false)
	t.Cleanup(func() { SetEnabled(true) })
	f := tempFile(t)
	ok, err := Fdatasync(int(f.Fd()))
	assert.False(t, ok)
	assert.NoError(t, err)
}

// TestDisableFallsBack: once a ring refused a request outright (the kernel
// or a sandbox refuses the operation, or no worker could start), io_uring
// is off for the process: Fdatasync says so and callers make the system
// call.
func TestDisableFallsBack(t *testing.T) {
	needRing(t)
	t.Cleanup(func() {
		pool.mu.Lock()
		pool.disabled = nil
		pool.mu.Unlock()
	})
	disable(syscall.EOPNOTSUPP)
	f := tempFile(t)
	ok, err := Fdatasync(int(f.Fd()))
	assert.False(t, ok)
	assert.NoError(t, err)
	avail, why := Available()
	assert.False(t, avail)
	assert.ErrorIs(t, why, syscall.EOPNOTSUPP)
	pool.mu.Lock()
	assert.Empty(t, pool.free, "the idle rings were closed")
	pool.mu.Unlock()
}
