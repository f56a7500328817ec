//go:build !linux

// Package uring makes fdatasync through io_uring on Linux; elsewhere
// Fdatasync reports ok false and callers make the system call.
package uring

import "errors"

// SetEnabled has no effect here.
func SetEnabled(bool) {}

// Available reports false: io_uring is Linux's.
func Available() (bool, error) { return false, errors.New("uring: not Linux") }

// Fdatasync reports ok false: the caller makes the system call.
func Fdatasync(int) (ok bool, err error) { return false, nil }
