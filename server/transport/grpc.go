package transport

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	peerv1 "github.com/forestbus/forestbus/gen/forestbus/peer/v1"
)

// acceptedKey is the response header with which a node accepts a stream's
// handshake; its value is the node's ID.
const acceptedKey = "forestbus-peer-accepted"

// GRPC is the gRPC transport: one PeerService stream per peer, and the
// PeerService server for inbound streams. Its methods are safe for
// concurrent use.
type GRPC struct {
	cfg Config
	log *slog.Logger

	mu      sync.RWMutex
	peers   map[uint64]*peer
	stopped bool
	stopc   chan struct{}  // closed by Stop: inbound streams end
	senders sync.WaitGroup // peer goroutines
	inbound sync.WaitGroup // inbound deliveries in progress (Handler.Step)

	refusalMu sync.Mutex // serializes OnRefused reports (peer.run)

	framesSent, msgsSent, msgsDropped atomic.Uint64
	framesRecv, msgsRecv, connects    atomic.Uint64
	refused                           atomic.Uint64
}

// New returns a transport with no peers. It panics if cfg.Handler is nil
// or cfg.NodeID is zero.
func New(cfg Config) *GRPC {
	if cfg.Handler == nil {
		panic("transport: Config.Handler is nil")
	}
	if cfg.NodeID == 0 {
		panic("transport: Config.NodeID is zero")
	}
	cfg.withDefaults()
	return &GRPC{
		cfg:   cfg,
		log:   cfg.Logger.With("node", cfg.NodeID),
		peers: make(map[uint64]*peer),
		stopc: make(chan struct{}),
	}
}

// Register registers PeerService on s. Pass ServerOptions to
// grpc.NewServer as well.
func (t *GRPC) Register(s grpc.ServiceRegistrar) {
	peerv1.RegisterPeerServiceServer(s, peerServer{t: t})
}

// AddPeer adds peer id at addr (host:port) and starts its sender. It is
// idempotent; a different addr replaces the peer's connection (messages
// queued for the old address are reported, as after a broken stream).
func (t *GRPC) AddPeer(id uint64, addr string) {
	if id == 0 || id == t.cfg.NodeID {
		return
	}
	t.mu.Lock()
	if t.stopped {
		t.mu.Unlock()
		return
	}
	old := t.peers[id]
	if old != nil && old.addr == addr {
		t.mu.Unlock()
		return
	}
	if old != nil {
		old.retired.Store(true) // before its successor reports (OnRefused)
		// Stop waits for old's reports below too (it cannot Wait before
		// this Add: it takes t.mu first): the Handler is not called after
		// Stop returns.
		t.senders.Add(1)
	}
	p, err := newPeer(t, id, addr)
	if err != nil {
		t.log.Error("transport: cannot create client", "peer", id, "addr", addr, "err", err)
		delete(t.peers, id)
	} else {
		t.peers[id] = p
		t.senders.Add(1)
		go p.run()
	}
	t.mu.Unlock()
	if old != nil {
		// What the old peer had not sent is reported, not dropped
		// silently: raft waits for a snapshot's report, and a leader
		// whose follower waits for one replicates nothing more to it.
		old.replaced.Store(true)
		old.stop()
		old.fail(old.take(nil))
		t.senders.Done()
	}
}

// RemovePeer stops sending to peer id and closes its connection; queued
// messages are dropped without reports. Later messages to it are reported
// unreachable.
func (t *GRPC) RemovePeer(id uint64) {
	t.mu.Lock()
	p := t.peers[id]
	delete(t.peers, id)
	if p != nil {
		p.retired.Store(true)
	}
	t.mu.Unlock()
	if p != nil {
		p.stop()
	}
}

