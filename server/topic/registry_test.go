package topic

import (
	"math"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

func TestValidateName(t *testing.T) {
	for _, ok := range []string{"a", "default", "orders.v1", "A-b_c.9", strings.Repeat("x", MaxNameLen), "..."} {
		assert.NoError(t, ValidateName(ok), ok)
	}
	for _, bad := range []string{"", ".", "..", "a/b", "a b", "ü", "a\x00", strings.Repeat("x", MaxNameLen+1), "a:b"} {
		assert.ErrorIs(t, ValidateName(bad), ErrInvalidName, "%q", bad)
	}
}

func TestSettingsValidate(t *testing.T) {
	const minSegment = DefaultMinSegmentBytes
	assert.NoError(t, Settings{}.Validate(minSegment))
	assert.NoError(t, Settings{SegmentBytes: minSegment, RetentionSeconds: 60, RetentionBytes: 1}.Validate(minSegment))
	for _, bad := range []Settings{
		{SegmentBytes: -1},
		{SegmentBytes: minSegment - 1},
		{SegmentBytes: 4096},
		{RetentionSeconds: -1},
		{RetentionSeconds: MaxRetentionSeconds + 1},
		{RetentionSeconds: 18446744074}, // 584 years: as a Duration, 290 ms
		{RetentionBytes: -1},
	} {
		assert.ErrorIs(t, bad.Validate(minSegment), ErrInvalidSettings, "%+v", bad)
	}
	assert.NoError(t, Settings{SegmentBytes: 4096}.Validate(4096))
	assert.NoError(t, Settings{RetentionSeconds: MaxRetentionSeconds}.Validate(minSegment))
}

// TestRetentionAgeSaturates: a retention stored before Validate refused
// values past a Duration keeps messages for ever; converted as it was, 584
// years became 290 ms and deleted every message.
func TestRetentionAgeSaturates(t *testing.T) {
	assert.Equal(t, time.Minute, retentionAge(60))
	assert.Equal(t, time.Duration(MaxRetentionSeconds)*time.Second, retentionAge(MaxRetentionSeconds))
	for _, sec := range []int64{MaxRetentionSeconds + 1, 18446744074, math.MaxInt64} {
		assert.Equal(t, time.Duration(math.MaxInt64), retentionAge(sec), "%d s", sec)
	}
}
