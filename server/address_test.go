package server

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

// TestSameListener: which member addresses name a node's listener.
func TestSameListener(t *testing.T) {
	for _, tc := range []struct {
		member, listen string
		same           bool
	}{
		{"127.0.0.1:3001", "127.0.0.1:3001", true},
		{"localhost:3001", "127.0.0.1:3001", true},
		{"host1.example:3001", "0.0.0.0:3001", true}, // every interface
		{"host1.example:3001", "[::]:3001", true},
		{"127.0.0.1:3001", "127.0.0.1:3002", false}, // another port
		{"127.0.0.2:3001", "127.0.0.1:3001", false}, // another IP
		{"localhost:3001", "0.0.0.0:3002", false},
		{"bad", "127.0.0.1:3001", false},
	} {
		assert.Equal(t, tc.same, sameListener(tc.member, tc.listen), "%s at %s", tc.member, tc.listen)
	}
}
