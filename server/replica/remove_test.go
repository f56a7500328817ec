package replica

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.etcd.io/raft/v3"

	"github.com/forestbus/forestbus/server/commitlog"
)

// TestRemovalsCloseBesideTheJournal: groups on a node journal whose small
// files keep it checkpointing are removed while they and others write, so
// their logs close (in the background) while the loop and the checkpoints
// run; more removals are under way when the engine stops. Every removed
// group's log closes, the journal closes without error after Stop, and
// it opens again.
func TestRemovalsCloseBesideTheJournal(t *testing.T) {
	root := t.TempDir()
	j, err := commitlog.OpenJournal(filepath.Join(root, "journal"), root, commitlog.JournalOptions{Bytes: 8 << 10})
	require.NoError(t, err)
	e, err := NewEngine(Config{NodeID: 1, TickInterval: 5 * time.Millisecond, Journal: j, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	require.NoError(t, err)
	e.Start()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	var closed sync.WaitGroup
	open := func(name string) *Group {
		l, err := commitlog.Open(filepath.Join(root, name), commitlog.Options{Journal: j, SegmentBytes: 16 << 10})
		require.NoError(t, err)
		closed.Add(1)
		g, err := e.AddGroup(GroupConfig{Name: name, Log: l, Peers: []raft.Peer{{ID: 1}}, OnClose: closed.Done})
		require.NoError(t, err)
		require.NoError(t, g.WaitLeader(ctx))
		return g
	}
	msg := [][]byte{make([]byte, 300)}

	// Four groups written throughout, until the engine stops.
	var writers sync.WaitGroup
	for i := range 4 {
		g := open(fmt.Sprint("kept", i))
		writers.Go(func() {
			for k := 0; k < 100_000; k++ {
				if _, err := g.Propose(ctx, msg, true); err != nil {
					return // ErrStopped
				}
			}
		})
	}
	for round := range 20 {
		var removed []*Group
		var sends sync.WaitGroup
		for i := range 3 {
			g := open(fmt.Sprintf("removed%d.%d", round, i))
			removed = append(removed, g)
			sends.Go(func() {
				for k := range 5 {
					_, _ = g.Propose(ctx, msg, k%2 == 0) // ErrStopped once removed
				}
			})
		}
		for _, g := range removed {
			e.RemoveGroup(g.Name())
		}
		sends.Wait()
	}
	for i := range 5 { // under way at Stop
		g := open(fmt.Sprint("late", i))
		go func() { _, _ = g.Propose(ctx, msg, false) }()
		e.RemoveGroup(g.Name())
	}
	e.Stop()
	allClosed := make(chan struct{})
	go func() { closed.Wait(); close(allClosed) }()
	select {
	case <-allClosed:
	case <-time.After(10 * time.Second):
		t.Fatal("a removed group's log never closed")
	}
	writers.Wait()
	require.NoError(t, j.Close())

	j, err = commitlog.OpenJournal(filepath.Join(root, "journal"), root, commitlog.JournalOptions{Bytes: 8 << 10})
	require.NoError(t, err)
	require.NoError(t, j.Close())
}
