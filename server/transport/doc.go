// Package transport carries Raft messages between the nodes of a cluster.
//
// Every topic is its own Raft group (package replica), so a node exchanges
// messages of many groups with each peer. The transport multiplexes them:
// GRPC opens one long-lived PeerService.Stream call (proto
// forestbus.peer.v1) to each peer and sends frames that batch the queued
// messages of all groups, each tagged with its group name (RAFT_NOTES
// §5.7: one connection per node pair).
//
// # Sending
//
// Send is called by the replica engine from its loop goroutine, after the
// Ready's state is durable. It never blocks: it appends each message to the
// destination peer's bounded queue, unmarshalled (raft does not modify a
// message or entry once it is in a Ready, and neither may the caller). One
// goroutine per peer drains its queue into frames of up to about 4 MiB,
// marshalling each message once, straight into the frame's buffer, and
// sends them in order, so messages of one group to one peer keep their
// order. Delivery is best effort, which is all Raft needs: Raft retransmits,
// but it must learn about losses so that it stops optimistic replication
// and retries snapshots.
// The transport therefore tells the Handler
//
//   - ReportUnreachable(group, to) when a message to a peer was dropped: its
//     queue was full, the peer is unknown, the stream broke while the
//     message's frame was being handed to it, its peer was replaced at a
//     new address, or the peer could not be reached (while reconnecting,
//     queued messages are dropped rather than delivered late). Frames gRPC
//     had already taken when the stream broke are lost unreported: raft
//     finds the gap at the next heartbeat response or rejection, later
//     rather than never;
//   - ReportSnapshot(group, to, failed) for every MsgSnap: failed=false once
//     the frame holding it was handed to the stream, failed=true when it was
//     dropped. Without it the leader keeps the follower in StateSnapshot
//     forever (RAFT_NOTES §5.6).
//
// A broken stream is re-established with jittered exponential backoff
// (50 ms doubling to 2 s). A slow or dead peer only fills its own queue.
//
// # Receiving
//
// Register adds PeerService to the node's grpc.Server (clients and peers
// share one port). The first frame of a stream is a handshake naming the
// cluster and the sender and receiver node IDs; a stream from another
// cluster, or addressed to another node, is refused with
// FailedPrecondition before any Raft message is sent. The stream's request
// headers carry the sender's incarnation (Config.Incarnation), which
// Config.CheckPeer may refuse (PermissionDenied: a node that came back
// with another data directory) or answer with the news that the cluster
// removed the sender (Config.OnRemoved on its side). Each received message
// is unmarshalled and passed to Handler.Step in order, on the goroutine that
// received its frame (one per inbound stream): no hand-over to another
// goroutine on the way from the socket to the engine's inbox. Stop ends the
// inbound streams (their handlers return) and steps nothing after it.
//
// # Testing
//
// Hub is an in-memory network for multi-node tests: HubTransport behaves
// like GRPC (asynchronous, per-link FIFO, the same reports) and the Hub
// injects partitions, loss and delay.
package transport
