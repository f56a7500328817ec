package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	forestbusv1 "github.com/forestbus/forestbus/gen/forestbus/v1"
	"github.com/forestbus/forestbus/internal/fastcodec"
)

// Subscribe defaults.
const (
	// DefaultSubscribeHeartbeat is the heartbeat interval Subscribe asks
	// nodes for (see WithSubscribeHeartbeat).
	DefaultSubscribeHeartbeat = 5 * time.Second
	// subscribeStaleBeats is how many heartbeat intervals a stream may stay
	// silent, while Subscribe waits for it, before it is taken for dead.
	subscribeStaleBeats = 3
)

// SubscribeOption configures one Subscribe call.
type SubscribeOption func(*subscribeConfig)

type subscribeConfig struct {
	batch     int           // max messages per response; 0 = the node's default (4096)
	heartbeat time.Duration // <= 0: no stale-stream detection
	borrow    bool          // fn's msg is valid only while fn runs
}

// WithBorrowedMessages lets Subscribe hand fn messages that are valid only
// until fn returns: fn must copy what it keeps. Subscribe then reads each
// response where gRPC received it (buffers of up to 16 KiB, one per HTTP/2
// frame; a message that straddles two is copied) and gives those buffers
// back to the process's buffer pool once fn has seen the response's
// messages, instead of copying every response into a new buffer that fn's
// messages keep alive. A kept msg would later show other data, any
// connection's. For a subscriber that counts, forwards or decodes its
// messages into its own structures this saves a copy and an allocation
// the size of each response, most of its garbage collections, and, for
// a fresh process, faulting in new memory: ×1.34–1.87 the messages a
// second in the W3S benchmark runs of BENCHMARKS.md. Messages of 16 KiB
// or more always straddle and are copied one by one.
func WithBorrowedMessages() SubscribeOption {
	return func(c *subscribeConfig) { c.borrow = true }
}

// WithSubscribeBatch sets the most messages a node sends per response
// (1 to 4096; the node's default, 4096, when n <= 0). Smaller batches lower
// the latency of the first messages of a backlog; larger ones raise
// throughput.
func WithSubscribeBatch(n int) SubscribeOption {
	return func(c *subscribeConfig) { c.batch = max(n, 0) }
}

// WithSubscribeHeartbeat sets the interval at which a node sends an empty
// response while no message commits (default DefaultSubscribeHeartbeat;
// nodes cap it at their long-poll limit, 30 s by default). A stream that
// stays silent for three intervals while Subscribe waits for it is taken for
// dead (a node or network that stopped answering without closing the
// connection) and Subscribe resumes on another node. The time fn runs is
// not counted. d <= 0 turns the detection off: the node then sends
// heartbeats at its long-poll limit and Subscribe relies on the connection
// failing.
//
// Set a longer interval on links so slow that a 4 MiB response takes more
// than three intervals to arrive.
//
// Nodes send heartbeats no more often than every 100 ms
// (MinSubscribeHeartbeat): a shorter d counts as that, or streams would be
// taken for dead while healthy and idle.
func WithSubscribeHeartbeat(d time.Duration) SubscribeOption {
	return func(c *subscribeConfig) {
		if d > 0 {
			d = max(d, MinSubscribeHeartbeat)
		}
		c.heartbeat = d
	}
}

// MinSubscribeHeartbeat is the shortest heartbeat interval nodes keep.
const MinSubscribeHeartbeat = 100 * time.Millisecond

// staleAfter is how long a stream with heartbeat interval hb may stay
// silent: subscribeStaleBeats intervals, or for ever when that many would
// overflow (a caller's "never").
func staleAfter(hb time.Duration) time.Duration {
	if hb > math.MaxInt64/subscribeStaleBeats {
		return math.MaxInt64
	}
	return subscribeStaleBeats * hb
}

// errStale marks a stream that stayed silent past its heartbeats.
var errStale = errors.New("forestbus: subscribe stream silent past its heartbeats")

// fnError carries the error of the caller's function out of an attempt.
type fnError struct{ err error }

func (e *fnError) Error() string { return e.err.Error() }

