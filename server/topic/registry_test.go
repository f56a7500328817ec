package topic

import (
	"strings"
	"testing"

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
		{RetentionBytes: -1},
	} {
		assert.ErrorIs(t, bad.Validate(minSegment), ErrInvalidSettings, "%+v", bad)
	}
	assert.NoError(t, Settings{SegmentBytes: 4096}.Validate(4096))
}
