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

// TestRetryWindowCountsFromTheFirstFailure: a call without a deadline
// retries for its window after its first failure, however long the
// attempt before it ran. A long poll the node held past the window (its
// wait cap is 30 s by default, the window 10 s) and that then failed (the
// node's process died) got one pass and no retry: ErrNoNodesAvailable on
// a node restarting, where the same failure at the call's start was
// retried. Here the window is 300 ms, the node holds the poll 500 ms,
// fails it, refuses the next call, then answers.
func TestRetryWindowCountsFromTheFirstFailure(t *testing.T) {
	for _, tc := range []struct {
		name string
		hold time.Duration
	}{{"failure at once", 0}, {"failure after a long wait", 500 * time.Millisecond}} {
		t.Run(tc.name, func(t *testing.T) {
			n := startNode(t)
			var mu sync.Mutex
			calls := 0
			n.get = func(ctx context.Context, req *forestbusv1.GetMessagesRequest) (*forestbusv1.GetMessagesResponse, error) {
				mu.Lock()
				calls++
				k := calls
				mu.Unlock()
				switch k {
				case 1:
					select {
					case <-time.After(tc.hold): // the node's wait
					case <-ctx.Done():
						return nil, ctx.Err()
					}
					return nil, status.Error(codes.Unavailable, "connection reset")
				case 2:
					return nil, status.Error(codes.Unavailable, "connection refused (restarting)")
				}
				return &forestbusv1.GetMessagesResponse{Messages: [][]byte{[]byte("m")}, NextId: req.GetId() + 1, CommitId: req.GetId()}, nil
			}
			c := New("", []string{n.addr}, WithRetryWindow(300*time.Millisecond))
			defer c.Close()
			got, next, err := c.GetMessages("t", 5, 1, true)
			require.NoError(t, err)
			assert.Len(t, got, 1)
			assert.EqualValues(t, 6, next)
			assert.Equal(t, 3, n.count("get"))
		})
	}
}
