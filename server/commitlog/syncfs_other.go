//go:build !linux

package commitlog

import (
	"errors"
	"os"
)

const syncfsWorks = false

func syncfsUsable(uint64) bool { return false }

func syncfs(*os.File) error { return errors.New("commitlog: syncfs not supported") }

func deviceOf(string) uint64 { return 0 }

// syncFilesystem does nothing here: off Linux, what a process that died
// left unsynced is not synced at the next start (startSync).
func syncFilesystem(string) error { return nil }
