// Package integration_test runs named scenarios against real fbnode
// processes on 127.0.0.1, through the client package only. The tests build
// fbnode once, start each node on a free port (-listen 127.0.0.1:0
// -addr-file), and kill, stop and restart processes as a scenario requires.
// They are skipped under -short.
package integration_test
