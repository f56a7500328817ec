package transport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	peerv1 "github.com/forestbus/forestbus/gen/forestbus/peer/v1"
	"github.com/forestbus/forestbus/internal/fastcodec"
	"github.com/forestbus/forestbus/internal/grpcflow"
)

// peer is the sending side towards one node: a bounded queue filled by
// Send and drained by the peer's goroutine (run) into one stream.
type peer struct {
	t      *GRPC
	id     uint64
	addr   string
	conn   *grpc.ClientConn
	client peerv1.PeerServiceClient

	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}
	// replaced: stopped for a peer of the same ID at a new address (AddPeer),
	// not removed; what it had not sent is reported, as after a failure.
	replaced atomic.Bool
	// retired: replaced or removed (set under the transport's lock before
	// a successor starts): its OnRefused reports are dropped.
	retired atomic.Bool

	mu      sync.Mutex
	pending []outMsg // bulk messages (isBulk), in order
	// urgent: the other messages, in order. They go out ahead of the bulk
	// ones queued or taken before them (at the next frame), so that a
	// heartbeat or a vote does not wait behind megabytes of appends of
	// busy groups (etcd's rafthttp sends MsgApp on a stream of its own
	// for this). Raft takes them out of order: a heartbeat's commit index
	// is capped at what the follower is known to hold, and a MsgSnap and
	// the MsgApps after it stay in order.
	urgent []outMsg
	signal chan struct{} // capacity 1: pending or urgent may be non-empty
	up     chan struct{} // capacity 1: the peer opened a stream to this node (peerUp)
}

func newPeer(t *GRPC, id uint64, addr string) (*peer, error) {
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(t.cfg.Credentials),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{
			Time:                clientKeepaliveTime,
			Timeout:             clientKeepaliveTimeout,
			PermitWithoutStream: true,
		}),
		// Reconnect on the transport's schedule rather than gRPC's default
		// (1 s growing to 120 s), so a restarted peer is found quickly.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff: backoff.Config{
				BaseDelay:  backoffMin,
				Multiplier: 2,
				Jitter:     0.2,
				MaxDelay:   backoffMax,
			},
			MinConnectTimeout: handshakeTimeout,
		}),
	}
	opts = append(opts, grpcflow.DialOptions()...)
	opts = append(opts, t.cfg.DialOptions...)
	// Last, so that no caller option replaces it: frames (wireFrame) are
	// marshalled by fastcodec, each raft message straight into the frame.
	opts = append(opts, grpc.WithDefaultCallOptions(grpc.ForceCodecV2(fastcodec.Codec{})))
	conn, err := grpc.NewClient("passthrough:///"+addr, opts...)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &peer{
		t:      t,
		id:     id,
		addr:   addr,
		conn:   conn,
		client: peerv1.NewPeerServiceClient(conn),
		ctx:    ctx,
		cancel: cancel,
		done:   make(chan struct{}),
		signal: make(chan struct{}, 1),
		up:     make(chan struct{}, 1),
	}, nil
}

// peerUp tells the sender that the peer opened a stream to this node: a
// sender waiting out its backoff reconnects at once. A peer that restarted
// is otherwise found only at the next attempt, up to backoffMax later, and
// what is sent to it meanwhile is dropped (a restarted node's first
// heartbeats).
func (p *peer) peerUp() {
	select {
	case p.up <- struct{}{}:
	default:
	}
}

// enqueue appends m to the queue; false when the queue is full.
func (p *peer) enqueue(m outMsg) bool {
	p.mu.Lock()
	if len(p.pending)+len(p.urgent) >= p.t.cfg.QueueSize {
		p.mu.Unlock()
		return false
	}
	if m.urgent {
		p.urgent = append(p.urgent, m)
	} else {
		p.pending = append(p.pending, m)
	}
	p.mu.Unlock()
	select {
	case p.signal <- struct{}{}:
	default:
	}
	return true
}

