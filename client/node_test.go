package client_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"

	"github.com/forestbus/forestbus/batcher"
	"github.com/forestbus/forestbus/client"
	"github.com/forestbus/forestbus/server"
	"github.com/forestbus/forestbus/server/servertest"
)

// These tests run the client against real in-process nodes.

func TestRealNodeRoundTrip(t *testing.T) {
	n := servertest.StartNode(t)
	c := client.New("test", []string{n.Addr()})
	t.Cleanup(c.Close)

	ids, err := c.SendMessages("default", [][]byte{[]byte("a"), []byte("b")}, true)
	require.NoError(t, err)
	assert.Equal(t, []int64{1, 2}, ids)
	ids, err = c.SendMessages("default", [][]byte{[]byte("c")}, false)
	require.NoError(t, err)
	assert.Equal(t, []int64{3}, ids)

	require.Eventually(t, func() bool {
		max, err := c.GetTopicMaxAvailableIndex("default")
		return err == nil && max == 3
	}, 10*time.Second, 5*time.Millisecond)
	msgs, next, err := c.GetMessages("default", 1, 10, false)
	require.NoError(t, err)
	assert.Equal(t, [][]byte{[]byte("a"), []byte("b"), []byte("c")}, msgs)
	assert.Equal(t, int64(4), next)

	// Long poll through the client: blocks until a message commits.
	got := make(chan [][]byte, 1)
	go func() {
		msgs, _, err := c.GetMessages("default", 4, 10, true)
		if err == nil {
			got <- msgs
		}
	}()
	_, err = c.SendMessages("default", [][]byte{[]byte("d")}, true)
	require.NoError(t, err)
	select {
	case msgs := <-got:
		assert.Equal(t, [][]byte{[]byte("d")}, msgs)
	case <-time.After(20 * time.Second):
		t.Fatal("long poll did not return")
	}
}

func TestRealNodeErrors(t *testing.T) {
	n := servertest.StartNode(t, servertest.WithConfig(func(c *server.Config) { c.MaxMessageBytes = 10 }))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	c := client.New("test", []string{n.Addr()})
	t.Cleanup(c.Close)
	_, err := c.SendMessages("nope", [][]byte{[]byte("a")}, true)
	assert.True(t, errors.Is(err, client.ErrTopicNotFound), "%v", err)
	_, _, err = c.GetMessages("nope", 1, 1, false)
	assert.True(t, errors.Is(err, client.ErrTopicNotFound), "%v", err)
	_, err = c.GetTopicMaxAvailableIndex("nope")
	assert.True(t, errors.Is(err, client.ErrTopicNotFound), "%v", err)

	_, err = c.SendMessagesContext(ctx, "default", [][]byte{make([]byte, 11)}, true)
	assert.True(t, errors.Is(err, client.ErrMessageTooLarge), "%v", err)
	_, _, err = c.GetMessagesContext(ctx, "default", 1, 0, false)
	assert.True(t, errors.Is(err, client.ErrInvalidArgument), "%v", err)
	// An index below 1 is none a message has (the original's answer).
	msgs, next, err := c.GetMessagesContext(ctx, "default", -1, 1, true)
	assert.NoError(t, err)
	assert.Empty(t, msgs)
	assert.EqualValues(t, 1, next)
	err = c.CreateTopic(ctx, "default", client.TopicSettings{})
	assert.True(t, errors.Is(err, client.ErrTopicExists), "%v", err)
	err = c.CreateTopic(ctx, "bad/name", client.TopicSettings{})
	assert.True(t, errors.Is(err, client.ErrInvalidArgument), "%v", err)

	other := client.New("other-cluster", []string{n.Addr()})
	t.Cleanup(other.Close)
	_, err = other.SendMessages("default", [][]byte{[]byte("a")}, true)
	assert.True(t, errors.Is(err, client.ErrClusterIdMismatch), "%v", err)

	// A node that is gone: ErrNoNodesAvailable once the window ends.
	addr := n.Addr()
	n.Stop() // clears n.Server
	gone := client.New("test", []string{addr}, client.WithRetryWindow(200*time.Millisecond))
	t.Cleanup(gone.Close)
	_, err = gone.SendMessages("default", [][]byte{[]byte("a")}, true)
	assert.True(t, errors.Is(err, client.ErrNoNodesAvailable), "%v", err)
}

