package replica

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.etcd.io/raft/v3"

	"github.com/forestbus/forestbus/server/commitlog"
)

// logLine is one record a recorder kept: its level, message and
// attributes (values as strings).
type logLine struct {
	level slog.Level
	msg   string
	attrs map[string]string
}

// recorder is a slog.Handler keeping the records at Info and above.
type recorder struct {
	mu    *sync.Mutex
	lines *[]logLine
	with  []slog.Attr
}

func newRecorder() *recorder { return &recorder{mu: new(sync.Mutex), lines: new([]logLine)} }

func (r *recorder) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelInfo }

func (r *recorder) Handle(_ context.Context, rec slog.Record) error {
	line := logLine{level: rec.Level, msg: rec.Message, attrs: map[string]string{}}
	for _, a := range r.with {
		line.attrs[a.Key] = a.Value.String()
	}
	rec.Attrs(func(a slog.Attr) bool {
		line.attrs[a.Key] = a.Value.String()
		return true
	})
	r.mu.Lock()
	*r.lines = append(*r.lines, line)
	r.mu.Unlock()
	return nil
}

func (r *recorder) WithAttrs(as []slog.Attr) slog.Handler {
	c := *r
	c.with = append(append([]slog.Attr(nil), r.with...), as...)
	return &c
}

func (r *recorder) WithGroup(string) slog.Handler { return r }

// find returns the lines with message msg.
func (r *recorder) find(msg string) []logLine {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []logLine
	for _, l := range *r.lines {
		if l.msg == msg {
			out = append(out, l)
		}
	}
	return out
}

// TestLeadershipLogKinds: each kind of change is told apart, a few are
// logged one per line with the group, its term and the new leader, and
// the metadata group is named.
func TestLeadershipLogKinds(t *testing.T) {
	rec := newRecorder()
	l := leadershipLog{log: slog.New(rec)}
	l.note("a.1", 3, 0, 1, false, true)  // this node (1) leads now
	l.note("b.2", 4, 1, 0, true, false)  // it stepped down
	l.note("c.3", 5, 0, 2, false, false) // it follows 2
	l.note("d.4", 6, 2, 0, false, false) // 2 is gone: electing
	l.note("", 7, 2, 3, false, false)    // the metadata group follows 3
	l.note("e.5", 7, 2, 2, false, false) // no change: nothing
	l.note("f.6", 7, 1, 1, true, true)   // no change: nothing
	l.flush(false)

	got := rec.find("became leader")
	require.Len(t, got, 1)
	assert.Equal(t, map[string]string{"group": "a.1", "term": "3"}, got[0].attrs)
	got = rec.find("stopped leading")
	require.Len(t, got, 1)
	assert.Equal(t, map[string]string{"group": "b.2", "term": "4", "leader": "0"}, got[0].attrs)
	got = rec.find("following a new leader")
	require.Len(t, got, 2)
	assert.Equal(t, map[string]string{"group": "c.3", "term": "5", "leader": "2"}, got[0].attrs)
	assert.Equal(t, map[string]string{"group": "(metadata)", "term": "7", "leader": "3"}, got[1].attrs)
	got = rec.find("leader lost: electing")
	require.Len(t, got, 1)
	assert.Equal(t, slog.LevelWarn, got[0].level)
	assert.Equal(t, "d.4", got[0].attrs["group"])
	require.Len(t, *rec.lines, 5)
}

// TestLeadershipLogGroupsMany: changes within a second of the last lines
// are held, and many of one kind go out as one line with their count and
// the first names; a forced flush (the engine stopping) writes what is
// held at once.
func TestLeadershipLogGroupsMany(t *testing.T) {
	rec := newRecorder()
	l := leadershipLog{log: slog.New(rec)}
	l.note("t0", 1, 0, 1, false, true)
	l.flush(false)
	require.Len(t, rec.find("became leader"), 1, "the first change is logged at once")

	for i := 1; i <= 1000; i++ {
		l.note(fmt.Sprintf("t%d", i), 1, 0, 1, false, true)
		l.flush(false)
	}
	require.Len(t, rec.find("became leader"), 1, "changes within a second of the last lines are held")
	l.last = time.Now().Add(-leadLogEvery)
	l.flush(false)
	got := rec.find("became leader")
	require.Len(t, got, 2)
	assert.Equal(t, map[string]string{"groups": "1000", "names": "t1, t2, t3, t4, t5 and 995 more"}, got[1].attrs)

	l.note("u", 2, 1, 0, true, false)
	l.flush(false)
	assert.Empty(t, rec.find("stopped leading"))
	l.flush(true)
	assert.Len(t, rec.find("stopped leading"), 1)
	l.flush(true)
	assert.Len(t, *rec.lines, 3, "nothing held: nothing written")
}

// TestEngineLogsLeadership: an engine logs the leadership its groups gain,
// and raft's own warnings name their group.
func TestEngineLogsLeadership(t *testing.T) {
	rec := newRecorder()
	e, err := NewEngine(Config{NodeID: 1, TickInterval: 10 * time.Millisecond, Logger: slog.New(rec)})
	require.NoError(t, err)
	e.Start()
	t.Cleanup(e.Stop)
	l, err := commitlog.Open(t.TempDir(), commitlog.Options{SegmentBytes: 4096})
	require.NoError(t, err)
	g, err := e.AddGroup(GroupConfig{Name: "orders.7", Log: l, Peers: []raft.Peer{{ID: 1}}})
	require.NoError(t, err)
	require.NoError(t, g.WaitLeader(ctx10(t)))
	require.Eventually(t, func() bool {
		got := rec.find("became leader")
		return len(got) == 1 && got[0].attrs["group"] == "orders.7" && got[0].attrs["term"] != "0"
	}, 10*time.Second, 5*time.Millisecond)

	raftLogger{l: e.log, group: groupLabel("orders.7")}.Warningf("%x stepped down", 1)
	got := rec.find("1 stepped down")
	require.Len(t, got, 1)
	assert.Equal(t, "orders.7", got[0].attrs["group"])
	assert.Equal(t, "raft", got[0].attrs["component"])
}
