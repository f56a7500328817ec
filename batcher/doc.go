// Package batcher batches messages sent one at a time by many goroutines
// into few, larger sends to one Forest Bus topic.
//
// It is the original client's MessageBatcher (github.com/owlfish/forestbus),
// which the module root package forestbus re-exports under its original
// names. A Batcher sends through a Sender, normally a *client.Client:
//
//	c := client.New("test-cluster", []string{"localhost:3000,localhost:3001"})
//	b := batcher.New(c, "test-topic")
//	defer b.Close()
//	id, err := b.SendMessage([]byte("hello"), true)
//
// There is no linger timer: a message goes out at once when no send is in
// progress, and the messages that queue up during a send go out together
// next. The queue holds up to the buffer size (200 by default) messages,
// which is also the largest batch; a batch also stops short of 16 MiB of
// messages (WithMaxBatchBytes), a node's default limit.
//
// The Batcher retries only errors matching client.ErrNoNodesAvailable, and
// only when WithRetries allows it. It imports the client package for that
// sentinel alone: the sentinel's identity is the contract, and every real
// Sender is a *client.Client, so a predicate interface would add API
// without decoupling anything; tests use a fake Sender all the same.
//
// # Differences from the original
//
//   - Close does not leak the send goroutine: when the 2 s drain time runs
//     out, the send in progress is cancelled (its messages fail with an
//     ErrClosed; they may have been stored) and Close waits
//     for the goroutine to end.
//   - Sends after Close return ErrClosed without relying on a recovered
//     panic, and a send blocked on a full queue returns ErrClosed when Close
//     starts.
//   - A batch whose retries Close interrupts fails with ErrClosed, as the
//     original did (its documentation said ErrNoNodesAvailable).
//   - A batch is capped in bytes as well as in messages, and a batch the
//     node refuses for the size of some of its messages (the original
//     server had no limits) is sent again in halves until only those
//     messages fail, instead of failing every message batched with them.
//   - A retry (WithRetries) resends the batch under the producer sequence
//     of its first send, so a batch the cluster stored before the error is
//     not stored twice (the original stored it again).
//   - Results carry the original package's bare sentinels (ErrClosed,
//     client.ErrNoNodesAvailable, ErrTopicNotFound, ErrClusterIdMismatch),
//     so programs comparing with == keep working; other errors are passed
//     on as the Sender returned them. WithDebug logs every send's cause.
package batcher
