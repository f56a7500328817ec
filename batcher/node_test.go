package batcher_test

import (
	"bytes"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/forestbus/forestbus/batcher"
	"github.com/forestbus/forestbus/client"
	"github.com/forestbus/forestbus/server/servertest"
)

// TestDefaultsFitANode: against a node with the default limits (16 MiB a
// batch, 1 MiB a message), messages a node takes one by one are all
// stored through a Batcher however they queue up: large ones do not add
// up to a batch the node refuses, and a message over the node's limit
// fails alone, not the small ones batched with it.
func TestDefaultsFitANode(t *testing.T) {
	n := servertest.StartNode(t)
	c := client.New("test", []string{n.Addr()})
	defer c.Close()
	b := batcher.New(c, "default")
	defer b.Close()

	send := func(msgs [][]byte) []error {
		errs := make([]error, len(msgs))
		var wg sync.WaitGroup
		for i, m := range msgs {
			wg.Go(func() { _, errs[i] = b.SendMessage(m, true) })
		}
		wg.Wait()
		return errs
	}
	large := make([][]byte, 40) // 36 MiB in all, 900 KiB each
	for i := range large {
		large[i] = bytes.Repeat([]byte{byte('a' + i%26)}, 900<<10)
	}
	for i, err := range send(large) {
		require.NoError(t, err, "message %d", i)
	}

	mixed := make([][]byte, 10)
	for i := range mixed {
		mixed[i] = []byte("small")
	}
	mixed[5] = make([]byte, 2<<20) // over the node's 1 MiB
	for i, err := range send(mixed) {
		if i == 5 {
			assert.ErrorIs(t, err, client.ErrMessageTooLarge)
		} else {
			assert.NoError(t, err, "message %d", i)
		}
	}
	last, err := c.GetTopicMaxAvailableIndex("default")
	require.NoError(t, err)
	assert.EqualValues(t, 49, last, "every message but the large one stored once")
}
