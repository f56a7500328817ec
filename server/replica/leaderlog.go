package replica

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"
)

// leadershipLog gathers the groups' leadership changes as the loop sees
// them (Group.persist) and logs them in few lines: each change on its own
// line when there are few, one line per kind when there are many. A node
// that restarts with 1,000 topics sees 1,000 leaders elected within a
// second or two, and a node that dies moves every leadership it held.
//
// The first changes after a quiet second are logged at the end of the
// loop's pass; later ones wait until a second has passed since the last
// line, and then go out together. Loop-only.
type leadershipLog struct {
	log   *slog.Logger
	last  time.Time // when lines were last written
	kinds [numLeadKinds][]leadChange
	held  bool // some kind holds changes
}

type leadKind int

const (
	// This node became the group's leader.
	leadGained leadKind = iota
	// This node stopped leading the group (leader is the new one, or 0).
	leadLost
	// A group this node follows learned its (new) leader.
	leadFollowing
	// A group this node follows lost its leader: an election is on.
	leadUnknown
	numLeadKinds
)

// leadLogMax is the most changes of one kind logged one per line at once;
// beyond it they are logged as one line with a count and the first names.
const leadLogMax = 5

// leadLogEvery is the least time between two sets of lines.
const leadLogEvery = time.Second

type leadChange struct {
	group  string
	term   uint64
	leader uint64
}

// note records a change of group's leader from was to now as this node
// sees it (leading tells whether it leads now, led whether it led before).
func (l *leadershipLog) note(group string, term, was, now uint64, led, leading bool) {
	var k leadKind
	switch {
	case leading && !led:
		k = leadGained
	case led && !leading:
		k = leadLost
	case leading || was == now:
		return
	case now == 0:
		k = leadUnknown
	default:
		k = leadFollowing
	}
	l.kinds[k] = append(l.kinds[k], leadChange{group: group, term: term, leader: now})
	l.held = true
}

// flush writes the held changes, unless lines went out less than
// leadLogEvery ago and force is false.
func (l *leadershipLog) flush(force bool) {
	if !l.held {
		return
	}
	now := time.Now()
	if !force && now.Sub(l.last) < leadLogEvery {
		return
	}
	l.last, l.held = now, false
	for k := range l.kinds {
		l.write(leadKind(k), l.kinds[k])
		clear(l.kinds[k])
		l.kinds[k] = l.kinds[k][:0]
	}
}

var leadMessages = [numLeadKinds]struct {
	msg   string
	level slog.Level
}{
	leadGained:    {"became leader", slog.LevelInfo},
	leadLost:      {"stopped leading", slog.LevelInfo},
	leadFollowing: {"following a new leader", slog.LevelInfo},
	leadUnknown:   {"leader lost: electing", slog.LevelWarn},
}

func (l *leadershipLog) write(k leadKind, changes []leadChange) {
	if len(changes) == 0 {
		return
	}
	m := leadMessages[k]
	ctx := context.Background()
	if !l.log.Enabled(ctx, m.level) {
		return
	}
	if len(changes) <= leadLogMax {
		for _, c := range changes {
			attrs := []any{"group", groupLabel(c.group), "term", c.term}
			if k != leadGained && k != leadUnknown {
				attrs = append(attrs, "leader", c.leader)
			}
			l.log.Log(ctx, m.level, m.msg, attrs...)
		}
		return
	}
	var names strings.Builder
	for i, c := range changes[:leadLogMax] {
		if i > 0 {
			names.WriteString(", ")
		}
		names.WriteString(groupLabel(c.group))
	}
	fmt.Fprintf(&names, " and %d more", len(changes)-leadLogMax)
	l.log.Log(ctx, m.level, m.msg, "groups", len(changes), "names", names.String())
}

// groupLabel names a group in logs: the metadata group's name is "".
func groupLabel(name string) string {
	if name == "" {
		return "(metadata)"
	}
	return name
}
