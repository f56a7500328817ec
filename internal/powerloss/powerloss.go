//go:build linux

// Package powerloss models what a power loss leaves of a directory tree,
// for tests of the commit log's durability: it learns of every flush
// through package flushhook and builds, on demand, a copy of the tree as
// the disk could hold it after the power went out.
package powerloss

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/forestbus/forestbus/internal/flushhook"
)

// Disk models what a power loss leaves of a directory tree: a file's
// bytes as of its last flush, a directory's names as of its last flush.
// It learns of the flushes through package flushhook. Files are known by
// inode and birth time (fileKey), so a rename that reached the disk keeps
// the bytes flushed under the old name, and a name removed without a
// directory flush comes back after the power loss.
//
// The model errs on the kind side in two ways, so it can miss a bug but
// never report a false one: a flush records the file as the hook reads it,
// a moment after the flush (with any write made meanwhile), and a file
// survives whole or as flushed, never torn (torn tails are the recovery
// tests' and FuzzOpen's subject).
type Disk struct {
	root string

	mu    sync.Mutex
	bytes map[fileKey][]byte           // file -> contents at its last flush
	names map[string]map[string]dirent // directory -> its names at its last flush
}

// fileKey names a file for its whole life: its inode number with its
// birth time, since a removed file's number is soon reused.
type fileKey struct {
	ino  uint64
	born int64
}

func keyOf(st *unix.Statx_t) fileKey {
	return fileKey{ino: st.Ino, born: st.Btime.Sec*1e9 + int64(st.Btime.Nsec)}
}

// statx stats path relative to dirfd (the file dirfd itself when path is "").
func statx(dirfd int, path string) (fileKey, error) {
	flags := unix.AT_SYMLINK_NOFOLLOW
	if path == "" {
		flags = unix.AT_EMPTY_PATH
	}
	var st unix.Statx_t
	if err := unix.Statx(dirfd, path, flags, unix.STATX_INO|unix.STATX_BTIME, &st); err != nil {
		return fileKey{}, err
	}
	if st.Mask&unix.STATX_BTIME == 0 {
		return fileKey{}, errors.New("no birth times on this filesystem")
	}
	return keyOf(&st), nil
}

type dirent struct {
	key fileKey
	dir bool
}

// Watch records every flush under root until the test ends, starting from
// root's current state as flushed. One Disk watches at a time. It skips
// the test where files have no birth times.
func Watch(t testing.TB, root string) *Disk {
	t.Helper()
	if _, err := statx(unix.AT_FDCWD, root); err != nil {
		t.Skipf("power loss model: %v", err)
	}
	d := &Disk{root: root, bytes: map[fileKey][]byte{}, names: map[string]map[string]dirent{}}
	d.flushAll()
	prev := flushhook.Set(func(f *os.File, dir string) {
		switch {
		case f != nil:
			d.flushFile(t, f)
		case dir != "":
			d.flushDir(dir)
		default:
			d.flushAll()
		}
	})
	if prev != nil {
		t.Fatal("powerloss: another Disk is watching (tests that watch must not run in parallel)")
	}
	t.Cleanup(func() { flushhook.Set(nil) }) // registered first: runs last
	return d
}

