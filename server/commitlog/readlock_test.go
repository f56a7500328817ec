package commitlog

import (
	"math"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	pb "go.etcd.io/raft/v3/raftpb"
)

// pauseFileReads makes the first file read made without the log's lock at
// site ("locate": the span that locates the chunk's first record; "chunk":
// the chunk) wait until the returned release is called; entered is closed
// once it waits. The others pass.
func pauseFileReads(t *testing.T, site string) (entered <-chan struct{}, release func()) {
	in, gate := make(chan struct{}), make(chan struct{})
	paused := false
	unlockedReadHook = func(at string) {
		if at == site && !paused {
			paused = true
			close(in)
			<-gate
		}
	}
	released := false
	release = func() {
		if !released {
			released = true
			close(gate)
		}
	}
	t.Cleanup(func() {
		release()
		unlockedReadHook = nil
	})
	return in, release
}

type readResult struct {
	msgs [][]byte
	next uint64
	err  error
}

func readAsync(l *Log, id, maxID uint64) <-chan readResult {
	out := make(chan readResult, 1)
	go func() {
		msgs, next, err := l.ReadMessages(nil, id, maxID, 0, 0)
		out <- readResult{msgs, next, err}
	}()
	return out
}

func waitClosed(t *testing.T, c <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-c:
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
	}
}

// finishes runs fn in a goroutine and fails the test unless it returns
// while the paused read waits (a writer that waits for the read never
// does; the read is released at the test's end).
func finishes(t *testing.T, what string, fn func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn()
	}()
	waitClosed(t, done, what)
}

// A reader in the middle of reading the files (a consumer far behind: a
// disk read of milliseconds) must not hold up the appends, whose lock the
// engine takes for every topic of the node in turn.
func TestAppendDoesNotWaitForAFileRead(t *testing.T) {
	for _, site := range []string{"locate", "chunk"} {
		t.Run(site, func(t *testing.T) {
			l := openT(t, t.TempDir(), Options{NoSync: true})
			t.Cleanup(func() { l.Close() })
			var want [][]byte
			for i := uint64(1); i <= 20; i++ {
				want = append(want, appendUniform(t, l, i, 10, 100)...)
			}
			commitTo(t, l, 20)
			entered, release := pauseFileReads(t, site)
			res := readAsync(l, 1, 200)
			waitClosed(t, entered, "the read to reach the files")

			finishes(t, "an append while a read is at the files", func() {
				msgs := [][]byte{[]byte("new")}
				_, err := l.Append([]*pb.Entry{ent(21, 1, pb.EntryType_EntryNormal, EncodeBatch(nil, 21, 0, 0, msgs))}, nil)
				assert.NoError(t, err)
			})
			release()
			r := <-res
			require.NoError(t, r.err)
			assert.Equal(t, want, r.msgs)
			assert.Equal(t, uint64(201), r.next)
		})
	}
}

// Uncommitted records truncated and rewritten while a reader reads the
// committed ones before them without the lock: the reader gets exactly
// the committed messages.
func TestReadOfCommittedRecordsWhileTheTailIsRewritten(t *testing.T) {
	l := openT(t, t.TempDir(), Options{NoSync: true})
	t.Cleanup(func() { l.Close() })
	var want [][]byte
	for i := uint64(1); i <= 10; i++ {
		want = append(want, appendUniform(t, l, i, 10, 100)...)
	}
	for i := uint64(11); i <= 30; i++ {
		appendUniform(t, l, i, 10, 100)
	}
	commitTo(t, l, 10)
	entered, release := pauseFileReads(t, "chunk")
	res := readAsync(l, 1, 100)
	waitClosed(t, entered, "the read to reach the files")

	// A new leader's entries replace 11..30: different sizes, so that the
	// old and new records no longer line up.
	var ents []*pb.Entry
	for i := uint64(11); i <= 40; i++ {
		msgs := [][]byte{make([]byte, 37*int(i))}
		ents = append(ents, ent(i, 2, pb.EntryType_EntryNormal, EncodeBatch(nil, i, 0, 0, msgs)))
	}
	finishes(t, "a truncation while a read is at the files", func() {
		_, err := l.Append(ents, nil)
		assert.NoError(t, err)
	})
	release()
	r := <-res
	require.NoError(t, r.err)
	assert.Equal(t, want, r.msgs)
	assert.Equal(t, uint64(101), r.next)
}