// Send queues msgs of the named group for their destinations and returns
// without blocking. The messages are marshalled later, by the peer's
// sending goroutine: the caller must not modify them (or their entries)
// after Send. A message that cannot be queued (unknown peer,
// full queue) is dropped and reported to the Handler before Send returns:
// ReportUnreachable, and ReportSnapshot(failed=true) for MsgSnap. After
// Stop, Send drops messages silently.
func (t *GRPC) Send(group string, msgs []*raftpb.Message) {
	var drops []drop
	t.mu.RLock()
	if t.stopped {
		t.mu.RUnlock()
		return
	}
	for _, m := range msgs {
		to := m.GetTo()
		snap := isSnap(m)
		p := t.peers[to]
		if p == nil {
			drops = append(drops, drop{to: to, snap: snap})
			continue
		}
		if !p.enqueue(outMsg{group: group, msg: m, size: proto.Size(m), snap: snap, urgent: !isBulk(m)}) {
			drops = append(drops, drop{to: to, snap: snap})
		}
	}
	t.mu.RUnlock()
	if len(drops) > 0 {
		t.msgsDropped.Add(uint64(len(drops)))
		report(t.cfg.Handler, group, drops)
	}
}

// Stop closes every outbound stream and connection, waits for the sender
// goroutines and for inbound deliveries in progress, and makes inbound
// streams fail with Unavailable. After Stop returns the Handler is not
// called again. The grpc.Server is the caller's to stop.
func (t *GRPC) Stop() {
	t.mu.Lock()
	if t.stopped {
		t.mu.Unlock()
		t.senders.Wait()
		t.inbound.Wait()
		return
	}
	t.stopped = true
	close(t.stopc)
	peers := t.peers
	t.peers = make(map[uint64]*peer)
	t.mu.Unlock()
	for _, p := range peers {
		p.cancel()
	}
	for _, p := range peers {
		p.stop()
	}
	t.senders.Wait()
	t.inbound.Wait()
}

// Stats returns the transport's counters.
func (t *GRPC) Stats() Stats {
	return Stats{
		FramesSent:       t.framesSent.Load(),
		MessagesSent:     t.msgsSent.Load(),
		MessagesDropped:  t.msgsDropped.Load(),
		FramesReceived:   t.framesRecv.Load(),
		MessagesReceived: t.msgsRecv.Load(),
		Connects:         t.connects.Load(),
		Refused:          t.refused.Load(),
	}
}

// enter registers an inbound delivery; false after Stop.
func (t *GRPC) enter() bool {
	t.mu.RLock()
	defer t.mu.RUnlock()
	if t.stopped {
		return false
	}
	t.inbound.Add(1)
	return true
}

// peerServer serves PeerService for a GRPC transport.
type peerServer struct {
	peerv1.UnimplementedPeerServiceServer
	t *GRPC
}

