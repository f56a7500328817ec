//go:build unix

package server_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/forestbus/forestbus/server"
	"github.com/forestbus/forestbus/server/servertest"
)

// TestDataDirLocked: a second node on a data directory in use fails at
// start, naming the holder, and leaves the first node's files alone; once
// the first stops, the directory starts again. (Two processes on one
// directory gave one ID to two messages and left logs a restart refused.)
func TestDataDirLocked(t *testing.T) {
	n := servertest.StartNode(t)
	c := dial(t, n)
	send(t, c, "default", batch("a", 3), true)

	cfg := n.Cfg
	cfg.ListenAddr = "127.0.0.1:0"
	cfg.Listener = nil
	_, err := server.Start(context.Background(), cfg)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "in use by another node process")
	assert.Contains(t, err.Error(), fmt.Sprintf("(PID %d)", os.Getpid()))

	// The first node serves on, unharmed.
	resp := send(t, c, "default", batch("b", 1), true)
	assert.EqualValues(t, 4, resp.FirstId)

	n.Stop()
	b, err := os.ReadFile(filepath.Join(cfg.DataDir, "LOCK"))
	require.NoError(t, err)
	assert.Equal(t, fmt.Sprintf("%d\n", os.Getpid()), string(b), "the lock file names its last holder")
	n.Start()
	c = dial(t, n)
	resp = send(t, c, "default", batch("c", 1), true)
	assert.EqualValues(t, 5, resp.FirstId)
}
