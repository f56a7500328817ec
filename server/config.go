package server

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"time"

	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/forestbus/forestbus/server/api"
	"github.com/forestbus/forestbus/server/topic"
	"github.com/forestbus/forestbus/server/transport"
)

// SyncMode says when an acknowledged write is on disk.
type SyncMode string

const (
	// SyncFsync fsyncs before acknowledging: an acknowledged commit is on
	// disk on a majority of nodes. The default.
	SyncFsync SyncMode = "fsync"
	// SyncOS leaves flushing to the operating system (the original Forest
	// Bus behaviour): faster, but a machine crash can lose acknowledged
	// messages.
	SyncOS SyncMode = "os"
)

// Ceilings of the size limits, whatever a node is configured with. No
// message stored by any node is larger than MaxBatchBytesLimit, so a node
// can always send one back (an answer holds at least one message).
const (
	MaxBatchBytesLimit = 256 << 20
	MaxReadBytesLimit  = 256 << 20
)

// Config configures a node. The zero value of each field means its default.
type Config struct {
	// ListenAddr is the gRPC listen address. Default "127.0.0.1:3000";
	// port 0 picks a free port (see Server.Addr).
	ListenAddr string
	// Listener, when set, is used instead of listening on ListenAddr (tests
	// that need a cluster's addresses before its nodes start).
	Listener net.Listener
	// AdvertiseAddr is the address clients and peers dial. Default: the
	// address actually listened on.
	AdvertiseAddr string
	// DataDir holds the node's data. Default "./fbdata".
	DataDir string
	// ClusterID names the cluster. Default "local". A data directory
	// remembers it; starting with another fails.
	ClusterID string
	// NodeName is this node's stable name. Default "node1".
	NodeName string
	// InitialCluster lists the members of a new cluster as
	// "name=host:port,name=host:port", identical on every member: a member's
	// raft ID is its position in the list, from 1. It must name this node.
	// Empty: a one-node cluster of this node. A data directory remembers
	// its cluster, so the flag only matters on a node's first start.
	InitialCluster string
	// Join, when set, makes the node's first start join an existing cluster
	// as the member AddNode registered, instead of bootstrapping one. Later
	// starts ignore it: the data directory remembers the node.
	Join *Join
	// Sync is the durability mode. Default SyncFsync.
	Sync SyncMode
	// MaxMessageBytes caps one message a node accepts. Default 1 MiB.
	// Lowering it later leaves the messages stored meanwhile readable.
	MaxMessageBytes int
	// MaxBatchBytes caps one SendMessages batch. Default 16 MiB, at most
	// MaxBatchBytesLimit.
	MaxBatchBytes int
	// MaxReadBytes caps the messages of one GetMessages answer or Subscribe
	// response, each counted with its framing. Default
	// api.DefaultMaxReadBytes (4 MiB less 1 KiB: an answer fits any gRPC
	// client's default receive limit).
	MaxReadBytes int
	// ReadAheadBytes: a GetMessages answer holds this much (counted as
	// MaxReadBytes counts) when
	// that much is committed, even beyond the quantity asked (fewer calls
	// for sequential readers). Default api.DefaultReadAheadBytes (3 MiB);
	// negative turns it off.
	ReadAheadBytes int
	// MaxWait caps a long poll. Default 30 s.
	MaxWait time.Duration
	// MaxUncommittedBytes is a topic leader's budget of uncommitted batch
	// bytes; a send beyond it gets RESOURCE_EXHAUSTED/PROPOSAL_DROPPED
	// (backpressure). Default 64 MiB.
	MaxUncommittedBytes uint64
	// MaxWaiters caps the long polls waiting at once (GetMessages calls
	// with wait at the tail); more get RESOURCE_EXHAUSTED. 0 means
	// api.DefaultMaxWaiters (10,000).
	MaxWaiters int
	// MaxSubscribers caps the Subscribe streams served at once; more get
	// RESOURCE_EXHAUSTED. 0 means api.DefaultMaxSubscribers (10,000).
	MaxSubscribers int
	// MaxProduceStreams caps the Produce streams served at once (a Go
	// Client opens one per node); more get RESOURCE_EXHAUSTED, and the Go
	// client then sends its batches as SendMessages calls. 0 means
	// api.DefaultMaxProduceStreams (10,000).
	MaxProduceStreams int
	// MaxTopics caps the topics of the cluster, as this node counts them
	// when it creates one as metadata leader (a follower forwards the
	// create); a create over it gets RESOURCE_EXHAUSTED/TOO_MANY_TOPICS.
	// Every topic is a raft group with its files on every node. The
	// default topic (DefaultTopic) is not capped. 0 means
	// topic.DefaultMaxTopics (10,000); negative, no cap.
	MaxTopics int
	// MaxForwarding caps the calls this node forwards to topic leaders at
	// once (SendMessages and admin calls sent to a follower); over it, a
	// call is answered FAILED_PRECONDITION/NOT_LEADER with the leader's
	// address, which clients follow. 0 means api.DefaultMaxForwarding
	// (1,000); negative turns forwarding off.
	MaxForwarding int
	// KeepaliveTime and KeepaliveTimeout: the node pings a client
	// connection that has sent nothing for KeepaliveTime and closes it when
	// no answer comes within KeepaliveTimeout, so connections whose client
	// vanished (a host gone, a network cut) do not hold their calls,
	// memory and descriptor for ever. Defaults 2 minutes and 20 seconds;
	// grpc-go raises a time under 1 s to 1 s.
	KeepaliveTime    time.Duration
	KeepaliveTimeout time.Duration
	// MaxStreamsPerConn caps the calls (HTTP/2 streams) one client
	// connection carries at once; a call beyond it waits, in the client,
	// for one to end. The Clients of a process share a connection, up to
	// 32 on one, so the default, 32,000, leaves each the 1,000 it had on a
	// connection of its own: a Client tailing many topics does not hold
	// back the sends of the others. It also caps the handlers gRPC runs at
	// once for one connection.
	MaxStreamsPerConn uint32
	// SegmentBytes is the default segment size of a topic. Default 64 MiB.
	SegmentBytes int64
	// MinTopicSegmentBytes is the smallest segment size a client may give
	// a topic (CreateTopic, UpdateTopic): every retained segment holds a
	// file open on every node. The node that takes the call checks it:
	// give every node the same. 0 or less means DefaultMinTopicSegmentBytes
	// (1 MiB); never below 4 KiB. SegmentBytes, the operator's, is not
	// bound by it, and topics created with smaller segments keep them.
	MinTopicSegmentBytes int64

	// MetaCheckpointEvery is how many metadata commands (topic creates,
	// updates and removals) apart the node checkpoints its topic registry
	// and compacts the metadata log; 0 means topic.DefaultMetaCheckpointEvery.
	MetaCheckpointEvery uint64
	// MetaSegmentBytes is the metadata log's segment size (its compaction
	// deletes whole segments); 0 means 16 MiB. Tests make it small.
	MetaSegmentBytes int64
	// PageCacheBytes is how much of its newest durable records each topic
	// leaves in the OS page cache; older records are dropped from it, so
	// the cache does not grow with the logs (commitlog, "Page cache").
	// Default 32 MiB; negative leaves the page cache to the kernel.
	PageCacheBytes int64
	// JournalBytes is the size of a journal file (fsync mode: the records
	// of many topics synced at once go there first); a full file is
	// checkpointed and recycled. Default 64 MiB.
	JournalBytes int64
	// Retention and RetentionBytes are the cluster defaults for topics
	// that set none: messages older than Retention, or beyond the newest
	// RetentionBytes, are removed whole segments at a time. 0: keep.
	Retention      time.Duration
	RetentionBytes int64
	// RetentionInterval is how often a leader checks its topics' retention
	// (and every node its removed topics' files). Default 30 s.
	RetentionInterval time.Duration
	// LeaderBalanceInterval is how often the node hands the topics it leads
	// to their preferred leaders (the voters their creation picked, which
	// spreads leaders over the nodes) when those are up, have been for at
	// least this long, and are caught up: after a node restarts, the
	// leaderships it handed off or lost come back. Default 10 s; negative:
	// never.
	LeaderBalanceInterval time.Duration
	// RemovedRetention is how long a removed topic's files stay in the
	// data directory's removed/ (for the operator to recover them) before
	// they are deleted. 0: kept for ever. fbnode's default is 24 h.
	RemovedRetention time.Duration
	// DefaultTopic is created at start when absent; "" disables. fbnode
	// sets "default".
	DefaultTopic string
	// TickInterval is the raft tick. Default 100 ms.
	TickInterval time.Duration
	// CommitNoticeDelay is how long a topic's leader may hold back telling
	// its followers of a new commit point when no append carries it
	// (replica.Config.CommitNoticeDelay): a follower's reads trail the
	// leader's by up to that much. Default 20 ms; negative: at once.
	CommitNoticeDelay time.Duration
	// Logger; default slog.Default().
	Logger *slog.Logger

	// TLS, when set, makes the node serve gRPC over TLS (clients, peers
	// and grpcurl alike): its certificate, and with ClientCAs and
	// ClientAuth the client certificates it requires. PeerTLS is then how
	// it dials the other nodes (raft streams, forwarded calls, health
	// checks): RootCAs to verify them, and its certificate when they
	// require one. Both or neither; every node of a cluster alike.
	TLS, PeerTLS *tls.Config
	// PeerCredentials, when set, are what the node dials its peers with
	// in place of PeerTLS: credentials that follow the node's files
	// (fbnode's, tlsfiles.Node). Serving TLS takes PeerTLS or these.
	PeerCredentials credentials.TransportCredentials

	// GRPCOptions are added early to the gRPC server's options (e.g. the
	// Prometheus interceptors of server/httpapi), so their interceptors
	// wrap the node's own and see final status codes, and they replace the
	// node's flow-control windows, keepalive parameters (a whole
	// keepalive.ServerParameters: set Time and Timeout there too) and
	// header cap. Not a stats handler
	// that reads sent payloads, nor grpc.EnableTracing: GetMessages
	// answers' buffers are reused once encoded (fastcodec.Lend).
	GRPCOptions []grpc.ServerOption

	// NewTransport, when set, replaces the gRPC peer transport (tests run
	// clusters over transport.Hub to cut and heal links).
	NewTransport func(nodeID uint64, h transport.Handler) PeerTransport
}

