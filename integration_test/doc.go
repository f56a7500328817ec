// Package integration runs named scenarios against real fbnode processes on
// 127.0.0.1, through the client package only. The tests build fbnode once,
// start each node on a free port (-listen 127.0.0.1:0 -addr-file), and kill,
// stop and restart processes as a scenario requires; cluster_test.go starts
// 3-node clusters with -initial-cluster on fixed free ports. They are
// skipped under -short.
//
// The tests are the external test package integration_test of this
// otherwise empty package, so that the go tool sees one package whatever
// the order of the file names.
package integration
