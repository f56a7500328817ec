//go:build !linux

package commitlog

import (
	"os"

	"github.com/forestbus/forestbus/internal/flushhook"
)

func fdatasync(f *os.File) error {
	err := f.Sync()
	if err == nil {
		flushhook.Flushed(f, "")
	}
	return err
}

// allocate is not available here: appends extend the file.
func allocate(*os.File, int64, int64) (bool, error) { return false, nil }

// dropPages is a no-op here: the kernel manages the page cache alone.
func dropPages(*os.File, int64, int64) {}

// startWriteback is a no-op here: the kernel writes back on its own.
func startWriteback(*os.File, int64, int64) {}