// PeerTransport carries raft messages between nodes: *transport.GRPC, or
// *transport.HubTransport in tests.
type PeerTransport interface {
	Send(group string, msgs []*raftpb.Message)
	AddPeer(id uint64, addr string)
	RemovePeer(id uint64)
	Stop()
}

// Join describes a node added to a running cluster by AdminService.AddNode.
type Join struct {
	// ID is the raft ID AddNode assigned.
	ID uint64
	// Members are the cluster's members AddNode reported (name and address
	// of each; the node dials them to be sent the metadata log).
	Members []JoinMember
}

// JoinMember is a member of the cluster being joined.
type JoinMember struct {
	ID            uint64
	Name, Address string
}

// member is one entry of InitialCluster.
type member struct {
	id         uint64
	name, addr string
}

// topicMembers is ms as the registry records members.
func topicMembers(ms []member) []topic.Member {
	var out []topic.Member
	for _, m := range ms {
		out = append(out, topic.Member{ID: m.id, Name: m.name, Address: m.addr})
	}
	return out
}

// membersOf is topicMembers' inverse.
func membersOf(ms []topic.Member) []member {
	var out []member
	for _, m := range ms {
		out = append(out, member{id: m.ID, name: m.Name, addr: m.Address})
	}
	return out
}

// parseCluster parses InitialCluster.
func parseCluster(s string) ([]member, error) {
	var out []member
	seen := map[string]bool{}
	addrs := map[string]string{}
	for i, part := range strings.Split(s, ",") {
		name, addr, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok || name == "" || addr == "" {
			return nil, fmt.Errorf("server: initial cluster entry %q: want name=host:port", part)
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return nil, fmt.Errorf("server: initial cluster entry %q: %w", part, err)
		}
		if seen[name] {
			return nil, fmt.Errorf("server: initial cluster names %q twice", name)
		}
		if other, ok := addrs[addr]; ok {
			return nil, fmt.Errorf("server: initial cluster gives %q and %q the same address %s", other, name, addr)
		}
		seen[name] = true
		addrs[addr] = name
		out = append(out, member{id: uint64(i + 1), name: name, addr: addr})
	}
	return out, nil
}

