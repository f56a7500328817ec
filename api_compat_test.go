package forestbus_test

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/assert"

	forestbus "github.com/forestbus/forestbus"
	"github.com/forestbus/forestbus/batcher"
	"github.com/forestbus/forestbus/client"
)

// The original API, identifier by identifier, with its exact types: any
// drift breaks the build.
var (
	_ func(string) (string, string, []string)                                    = forestbus.ParseConnectionString
	_ func(string, []string, ...forestbus.ClientConfiguration) *forestbus.Client = forestbus.NewClient
	_ func() forestbus.ClientConfiguration                                       = forestbus.ClientEnableDebug
	_ func() forestbus.ClientConfiguration                                       = forestbus.ShuffleNodes
	_ forestbus.ClientConfiguration                                              = func(*forestbus.Client) {}

	_ func(*forestbus.Client)                                                    = (*forestbus.Client).Close
	_ func(*forestbus.Client, string, int64, int, bool) ([][]byte, int64, error) = (*forestbus.Client).GetMessages
	_ func(*forestbus.Client, string) (int64, error)                             = (*forestbus.Client).GetTopicMaxAvailableIndex
	_ func(*forestbus.Client, string, [][]byte, bool) ([]int64, error)           = (*forestbus.Client).SendMessages

	_ func(*forestbus.Client, string, ...forestbus.MessageBatcherConfiguration) *forestbus.MessageBatcher = forestbus.NewMessageBatcher
	_ func() forestbus.MessageBatcherConfiguration                                                        = forestbus.MessageBatcherDoNotWaitForCommit
	_ func() forestbus.MessageBatcherConfiguration                                                        = forestbus.MessageBatcherEnableDebug
	_ func(int) forestbus.MessageBatcherConfiguration                                                     = forestbus.MessageBatcherRetries
	_ func(int) forestbus.MessageBatcherConfiguration                                                     = forestbus.MessageBatcherSetBufferSize
	_ forestbus.MessageBatcherConfiguration                                                               = func(*forestbus.MessageBatcher) {}

	_ func(*forestbus.MessageBatcher, []byte, interface{}, chan *forestbus.SendResult, bool) error = (*forestbus.MessageBatcher).AsyncSendMessage
	_ func(*forestbus.MessageBatcher)                                                              = (*forestbus.MessageBatcher).Close
	_ func(*forestbus.MessageBatcher, []byte, bool) (int64, error)                                 = (*forestbus.MessageBatcher).SendMessage

	_ func(*forestbus.SendResult) error       = (*forestbus.SendResult).GetError
	_ func(*forestbus.SendResult) int64       = (*forestbus.SendResult).GetIndex
	_ func(*forestbus.SendResult) []byte      = (*forestbus.SendResult).GetMessage
	_ func(*forestbus.SendResult) interface{} = (*forestbus.SendResult).GetReference

	_ error = forestbus.ErrClusterIdMismatch
	_ error = forestbus.ErrMessageBatcherBufferFull
	_ error = forestbus.ErrMessageBatcherClosed
	_ error = forestbus.ErrNoNodesAvailable
	_ error = forestbus.ErrTopicNotFound

	// An untyped integer constant, usable as an int argument.
	_ int = forestbus.UNLIMITED_RETRIES
)

func TestOriginalErrorsAreTheSentinels(t *testing.T) {
	tests := []struct {
		name string
		got  error
		want error
		text string
	}{
		{"ErrClusterIdMismatch", forestbus.ErrClusterIdMismatch, client.ErrClusterIdMismatch, "The nodes cluster ID does not match that given by the client."},
		{"ErrMessageBatcherBufferFull", forestbus.ErrMessageBatcherBufferFull, batcher.ErrBufferFull, "The message batcher buffer is full."},
		{"ErrMessageBatcherClosed", forestbus.ErrMessageBatcherClosed, batcher.ErrClosed, "The message batcher was closed before the message could be sent."},
		{"ErrNoNodesAvailable", forestbus.ErrNoNodesAvailable, client.ErrNoNodesAvailable, "Unable to connect to any of the given nodes."},
		{"ErrTopicNotFound", forestbus.ErrTopicNotFound, client.ErrTopicNotFound, "Topic not found on the node."},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, tt.got)
			assert.True(t, errors.Is(tt.got, tt.want))
			assert.Equal(t, tt.text, tt.got.Error())
		})
	}
	assert.Equal(t, -1, forestbus.UNLIMITED_RETRIES)
}

func TestOriginalUsageCompiles(t *testing.T) {
	// The option-list idiom of the original documentation.
	options := make([]forestbus.ClientConfiguration, 0)
	options = append(options, forestbus.ClientEnableDebug(), forestbus.ShuffleNodes())
	c := forestbus.NewClient("testcluster", []string{"localhost:3000,localhost:3001"}, options...)
	defer c.Close()

	bopts := make([]forestbus.MessageBatcherConfiguration, 0)
	bopts = append(bopts,
		forestbus.MessageBatcherDoNotWaitForCommit(),
		forestbus.MessageBatcherSetBufferSize(1000),
		forestbus.MessageBatcherEnableDebug(),
		forestbus.MessageBatcherRetries(forestbus.UNLIMITED_RETRIES),
	)
	b := forestbus.NewMessageBatcher(c, "test-topic", bopts...)
	b.Close()
	_, err := b.SendMessage([]byte("x"), true)
	assert.Equal(t, forestbus.ErrMessageBatcherClosed, err)

	cluster, topic, nodes := forestbus.ParseConnectionString("t1#t2@host:1010,otherhost:2020")
	assert.Equal(t, "t1", cluster)
	assert.Equal(t, "t2", topic)
	assert.Equal(t, []string{"host:1010", "otherhost:2020"}, nodes)
}
