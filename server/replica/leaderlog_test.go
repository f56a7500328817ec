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
	l.note("a.1", 3, 0, 1, false, true, false)  // this node (1) leads now
	l.note("b.2", 4, 1, 0, true, false, false)  // it stepped down
	l.note("c.3", 5, 0, 2, false, false, false) // it follows 2
	l.note("d.4", 6, 2, 0, false, false, false) // 2 is gone: electing
	l.note("", 7, 2, 3, false, false, false)    // the metadata group follows 3
	l.note("e.5", 7, 2, 2, false, false, false) // no change: nothing
	l.note("f.6", 7, 1, 1, true, true, false)   // no change: nothing
	l.flush(false)
	l.window = l.window.Add(-leadLogEvery)
	l.note("g.7", 8, 1, 0, true, false, true) // deposed: no quorum
	l.flush(false)

	got := rec.find("became leader")
	require.Len(t, got, 1)
	assert.Equal(t, map[string]string{"group": "a.1", "term": "3"}, got[0].attrs)
	got = rec.find("stopped leading")
	require.Len(t, got, 1)
	assert.Equal(t, map[string]string{"group": "b.2", "term": "4", "leader": "0"}, got[0].attrs)
	got = rec.find("following leader")
	require.Len(t, got, 2)
	assert.Equal(t, map[string]string{"group": "c.3", "term": "5", "leader": "2"}, got[0].attrs)
	assert.Equal(t, map[string]string{"group": "(metadata)", "term": "7", "leader": "3"}, got[1].attrs)
	got = rec.find("leader lost: electing")
	require.Len(t, got, 1)
	assert.Equal(t, "d.4", got[0].attrs["group"])
	got = rec.find("stopped leading: no quorum")
	require.Len(t, got, 1)
	assert.Equal(t, slog.LevelWarn, got[0].level)
	assert.Equal(t, map[string]string{"group": "g.7", "term": "8", "leader": "0"}, got[0].attrs)
	var order []string
	for _, line := range *rec.lines {
		order = append(order, line.attrs["group"])
	}
	assert.Equal(t, []string{"a.1", "b.2", "c.3", "d.4", "(metadata)", "g.7"}, order, "in the order they happened")
}

// TestLeadershipLogGroupsMany: up to leadLogMax changes a second are
// logged one per line at once; the rest are held until the second is
// over and go out as one line per kind with their count and the first
// names; a forced flush (the engine stopping) writes what is held at once.
func TestLeadershipLogGroupsMany(t *testing.T) {
	rec := newRecorder()
	l := leadershipLog{log: slog.New(rec)}
	for i := range 1000 {
		l.note(fmt.Sprintf("t%d", i), 1, 0, 1, false, true, false)
		l.flush(false)
	}
	got := rec.find("became leader")
	require.Len(t, got, leadLogMax, "the first changes are logged at once, one per line")
	for i, line := range got {
		assert.Equal(t, fmt.Sprint("t", i), line.attrs["group"])
	}
	l.window = l.window.Add(-leadLogEvery)
	l.note("u", 2, 1, 0, true, false, false)
	l.flush(false)
	got = rec.find("became leader")
	require.Len(t, got, leadLogMax+1)
	assert.Equal(t, map[string]string{"groups": "995", "names": "t5, t6, t7, t8, t9 and 990 more"}, got[leadLogMax].attrs)
	got = rec.find("stopped leading")
	require.Len(t, got, 1, "grouped: one line per kind")
	assert.Equal(t, map[string]string{"groups": "1", "names": "u"}, got[0].attrs)
	assert.Equal(t, "stopped leading", (*rec.lines)[leadLogMax+1].msg, "after the other line: it happened later")

	l.note("v", 2, 1, 0, true, false, false)
	l.flush(false)
	assert.Len(t, rec.find("stopped leading"), 1, "held: this second's lines are spent")
	l.flush(true)
	assert.Len(t, rec.find("stopped leading"), 2)
	l.flush(true)
	assert.Len(t, *rec.lines, leadLogMax+3, "nothing held: nothing written")

	// A quiet second later, a change is logged at once again.
	l.window = l.window.Add(-leadLogEvery)
	l.note("w", 3, 0, 1, false, true, false)
	l.flush(false)
	assert.Len(t, rec.find("became leader"), leadLogMax+2)
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

	// Raft's quorum-loss warning raises the group's flag (the leadership
	// log says it, grouped) instead of a line per group.
	lines := len(*rec.lines)
	var lost bool
	raftLogger{l: e.log, group: "orders.7", lostQuorum: &lost}.Warningf(quorumLostFormat, 1)
	assert.True(t, lost)
	assert.Len(t, *rec.lines, lines)

	// Lines below the level are not even formatted.
	var formatted int
	raftLogger{l: e.log}.Debugf("%v", counted{&formatted})
	raftLogger{l: e.log}.Info(counted{&formatted})
	assert.Zero(t, formatted)
	raftLogger{l: e.log}.Warning(counted{&formatted})
	assert.Equal(t, 1, formatted)
}

// counted counts how often it is formatted.
type counted struct{ n *int }

func (c counted) String() string { *c.n++; return "x" }
