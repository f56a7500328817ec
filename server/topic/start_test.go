package topic

import (
	"cmp"
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/forestbus/forestbus/internal/flushhook"
	"github.com/forestbus/forestbus/server/replica"
)

// stallStarts makes the first flush under DIR/topics/NAME.* (of a file
// named file, when not empty) wait until the returned release is called;
// stalled is closed when it waits.
func stallStarts(t *testing.T, dir, name, file string) (stalled <-chan struct{}, release func()) {
	t.Helper()
	prefix := filepath.Join(dir, "topics", name+".")
	st, rel := make(chan struct{}), make(chan struct{})
	var once, relOnce sync.Once
	prev := flushhook.Set(func(f *os.File, d string) {
		path := d
		if f != nil {
			path = f.Name()
		}
		if !strings.HasPrefix(path, prefix) || (file != "" && filepath.Base(path) != file) {
			return
		}
		waited := false
		once.Do(func() { close(st); waited = true })
		if waited {
			<-rel
		}
	})
	release = func() { relOnce.Do(func() { close(rel) }) }
	t.Cleanup(func() { release(); flushhook.Set(prev) })
	return st, release
}

func openSingle(t *testing.T, dir string) (*replica.Engine, *Registry) {
	t.Helper()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	e, err := replica.NewEngine(replica.Config{NodeID: 1, TickInterval: 10 * time.Millisecond, Logger: logger})
	require.NoError(t, err)
	e.Start()
	r, err := Open(Config{Dir: dir, Engine: e, NodeID: 1, Members: []Member{{ID: 1, Name: "n1"}}, Logger: logger})
	require.NoError(t, err)
	t.Cleanup(func() { e.Stop(); r.Close() })
	return e, r
}

func waitStalled(t *testing.T, stalled <-chan struct{}) {
	t.Helper()
	select {
	case <-stalled:
	case <-time.After(10 * time.Second):
		t.Fatal("the topic's start never reached its first flush")
	}
}

// TestCreateDoesNotStallOtherTopics: a topic's start (its directory and
// files, and its configuration, stored with several fsyncs) runs off the
// engine goroutine and outside the registry's lock, so the node's other
// topics are looked up and commit meanwhile; it ran in the metadata
// group's apply and every group of the node waited for its fsyncs. Lookups
// of the topic wait for its start.
func TestCreateDoesNotStallOtherTopics(t *testing.T) {
	for _, file := range []string{"", "meta.tmp"} {
		t.Run("stalled at "+cmp.Or(file, "its first flush"), func(t *testing.T) { testCreateDoesNotStall(t, file) })
	}
}

func testCreateDoesNotStall(t *testing.T, file string) {
	dir := t.TempDir()
	_, r := openSingle(t, dir)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	require.NoError(t, r.Create(ctx, "a", Settings{}))
	a, err := r.Lookup(ctx, "a")
	require.NoError(t, err)

	stalled, release := stallStarts(t, dir, "b", file)
	created := make(chan error, 1)
	go func() { created <- r.Create(ctx, "b", Settings{}) }()
	waitStalled(t, stalled)

	got := make(chan error, 1)
	go func() { _, err := r.Get("a"); got <- err }()
	select {
	case err := <-got:
		require.NoError(t, err)
	case <-time.After(5 * time.Second):
		t.Fatal("a lookup of another topic waits for b's start")
	}
	pctx, pcancel := context.WithTimeout(ctx, 5*time.Second)
	res, err := a.Group.Propose(pctx, [][]byte{[]byte("x")}, true)
	pcancel()
	require.NoError(t, err, "a send to another topic while b starts")
	require.EqualValues(t, 1, res.FirstID)

	_, err = r.Get("b")
	require.ErrorIs(t, err, ErrNotFound, "b has no group yet")
	lctx, lcancel := context.WithTimeout(ctx, 50*time.Millisecond)
	_, err = r.Lookup(lctx, "b")
	lcancel()
	require.ErrorIs(t, err, replica.ErrNoLeader, "a lookup of a starting topic waits, and gives up with its context")
	select {
	case err := <-created:
		t.Fatalf("Create returned before the topic started: %v", err)
	default:
	}

	release()
	require.NoError(t, <-created)
	b, err := r.Lookup(ctx, "b")
	require.NoError(t, err)
	res, err = b.Group.Propose(ctx, [][]byte{[]byte("y")}, true)
	require.NoError(t, err)
	require.EqualValues(t, 1, res.FirstID)
}

// TestRemoveWhileStarting: a topic removed before its start ended never
// runs, and its files are moved aside; created again, it starts afresh.
func TestRemoveWhileStarting(t *testing.T) {
	dir := t.TempDir()
	_, r := openSingle(t, dir)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	stalled, release := stallStarts(t, dir, "c", "")
	created := make(chan error, 1)
	go func() { created <- r.Create(ctx, "c", Settings{}) }()
	waitStalled(t, stalled)
	require.NoError(t, r.Remove(ctx, "c"))
	release()
	require.NoError(t, <-created, "a create whose topic was removed meanwhile")
	_, err := r.Lookup(ctx, "c")
	require.ErrorIs(t, err, ErrNotFound)
	removed, err := filepath.Glob(filepath.Join(dir, "removed", "c.*"))
	require.NoError(t, err)
	require.Len(t, removed, 1, "the first c's files moved aside")
	left, err := filepath.Glob(filepath.Join(dir, "topics", "c.*"))
	require.NoError(t, err)
	require.Empty(t, left)

	require.NoError(t, r.Create(ctx, "c", Settings{}))
	c, err := r.Lookup(ctx, "c")
	require.NoError(t, err)
	res, err := c.Group.Propose(ctx, [][]byte{[]byte("z")}, true)
	require.NoError(t, err)
	require.EqualValues(t, 1, res.FirstID)
}

// TestStopWhileStarting: a start that ends after the engine stopped closes
// its log; Close waits for it.
func TestStopWhileStarting(t *testing.T) {
	dir := t.TempDir()
	e, r := openSingle(t, dir)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	stalled, release := stallStarts(t, dir, "d", "")
	go func() { _ = r.Create(ctx, "d", Settings{}) }()
	waitStalled(t, stalled)
	e.Stop()
	closed := make(chan struct{})
	go func() { r.Close(); close(closed) }()
	select {
	case <-closed:
		t.Fatal("Close returned while a start ran")
	case <-time.After(20 * time.Millisecond):
	}
	release()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close still waits after the start ended")
	}
	_, err := r.Get("d")
	require.ErrorIs(t, err, ErrNotFound)
}
