//go:build unix

package server

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/forestbus/forestbus/internal/syncbuf"
)

// TestDataDirWithoutLocks: on a filesystem without flock (some network
// and FUSE filesystems) the node starts, unlocked, and says so; it does
// not refuse to start.
func TestDataDirWithoutLocks(t *testing.T) {
	old := flock
	flock = func(int, int) error { return unix.ENOLCK }
	t.Cleanup(func() { flock = old })

	dir := t.TempDir()
	f, err := lockDataDir(dir)
	require.ErrorIs(t, err, errNoLocks)
	require.Nil(t, f)

	var logs syncbuf.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := Start(ctx, Config{
		ListenAddr: "127.0.0.1:0", DataDir: dir, ClusterID: "test", NodeName: "n1", TickInterval: 20 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(&logs, nil)),
	})
	require.NoError(t, err)
	require.NoError(t, s.Stop())
	assert.Contains(t, logs.String(), "the data directory's filesystem takes no locks")
}
