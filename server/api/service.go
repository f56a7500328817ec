package api

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	forestbusv1 "github.com/forestbus/forestbus/gen/forestbus/v1"
	"github.com/forestbus/forestbus/internal/fastcodec"
	"github.com/forestbus/forestbus/server/commitlog"
	"github.com/forestbus/forestbus/server/replica"
	"github.com/forestbus/forestbus/server/topic"
)

// Config configures the services.
type Config struct {
	// ClusterID is this node's cluster ID.
	ClusterID string
	// NodeName is this node's name.
	NodeName string
	// Nodes lists the cluster's members as clients see them.
	Nodes []Node
	// MaxMessageBytes caps one message. Default 1 MiB.
	MaxMessageBytes int
	// MaxBatchBytes caps the payload of one SendMessages call. Default 16 MiB.
	MaxBatchBytes int
	// MaxReadBytes caps the messages of one GetMessages answer or Subscribe
	// response as encoded: each message counts its payload and two or more
	// bytes of framing (commitlog.MessageCost). At least one message is
	// always returned when one exists. Default DefaultMaxReadBytes.
	MaxReadBytes int
	// ReadAheadBytes is how much a GetMessages answer holds when
	// that much is committed, even if the request asked for fewer messages:
	// a sequential reader gets the topic in fewer, larger calls (the answer
	// may exceed quantity; the API says so). It counts as MaxReadBytes
	// does. Default DefaultReadAheadBytes; negative turns it off (answers
	// end at the first stored batch boundary at or after quantity).
	ReadAheadBytes int
	// MaxWait caps a long-polling GetMessages. Default 30 s.
	MaxWait time.Duration
	// MaxWaiters caps the GetMessages calls waiting at once on this node
	// (long polls at the tail: a call with wait set and a message at its id
	// answers at once and does not count); beyond it a call that would
	// wait gets RESOURCE_EXHAUSTED. Default DefaultMaxWaiters.
	MaxWaiters int
	// MaxSubscribers caps the Subscribe streams served at once; more get
	// RESOURCE_EXHAUSTED. 0 means DefaultMaxSubscribers (10,000).
	MaxSubscribers int
	// MaxProduceStreams caps the Produce streams served at once; more get
	// RESOURCE_EXHAUSTED (the Go client then sends its batches to this node
	// as SendMessages calls). 0 means DefaultMaxProduceStreams (10,000).
	MaxProduceStreams int
	// MaxForwarding caps the calls a follower forwards to leaders at once
	// (SendMessages and admin calls); over it, a call is answered
	// NOT_LEADER with the leader's address, for the client to go there
	// itself. 0 means DefaultMaxForwarding (1,000); negative turns
	// forwarding off.
	MaxForwarding int
	// Logger; default slog.Default().
	Logger *slog.Logger
	// PeerCredentials secure the calls forwarded to other nodes (TLS);
	// nil: plaintext.
	PeerCredentials credentials.TransportCredentials
}

// DefaultMaxForwarding is Config.MaxForwarding's default.
const DefaultMaxForwarding = 1000

// DefaultMaxReadBytes is Config.MaxReadBytes's default: 4 MiB less 1 KiB,
// so that any answer (its other fields are a few bytes) fits in the 4 MiB
// a gRPC client accepts in one message by default (grpc-js, grpcurl,
// Python, Java; the Go client here accepts more).
const DefaultMaxReadBytes = 4<<20 - 1<<10

// DefaultReadAheadBytes is Config.ReadAheadBytes's default. A sequential
// reader's cost grows with its calls more than with its bytes (each answer
// is its own allocation and collection work; BENCHMARKS.md, fifteenth
// session), so answers are large; below the cap, so that they end on a
// stored batch and the next one starts on the next.
const DefaultReadAheadBytes = 3 << 20

// Node is a cluster member.
type Node struct {
	Name    string
	Address string
	RaftID  uint64
	Learner bool // still catching up: not yet a voter
}