func (d *Disk) flushFile(t testing.TB, f *os.File) {
	// Read through the descriptor: the name may have changed. Under d.mu,
	// so that what is recorded last was read last.
	rc, err := f.SyscallConn()
	if err != nil {
		t.Errorf("flushed file: %v", err)
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	cerr := rc.Control(func(fd uintptr) {
		link := fmt.Sprintf("/proc/self/fd/%d", fd)
		if path, _ := os.Readlink(link); !inTree(d.root, path) {
			return // another tree: a recovery's
		}
		var key fileKey
		if key, err = statx(int(fd), ""); err != nil {
			return
		}
		var b []byte
		if b, err = os.ReadFile(link); err == nil {
			d.bytes[key] = b
		}
	})
	if err = errors.Join(err, cerr); err != nil {
		t.Errorf("flushed file %s: %v", f.Name(), err)
	}
}

// listDir returns dir's names; those removed while it reads are left out.
func listDir(dir string) map[string]dirent {
	des, _ := os.ReadDir(dir)
	names := map[string]dirent{}
	for _, de := range des {
		if key, err := statx(unix.AT_FDCWD, filepath.Join(dir, de.Name())); err == nil {
			names[de.Name()] = dirent{key: key, dir: de.IsDir()}
		}
	}
	return names
}

func inTree(root, path string) bool {
	rel, err := filepath.Rel(root, path)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
}

func (d *Disk) flushDir(dir string) {
	if !inTree(d.root, dir) {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.names[filepath.Clean(dir)] = listDir(dir)
}

// flushAll is a syncfs: everything under root.
func (d *Disk) flushAll() {
	d.mu.Lock()
	defer d.mu.Unlock()
	_ = filepath.WalkDir(d.root, func(p string, de fs.DirEntry, err error) error {
		switch {
		case err != nil: // removed meanwhile
		case de.IsDir():
			d.names[filepath.Clean(p)] = listDir(p)
		default:
			f, err := os.Open(p)
			if err != nil {
				return nil
			}
			defer f.Close()
			key, err := statx(int(f.Fd()), "")
			b, rerr := io.ReadAll(f)
			if err == nil && rerr == nil {
				d.bytes[key] = b
			}
		}
		return nil
	})
}

// Image is what the disk holds at one moment (Disk.Snapshot).
type Image struct {
	root  string
	bytes map[fileKey][]byte
	names map[string]map[string]dirent
}

// Snapshot freezes what the disk holds now: a power loss at this moment.
// It is cheap (recorded contents are never changed, only replaced), so a
// test can take it the instant something is acknowledged.
func (d *Disk) Snapshot() *Image {
	d.mu.Lock()
	defer d.mu.Unlock()
	return &Image{root: d.root, bytes: maps.Clone(d.bytes), names: maps.Clone(d.names)}
}

// Lose writes to dst the tree a power loss could leave now:
// d.Snapshot().Write(t, dst, rnd).
func (d *Disk) Lose(t testing.TB, dst string, rnd *rand.Rand) {
	t.Helper()
	d.Snapshot().Write(t, dst, rnd)
}

// Write writes to dst a tree the power loss of im could leave. Each
// directory has its flushed names, or (when rnd says so) its current ones;
// each file has its flushed bytes, or (when rnd says so and the name still
// holds the same file) everything written to it by now: the kernel may
// have written any file back on its own, but nothing unflushed is ever
// assumed durable.
//
// The current names and bytes are read now, not at the snapshot: with rnd
// nil Write uses flushed names and bytes only. Use nil when the code under
// test still writes after the snapshot (a current file could then hold a
// record that follows one the snapshot's flushed files lack).
func (im *Image) Write(t testing.TB, dst string, rnd *rand.Rand) {
	t.Helper()
	var walk func(src, out string)
	walk = func(src, out string) {
		require.NoError(t, os.MkdirAll(out, 0o755))
		names := im.names[src] // none if never flushed: every dir here is new
		var current map[string]dirent
		if rnd != nil {
			current = listDir(src)
			if rnd.IntN(4) == 0 {
				names = current
			}
		}
		for _, name := range slices.Sorted(maps.Keys(names)) {
			e, p := names[name], filepath.Join(src, name)
			if e.dir {
				walk(p, filepath.Join(out, name))
				continue
			}
			b := im.bytes[e.key] // nil: never flushed, so empty
			if cur, ok := current[name]; ok && cur.key == e.key && rnd != nil && rnd.IntN(3) == 0 {
				if all, err := os.ReadFile(p); err == nil {
					b = all
				}
			}
			require.NoError(t, os.WriteFile(filepath.Join(out, name), b, 0o644))
		}
	}
	walk(filepath.Clean(im.root), dst)
}
