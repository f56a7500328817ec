package topic

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

// TestPreferredLeader: the voter at the create index modulo the voters,
// in ID order whatever order raft lists them in; none without voters.
func TestPreferredLeader(t *testing.T) {
	assert.Equal(t, uint64(0), preferredLeader(7, nil))
	assert.Equal(t, uint64(5), preferredLeader(7, []uint64{5}))
	voters := []uint64{1, 2, 3}
	for created, want := range []uint64{1, 2, 3, 1, 2, 3} {
		assert.Equal(t, want, preferredLeader(uint64(created), voters), "created %d", created)
	}
	unsorted := []uint64{3, 1, 2}
	assert.Equal(t, uint64(2), preferredLeader(4, unsorted))
	assert.Equal(t, []uint64{3, 1, 2}, unsorted, "the caller's slice is left alone")
}
