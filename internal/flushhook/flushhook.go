// Package flushhook tells tests of every flush the commit log makes durable.
// Package commitlog calls Flushed after each successful fdatasync, fsync or
// syncfs; package powerloss installs a hook with Set to model what a power
// loss would leave on disk. Without a hook (always, outside tests) Flushed
// costs one atomic load.
package flushhook

import (
	"os"
	"sync/atomic"
)

// Func is told of one flush: f for a file's fdatasync or fsync, dir for a
// directory's fsync, neither for a syncfs (the whole filesystem). It may
// run on any goroutine, and concurrently with itself.
type Func func(f *os.File, dir string)

var hook atomic.Pointer[Func]

// Set installs fn (nil removes the hook) and returns the hook it replaced.
func Set(fn Func) Func {
	var p *Func
	if fn != nil {
		p = &fn
	}
	if old := hook.Swap(p); old != nil {
		return *old
	}
	return nil
}

// Flushed reports a flush that succeeded to the installed hook, if any.
func Flushed(f *os.File, dir string) {
	if p := hook.Load(); p != nil {
		(*p)(f, dir)
	}
}
