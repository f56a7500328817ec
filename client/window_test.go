package client

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	forestbusv1 "github.com/forestbus/forestbus/gen/forestbus/v1"
)

// scriptedGets makes n answer its GetMessages calls in turn: "refuse"
// (UNAVAILABLE at once), "hold" (UNAVAILABLE after holding the call
// 500 ms, as a node that dies during a long poll), then messages.
func scriptedGets(n *fakeNode, script ...string) {
	var mu sync.Mutex
	calls := 0
	n.get = func(ctx context.Context, req *forestbusv1.GetMessagesRequest) (*forestbusv1.GetMessagesResponse, error) {
		mu.Lock()
		k := calls
		calls++
		mu.Unlock()
		if k < len(script) {
			if script[k] == "hold" {
				select {
				case <-time.After(500 * time.Millisecond): // the node's wait
				case <-ctx.Done():
					return nil, ctx.Err()
				}
				return nil, status.Error(codes.Unavailable, "connection reset")
			}
			return nil, status.Error(codes.Unavailable, "connection refused (restarting)")
		}
		return &forestbusv1.GetMessagesResponse{Messages: [][]byte{[]byte("m")}, NextId: req.GetId() + 1, CommitId: req.GetId()}, nil
	}
}

// TestRetryWindowOfALongPoll: a waiting read without a deadline retries
// for its window after a failure, however long the attempts before it
// ran. A long poll the node held past the window (its wait cap is 30 s by
// default, the window 10 s) and that then failed (the node's process
// died) got one pass and no retry: ErrNoNodesAvailable on a node
// restarting, where the same failure at the call's start was retried.
// Here the window is 300 ms and a held call fails after 500 ms.
func TestRetryWindowOfALongPoll(t *testing.T) {
	for _, tc := range []struct {
		name   string
		script []string
		dead   bool // a node that refuses every call comes first
	}{
		{"failure at once", []string{"refuse", "refuse"}, false},
		{"failure after a long wait", []string{"hold", "refuse"}, false},
		{"a long wait cut after a quick failure", []string{"refuse", "hold", "refuse"}, false},
		{"another node down", []string{"hold", "refuse"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := startNode(t)
			scriptedGets(n, tc.script...)
			nodes := []string{n.addr}
			if tc.dead {
				nodes = []string{deadAddr(t), n.addr}
			}
			c := New("", nodes, WithRetryWindow(300*time.Millisecond))
			defer c.Close()
			got, next, err := c.GetMessages("t", 5, 1, true)
			require.NoError(t, err)
			assert.Len(t, got, 1)
			assert.EqualValues(t, 6, next)
			assert.Equal(t, len(tc.script)+1, n.count("get"))
		})
	}
}

// TestRetryWindowOfARead: a read that does not wait keeps its window from
// its first failure: one retry in it, and a second attempt held past it is
// not retried on and on.
func TestRetryWindowOfARead(t *testing.T) {
	n := startNode(t)
	scriptedGets(n, "hold", "hold", "hold", "hold", "hold", "hold")
	c := New("", []string{n.addr}, WithRetryWindow(300*time.Millisecond))
	defer c.Close()
	_, _, err := c.GetMessages("t", 5, 1, false)
	require.ErrorIs(t, err, ErrNoNodesAvailable)
	assert.Equal(t, 2, n.count("get"))
}
