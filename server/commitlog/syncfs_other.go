//go:build !linux

package commitlog

import (
	"errors"
	"os"
)

const syncfsWorks = false

func syncfs(*os.File) error { return errors.New("commitlog: syncfs not supported") }

func deviceOf(string) uint64 { return 0 }