// Validate checks c as Start does, without starting anything: a program
// that must refuse a bad configuration before it acts on it (fbnode before
// asking a cluster to add the node) calls it first.
func (c Config) Validate() error {
	return c.validate()
}

// validate checks c and fills in the defaults.
func (c *Config) validate() error {
	if c.ListenAddr == "" {
		c.ListenAddr = "127.0.0.1:3000"
	}
	if c.DataDir == "" {
		c.DataDir = "./fbdata"
	}
	if c.ClusterID == "" {
		c.ClusterID = "local"
	}
	if c.NodeName == "" {
		c.NodeName = "node1"
	}
	switch c.Sync {
	case "":
		c.Sync = SyncFsync
	case SyncFsync, SyncOS:
	default:
		return fmt.Errorf("server: sync mode %q: want %q or %q", c.Sync, SyncFsync, SyncOS)
	}
	if c.MaxMessageBytes <= 0 {
		c.MaxMessageBytes = 1 << 20
	}
	if c.MaxBatchBytes <= 0 {
		c.MaxBatchBytes = 16 << 20
	}
	if c.MaxMessageBytes > c.MaxBatchBytes {
		return fmt.Errorf("server: max message size %d exceeds max batch size %d", c.MaxMessageBytes, c.MaxBatchBytes)
	}
	if c.MaxReadBytes > MaxReadBytesLimit {
		return errors.New("server: max read size above 256 MiB")
	}
	if c.MaxBatchBytes > MaxBatchBytesLimit {
		return errors.New("server: max batch size above 256 MiB")
	}
	if c.MaxReadBytes <= 0 {
		c.MaxReadBytes = api.DefaultMaxReadBytes
	}
	if c.MaxWait <= 0 {
		c.MaxWait = 30 * time.Second
	}
	if c.KeepaliveTime <= 0 {
		c.KeepaliveTime = DefaultKeepaliveTime
	}
	if c.KeepaliveTimeout <= 0 {
		c.KeepaliveTimeout = DefaultKeepaliveTimeout
	}
	if c.MaxStreamsPerConn == 0 {
		c.MaxStreamsPerConn = DefaultMaxStreamsPerConn
	}
	if c.SegmentBytes <= 0 {
		c.SegmentBytes = 64 << 20
	}
	if c.RetentionInterval <= 0 {
		c.RetentionInterval = 30 * time.Second
	}
	if (c.TLS == nil) != (c.PeerTLS == nil && c.PeerCredentials == nil) {
		return errors.New("server: TLS and PeerTLS (or PeerCredentials) go together: a node that serves TLS dials its peers, which serve it too, with TLS")
	}
	if c.PeerTLS != nil && c.PeerCredentials != nil {
		return errors.New("server: PeerTLS or PeerCredentials, not both")
	}
	if c.TickInterval <= 0 {
		c.TickInterval = 100 * time.Millisecond // as replica.Config's
	}
	if c.LeaderBalanceInterval == 0 {
		c.LeaderBalanceInterval = DefaultLeaderBalanceInterval
	}
	if c.Retention < 0 || c.RetentionBytes < 0 || c.RemovedRetention < 0 {
		return errors.New("server: negative retention")
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return nil
}
