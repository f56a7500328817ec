package forestbus

import (
	"github.com/forestbus/forestbus/batcher"
	"github.com/forestbus/forestbus/client"
)

// UNLIMITED_RETRIES can be passed to MessageBatcherRetries to retry
// transient errors without limit.
const UNLIMITED_RETRIES = batcher.UnlimitedRetries //nolint:revive // original name

// The original client's errors. They are the sentinels of the client and
// batcher packages.
var (
	// ErrClusterIdMismatch: a node does not belong to the client's
	// cluster.
	ErrClusterIdMismatch = client.ErrClusterIdMismatch //nolint:revive // original name
	// ErrMessageBatcherBufferFull: a non-blocking send found the message
	// batcher's buffer full.
	ErrMessageBatcherBufferFull = batcher.ErrBufferFull
	// ErrMessageBatcherClosed: the message batcher was closed before the
	// message could be sent.
	ErrMessageBatcherClosed = batcher.ErrClosed
	// ErrNoNodesAvailable: no node gave a usable answer; possibly
	// transitory.
	ErrNoNodesAvailable = client.ErrNoNodesAvailable
	// ErrTopicNotFound: the topic does not exist on the node.
	ErrTopicNotFound = client.ErrTopicNotFound
)

// Client is a multi-goroutine safe object for communicating with the nodes
// of a Forest Bus cluster. See client.Client.
type Client = client.Client

// ClientConfiguration functions configure a Client. See client.Option.
type ClientConfiguration = client.Option

// NewClient returns a Client for the cluster clusterID made of nodes. See
// client.New.
func NewClient(clusterID string, nodes []string, config ...ClientConfiguration) *Client {
	return client.New(clusterID, nodes, config...)
}

// ClientEnableDebug enables debug logging of every call. See
// client.WithDebug.
func ClientEnableDebug() ClientConfiguration { return client.WithDebug() }

// ShuffleNodes randomises the order in which nodes are tried, spreading
// the read load of many clients. See client.WithShuffledNodes.
func ShuffleNodes() ClientConfiguration { return client.WithShuffledNodes() }

// ParseConnectionString splits a connection string,
// clusterID#topic@node,node..., into its parts. See
// client.ParseConnectionString.
func ParseConnectionString(constr string) (clusterID string, topic string, nodes []string) {
	return client.ParseConnectionString(constr)
}

// MessageBatcher batches messages sent by many goroutines to one topic.
// See batcher.Batcher.
type MessageBatcher = batcher.Batcher

// MessageBatcherConfiguration functions configure a MessageBatcher. See
// batcher.Option.
type MessageBatcherConfiguration = batcher.Option

// SendResult is the outcome of an AsyncSendMessage call. See
// batcher.SendResult.
type SendResult = batcher.SendResult

// NewMessageBatcher returns a MessageBatcher sending to topic through
// client. See batcher.New.
func NewMessageBatcher(client *Client, topic string, config ...MessageBatcherConfiguration) *MessageBatcher {
	return batcher.New(client, topic, config...)
}

// MessageBatcherDoNotWaitForCommit makes the MessageBatcher send without
// waiting for commit. See batcher.WithoutCommitWait.
func MessageBatcherDoNotWaitForCommit() MessageBatcherConfiguration {
	return batcher.WithoutCommitWait()
}

// MessageBatcherSetBufferSize changes the buffer size from its default of
// 200. See batcher.WithBufferSize.
func MessageBatcherSetBufferSize(size int) MessageBatcherConfiguration {
	return batcher.WithBufferSize(size)
}

// MessageBatcherEnableDebug enables debug logging in the MessageBatcher.
// See batcher.WithDebug.
func MessageBatcherEnableDebug() MessageBatcherConfiguration {
	return batcher.WithDebug()
}

// MessageBatcherRetries enables retries of ErrNoNodesAvailable errors, at
// 500 ms steps up to 5 s; pass UNLIMITED_RETRIES for no limit. See
// batcher.WithRetries.
func MessageBatcherRetries(maxRetries int) MessageBatcherConfiguration {
	return batcher.WithRetries(maxRetries)
}
