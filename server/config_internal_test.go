package server

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestConfigDefaults: what the node itself reads of an empty config gets
// its default. The leader balancer waits TickInterval multiples for its
// hand-offs; with the zero tick fbnode passes, it aborted each at once and
// backed its target off (found by hand: a restarted node got nothing
// back for a minute).
func TestConfigDefaults(t *testing.T) {
	var c Config
	require.NoError(t, c.validate())
	assert.Equal(t, DefaultLeaderBalanceInterval, c.LeaderBalanceInterval)
	assert.Positive(t, c.TickInterval)
	assert.Positive(t, c.RetentionInterval)

	c = Config{LeaderBalanceInterval: -1}
	require.NoError(t, c.validate())
	assert.Negative(t, c.LeaderBalanceInterval, "off stays off")
}
