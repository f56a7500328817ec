package client_test

import (
	"context"
	"errors"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/forestbus/forestbus/client"
	"github.com/forestbus/forestbus/server"
	"github.com/forestbus/forestbus/server/servertest"
)

// TestBatchOverTheReceiveLimitIsTooLarge: a batch larger than the node's
// gRPC receive limit (above its batch limit) is refused by gRPC itself, a
// plain RESOURCE_EXHAUSTED; the Client reports it as ErrBatchTooLarge, as
// it does the node's own BATCH_TOO_LARGE, so that the batcher splits it
// instead of failing every message in it.
func TestBatchOverTheReceiveLimitIsTooLarge(t *testing.T) {
	n := servertest.StartNode(t, servertest.WithConfig(func(c *server.Config) {
		c.MaxBatchBytes = 512 << 10 // a 4 MiB receive limit
		c.MaxMessageBytes = 256 << 10
	}))
	c := client.New("test", []string{n.Addr()})
	defer c.Close()
	big := make([][]byte, 20)
	for i := range big {
		big[i] = make([]byte, 250<<10)
	}
	for _, unary := range []bool{false, true} {
		c := c
		if unary {
			c = client.New("test", []string{n.Addr()}, client.WithUnarySends())
			defer c.Close()
		}
		_, err := c.SendMessagesContext(context.Background(), "default", big, true)
		require.Error(t, err)
		assert.True(t, errors.Is(err, client.ErrBatchTooLarge), "unary %v: %v", unary, err)
		_, err = c.SendMessages("default", big, true)
		assert.True(t, errors.Is(err, client.ErrBatchTooLarge), "unary %v: %v", unary, err)
		// Within the limits, the same Client goes on.
		_, err = c.SendMessagesContext(context.Background(), "default", big[:1], true)
		assert.NoError(t, err, "unary %v", unary)
	}
}
