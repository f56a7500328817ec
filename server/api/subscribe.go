package api

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	forestbusv1 "github.com/forestbus/forestbus/gen/forestbus/v1"
	"github.com/forestbus/forestbus/server/commitlog"
	"github.com/forestbus/forestbus/server/replica"
	"github.com/forestbus/forestbus/server/topic"
)

// Subscribe limits.
const (
	// DefaultSubscribeBatch is the number of messages per Subscribe
	// response when the request's max_batch is 0, and its cap. Larger
	// responses cost less per message (W3S, alternating fresh clusters:
	// 8.5 M msg/s at 4,000 against 6.6 M at 1,000); the node's read limit
	// (MaxReadBytes, 4 MiB less 1 KiB by default, framing counted) bounds
	// a response's size as well.
	DefaultSubscribeBatch = 4096
	// DefaultMaxSubscribers caps the Subscribe streams a node serves at
	// once (see SetMaxSubscribers).
	DefaultMaxSubscribers = 10000
	// minHeartbeat is the shortest heartbeat interval a client can ask for.
	minHeartbeat = 100 * time.Millisecond
)

// streamCap counts the streams of one kind that a Service serves and caps
// them.
type streamCap struct {
	active atomic.Int64 // streams being served
	max    atomic.Int64 // cap; 0 = the kind's default
}

// take counts a new stream: false (and the cap in force) when it would
// exceed the cap, and then it is not counted. done uncounts a stream taken.
func (c *streamCap) take(def int64) (ok bool, limit int64) {
	limit = c.max.Load()
	if limit <= 0 {
		limit = def
	}
	if c.active.Add(1) > limit {
		c.active.Add(-1)
		return false, limit
	}
	return true, limit
}

func (c *streamCap) done() { c.active.Add(-1) }

// SetMaxSubscribers caps the number of Subscribe streams the service
// serves at once; n <= 0 restores DefaultMaxSubscribers. A stream opened
// over the cap fails with RESOURCE_EXHAUSTED. Streams already open are
// not affected by a lower cap.
func (s *Service) SetMaxSubscribers(n int) { s.subscribers.max.Store(int64(max(n, 0))) }

// Subscribers reports the number of Subscribe streams being served.
func (s *Service) Subscribers() int { return int(s.subscribers.active.Load()) }

// errTooManySubscribers is answered over the stream cap. It is a plain
// status (no ErrorInfo reason): RESOURCE_EXHAUSTED, try another node or
// later.
func errTooManySubscribers(limit int64) error {
	return status.Errorf(codes.ResourceExhausted, "too many subscribe streams on this node (limit %d)", limit)
}