// TestBatcherAcrossRestart keeps a batcher with retries sending while the
// node restarts: every message is acknowledged once, IDs are contiguous, and
// the log holds exactly what was acknowledged.
func TestBatcherAcrossRestart(t *testing.T) {
	n := servertest.StartNode(t)
	c := client.New("test", []string{n.Addr()}, client.WithRetryWindow(time.Second))
	t.Cleanup(c.Close)
	b := batcher.New(c, "default", batcher.WithRetries(batcher.UnlimitedRetries))
	t.Cleanup(b.Close)

	const total = 300
	results := make(chan *batcher.SendResult, total)
	go func() {
		for i := 0; i < total; i++ {
			ref := i
			_ = b.AsyncSendMessage(fmt.Appendf(nil, "m%d", i), &ref, results, true)
		}
	}()
	byID := map[int64]string{}
	for i := 0; i < total; i++ {
		if i == total/3 {
			n.Restart()
		}
		select {
		case r := <-results:
			require.NoError(t, r.GetError())
			byID[r.GetIndex()] = string(r.GetMessage())
		case <-time.After(30 * time.Second):
			t.Fatalf("only %d of %d results", i, total)
		}
	}
	require.Len(t, byID, total)
	msgs, _, err := c.GetMessages("default", 1, 1000, false)
	require.NoError(t, err)
	require.Len(t, msgs, total, "nothing stored twice, nothing lost")
	for i, m := range msgs {
		assert.Equal(t, byID[int64(i+1)], string(m))
	}
}

// A node serving its cap of Produce streams refuses a Client's stream; the
// Client's sends go to it as SendMessages calls instead of failing, and
// the batch refused with the stream is stored once.
func TestSendsWhenNodeRefusesStream(t *testing.T) {
	n := servertest.StartNode(t, servertest.WithConfig(func(c *server.Config) { c.MaxProduceStreams = 1 }))
	holder := client.New("test", []string{n.Addr()})
	t.Cleanup(holder.Close)
	ids, err := holder.SendMessages("default", [][]byte{[]byte("a")}, true)
	require.NoError(t, err)
	require.Equal(t, []int64{1}, ids)
	require.Equal(t, 1, n.ProduceStreams(), "the holder's stream is served")

	c := client.New("test", []string{n.Addr()})
	t.Cleanup(c.Close)
	for i := range 3 {
		ids, err := c.SendMessages("default", [][]byte{[]byte(fmt.Sprint(i))}, true)
		require.NoError(t, err, "send %d", i)
		assert.Equal(t, []int64{int64(2 + i)}, ids, "send %d", i)
	}
	assert.Equal(t, 1, n.ProduceStreams(), "the second Client's stream was refused")
	msgs, next, err := c.GetMessages("default", 1, 10, false)
	require.NoError(t, err)
	assert.Equal(t, int64(5), next)
	assert.Equal(t, [][]byte{[]byte("a"), []byte("0"), []byte("1"), []byte("2")}, msgs)
}

// A cluster holding its cap of topics refuses another with
// ErrTooManyTopics (RESOURCE_EXHAUSTED, no failover); creating one that
// exists still says so, and a removal makes room.
func TestTopicCap(t *testing.T) {
	n := servertest.StartNode(t, servertest.WithConfig(func(c *server.Config) { c.MaxTopics = 2 }))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c := client.New("test", []string{n.Addr()})
	t.Cleanup(c.Close)

	require.NoError(t, c.CreateTopic(ctx, "a", client.TopicSettings{})) // with "default": 2
	err := c.CreateTopic(ctx, "b", client.TopicSettings{})
	require.ErrorIs(t, err, client.ErrTooManyTopics)
	var se *client.StatusError
	require.ErrorAs(t, err, &se)
	assert.Equal(t, codes.ResourceExhausted, se.Code)
	assert.ErrorIs(t, c.CreateTopic(ctx, "a", client.TopicSettings{}), client.ErrTopicExists)

	require.NoError(t, c.RemoveTopic(ctx, "a"))
	require.NoError(t, c.CreateTopic(ctx, "b", client.TopicSettings{}))
}