// Stream implements PeerService.Stream.
func (s peerServer) Stream(stream peerv1.PeerService_StreamServer) error {
	t := s.t
	// The handshake must come within handshakeTimeout, as the caller
	// expects the answer: a stream that sends nothing would hold its
	// goroutine and HTTP/2 stream for the connection's life. Returning
	// ends the stream, and the pending Recv with it.
	type first struct {
		req *peerv1.StreamRequest
		err error
	}
	got := make(chan first, 1)
	go func() {
		req, err := stream.Recv()
		got <- first{req, err}
	}()
	var req *peerv1.StreamRequest
	timer := time.NewTimer(handshakeTimeout)
	select {
	case f := <-got:
		timer.Stop()
		if f.err != nil {
			return f.err
		}
		req = f.req
	case <-timer.C:
		return status.Error(codes.DeadlineExceeded, "transport: no handshake")
	}
	if req.GetClusterId() != t.cfg.ClusterID {
		return status.Errorf(codes.FailedPrecondition, "transport: node %d belongs to cluster %q, the stream names %q", t.cfg.NodeID, t.cfg.ClusterID, req.GetClusterId())
	}
	if req.GetTo() != t.cfg.NodeID {
		return status.Errorf(codes.FailedPrecondition, "transport: this is node %d, the stream is for node %d", t.cfg.NodeID, req.GetTo())
	}
	from := req.GetFrom()
	if from == 0 {
		return status.Error(codes.InvalidArgument, "transport: handshake without sender node ID")
	}
	accepted := metadata.Pairs(acceptedKey, "1")
	if check := t.cfg.CheckPeer; check != nil {
		var inc uint64
		if md, _ := metadata.FromIncomingContext(stream.Context()); len(md.Get(incarnationKey)) > 0 {
			inc, _ = strconv.ParseUint(md.Get(incarnationKey)[0], 16, 64)
		}
		switch err := check(from, inc); {
		case errors.Is(err, ErrPeerRemoved):
			accepted.Set(removedKey, "1")
		case err != nil:
			t.refused.Add(1)
			if errors.Is(err, ErrRefuseRemoved) {
				stream.SetTrailer(metadata.Pairs(removedKey, "1"))
			}
			return status.Errorf(codes.PermissionDenied, "transport: node %d refuses the stream: %v", t.cfg.NodeID, err)
		}
	}
	select {
	case <-t.stopc:
		return status.Error(codes.Unavailable, "transport: node is stopping")
	default:
	}
	if err := stream.SendHeader(accepted); err != nil {
		return err
	}
	t.mu.RLock()
	if p := t.peers[from]; p != nil {
		p.peerUp()
	}
	t.mu.RUnlock()
	// Frames are received, and stepped, on a goroutine of their own, so
	// that Stop can end the stream: the handler returns, gRPC cancels the
	// stream and the pending Recv fails, instead of waiting for the peer to
	// close it. Stepping a frame where it was received, not on the
	// handler's goroutine, saves a goroutine switch per frame on every
	// replication round trip; deliver checks Stop itself.
	errc := make(chan error, 1)
	go func() {
		// The server's recovery interceptor does not see this goroutine:
		// a panic decoding or stepping a frame fails the stream, not the
		// node.
		defer func() {
			if r := recover(); r != nil {
				t.log.Error("transport: panic receiving from a peer", "peer", from, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
				errc <- status.Errorf(codes.Internal, "transport: internal error: %v", r)
			}
		}()
		errc <- t.receive(stream, from, req)
	}()
	select {
	case err := <-errc:
		if err == io.EOF {
			return stream.SendAndClose(&peerv1.StreamResponse{})
		}
		return err
	case <-t.stopc:
		return status.Error(codes.Unavailable, "transport: node is stopping")
	}
}

// receive delivers first, then every frame the stream brings, until Recv
// fails (io.EOF when the peer closed the stream) or a frame is refused.
func (t *GRPC) receive(stream peerv1.PeerService_StreamServer, from uint64, first *peerv1.StreamRequest) error {
	req := first
	for {
		if err := t.deliver(from, req); err != nil {
			return err
		}
		var err error
		if req, err = stream.Recv(); err != nil {
			return err
		}
		if (req.GetClusterId() != "" && req.GetClusterId() != t.cfg.ClusterID) ||
			(req.GetTo() != 0 && req.GetTo() != t.cfg.NodeID) ||
			(req.GetFrom() != 0 && req.GetFrom() != from) {
			return status.Error(codes.FailedPrecondition, "transport: frame header differs from the handshake")
		}
	}
}

// deliver unmarshals a frame's messages and steps them into the Handler.
func (t *GRPC) deliver(from uint64, req *peerv1.StreamRequest) error {
	rms := req.GetMessages()
	if len(rms) == 0 {
		return nil
	}
	msgs := make([]raftpb.Message, len(rms))
	for i, rm := range rms {
		m := &msgs[i]
		if err := decodeMessage(rm.GetMessage(), m); err != nil {
			return status.Errorf(codes.InvalidArgument, "transport: message %d of group %q: %v", i, rm.GetGroup(), err)
		}
		if m.GetTo() != t.cfg.NodeID || m.GetFrom() != from {
			return status.Errorf(codes.InvalidArgument, "transport: message %d of group %q is from %d to %d on a stream from %d to %d", i, rm.GetGroup(), m.GetFrom(), m.GetTo(), from, t.cfg.NodeID)
		}
	}
	if !t.enter() {
		return status.Error(codes.Unavailable, "transport: node is stopping")
	}
	defer t.inbound.Done()
	// Counted first, so whoever sees a message in the Handler also sees
	// it in Stats.
	t.framesRecv.Add(1)
	t.msgsRecv.Add(uint64(len(rms)))
	for i, rm := range rms {
		t.cfg.Handler.Step(rm.GetGroup(), &msgs[i])
	}
	return nil
}
