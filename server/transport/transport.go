package transport

import (
	"errors"
	"log/slog"
	"time"

	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
)

// Handler receives what a transport delivers. *replica.Engine implements
// it.
//
// A transport calls these methods from its own goroutines and also from
// inside Send (on the caller's goroutine, after Send's locks are released),
// so they must be safe for concurrent use, must not block, and must not
// step a raft.RawNode directly: queue the call for the loop goroutine.
// After the transport's Stop returns it makes no further calls.
type Handler interface {
	// Step delivers a message from a peer to the named group.
	Step(group string, m *raftpb.Message)
	// ReportUnreachable says that a message of the named group to node to
	// was dropped (raft.RawNode.ReportUnreachable).
	ReportUnreachable(group string, to uint64)
	// ReportSnapshot says whether a MsgSnap of the named group to node to
	// was sent or dropped (raft.RawNode.ReportSnapshot with SnapshotFinish
	// or SnapshotFailure).
	ReportSnapshot(group string, to uint64, failed bool)
}

// DefaultQueueSize is the default per-peer send queue, in messages.
const DefaultQueueSize = 4096

// maxFrameBytes caps the payload of one StreamRequest frame. It stays
// below gRPC's default 4 MiB receive limit; a single larger message is
// sent alone, so the receiving server must accept the largest Raft message
// (the node sets grpc.MaxRecvMsgSize above its batch limit, and at least
// MinRecvMsgSize).
const maxFrameBytes = 4<<20 - 64<<10

// MinRecvMsgSize is the least grpc.MaxRecvMsgSize a node serving
// PeerService may have: a frame of several raft messages, each within
// its limit, is up to maxFrameBytes plus framing. Below it, a frame is
// refused whole, and its messages are lost as sent.
const MinRecvMsgSize = 4 << 20

// Keepalive timing. Client streams of PeerService carry no server
// messages, so the client pings every clientKeepaliveTime; a peer that
// does not answer within clientKeepaliveTimeout (a black-holed network) has
// its connection closed, which fails the stream and triggers a reconnect.
// Servers must permit such pings: see ServerOptions.
const (
	clientKeepaliveTime    = 10 * time.Second
	clientKeepaliveTimeout = 5 * time.Second
	serverKeepaliveMinTime = 5 * time.Second
)

// handshakeTimeout bounds a stream's handshake, on both sides (a variable
// for tests).
var handshakeTimeout = 5 * time.Second

// Reconnect backoff: backoffMin doubling to backoffMax, jittered
// (variables for tests). A stream the peer opens to this node ends the
// wait at once (peerUp): the peer is back, and the next attempt waits up
// to peerUpWait for the connection, instead of failing at once while it
// is still down. Only that long: the peer may be reachable one way only,
// or gone again, and messages queued for it wait for the attempt.
var (
	backoffMin = 50 * time.Millisecond
	backoffMax = 2 * time.Second
	peerUpWait = 500 * time.Millisecond
)

// ServerOptions returns the options the node's grpc.Server needs to serve
// PeerService: a keepalive enforcement policy that accepts the transport's
// client pings (every 10 s, also without active streams). Without it
// grpc-go's default policy (one ping per 5 minutes) answers the pings with
// GOAWAY ENHANCE_YOUR_CALM, which breaks peer streams every few pings.
func ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{
			MinTime:             serverKeepaliveMinTime,
			PermitWithoutStream: true,
		}),
	}
}

// Config configures a GRPC transport. Zero fields take the documented
// defaults.
type Config struct {
	// NodeID is this node's Raft ID (non-zero).
	NodeID uint64
	// ClusterID names the cluster; streams from other clusters are
	// refused.
	ClusterID string
	// Handler receives inbound messages and delivery reports. Required.
	Handler Handler
	// Logger; default slog.Default().
	Logger *slog.Logger
	// Credentials secure the streams to peers (TLS); nil: plaintext.
	Credentials credentials.TransportCredentials
	// DialOptions are appended to the transport's own dial options
	// (insecure credentials, keepalive, reconnect backoff); tests use them.
	DialOptions []grpc.DialOption
	// QueueSize bounds each peer's send queue, in messages. Default
	// DefaultQueueSize.
	QueueSize int
	// Incarnation identifies this node's data directory: a random number
	// chosen when the directory was first used, sent with every stream
	// handshake. A node whose directory was wiped, started again under its
	// old raft ID, comes with another one, and its peers can refuse it
	// (CheckPeer): its empty log must not vote. 0 sends none.
	Incarnation uint64
	// CheckPeer, when set, judges a stream handshake from node from with
	// its incarnation (0 when it sent none: an earlier version); an error
	// refuses the stream (PERMISSION_DENIED, with the error's text), but
	// for one wrapping ErrPeerRemoved: that stream is accepted, and the
	// handshake's answer tells the node (OnRemoved). One wrapping
	// ErrRefuseRemoved is refused and tells the node too.
	CheckPeer func(from, incarnation uint64) error
	// OnRemoved, when set, is called when a peer accepts this node's
	// stream saying that the cluster removed this node (its CheckPeer said
	// ErrPeerRemoved), or refuses it saying so (ErrRefuseRemoved): a node
	// stopped before it applied its own removal
	// learns it from any peer that did. An accepted stream stays: the
	// topic groups may count the node as a voter for a while yet (their
	// configurations change after the cluster's), and refusing it could
	// leave one without a quorum. It must not block.
	OnRemoved func(peer uint64)
	// OnRefused, when set, is called when a peer starts refusing this
	// node's streams (refused true: its CheckPeer said no, PERMISSION_DENIED)
	// and when it accepts one again (false). A refusal holds until the
	// operator acts, and says that this node's data directory is not the
	// one the peer knew under its raft ID. Calls are serialized, and none
	// comes from a peer replaced or removed. It may take a while (the
	// server records refusals on disk): only the senders of peers whose
	// refusal changes wait, not Send.
	OnRefused func(peer uint64, refused bool)
}