// take returns what was queued, the urgent messages first, and empties
// the queue; buf (emptied) is reused. Most often one of the two is empty
// and the other is swapped with buf, not copied.
func (p *peer) take(buf []outMsg) []outMsg {
	clear(buf)
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []outMsg
	switch {
	case len(p.urgent) == 0:
		out, p.pending = p.pending, buf[:0]
	case len(p.pending) == 0:
		out, p.urgent = p.urgent, buf[:0]
	default:
		out = append(append(buf[:0], p.urgent...), p.pending...)
		clear(p.urgent)
		clear(p.pending)
		p.urgent, p.pending = p.urgent[:0], p.pending[:0]
	}
	return out
}

// takeUrgent returns the urgent messages queued (nil: none) and empties
// their queue: those queued while pump sends a batch of several frames.
func (p *peer) takeUrgent() []outMsg {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.urgent) == 0 {
		return nil
	}
	out := slices.Clone(p.urgent)
	clear(p.urgent)
	p.urgent = p.urgent[:0]
	return out
}

// stop cancels the sender, waits for it and closes the connection.
func (p *peer) stop() {
	p.cancel()
	<-p.done
	p.conn.Close()
}

// run is the peer's goroutine: connect, pump frames until the stream
// fails, back off, repeat, until the peer is stopped.
func (p *peer) run() {
	defer p.t.senders.Done()
	defer close(p.done)
	log := p.t.log.With("peer", p.id, "addr", p.addr)
	var (
		buf     []outMsg
		delay   = backoffMin
		healthy = true // log the first failure after a success at Warn
		back    bool   // the peer opened a stream to this node (peerUp)

		refusedLogged time.Time // when a refusal was last logged
		// refused: whether the peer refused the last handshake, for
		// OnRefused; unknown (nil) at first, so that the first outcome is
		// reported also when this peer replaced one (a new address).
		refused *bool
	)
	setRefused := func(r bool) {
		if refused == nil || *refused != r {
			refused = &r
			if f := p.t.cfg.OnRefused; f != nil {
				// Only while this is the ID's peer: a late report of a
				// peer replaced (a new address) must not undo its
				// successor's. retired is set before the successor
				// starts, and reports are serialized, so one made
				// after the successor's sees it.
				p.t.refusalMu.Lock()
				if !p.retired.Load() {
					f(p.id, r)
				}
				p.t.refusalMu.Unlock()
			}
		}
	}
	for {
		stream, cancel, err := p.connect(back)
		back = false
		if err == nil {
			p.t.connects.Add(1)
			if !healthy {
				log.Info("transport: peer reachable")
			}
			healthy = true
			delay = backoffMin
			setRefused(false)
			buf, err = p.pump(stream, buf)
			cancel()
			// A stream the peer opened while this one was up says
			// nothing about the failure: waiting for the connection on
			// its word could hold messages to a dead peer for the whole
			// handshakeTimeout. The first retry comes at backoffMin anyway.
			select {
			case <-p.up:
			default:
			}
		}
		if p.ctx.Err() != nil {
			return
		}
		switch {
		case status.Code(err) == codes.PermissionDenied && time.Since(refusedLogged) >= refusedLogEvery:
			// The peer refused this node (its CheckPeer: a data
			// directory it does not know under this raft ID): nothing
			// heals that but the operator.
			log.Error("transport: peer refuses this node", "err", err)
			refusedLogged, healthy = time.Now(), false
		case healthy:
			log.Warn("transport: peer unreachable", "err", err)
			healthy = false
		default:
			log.Debug("transport: peer still unreachable", "err", err)
		}
		// Messages queued while the peer is unreachable would arrive late
		// or never: drop them now and tell Raft, until the next attempt.
		buf = p.dropPending(buf)
		if status.Code(err) == codes.PermissionDenied {
			// Refused: only the operator heals that, and each attempt
			// costs both sides a call (and a line in the peer's call
			// log): try now and then.
			delay = refusedRetry
			setRefused(true)
		}
		wait := delay/2 + rand.N(delay/2+1) // jitter in [delay/2, delay]
		delay = min(2*delay, backoffMax)
		timer := time.NewTimer(wait)
	backoff:
		for {
			select {
			case <-p.ctx.Done():
				timer.Stop()
				return
			case <-p.signal:
				buf = p.dropPending(buf)
			case <-p.up:
				timer.Stop()
				delay, back = backoffMin, true
				p.conn.ResetConnectBackoff()
				break backoff
			case <-timer.C:
				break backoff
			}
		}
	}
}

