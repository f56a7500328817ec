package replica

import (
	"context"
	"fmt"
	"log/slog"
	"os"
)

// raftLogger adapts slog to raft.Logger for one group. Raft's info chatter
// (votes, term changes, per group) goes to debug level; the engine logs
// leadership changes itself, grouped (leadershipLog). Raft's warnings, such
// as a leader stepping down without a quorum, name the group.
type raftLogger struct {
	l     *slog.Logger
	group string // groupLabel
	// lostQuorum, when set, is raised instead of logging raft's warning
	// that a leader stepped down for want of a quorum: the engine's
	// leadership log says it, grouped (a partitioned node that led 1,000
	// topics logged 1,000 lines). Raft logs from the engine loop only.
	lostQuorum *bool
}

// quorumLostFormat is raft's (v3.7) warning when CheckQuorum deposes its
// leader.
const quorumLostFormat = "%x stepped down to follower since quorum is not active"

func (r raftLogger) log(level slog.Level, msg string) {
	r.l.Log(context.Background(), level, msg, "component", "raft", "group", r.group)
}

// logf formats only what is logged: raft's debug lines are many.
func (r raftLogger) logf(level slog.Level, format string, v ...any) {
	if r.l.Enabled(context.Background(), level) {
		r.log(level, fmt.Sprintf(format, v...))
	}
}

func (r raftLogger) logv(level slog.Level, v ...any) {
	if r.l.Enabled(context.Background(), level) {
		r.log(level, fmt.Sprint(v...))
	}
}

func (r raftLogger) Debug(v ...any)                 { r.logv(slog.LevelDebug, v...) }
func (r raftLogger) Debugf(format string, v ...any) { r.logf(slog.LevelDebug, format, v...) }
func (r raftLogger) Info(v ...any)                  { r.logv(slog.LevelDebug, v...) }
func (r raftLogger) Infof(format string, v ...any)  { r.logf(slog.LevelDebug, format, v...) }
func (r raftLogger) Warning(v ...any)               { r.logv(slog.LevelWarn, v...) }
func (r raftLogger) Warningf(format string, v ...any) {
	if format == quorumLostFormat && r.lostQuorum != nil {
		*r.lostQuorum = true
		r.logf(slog.LevelDebug, format, v...)
		return
	}
	r.logf(slog.LevelWarn, format, v...)
}
func (r raftLogger) Error(v ...any)                 { r.logv(slog.LevelError, v...) }
func (r raftLogger) Errorf(format string, v ...any) { r.logf(slog.LevelError, format, v...) }
func (r raftLogger) Fatal(v ...any) {
	r.log(slog.LevelError, fmt.Sprint(v...))
	os.Exit(1)
}
func (r raftLogger) Fatalf(format string, v ...any) {
	r.log(slog.LevelError, fmt.Sprintf(format, v...))
	os.Exit(1)
}
func (r raftLogger) Panic(v ...any) { panic(fmt.Sprint(v...)) }
func (r raftLogger) Panicf(format string, v ...any) {
	panic(fmt.Sprintf(format, v...))
}
