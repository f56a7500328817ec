package server

import (
	"bytes"
	"log/slog"
	"math"
	"testing"

	"github.com/stretchr/testify/assert"
)

// TestFileLimitWarning: a node whose open-file limit is below what its
// topic cap needs says so at start; one with room, or no cap, does not.
func TestFileLimitWarning(t *testing.T) {
	saved := openFileLimit
	t.Cleanup(func() { openFileLimit = saved })
	check := func(limit uint64, maxTopics int) string {
		openFileLimit = func() (uint64, bool) { return limit, true }
		var buf bytes.Buffer
		s := &Server{cfg: Config{MaxTopics: maxTopics}, log: slog.New(slog.NewTextHandler(&buf, nil))}
		s.checkFileLimit()
		return buf.String()
	}
	out := check(20_000, 0) // this project's CI machine's limit, the default cap
	assert.Contains(t, out, "open-file limit is below")
	assert.Contains(t, out, "open_file_limit=20000 max_topics=10000 topics_it_holds_at_most=9488")
	assert.Contains(t, check(1000, 100), "topics_it_holds_at_most=0")
	assert.Contains(t, check(1223, 100), "topics_it_holds_at_most=99")
	assert.Empty(t, check(1<<20, 0))
	assert.Empty(t, check(1224, 100))
	assert.Empty(t, check(1000, -1))                                                // no cap
	assert.Contains(t, check(1<<20, math.MaxInt), "topics_it_holds_at_most=523776") // no overflow
}

// TestReadLimitIsBounded: a read cap above 256 MiB is refused (the node's
// send limit adds it to the message cap, and no client accepts such an
// answer), as a batch cap above 256 MiB is.
func TestReadLimitIsBounded(t *testing.T) {
	base := Config{DataDir: t.TempDir(), ClusterID: "c", NodeName: "n1", ListenAddr: "127.0.0.1:0"}
	c := base
	c.MaxReadBytes = 256<<20 + 1
	assert.ErrorContains(t, c.validate(), "max read size above 256 MiB")
	c = base
	c.MaxReadBytes = 256 << 20
	assert.NoError(t, c.validate())
}
