//go:build unix

package server

import (
	"bytes"
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

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

	var logs syncBuf
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
