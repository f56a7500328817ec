package topic

import (
	"cmp"
	"context"
	"fmt"
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

// stallFlush makes the first flush under DIR/topics/NAME.* (of a file
// named file, when not empty) wait until the returned release is called;
// stalled is closed when it waits. It stalls a topic's start, or its log's
// close.
func stallFlush(t *testing.T, dir, name, file string) (stalled <-chan struct{}, release func()) {
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

// requireWaitsFor runs call (named name) and requires that it does not
// return while what (released by release) holds it up, and that it
// returns once released. It looks for 20 ms: a call that does not wait
// fails the test most of the time; one that waits never does.
func requireWaitsFor(t *testing.T, name string, call func(), what string, release func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { call(); close(done) }()
	select {
	case <-done:
		t.Fatalf("%s returned while %s held it up", name, what)
	case <-time.After(20 * time.Millisecond):
	}
	release()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatalf("%s still waits after %s ended", name, what)
	}
}

// openSingle opens a one-node registry on dir, and a context for the
// test's calls (20 s).
func openSingle(t *testing.T, dir string) (*replica.Engine, *Registry, context.Context) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	e, err := replica.NewEngine(replica.Config{NodeID: 1, TickInterval: 10 * time.Millisecond, Logger: logger})
	require.NoError(t, err)
	e.Start()
	r, err := Open(Config{Dir: dir, Engine: e, NodeID: 1, Members: []Member{{ID: 1, Name: "n1"}}, Logger: logger})
	require.NoError(t, err)
	t.Cleanup(func() { e.Stop(); r.Close() })
	return e, r, ctx
}

// dirsIn lists the topic directories DIR/sub/NAME.*.
func dirsIn(t *testing.T, dir, sub, name string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, sub, name+".*"))
	require.NoError(t, err)
	return m
}

// createStalled creates topic name on r (data directory dir) in the
// background and returns once its start waits at its first flush (of
// file, when not empty; see stallFlush): created gets Create's result.
func createStalled(ctx context.Context, t *testing.T, r *Registry, dir, name, file string) (created <-chan error, release func()) {
	t.Helper()
	stalled, release := stallFlush(t, dir, name, file)
	done := make(chan error, 1)
	go func() { done <- r.Create(ctx, name, Settings{}) }()
	select {
	case <-stalled:
	case <-time.After(10 * time.Second):
		t.Fatal("the topic's start never reached its first flush")
	}
	return done, release
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
	_, r, ctx := openSingle(t, dir)
	require.NoError(t, r.Create(ctx, "a", Settings{}))
	a, err := r.Lookup(ctx, "a")
	require.NoError(t, err)

	created, release := createStalled(ctx, t, r, dir, "b", file)

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
	requireFirstSend(ctx, t, r, "b")
}

// requireFirstSend sends a first message to topic name on r: its ID is 1.
func requireFirstSend(ctx context.Context, t *testing.T, r *Registry, name string) {
	t.Helper()
	tp, err := r.Lookup(ctx, name)
	require.NoError(t, err)
	res, err := tp.Group.Propose(ctx, [][]byte{[]byte("m")}, true)
	require.NoError(t, err)
	require.EqualValues(t, 1, res.FirstID)
}

// TestRemoveWhileStarting: a topic removed before its start ended never
// runs, and its files are moved aside; created again, it starts afresh.
func TestRemoveWhileStarting(t *testing.T) {
	dir := t.TempDir()
	_, r, ctx := openSingle(t, dir)

	created, release := createStalled(ctx, t, r, dir, "c", "")
	require.NoError(t, r.Remove(ctx, "c"))
	release()
	require.NoError(t, <-created, "a create whose topic was removed meanwhile")
	_, err := r.Lookup(ctx, "c")
	require.ErrorIs(t, err, ErrNotFound)
	require.Len(t, dirsIn(t, dir, "removed", "c"), 1, "the first c's files moved aside")
	require.Empty(t, dirsIn(t, dir, "topics", "c"))

	require.NoError(t, r.Create(ctx, "c", Settings{}))
	requireFirstSend(ctx, t, r, "c")
}

// TestCreateReportsAFailedStart: a topic whose start fails on this node
// (here a file stands where its directory goes) is not reported created,
// lookups say why, and its removal moves its files aside. Create answered
// nil: it took the failed start for a removal (a review found it).
func TestCreateReportsAFailedStart(t *testing.T) {
	dir := t.TempDir()
	_, r, ctx := openSingle(t, dir)
	require.NoError(t, r.Create(ctx, "a", Settings{}))
	last, err := r.Meta().Log().LastIndex()
	require.NoError(t, err)
	for i := last + 1; i <= last+20; i++ { // wherever the create lands
		require.NoError(t, os.WriteFile(filepath.Join(dir, "topics", fmt.Sprintf("e.%d", i)), nil, 0o644))
	}
	err = r.Create(ctx, "e", Settings{})
	require.ErrorContains(t, err, "did not start on this node")
	_, err = r.Lookup(ctx, "e")
	require.ErrorContains(t, err, "did not start on this node")
	require.ErrorIs(t, err, replica.ErrStorageFailed, "answered UNAVAILABLE: clients try another node")
	require.Error(t, r.Ensure(ctx, "e", Settings{}), "Ensure gives up at once")

	require.NoError(t, r.Remove(ctx, "e"))
	_, err = r.Lookup(ctx, "e")
	require.ErrorIs(t, err, ErrNotFound)
	require.Len(t, dirsIn(t, dir, "removed", "e"), 1, "the failed topic's path moved aside at its removal")
}

// TestStopWhileStarting: a start that ends after the engine stopped closes
// its log and leaves its files in place (the node stops, the topic stays);
// Close waits for it, and Create reports the stop.
func TestStopWhileStarting(t *testing.T) {
	dir := t.TempDir()
	e, r, ctx := openSingle(t, dir)

	created, release := createStalled(ctx, t, r, dir, "d", "")
	e.Stop()
	requireWaitsFor(t, "Close", r.Close, "a start", release)
	require.ErrorIs(t, <-created, replica.ErrStopped)
	_, err := r.Get("d")
	require.ErrorIs(t, err, ErrNotFound)
	require.Len(t, dirsIn(t, dir, "topics", "d"), 1, "a stopping node keeps the topic's files in place")
	require.Empty(t, dirsIn(t, dir, "removed", "d"))
}
