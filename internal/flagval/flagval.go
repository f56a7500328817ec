// Package flagval holds the command-line value forms fbnode and fbctl
// share.
package flagval

import (
	"errors"
	"math"
	"strconv"
	"strings"
	"time"
)

// errDuration is ParseDuration's error: the forms it takes.
var errDuration = errors.New("want a duration such as 90m, 24h or 7d")

// ParseDuration is time.ParseDuration with a "d" unit (24h) for a number
// of days (7d, 1.5d) on its own, as retention is usually given; "0" is 0.
// Negative durations are refused.
func ParseDuration(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if n, ok := strings.CutSuffix(s, "d"); ok {
		days, err := strconv.ParseFloat(n, 64)
		if err != nil || days < 0 || math.IsNaN(days) || days*float64(24*time.Hour) >= math.MaxInt64 {
			return 0, errDuration
		}
		return time.Duration(days * float64(24*time.Hour)), nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return 0, errDuration
	}
	return d, nil
}

// Duration is a flag.Value of ParseDuration's forms.
type Duration time.Duration

func (d *Duration) String() string { return time.Duration(*d).String() }

// Set parses s (ParseDuration).
func (d *Duration) Set(s string) error {
	v, err := ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}
