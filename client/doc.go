// Package client is the Go client of Forest Bus over gRPC.
//
// A Client talks to the nodes of one cluster. It keeps one gRPC connection
// per node, opened on first use and shared with up to 31 other Clients of
// the process that dial the node with the default options (each Client
// sends over its own Produce stream on it; WithPrivateConnections opts
// out), as grpc-go advises: many Clients in one process then cost a node a
// few connections' reads and writes, not one per Client. Sharing Clients
// share the connection's fate too: a broken connection fails the calls of
// all of them, which then reconnect. A Client remembers each topic's
// leader (including
// the forestbus-leader header a forwarding node sends back, and the leader
// named by a NOT_LEADER answer) and the last node that answered a read, and
// fails over between nodes when one does not answer.
//
// The API is that of the original Go client (github.com/owlfish/forestbus),
// whose names the module root package forestbus re-exports, plus
// context-first variants (SendMessagesContext, GetMessagesContext, ...), as
// database/sql pairs Query with QueryContext, and admin calls.
//
// # Errors
//
// Errors answered by a node are *StatusError values carrying the gRPC code
// and the Forest Bus reason; they match the reason's sentinel
// (ErrTopicNotFound, ErrNoLeader, ...) with errors.Is. When no node gives a
// usable answer in time the error matches ErrNoNodesAvailable and wraps the
// last node's error. The calls without a context return the original
// client's three sentinels bare, so that old code comparing with == works.
//
// # Retries
//
// A call tries each node at most once per pass, starting from its preferred
// node. Answers another node may not give (unavailable, not the leader, no
// leader yet, shutting down, storage failed, proposal dropped) move on to
// the next node; answers no node would change (unknown topic, invalid
// argument, cluster ID mismatch) end the call. After a failed pass the
// client waits, 50 ms doubling up to 1 s, and makes another pass, until the
// context ends or, for a context without a deadline and the calls without a
// context, the retry window (10 s by default, WithRetryWindow) has passed
// since the call's first failure.
// A node that stops answering without closing its connection (a frozen
// host, a black-holed network) is found by a keepalive ping: 10 s without
// a frame from it while calls are in progress, then 5 s for the answer,
// and its calls move on. A read refused by a node at its cap of waiting
// reads (RESOURCE_EXHAUSTED) moves on too.
//
// Sends are idempotent within a call: each batch carries the Client's
// random producer ID and a per-topic sequence number, the same for every
// retry of the call, and the topic stores a batch with a pair it already
// holds only once, answering with the first copy's IDs. A new call with
// the same messages is a new batch, so across calls delivery is at least
// once, as in the original (see SendMessagesContext).
//
// Sends go over one Produce stream per node, shared by every goroutine
// using the Client: a batch costs a message each way, not a call, which is
// about half the CPU. Failover, retries and errors are the same as for
// SendMessages calls. A send whose context ends while the node holds its
// request back (flow control: the node reads nothing) ends the stream,
// and the stream's other sends move on as after any broken stream. A node without Produce gets calls; so, for a second,
// does a node that refused the stream (it serves its cap of streams) or
// ended it with RESOURCE_EXHAUSTED; and WithUnarySends makes every send a
// call.
//
// Subscribe follows a topic over a server stream instead of polling, and
// resumes on another node after a failure from the message after the last one
// delivered; it retries until its context ends (see Subscribe).
//
// # Differences from the original client
//
//   - An empty cluster ID is not checked; the original required the node's
//     ID to be empty too.
//   - The leader hint of a NOT_LEADER answer is followed (the original
//     ignored it), and whole passes over the nodes are retried for the retry
//     window (the original made one pass).
//   - An unknown topic is ErrTopicNotFound for every call (the original
//     reported ErrNoNodesAvailable for reads).
//   - Node entries may hold several comma-separated addresses, as the
//     original's documentation examples pass them.
//   - GetMessages with wait set asks again when a node's capped wait ends
//     empty, so it still blocks until a message arrives.
package client