func (c *Config) withDefaults() {
	if c.MaxMessageBytes <= 0 {
		c.MaxMessageBytes = 1 << 20
	}
	if c.MaxBatchBytes <= 0 {
		c.MaxBatchBytes = 16 << 20
	}
	if c.MaxReadBytes <= 0 {
		c.MaxReadBytes = DefaultMaxReadBytes
	}
	switch {
	case c.ReadAheadBytes == 0:
		c.ReadAheadBytes = DefaultReadAheadBytes
	case c.ReadAheadBytes < 0:
		c.ReadAheadBytes = 0
	}
	if c.MaxWait <= 0 {
		c.MaxWait = 30 * time.Second
	}
	if c.MaxWaiters <= 0 {
		c.MaxWaiters = DefaultMaxWaiters
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Service implements forestbusv1.ForestBusServiceServer and
// forestbusv1.AdminServiceServer. Safe for concurrent use.
type Service struct {
	forestbusv1.UnimplementedForestBusServiceServer
	forestbusv1.UnimplementedAdminServiceServer

	cfg      Config
	log      *slog.Logger
	registry *topic.Registry
	stopping <-chan struct{} // closed by BeginShutdown
	stopCtx  context.Context // done once BeginShutdown is called
	stop     context.CancelFunc
	fwd      forwarder

	inflight atomic.Int64 // unary calls being served
	waiters  atomic.Int64 // GetMessages calls that may wait

	subscribers streamCap // Subscribe streams (subscribe.go)
	producers   streamCap // Produce streams (produce.go)

	nodesMu sync.RWMutex
	nodes   []Node
	addrs   map[uint64]string // every node ever a member: raft ID -> address

	refused refusal // SetRefusedBy
}

// New returns the services for a registry.
func New(cfg Config, registry *topic.Registry) *Service {
	cfg.withDefaults()
	s := &Service{cfg: cfg, log: cfg.Logger, registry: registry}
	s.stopCtx, s.stop = context.WithCancel(context.Background())
	s.stopping = s.stopCtx.Done()
	s.refused.ctx, s.refused.done = context.WithCancel(context.Background())
	s.SetNodes(cfg.Nodes)
	s.fwd.creds = cfg.PeerCredentials
	if s.fwd.creds == nil {
		s.fwd.creds = insecure.NewCredentials()
	}
	switch {
	case cfg.MaxForwarding == 0:
		s.fwd.slots = make(chan struct{}, DefaultMaxForwarding)
	case cfg.MaxForwarding > 0:
		s.fwd.slots = make(chan struct{}, cfg.MaxForwarding)
	}
	s.SetMaxSubscribers(cfg.MaxSubscribers)
	s.SetMaxProduceStreams(cfg.MaxProduceStreams)
	return s
}

// Waiters is the number of GetMessages calls that may be waiting.
func (s *Service) Waiters() int { return int(s.waiters.Load()) }

// Drain waits until the unary calls in flight have returned, or ctx ends.
func (s *Service) Drain(ctx context.Context) {
	t := time.NewTicker(2 * time.Millisecond)
	defer t.Stop()
	for s.inflight.Load() > 0 {
		select {
		case <-t.C:
		case <-ctx.Done():
			return
		}
	}
}

// SetRegistry sets the registry the services answer from (once, before
// serving).
func (s *Service) SetRegistry(r *topic.Registry) { s.registry = r }

// SetNodes replaces the cluster's member list (membership changed). The
// addresses of former members are kept for leader hints and forwarding: a
// removed node may lead a group until it hands it over.
func (s *Service) SetNodes(nodes []Node) {
	s.nodesMu.Lock()
	s.nodes = nodes
	if s.addrs == nil {
		s.addrs = map[uint64]string{}
	}
	for _, n := range nodes {
		s.addrs[n.RaftID] = n.Address
	}
	s.nodesMu.Unlock()
}

// Nodes returns the cluster's members.
func (s *Service) Nodes() []Node {
	s.nodesMu.RLock()
	defer s.nodesMu.RUnlock()
	return s.nodes
}

// Close releases the connections used for forwarding.
func (s *Service) Close() { s.fwd.close() }

// BeginShutdown makes long polls return at once and new work fail with
// SHUTTING_DOWN.
func (s *Service) BeginShutdown() { s.stop() }

// untilShutdown returns a context that also ends when BeginShutdown is
// called, so that waits (long polls, Subscribe) end at once. It starts no
// goroutine.
func (s *Service) untilShutdown(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(ctx)
	unhook := context.AfterFunc(s.stopCtx, cancel)
	// The cluster removing this node ends waits too: its logs hear of no
	// more commits (the callers answer errRemoved).
	unhookRemoval := context.AfterFunc(s.registry.Removal(), cancel)
	// So does a peer refusing this node (the callers answer its error).
	unhookRefusal := context.AfterFunc(s.refusedCtx(), cancel)
	return ctx, func() {
		unhook()
		unhookRemoval()
		unhookRefusal()
		cancel()
	}
}

func (s *Service) leaderAddr(id uint64) string {
	s.nodesMu.RLock()
	defer s.nodesMu.RUnlock()
	return s.addrs[id]
}

// gone is, for err from t's group, topic.ErrNotFound when err is the
// group's stop and the group is no longer the one registered under t's
// name: the topic was removed, and may have been created again meanwhile,
// a new group with IDs from 1 (a reader resuming its old position on it
// would skip messages). nil otherwise.
func (s *Service) gone(t *topic.Topic, err error) error {
	if !errors.Is(err, replica.ErrStopped) {
		return nil
	}
	cur, gerr := s.registry.Get(t.Name)
	if gerr != nil {
		return gerr
	}
	if cur.Group != t.Group {
		return fmt.Errorf("%w: %q was removed", topic.ErrNotFound, t.Name)
	}
	return nil
}

// DefaultMaxWaiters is Config.MaxWaiters's default.
const DefaultMaxWaiters = 10_000

func (s *Service) lookup(ctx context.Context, name string) (*topic.Topic, error) {
	if err := topic.ValidateName(name); err != nil {
		return nil, err
	}
	if err := s.unavailable(); err != nil {
		return nil, err
	}
	if err := s.registry.CaughtUp(ctx); err != nil {
		return nil, err
	}
	if t, err := s.registry.Get(name); err == nil {
		return t, nil // the send path: no timer, no context
	}
	// Lookup bounds its wait for the metadata group: a node that cannot
	// tell whether the topic exists answers UNAVAILABLE, and clients ask
	// another node.
	t, err := s.registry.Lookup(ctx, name)
	if err != nil && ctx.Err() != nil {
		return nil, ctx.Err() // the caller gave up first
	}
	return t, err
}

// errRemoved answers topic calls on a node the cluster removed: its logs
// no longer follow the topics, and it would serve stale reads. A plain
// UNAVAILABLE: clients move on to another node.
var errRemoved = status.Error(codes.Unavailable, "this node was removed from the cluster: ask another node")

// SendMessages implements ForestBusService.SendMessages.
func (s *Service) SendMessages(ctx context.Context, req *forestbusv1.SendMessagesRequest) (*forestbusv1.SendMessagesResponse, error) {
	t, err := s.lookup(ctx, req.GetTopic())
	if err != nil {
		return nil, err
	}
	msgs := req.GetMessages()
	if len(msgs) == 0 {
		return nil, fmt.Errorf("%w: messages: the batch is empty", ErrInvalidArgument)
	}
	if req.GetProducerId() != 0 && req.GetSequence() == 0 {
		// Sequences start at 1: with 0 every batch after the first would
		// be taken for a retry of it, answered and not stored.
		return nil, fmt.Errorf("%w: sequence: 0 with a producer_id (a producer numbers its batches from 1)", ErrInvalidArgument)
	}
	if len(msgs) > fastcodec.MaxSendMessages {
		// The codec kept MaxSendMessages+1 of them: a count past the
		// limit, not the batch's.
		return nil, fmt.Errorf("%w: the batch has more than %d messages, the limit", ErrBatchTooLarge, fastcodec.MaxSendMessages)
	}
	total := 0
	for i, m := range msgs {
		if len(m) > s.cfg.MaxMessageBytes {
			return nil, fmt.Errorf("%w: message %d has %d bytes, the limit is %d", ErrMessageTooLarge, i, len(m), s.cfg.MaxMessageBytes)
		}
		total += commitlog.MessageCost(len(m))
	}
	// Each message counts with its framing (as the read limits count
	// them): a batch of many empty messages is no longer free of the
	// limit. One message alone is bounded by the message limit.
	if total > s.cfg.MaxBatchBytes && len(msgs) > 1 {
		return nil, fmt.Errorf("%w: the batch has %d bytes (%d messages, each counted with its framing), the limit is %d", ErrBatchTooLarge, total, len(msgs), s.cfg.MaxBatchBytes)
	}
	select {
	case <-s.stopping:
		return nil, ErrShuttingDown
	default:
	}
	res, err := t.Group.ProposeFrom(ctx, req.GetProducerId(), req.GetSequence(), msgs, req.GetWaitForCommit())
	if err != nil {
		if gerr := s.gone(t, err); gerr != nil {
			return nil, gerr
		}
		return nil, err
	}
	if int(res.Count) != len(msgs) {
		// The pair was stored before with another batch: answering its
		// IDs would tell the caller that this one's messages have them.
		return nil, fmt.Errorf("%w: producer %d's sequence %d holds a batch of %d messages (IDs %d to %d); this one has %d and was not stored",
			ErrSequenceReused, req.GetProducerId(), req.GetSequence(), res.Count, res.FirstID, res.FirstID+uint64(res.Count)-1, len(msgs))
	}
	return &forestbusv1.SendMessagesResponse{FirstId: int64(res.FirstID), Count: int32(res.Count)}, nil
}

// GetMessages implements ForestBusService.GetMessages. Its answer points
// into a pooled read buffer that the codec of ServerOptions gives back once
// it has encoded the answer: serve it only through a grpc.Server built with
// those options (an answer never encoded keeps its buffer for good).
func (s *Service) GetMessages(ctx context.Context, req *forestbusv1.GetMessagesRequest) (*forestbusv1.GetMessagesResponse, error) {
	t, err := s.lookup(ctx, req.GetTopic())
	if err != nil {
		return nil, err
	}
	if req.GetId() < 0 {
		return nil, fmt.Errorf("%w: id %d is negative", ErrInvalidArgument, req.GetId())
	}
	if req.GetQuantity() <= 0 {
		return nil, fmt.Errorf("%w: quantity %d: must be positive", ErrInvalidArgument, req.GetQuantity())
	}
	id := uint64(req.GetId())
	var wait time.Duration
	rctx := ctx
	if req.GetWait() {
		// Only a call at the tail waits, and counts: the commit point only
		// advances, so one with a message at id now answers at once.
		if max(id, 1) > t.Group.CommitID() {
			if s.waiters.Add(1) > int64(s.cfg.MaxWaiters) {
				s.waiters.Add(-1)
				return nil, status.Errorf(codes.ResourceExhausted, "too many waiting reads on this node (limit %d, fbnode -max-waiters): retry, or read without wait", s.cfg.MaxWaiters)
			}
			defer s.waiters.Add(-1)
		}
		wait = s.cfg.MaxWait
		var cancel context.CancelFunc
		rctx, cancel = s.untilShutdown(ctx)
		defer cancel()
	}
	var res replica.ReadResult
	sc, err := awaitScratch(rctx, t, max(id, 1), wait)
	if err == nil {
		res, err = t.Group.ReadBatchesInto(rctx, sc, id, int(req.GetQuantity()), s.cfg.ReadAheadBytes, s.cfg.MaxReadBytes, 0)
	}
	if gerr := s.gone(t, err); gerr != nil {
		err = gerr // removed (while we waited)
	} else if uerr := s.unavailable(); wait > 0 && len(res.Messages) == 0 && uerr != nil {
		// The cluster removed this node while the call waited, or a peer
		// refused it: newer commits are elsewhere.
		res, err = replica.ReadResult{}, uerr
	} else if wait > 0 && err != nil && ctx.Err() == nil && rctx.Err() != nil {
		// Shutdown ended the wait: an empty answer, as at the wait cap.
		res, err = replica.ReadResult{NextID: max(id, 1), CommitID: t.Group.CommitID()}, nil
	} else if wait > 0 && err == nil && len(res.Messages) == 0 && res.NextID <= max(id, 1) && t.Group.CutOff() {
		// The wait expired on a node without a leader for a while:
		// newer commits may be elsewhere; an empty answer would have the
		// client ask here again.
		err = replica.ErrNoLeader
	}
	return readResponse(sc, res, err)
}

// awaitScratch waits, for a read at id at the topic's tail, up to wait for
// a commit (Group.AwaitCommit), holding no read buffers meanwhile, and then
// returns a pooled Scratch for the read, which then need not wait (also
// with the wait's error: the caller puts it back). Only commit advances,
// so a read with a message at id now does not wait. A Scratch keeps
// buffers the size of the largest stored batches it read: long polls and
// caught-up Subscribe streams, which wait most of the time, held them all
// that time.
func awaitScratch(ctx context.Context, t *topic.Topic, id uint64, wait time.Duration) (*commitlog.Scratch, error) {
	var err error
	if wait > 0 && id > t.Group.CommitID() {
		err = t.Group.AwaitCommit(ctx, id, wait)
	}
	return scratchPool.Get().(*commitlog.Scratch), err
}

// scratchPool holds the read buffers of GetMessages answers between calls.
// An answer's messages point into its Scratch until gRPC has encoded the
// answer: readResponse lends the answer to the codec (fastcodec.Lend),
// which puts the Scratch back once the answer is encoded (see Lend for
// the stats handlers this rules out). Reading into
// fresh buffers instead cost a follower a fifth of its CPU under W3 in
// allocating, zeroing and collecting them (BENCHMARKS.md).
var scratchPool = sync.Pool{New: func() any { return new(commitlog.Scratch) }}

// readResponse builds the answer to a GetMessages call that read into sc.
func readResponse(sc *commitlog.Scratch, res replica.ReadResult, err error) (*forestbusv1.GetMessagesResponse, error) {
	if err != nil || len(res.Messages) == 0 {
		scratchPool.Put(sc)
	}
	if err != nil {
		return nil, err
	}
	resp := &forestbusv1.GetMessagesResponse{
		Messages: res.Messages,
		NextId:   int64(res.NextID),
		CommitId: int64(res.CommitID),
	}
	if len(res.Messages) > 0 {
		fastcodec.Lend(resp, func() { scratchPool.Put(sc) })
	}
	return resp, nil
}

// GetTopicDetails implements ForestBusService.GetTopicDetails.
func (s *Service) GetTopicDetails(ctx context.Context, req *forestbusv1.GetTopicDetailsRequest) (*forestbusv1.GetTopicDetailsResponse, error) {
	t, err := s.lookup(ctx, req.GetTopic())
	if err != nil {
		return nil, err
	}
	if t.Group.Failed() {
		// Its commit point is frozen: a client asking for the commit
		// point (GetTopicMaxAvailableIndex) should ask another node.
		return nil, replica.ErrStorageFailed
	}
	if t.Group.Joining() {
		// Its IDs are not the topic's yet (see Joining): a client asking
		// where the topic starts should ask another node.
		return nil, fmt.Errorf("%w: this node has not yet received topic %q's log from its leader", replica.ErrNoLeader, t.Name)
	}
	d := t.Group.Details()
	return &forestbusv1.GetTopicDetailsResponse{
		Topic:    t.Name,
		FirstId:  int64(d.FirstID),
		LastId:   int64(d.LastID),
		CommitId: int64(d.CommitID),
		Leader:   s.nodeName(d.Leader),
	}, nil
}

func (s *Service) nodeName(id uint64) string {
	for _, n := range s.Nodes() {
		if n.RaftID == id {
			return n.Name
		}
	}
	return ""
}

// GetClusterDetails implements ForestBusService.GetClusterDetails.
func (s *Service) GetClusterDetails(ctx context.Context, _ *forestbusv1.GetClusterDetailsRequest) (*forestbusv1.GetClusterDetailsResponse, error) {
	if err := s.unavailable(); err != nil {
		// Its member list stopped at its removal (or is not the
		// cluster's, on a directory its peers refuse): a client or fbctl
		// taking it for the cluster's would miss the nodes added since.
		return nil, err
	}
	resp := &forestbusv1.GetClusterDetailsResponse{ClusterId: s.cfg.ClusterID, NodeName: s.cfg.NodeName}
	for _, n := range s.Nodes() {
		resp.Nodes = append(resp.Nodes, &forestbusv1.Node{Name: n.Name, Address: n.Address, Id: n.RaftID, Learner: n.Learner})
	}
	return resp, nil
}