// A segment deleted by retention while a reader reads it without the lock:
// the read is made again under the lock, and reports what it would have
// reported had the deletion come first.
func TestReadOfASegmentDeletedMeanwhile(t *testing.T) {
	l := openT(t, t.TempDir(), Options{SegmentBytes: MinSegmentBytes, NoSync: true})
	t.Cleanup(func() { l.Close() })
	for i := uint64(1); i <= 40; i++ {
		appendUniform(t, l, i, 10, 100) // ~1 KiB a record: 4 a segment
	}
	commitTo(t, l, 40)
	require.Greater(t, len(l.segs), 4)
	entered, release := pauseFileReads(t, "chunk")
	res := readAsync(l, 1, 400)
	waitClosed(t, entered, "the read to reach the files")
	finishes(t, "a deletion while a read is at the files", func() {
		assert.NoError(t, l.DeleteBefore(30))
	})
	first := l.FirstID()
	require.Greater(t, first, uint64(1))
	release()
	r := <-res
	require.ErrorIs(t, r.err, ErrCompacted)
	assert.Empty(t, r.msgs)
	assert.Equal(t, first, r.next)

	// The log reads on from there.
	msgs, next, err := l.ReadMessages(nil, first, 400, 0, 0)
	require.NoError(t, err)
	assert.Len(t, msgs, int(401-first))
	assert.Equal(t, uint64(401), next)
}

// Records past the read's limit may be torn (read without the lock while a
// truncation rewrote them): the parse must not look at them.
func TestParseStopsAtTheLimit(t *testing.T) {
	l := openT(t, t.TempDir(), Options{NoSync: true})
	t.Cleanup(func() { l.Close() })
	var want [][]byte
	for i := uint64(1); i <= 10; i++ {
		want = append(want, appendUniform(t, l, i, 10, 100)...)
	}
	buf, err := os.ReadFile(l.segs[0].path)
	require.NoError(t, err)
	buf = append(buf[:l.segs[0].size], make([]byte, 2*recHeaderSize)...) // a torn header
	r := readState{limit: 100, maxCount: math.MaxInt, maxBytes: math.MaxInt, next: 1}
	msgs, more, err := r.parseChunk(nil, 1, buf, int64(len(buf)))
	require.NoError(t, err)
	assert.False(t, more)
	assert.Equal(t, want, msgs)
}

// A chunk over more segments than it has file pieces ends where they run
// out, instead of reading the rest under the lock; the read goes on with
// the next chunk.
func TestChunkOverManySegments(t *testing.T) {
	l := openT(t, t.TempDir(), Options{SegmentBytes: MinSegmentBytes, NoSync: true})
	t.Cleanup(func() { l.Close() })
	var want [][]byte
	for i := uint64(1); i <= 100; i++ {
		want = append(want, appendUniform(t, l, i, 10, 100)...) // ~1 KiB a record: 4 a segment
	}
	commitTo(t, l, 100)
	require.Greater(t, len(l.segs), 2*len(readState{}.pieces))

	r := readState{limit: 1000, maxCount: math.MaxInt, maxBytes: math.MaxInt, next: 1}
	l.mu.RLock()
	buf, _, err := l.planChunk(&r, nil, chunkStart{})
	l.mu.RUnlock()
	require.NoError(t, err)
	unlocked := int64(0)
	for _, p := range r.pieces[:r.npieces] {
		unlocked += p.n
	}
	assert.Equal(t, int64(len(buf)), unlocked, "every byte of the chunk read from a piece")

	msgs, next, err := l.ReadMessages(nil, 1, 1000, 0, 0)
	require.NoError(t, err)
	assert.Equal(t, want, msgs)
	assert.Equal(t, uint64(1001), next)
}
