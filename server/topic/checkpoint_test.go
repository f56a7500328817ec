package topic

import (
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestCheckpointListsRemovalsInProgress: a removed topic's files are moved
// aside once its group has closed, in the background. A checkpoint taken
// meanwhile names its directory, and opening from that checkpoint (which
// no longer replays the removal) moves it aside.
func TestCheckpointListsRemovalsInProgress(t *testing.T) {
	dir := t.TempDir()
	for _, d := range []string{"topics/x.5", "topics/y.7", "removed"} {
		require.NoError(t, os.MkdirAll(filepath.Join(dir, d), 0o755))
	}
	r := &Registry{cfg: Config{Dir: dir}, log: slog.New(slog.NewTextHandler(io.Discard, nil)), topics: map[string]*Topic{},
		members: map[uint64]Member{}, removing: map[string]struct{}{"x.5": {}}, changed: make(chan struct{}, 1)}
	r.topics["y"] = &Topic{Name: "y", dir: "y.7"}
	data, err := r.stateLocked()
	require.NoError(t, err)
	var st checkpointState
	require.NoError(t, json.Unmarshal(data, &st))
	assert.Equal(t, []string{"x.5"}, st.Removing)

	opened := &Registry{cfg: r.cfg, log: r.log, topics: map[string]*Topic{}, members: map[uint64]Member{},
		removing: map[string]struct{}{}, changed: make(chan struct{}, 1), replaying: true}
	opened.setStateLocked(st)
	_, err = os.Stat(filepath.Join(dir, "removed", "x.5"))
	assert.NoError(t, err, "moved aside")
	_, err = os.Stat(filepath.Join(dir, "topics", "y.7"))
	assert.NoError(t, err, "a topic of the checkpoint stays")
	assert.Contains(t, opened.topics, "y")
}