// ErrPeerRemoved, wrapped by a CheckPeer error, says that the cluster
// removed the node that opens the stream.
var ErrPeerRemoved = errors.New("the cluster removed this node")

// ErrRefuseRemoved, wrapped by a CheckPeer error, refuses the stream as
// any other error does, and tells the node that the cluster removed it
// (OnRemoved): a removed node whose data directory was wiped is refused,
// and learns that it is removed, not only refused.
var ErrRefuseRemoved = errors.New("refused, and the cluster removed this node")

// removedKey is the handshake answer's header that says ErrPeerRemoved.
const removedKey = "forestbus-peer-removed"

// incarnationKey is the stream request header carrying the sender's
// Config.Incarnation (hexadecimal).
const incarnationKey = "forestbus-peer-incarnation"

func (c *Config) withDefaults() {
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Credentials == nil {
		c.Credentials = insecure.NewCredentials()
	}
	if c.QueueSize <= 0 {
		c.QueueSize = DefaultQueueSize
	}
}

// Stats are a transport's counters since New.
type Stats struct {
	// FramesSent and MessagesSent count what was handed to peer streams.
	FramesSent, MessagesSent uint64
	// MessagesDropped counts messages not sent: queue overflow, unknown
	// peer, peer unreachable, or a stream that broke with them in flight.
	MessagesDropped uint64
	// FramesReceived and MessagesReceived count inbound traffic passed to
	// the Handler; a frame is counted before its messages are stepped.
	FramesReceived, MessagesReceived uint64
	// Connects counts streams established (handshake accepted).
	Connects uint64
	// Refused counts inbound streams that CheckPeer refused.
	Refused uint64
}

// outMsg is one message in a peer queue: marshalled only when its frame is
// (wireFrame), straight into the frame's buffer.
type outMsg struct {
	group string
	msg   *raftpb.Message
	size  int // proto.Size(msg), which also fills msg's cached sizes
	snap  bool
	// urgent: neither MsgApp nor MsgSnap (heartbeats, votes, responses):
	// sent ahead of the appends queued before it (peer.urgent).
	urgent bool
}

// isBulk reports whether m carries a log's entries or a snapshot (MsgApp,
// MsgSnap): what may queue up by the megabyte for a peer.
func isBulk(m *raftpb.Message) bool {
	t := m.GetType()
	return t == raftpb.MessageType_MsgApp || t == raftpb.MessageType_MsgSnap
}

// isSnap reports whether m is a MsgSnap.
func isSnap(m *raftpb.Message) bool { return m.GetType() == raftpb.MessageType_MsgSnap }

// drop is a dropped message to report.
type drop struct {
	to     uint64
	snap   bool
	silent bool // no ReportUnreachable (Hub loss)
}

// report tells h about dropped messages of one group: ReportUnreachable
// once per destination, and ReportSnapshot(failed=true) per MsgSnap.
func report(h Handler, group string, drops []drop) {
	for i, d := range drops {
		if d.snap {
			h.ReportSnapshot(group, d.to, true)
		}
		if d.silent {
			continue
		}
		seen := false
		for _, e := range drops[:i] {
			if e.to == d.to && !e.silent {
				seen = true
				break
			}
		}
		if !seen {
			h.ReportUnreachable(group, d.to)
		}
	}
}

// reportBatch reports dropped queued messages, which may belong to many
// groups: ReportUnreachable once per group, ReportSnapshot(failed=true) per
// MsgSnap.
func reportBatch(h Handler, to uint64, msgs []outMsg) {
	if len(msgs) == 0 {
		return
	}
	seen := make(map[string]struct{})
	for _, m := range msgs {
		if m.snap {
			h.ReportSnapshot(m.group, to, true)
		}
		if _, ok := seen[m.group]; !ok {
			seen[m.group] = struct{}{}
			h.ReportUnreachable(m.group, to)
		}
	}
}