// refusedLogEvery spaces the errors a peer that keeps refusing this
// node's streams gets logged with; refusedRetry spaces the attempts (a
// variable for tests).
const refusedLogEvery = time.Minute

var refusedRetry = 20 * time.Second

// dropPending drops and reports everything queued.
func (p *peer) dropPending(buf []outMsg) []outMsg {
	batch := p.take(buf)
	p.fail(batch)
	return batch
}

// fail reports msgs as dropped.
func (p *peer) fail(msgs []outMsg) {
	if len(msgs) == 0 {
		return
	}
	p.t.msgsDropped.Add(uint64(len(msgs)))
	reportBatch(p.t.cfg.Handler, p.id, msgs)
}

// connect opens a stream and completes the handshake, within
// handshakeTimeout. With waitReady it waits for the connection to become
// ready (the peer said it is up), within peerUpWait, instead of failing at
// once while the connection is down. On success the caller must call the
// returned cancel when done with the stream.
func (p *peer) connect(waitReady bool) (peerv1.PeerService_StreamClient, context.CancelFunc, error) {
	ctx, cancel := context.WithCancel(p.ctx)
	limit := handshakeTimeout
	if waitReady {
		limit = min(limit, peerUpWait)
	}
	timer := time.AfterFunc(limit, cancel)
	if inc := p.t.cfg.Incarnation; inc != 0 {
		ctx = metadata.AppendToOutgoingContext(ctx, incarnationKey, strconv.FormatUint(inc, 16))
	}
	stream, err := p.client.Stream(ctx, grpc.WaitForReady(waitReady))
	if err != nil {
		timer.Stop()
		cancel()
		return nil, nil, err
	}
	hello := &peerv1.StreamRequest{ClusterId: p.t.cfg.ClusterID, From: p.t.cfg.NodeID, To: p.id}
	if err := stream.Send(hello); err != nil {
		timer.Stop()
		err = p.streamError(stream, err)
		cancel()
		return nil, nil, err
	}
	md, _ := stream.Header() // on failure md is nil and RecvMsg has the status
	expired := !timer.Stop()
	if md == nil || len(md.Get(acceptedKey)) == 0 {
		var err error
		switch {
		case expired:
			err = errors.New("transport: handshake timed out")
		case md == nil:
			err = p.streamError(stream, io.EOF)
		default:
			err = errors.New("transport: peer did not accept the stream")
		}
		cancel()
		return nil, nil, err
	}
	p.toldRemoved(md)
	return stream, cancel, nil
}

// toldRemoved calls OnRemoved when a handshake's answer (md: its header,
// or a refusal's trailer) says that the cluster removed this node.
func (p *peer) toldRemoved(md metadata.MD) {
	if len(md.Get(removedKey)) > 0 && p.t.cfg.OnRemoved != nil {
		p.t.cfg.OnRemoved(p.id)
	}
}

// streamError turns a failed Send into the stream's status: Send returns
// io.EOF when the server ended the call, whose status RecvMsg returns. Its
// trailer, readable then, may say that the cluster removed this node (a
// refusal wrapping ErrRefuseRemoved).
func (p *peer) streamError(stream peerv1.PeerService_StreamClient, err error) error {
	if err != io.EOF {
		return err
	}
	rerr := stream.RecvMsg(new(peerv1.StreamResponse))
	p.toldRemoved(stream.Trailer())
	if rerr != nil {
		return rerr
	}
	return errors.New("transport: peer closed the stream")
}

