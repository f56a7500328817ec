package replica

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"
)

// leadershipLog gathers the groups' leadership changes as the loop sees
// them (Group.persist) and logs them in few lines. A node that restarts
// with 1,000 topics sees 1,000 leaders elected within a second or two,
// and a node that dies moves every leadership it held.
//
// Changes are logged at the end of the loop's pass that saw them, one per
// line, up to leadLogMax lines a second. Beyond that they are held until
// the second is over, and then logged together, in the order they
// happened: one line per change when they are few, else one line per kind
// (with the count and the first names), so at most numLeadKinds lines.
// Loop-only.
type leadershipLog struct {
	log    *slog.Logger
	window time.Time // when the current second began
	lines  int       // lines written in it
	held   []leadChange
}

type leadKind int

const (
	// This node became the group's leader.
	leadGained leadKind = iota
	// This node stopped leading the group (leader is the new one, or 0).
	leadLost
	// Raft deposed this node, the group's leader, for want of a quorum.
	leadDeposed
	// A group this node follows learned its (new) leader.
	leadFollowing
	// A group this node follows lost its leader: an election is on.
	leadUnknown
	numLeadKinds
)

// leadLogMax is the most lines a second of changes logged one per line;
// also the most changes held that are logged one per line at once.
const leadLogMax = 5

// leadLogEvery is the window leadLogMax counts lines in.
const leadLogEvery = time.Second

type leadChange struct {
	kind   leadKind
	group  string
	term   uint64
	leader uint64
}

// note records a change of group's leader from was to now as this node
// sees it (leading tells whether it leads now, led whether it led before).
// lostQuorum tells that raft deposed it for want of a quorum.
func (l *leadershipLog) note(group string, term, was, now uint64, led, leading, lostQuorum bool) {
	var k leadKind
	switch {
	case leading && !led:
		k = leadGained
	case led && !leading && lostQuorum:
		k = leadDeposed
	case led && !leading:
		k = leadLost
	case leading || was == now:
		return
	case now == 0:
		k = leadUnknown
	default:
		k = leadFollowing
	}
	l.held = append(l.held, leadChange{kind: k, group: group, term: term, leader: now})
}

// flush writes the held changes unless this second's lines are spent;
// force (the engine stopping) writes them regardless.
func (l *leadershipLog) flush(force bool) {
	if len(l.held) == 0 {
		return
	}
	if now := time.Now(); now.Sub(l.window) >= leadLogEvery {
		l.window, l.lines = now, 0
	}
	switch {
	case l.lines+len(l.held) <= leadLogMax:
		l.lines += len(l.held)
	case l.lines == 0 || force:
		l.lines = leadLogMax // grouped: the rest of the second waits
	default:
		return
	}
	l.write()
	clear(l.held)
	l.held = l.held[:0]
}

var leadMessages = [numLeadKinds]struct {
	msg   string
	level slog.Level
}{
	leadGained:    {"became leader", slog.LevelInfo},
	leadLost:      {"stopped leading", slog.LevelInfo},
	leadDeposed:   {"stopped leading: no quorum", slog.LevelWarn},
	leadFollowing: {"following leader", slog.LevelInfo},
	leadUnknown:   {"leader lost: electing", slog.LevelInfo}, // also on every hand-off
}

// write logs the held changes in order: one line each when they are at
// most leadLogMax, else one line per kind, where its first change is.
func (l *leadershipLog) write() {
	ctx := context.Background()
	var counts [numLeadKinds]int
	for _, c := range l.held {
		counts[c.kind]++
	}
	grouped := len(l.held) > leadLogMax
	var done [numLeadKinds]bool
	for _, c := range l.held {
		m := leadMessages[c.kind]
		if done[c.kind] || !l.log.Enabled(ctx, m.level) {
			continue
		}
		n := counts[c.kind]
		if !grouped {
			attrs := []any{"group", groupLabel(c.group), "term", c.term}
			if c.kind != leadGained && c.kind != leadUnknown {
				attrs = append(attrs, "leader", c.leader)
			}
			l.log.Log(ctx, m.level, m.msg, attrs...)
			continue
		}
		done[c.kind] = true
		var names strings.Builder
		shown := 0
		for _, o := range l.held {
			if o.kind != c.kind {
				continue
			}
			if shown == leadLogMax {
				break
			}
			if shown > 0 {
				names.WriteString(", ")
			}
			names.WriteString(groupLabel(o.group))
			shown++
		}
		if n > shown {
			fmt.Fprintf(&names, " and %d more", n-shown)
		}
		l.log.Log(ctx, m.level, m.msg, "groups", n, "names", names.String())
	}
}

// groupLabel names a group in logs: the metadata group's name is "".
func groupLabel(name string) string {
	if name == "" {
		return "(metadata)"
	}
	return name
}
