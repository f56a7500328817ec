package flagval

import (
	"flag"
	"io"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseDuration(t *testing.T) {
	for in, want := range map[string]time.Duration{
		"0": 0, "90m": 90 * time.Minute, "24h": 24 * time.Hour, "7d": 7 * 24 * time.Hour,
		"1.5d": 36 * time.Hour, " 2d ": 48 * time.Hour, "0d": 0,
	} {
		got, err := ParseDuration(in)
		require.NoError(t, err, in)
		assert.Equal(t, want, got, in)
	}
	for _, in := range []string{"", "d", "-1d", "-1h", "7days", "1e300d", "NaNd", "x"} {
		_, err := ParseDuration(in)
		assert.EqualError(t, err, "want a duration such as 90m, 24h or 7d", in)
	}
}

func TestDurationFlag(t *testing.T) {
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var d Duration
	fs.Var(&d, "retention", "")
	require.NoError(t, fs.Parse([]string{"-retention", "7d"}))
	assert.Equal(t, 7*24*time.Hour, time.Duration(d))
	assert.Error(t, fs.Parse([]string{"-retention", "-1d"}))
}
