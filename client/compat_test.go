package client

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	forestbusv1 "github.com/forestbus/forestbus/gen/forestbus/v1"
)

// An index below 1 is one no message has: as the original client, the
// answer is no messages and the first retained ID, at once (also with
// wait), whatever quantity asked.
func TestGetMessagesIndexBelowOne(t *testing.T) {
	tests := []struct {
		name     string
		resp     *forestbusv1.GetMessagesResponse
		wantNext int64
	}{
		{"messages from 1", &forestbusv1.GetMessagesResponse{Messages: msgs[:1], NextId: 2, CommitId: 3}, 1},
		{"retention deleted 1 to 9", &forestbusv1.GetMessagesResponse{NextId: 10, CommitId: 12}, 10},
		{"empty topic", &forestbusv1.GetMessagesResponse{NextId: 1}, 1},
	}
	for _, tt := range tests {
		for _, index := range []int64{0, -1} {
			t.Run(tt.name, func(t *testing.T) {
				n := startNode(t)
				n.get = func(_ context.Context, req *forestbusv1.GetMessagesRequest) (*forestbusv1.GetMessagesResponse, error) {
					assert.EqualValues(t, 1, req.GetId())
					assert.EqualValues(t, 1, req.GetQuantity())
					assert.False(t, req.GetWait())
					return tt.resp, nil
				}
				c := New("", []string{n.addr})
				defer c.Close()
				got, next, err := c.GetMessages("t", index, 100, true)
				require.NoError(t, err)
				assert.Empty(t, got)
				assert.Equal(t, tt.wantNext, next)
				assert.Equal(t, 1, n.count("get"))
			})
		}
	}
}

// A Client without nodes (an empty list, blank entries, or a zero Client)
// answers ErrNoNodesAvailable at once, not after its retry window, and a
// zero Client neither panics nor fails Close.
func TestNoNodesAnswersAtOnce(t *testing.T) {
	clients := map[string]*Client{
		"empty list":  New("", nil, WithRetryWindow(time.Hour)),
		"blank entry": New("", []string{"", " , "}, WithRetryWindow(time.Hour)),
		"zero Client": new(Client),
	}
	for name, c := range clients {
		t.Run(name, func(t *testing.T) {
			done := make(chan struct{})
			go func() {
				defer close(done)
				_, err := c.SendMessages("t", msgs, true)
				assert.Equal(t, ErrNoNodesAvailable, err)
				_, _, err = c.GetMessages("t", 1, 10, true)
				assert.Equal(t, ErrNoNodesAvailable, err)
				_, err = c.GetTopicMaxAvailableIndex("t")
				assert.Equal(t, ErrNoNodesAvailable, err)
				err = c.Subscribe(t.Context(), "t", 1, func(int64, []byte) error { return nil })
				assert.ErrorIs(t, err, ErrNoNodesAvailable)
				c.Close()
				c.Close()
				_, err = c.SendMessages("t", msgs, false)
				assert.Equal(t, ErrNoNodesAvailable, err)
			}()
			select {
			case <-done:
			case <-time.After(10 * time.Second): // a hang detector: the retry window is an hour
				t.Fatal("calls on a Client without nodes did not return")
			}
		})
	}
}