// Subscribe calls fn with each committed message of topic from ID fromID
// (0 reads as 1) on, in ID order and once each, then with every message
// committed later, until ctx ends, fn returns an error, or a node gives an
// answer no other node would change.
//
// Messages come in a stream from one node (see the Subscribe RPC), which
// sends as fast as fn consumes them: a slow fn slows the node's stream by
// gRPC flow control, nothing piles up in memory. fn runs on the calling
// goroutine, one message at a time, and may keep msg (unless
// WithBorrowedMessages). (Responses are read in place, without a decoded
// message per response: see WithDialOptions for what that means to codecs
// and interceptors.)
//
// Any node can serve a subscription from its own log. Subscribe starts with
// the last node that answered a read and puts the topic's leader, when the
// Client knows it (from sends), last, so that reads go to followers. When
// the stream fails (the node stops, shuts down, the connection breaks or
// the stream falls silent, see WithSubscribeHeartbeat) Subscribe opens a new
// one on the next node from the ID after the last message fn was given, so
// fn sees no message twice and no gap. After a pass over every node without
// a message, it waits (50 ms doubling to 1 s) before the next pass. It never
// gives up on its own: there is no retry window, only ctx.
//
// If fromID is below the topic's first retained ID, the first message fn
// gets is the first retained one. Messages that retention deletes before
// the subscription reaches them are skipped in the same way.
//
// Subscribe returns ctx.Err() when ctx ends, fn's error as it is when fn
// returns one (the message fn failed on counts as not delivered: resume
// from its ID), and otherwise an error matching ErrTopicNotFound (also when
// the topic is removed while subscribed), ErrInvalidArgument,
// ErrClusterIdMismatch, or ErrNoNodesAvailable when Close closed the
// connection under it or the Client has no nodes.
func (c *Client) Subscribe(ctx context.Context, topic string, fromID int64, fn func(id int64, msg []byte) error, opts ...SubscribeOption) error {
	if fromID < 0 {
		return fmt.Errorf("forestbus: subscribe to %q: from ID %d is negative: %w", topic, fromID, ErrInvalidArgument)
	}
	cfg := subscribeConfig{heartbeat: DefaultSubscribeHeartbeat}
	for _, o := range opts {
		o(&cfg)
	}
	if len(c.nodes) == 0 {
		return &noNodesError{op: "subscribe"} // nothing to try (as invokeBound)
	}
	start := time.Now()
	next := max(fromID, 1)
	wait := minPassBackoff
	bound, unbind := c.bind(ctx) // also ended by Close
	defer unbind()
	// ended is the error once bound ended: ctx's when the caller's
	// context ended, else Close's.
	ended := func(last error) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		return &noNodesError{op: "subscribe", last: last}
	}
	for {
		progressed := false
		for _, node := range c.subscribeOrder(topic) {
			if bound.Err() != nil {
				return ended(nil)
			}
			got, err := c.subscribeNode(bound, node, topic, &next, cfg, fn)
			progressed = progressed || got
			if ferr, ok := errors.AsType[*fnError](err); ok {
				return ferr.err
			}
			if bound.Err() != nil {
				return ended(err)
			}
			c.debugLog("subscribe", topic, node, start, err)
			c.forget(routeRead, topic, node)
			if errors.Is(err, errStale) || errors.Is(err, io.EOF) {
				continue
			}
			se := newStatusError(node, err)
			if se == nil {
				continue // not a gRPC status: a transport failure
			}
			switch {
			case se.Code == codes.Canceled:
				// Close closed the connection under the stream.
				return &noNodesError{op: "subscribe", last: se}
			case classify(se, true) == fatal: // a node at its cap of streams: try another
				return se
			}
		}
		if progressed {
			wait = minPassBackoff
		}
		t := time.NewTimer(wait)
		select {
		case <-bound.Done():
			t.Stop()
			return ended(nil)
		case <-t.C:
		}
		wait = min(2*wait, maxPassBackoff)
	}
}

// subscribeOrder is the order a pass of Subscribe tries the nodes: the
// last node that answered a read first, the topic's known leader last.
func (c *Client) subscribeOrder(topic string) []string {
	order := c.order(routeRead, topic)
	if l := c.leader(topic); l != "" && len(order) > 1 {
		if i := slices.Index(order, l); i >= 0 && i < len(order)-1 {
			order = append(slices.Delete(order, i, i+1), l)
		}
	}
	return order
}

// subscribeNode streams from node, from *next on, calling fn and advancing
// *next past every message fn accepted. It returns whether any response
// arrived, and why the stream ended: an *fnError, a ctx error, errStale, or
// the stream's error.
func (c *Client) subscribeNode(ctx context.Context, node, topic string, next *int64, cfg subscribeConfig, fn func(int64, []byte) error) (bool, error) {
	cc, err := c.conn(node)
	if err != nil {
		return false, fmt.Errorf("forestbus: node %s: %w", node, err)
	}
	sctx, cancel := context.WithCancel(c.outgoing(ctx))
	defer cancel()
	req := &forestbusv1.SubscribeRequest{
		Topic:    topic,
		FromId:   *next,
		MaxBatch: int32(min(cfg.batch, math.MaxInt32)),
	}
	var stale atomic.Bool
	var idle *time.Timer
	silence := staleAfter(cfg.heartbeat)
	if cfg.heartbeat > 0 {
		req.HeartbeatMs = int32(min(cfg.heartbeat.Milliseconds(), math.MaxInt32))
		idle = time.AfterFunc(silence, func() { stale.Store(true); cancel() })
		defer idle.Stop()
	}
	// The stream's responses are read as fastcodec.SubscribeBatch, which
	// only that codec knows: set it per call, over any WithDialOptions.
	stream, err := forestbusv1.NewForestBusServiceClient(cc).Subscribe(sctx, req, grpc.ForceCodecV2(fastcodec.Codec{}))
	if err != nil {
		if stale.Load() {
			return false, errStale
		}
		return false, err
	}
	got := false
	var resp *fastcodec.SubscribeBatch // a new one per response: gRPC's tracing may format the last one later
	defer func() {
		if resp != nil {
			resp.Release() // fn failed or panicked on a borrowed batch
		}
	}()
	for {
		if idle != nil {
			idle.Reset(silence)
		}
		resp = &fastcodec.SubscribeBatch{Borrow: cfg.borrow}
		err := stream.RecvMsg(resp)
		if idle != nil {
			idle.Stop() // fn's time does not count
		}
		if err != nil {
			if stale.Load() && ctx.Err() == nil {
				return got, fmt.Errorf("forestbus: node %s: %w", node, errStale)
			}
			return got, err
		}
		if !got {
			got = true
			c.remember(routeRead, topic, node, nil)
		}
		first := resp.FirstID
		if first > *next {
			// Retention deleted the messages up to first before the
			// stream reached them.
			*next = first
		}
		id := first
		for m := range resp.Messages() {
			if id >= *next { // else delivered already (a node never resends, but be safe)
				if err := fn(id, m); err != nil {
					return got, &fnError{err}
				}
				*next = id + 1
			}
			id++
		}
		resp.Release() // a borrowed batch's messages are fn's no longer
	}
}
