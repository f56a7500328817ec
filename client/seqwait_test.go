package client

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// waitingSends reports how many sends to topic wait for an earlier one.
func waitingSends(c *Client, topic string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if ts := c.seqs[topic]; ts != nil {
		return ts.waiting
	}
	return 0
}

// TestCloseFailsASendWaitingForItsSequence: a send waiting for an earlier
// send's sequence (maxSeqSpan) is a call in progress: Close fails it. It
// used to wait on, and once the earlier send ended, to send after Close.
func TestCloseFailsASendWaitingForItsSequence(t *testing.T) {
	n := startNode(t)
	n.send = okSend(1)
	c := New("", []string{n.addr})
	_, release, err := c.ReserveSequence(context.Background(), "t") // 1, held
	require.NoError(t, err)
	defer release()
	for range maxSeqSpan - 1 { // 2..32
		_, err := c.SendMessages("t", msgs[:1], false)
		require.NoError(t, err)
	}
	done := make(chan error, 1)
	go func() { // 33: waits for 1
		_, err := c.SendMessages("t", msgs[:1], false)
		done <- err
	}()
	require.Eventually(t, func() bool { return waitingSends(c, "t") == 1 }, 10*time.Second, time.Millisecond)
	sent := n.count("send")
	c.Close()
	select {
	case err := <-done:
		assert.Equal(t, ErrNoNodesAvailable, err)
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not end the send waiting for its sequence")
	}
	assert.Equal(t, sent, n.count("send"), "nothing sent after Close")
}

// TestSendGivesUpWaitingForItsSequence: a call without a deadline (the
// original API's) waits for an earlier send's sequence no longer than the
// retry window, as its attempts would: a send held back behind a batch
// retried through an outage used to wait for as long as the outage.
func TestSendGivesUpWaitingForItsSequence(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	dead := lis.Addr().String()
	require.NoError(t, lis.Close())
	c := New("", []string{dead}, WithRetryWindow(50*time.Millisecond))
	defer c.Close()
	_, release, err := c.ReserveSequence(context.Background(), "t") // a batch retried for ever
	require.NoError(t, err)
	defer release()
	for range maxSeqSpan - 1 {
		_, err := c.SendMessages("t", msgs[:1], false)
		require.Equal(t, ErrNoNodesAvailable, err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := c.SendMessages("t", msgs[:1], false)
		done <- err
	}()
	select {
	case err := <-done:
		assert.Equal(t, ErrNoNodesAvailable, err)
	case <-time.After(10 * time.Second):
		t.Fatal("the send still waits for its sequence, long past its retry window")
	}
	// With a deadline, the deadline bounds the wait, as before.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	_, err = c.SendMessagesContext(ctx, "t", msgs[:1], false)
	assert.True(t, errors.Is(err, context.DeadlineExceeded), "%v", err)
}

// TestShortSubscribeHeartbeatIsRaised: nodes send heartbeats at most every
// MinSubscribeHeartbeat; a shorter interval asked for counts as that, or
// an idle, healthy stream would be taken for dead before its first one.
func TestShortSubscribeHeartbeatIsRaised(t *testing.T) {
	for _, tc := range []struct{ in, want time.Duration }{
		{20 * time.Millisecond, MinSubscribeHeartbeat},
		{time.Microsecond, MinSubscribeHeartbeat},
		{time.Second, time.Second},
		{0, 0},
		{-1, -1},
	} {
		var cfg subscribeConfig
		WithSubscribeHeartbeat(tc.in)(&cfg)
		assert.Equal(t, tc.want, cfg.heartbeat, "%v", tc.in)
	}
}
