//go:build !linux

package commitlog

import "os"

func fdatasync(f *os.File) error {
	err := f.Sync()
	if err == nil && flushed != nil {
		flushed(f, "")
	}
	return err
}

// allocate is not available here: appends extend the file.
func allocate(*os.File, int64, int64) (bool, error) { return false, nil }