// pump sends queued messages as frames until the stream fails or the peer
// is stopped. It returns the queue buffer for reuse.
func (p *peer) pump(stream peerv1.PeerService_StreamClient, buf []outMsg) ([]outMsg, error) {
	for {
		select {
		case <-p.ctx.Done():
			return buf, p.ctx.Err()
		case <-p.signal:
		}
		batch := p.take(buf)
		for i := 0; i < len(batch); {
			if i > 0 {
				// Heartbeats and votes queued since the batch was taken go
				// in the next frame, ahead of the rest.
				if u := p.takeUrgent(); u != nil {
					batch = slices.Insert(batch, i, u...)
				}
			}
			j, frame := buildFrame(batch, i)
			if err := stream.SendMsg(frame); err != nil {
				if p.ctx.Err() == nil || p.replaced.Load() {
					p.fail(batch[i:])
				}
				return batch, fmt.Errorf("transport: send: %w", p.streamError(stream, err))
			}
			p.t.framesSent.Add(1)
			p.t.msgsSent.Add(uint64(j - i))
			for _, m := range batch[i:j] {
				if m.snap {
					p.t.cfg.Handler.ReportSnapshot(m.group, p.id, false)
				}
			}
			i = j
		}
		buf = batch
	}
}

// buildFrame packs batch[i:j] into one frame of at most maxFrameBytes
// (at least one message) and returns j. The frame has its own copy of the
// slice: gRPC may read a message after SendMsg returns (stats handlers),
// and batch is reused.
func buildFrame(batch []outMsg, i int) (int, *wireFrame) {
	j, size := i, 0
	for ; j < len(batch); j++ {
		n := batch[j].size + len(batch[j].group) + 16 // tags and lengths
		if j > i && size+n > maxFrameBytes {
			break
		}
		size += n
	}
	return j, &wireFrame{msgs: slices.Clone(batch[i:j])}
}

// wireFrame is a StreamRequest frame carrying msgs, in the wire format of
// peerv1.StreamRequest (messages = 4, each a RaftMessage with group = 1 and
// message = 2). fastcodec marshals it with AppendWire: each raft message is
// marshalled once, straight into the frame's buffer, instead of into a
// []byte that the frame's marshalling then copies again.
type wireFrame struct{ msgs []outMsg }

// Field numbers of peerv1.StreamRequest and peerv1.RaftMessage.
const (
	frameMessagesField = 4
	raftGroupField     = 1
	raftMessageField   = 2
)

// innerSize is the size of m's RaftMessage; like proto3, it leaves out
// empty fields.
func (m *outMsg) innerSize() int {
	n := 0
	if len(m.group) > 0 {
		n += protowire.SizeTag(raftGroupField) + protowire.SizeBytes(len(m.group))
	}
	if m.size > 0 {
		n += protowire.SizeTag(raftMessageField) + protowire.SizeBytes(m.size)
	}
	return n
}

// WireSize is the frame's encoded size.
func (f *wireFrame) WireSize() int {
	n := 0
	for i := range f.msgs {
		n += protowire.SizeTag(frameMessagesField) + protowire.SizeBytes(f.msgs[i].innerSize())
	}
	return n
}

// AppendWire appends the frame's encoding to b.
func (f *wireFrame) AppendWire(b []byte) ([]byte, error) {
	for i := range f.msgs {
		m := &f.msgs[i]
		b = protowire.AppendTag(b, frameMessagesField, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(m.innerSize()))
		if len(m.group) > 0 {
			b = protowire.AppendTag(b, raftGroupField, protowire.BytesType)
			b = protowire.AppendString(b, m.group)
		}
		if m.size == 0 {
			continue
		}
		b = protowire.AppendTag(b, raftMessageField, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(m.size))
		start := len(b)
		var err error
		// The sizes cached by proto.Size in Send stand: raft does not
		// change a message it has handed out.
		b, err = proto.MarshalOptions{UseCachedSize: true}.MarshalAppend(b, m.msg)
		if err != nil {
			return b, fmt.Errorf("transport: marshal message for group %q: %w", m.group, err)
		}
		if len(b)-start != m.size {
			return b, fmt.Errorf("transport: message for group %q changed size after it was queued (%d, now %d bytes)", m.group, m.size, len(b)-start)
		}
	}
	return b, nil
}