// Subscribe implements ForestBusService.Subscribe: committed messages from
// from_id, in order, then each new commit, until the client cancels, the
// node shuts down (SHUTTING_DOWN) or the topic is removed
// (TOPIC_NOT_FOUND).
//
// Backpressure is the stream's: Send blocks while the client's HTTP/2
// window is full, and the loop reads the next batch only after Send
// returned, so a stream holds at most one response beyond the windows
// (and, while it sends it, the read buffers it was read from).
func (s *Service) Subscribe(req *forestbusv1.SubscribeRequest, stream grpc.ServerStreamingServer[forestbusv1.SubscribeResponse]) error {
	t, err := s.lookup(stream.Context(), req.GetTopic())
	if err != nil {
		return err
	}
	if req.GetFromId() < 0 {
		return fmt.Errorf("%w: from_id %d is negative", ErrInvalidArgument, req.GetFromId())
	}
	if req.GetMaxBatch() < 0 {
		return fmt.Errorf("%w: max_batch %d is negative", ErrInvalidArgument, req.GetMaxBatch())
	}
	if req.GetHeartbeatMs() < 0 {
		return fmt.Errorf("%w: heartbeat_ms %d is negative", ErrInvalidArgument, req.GetHeartbeatMs())
	}
	batch := int(req.GetMaxBatch())
	if batch == 0 || batch > DefaultSubscribeBatch {
		batch = DefaultSubscribeBatch
	}
	wait := s.cfg.MaxWait
	if hb := time.Duration(req.GetHeartbeatMs()) * time.Millisecond; hb > 0 {
		wait = min(max(hb, minHeartbeat), wait)
	}

	select {
	case <-s.stopping:
		return ErrShuttingDown
	default:
	}
	ok, limit := s.subscribers.take(DefaultMaxSubscribers)
	if !ok {
		return errTooManySubscribers(limit)
	}
	defer s.subscribers.done()

	// Shutdown ends the stream's wait at once, as it ends long polls, and
	// so does this node's removal.
	ctx, cancel := s.untilShutdown(stream.Context())
	defer cancel()

	// The response headers go now, not with the first response: a stream
	// started at the tail may wait a heartbeat interval (up to the
	// long-poll cap) for it, and a client (grpcurl) would show nothing
	// meanwhile, as if the call had not started.
	if err := stream.SendHeader(nil); err != nil {
		return s.subscribeError(stream.Context(), t, err)
	}

	id := max(uint64(req.GetFromId()), 1)
	for {
		res, sc, err := s.subscribeRead(ctx, t, id, batch, wait)
		if err != nil {
			return s.subscribeError(stream.Context(), t, err)
		}
		// Send has encoded the response into gRPC's own buffers by the
		// time it returns, and no interceptor or stats handler of this
		// server keeps the message: its read buffers go back then, or
		// at once when nothing points into them.
		release := func() {
			if sc != nil {
				scratchPool.Put(sc)
				sc = nil
			}
		}
		if len(res.Messages) == 0 {
			release()
		}
		if len(res.Messages) == 0 && res.NextID > id {
			// Below the first retained ID: jump there. The next
			// response's first_id tells the client.
			id = res.NextID
			continue
		}
		if len(res.Messages) == 0 && t.Group.CutOff() {
			// A heartbeat from a node without a leader for a while: the
			// cluster may have commits it cannot have, and a heartbeat
			// would keep the client here. Send it elsewhere.
			return replica.ErrNoLeader
		}
		if err := s.unavailable(); err != nil {
			// The cluster removed this node, or a peer refuses it: its
			// groups hear of no more commits (and still know a leader, so
			// CutOff never says so).
			release()
			return err
		}
		// Messages, or a heartbeat (the wait cap passed at the tail).
		err = stream.Send(&forestbusv1.SubscribeResponse{
			Messages: res.Messages,
			FirstId:  int64(id),
			CommitId: int64(res.CommitID),
		})
		release()
		if err != nil {
			// The stream is broken: the client went away.
			if cerr := stream.Context().Err(); cerr != nil {
				return cerr
			}
			if _, ok := status.FromError(err); ok {
				return err
			}
			return status.Error(codes.Unavailable, err.Error())
		}
		if len(res.Messages) > 0 {
			id = res.NextID
		}
		select {
		case <-s.stopping:
			return ErrShuttingDown
		default:
		}
	}
}

// subscribeRead reads a stream's next response from id (see
// awaitScratch). Its messages are in the returned Scratch, which goes back
// to scratchPool once the response is sent; on error it is back already.
func (s *Service) subscribeRead(ctx context.Context, t *topic.Topic, id uint64, batch int, wait time.Duration) (replica.ReadResult, *commitlog.Scratch, error) {
	var res replica.ReadResult
	sc, err := awaitScratch(ctx, t, id, wait)
	if err == nil {
		res, err = t.Group.ReadInto(ctx, sc, id, batch, s.cfg.MaxReadBytes, 0)
	}
	if err != nil {
		scratchPool.Put(sc)
		return res, nil, err
	}
	return res, sc, nil
}

// subscribeError maps a Read error of a Subscribe stream whose client
// context is sctx.
func (s *Service) subscribeError(sctx context.Context, t *topic.Topic, err error) error {
	if gerr := s.gone(t, err); gerr != nil {
		return gerr // the topic was removed
	}
	if sctx.Err() != nil {
		return sctx.Err() // the client cancelled
	}
	select {
	case <-s.stopping:
		return ErrShuttingDown
	default:
	}
	if uerr := s.unavailable(); uerr != nil {
		return uerr // the removal or a refusal ended the wait (untilShutdown)
	}
	return err
}
