package client

import (
	"context"
	"errors"
	"sync"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	forestbusv1 "github.com/forestbus/forestbus/gen/forestbus/v1"
)

// maxStreamInFlight caps the requests a Client has in flight on one node's
// Produce stream: the node's own cap (api.MaxProduceInFlight). A send over
// it waits for a slot, and gives up when its context ends.
const maxStreamInFlight = 256

// errNoProduce reports a node that does not serve Produce (an older node),
// or that refused or ended the stream with RESOURCE_EXHAUSTED: the send
// goes as a SendMessages call instead.
var errNoProduce = errors.New("forestbus: node does not serve Produce")

// streamPause is how long a Client sends a node calls instead of opening a
// new Produce stream after the node ended one with RESOURCE_EXHAUSTED: it
// serves its cap of streams (api.DefaultMaxProduceStreams), or a request
// on the stream was larger than it accepts.
var streamPause = time.Second // a variable for tests

// forever stands for "for the Client's life" in Client.noProduce.
var forever = time.Unix(1<<62, 0)

// errSendStuck ends a Produce stream whose Send was still blocked (the
// node reads nothing of it: HTTP/2 flow control holds the request) when
// its sender's context ended. The stream's other sends fail with it and,
// UNAVAILABLE, over to the next node or a new stream: their requests carry
// their producer pairs, so sending them again stores nothing twice.
var errSendStuck = status.Error(codes.Unavailable, "forestbus: Produce stream blocked past a send's deadline")

// WithUnarySends makes the Client send every batch as its own SendMessages
// call instead of over the node's Produce stream. The stream is the
// default: it costs about half the CPU per batch, on the client and on the
// node. The answers, errors and failover are the same either way.
func WithUnarySends() Option {
	return func(c *Client) { c.unarySends = true }
}

// produceStream is one connection's Produce stream, shared by every send
// of the Client to that node. A goroutine reads the answers and hands each
// to the send waiting for it. When the stream breaks, the sends waiting on
// it fail with its error (and fail over as a failed call would), and the
// next send opens a new stream.
type produceStream struct {
	ready  chan struct{} // closed when opening ended: st or err is set
	st     forestbusv1.ForestBusService_ProduceClient
	err    error              // opening failed (before ready), or the stream ended (under mu)
	cancel context.CancelFunc // ends the stream

	slots chan struct{} // one per request sent and not answered
	// sendTurn holds one token: Sends go one at a time, and a send waiting
	// for its turn gives up when its context ends.
	sendTurn chan struct{}

	mu       sync.Mutex
	next     uint64                                       // last request_id used
	pending  map[uint64]chan *forestbusv1.ProduceResponse // nil: the sender gave up
	abortErr error                                        // why a sender ended the stream (abort)
}

// abort ends the stream; its sends fail with err.
func (ps *produceStream) abort(err error) {
	ps.mu.Lock()
	if ps.abortErr == nil {
		ps.abortErr = err
	}
	ps.mu.Unlock()
	ps.cancel()
}

// unregister forgets request id, whose sender gives up before sending it,
// and frees its slot, unless the stream's end did both already.
func (ps *produceStream) unregister(id uint64) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if _, ok := ps.pending[id]; ok {
		delete(ps.pending, id)
		<-ps.slots
	}
}

// sendBatch sends req on cc's Produce stream and waits for the answer.
func (c *Client) sendBatch(ctx context.Context, cc *grpc.ClientConn, req *forestbusv1.SendMessagesRequest) (*forestbusv1.SendMessagesResponse, error) {
	ps := c.produceStream(cc)
	if ps == nil {
		return nil, errNoProduce
	}
	select {
	case <-ps.ready:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if ps.st == nil {
		return nil, streamErr(ps.err)
	}
	select {
	case ps.slots <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	ch := make(chan *forestbusv1.ProduceResponse, 1)
	ps.mu.Lock()
	if ps.err != nil { // the stream ended
		ps.mu.Unlock()
		<-ps.slots
		return nil, streamErr(ps.err)
	}
	ps.next++
	id := ps.next
	ps.pending[id] = ch
	ps.mu.Unlock()

	select {
	case ps.sendTurn <- struct{}{}:
	case <-ctx.Done():
		ps.unregister(id)
		return nil, ctx.Err()
	}
	// Send waits for flow control on the stream's context, not ctx: if ctx
	// ends first, the stream is stuck, and ends.
	stuck := context.AfterFunc(ctx, func() { ps.abort(errSendStuck) })
	err := ps.st.Send(&forestbusv1.ProduceRequest{RequestId: id, Batch: req})
	stuck()
	<-ps.sendTurn
	if err != nil {
		// The stream broke (Send returns io.EOF then): the reader ends it
		// and answers ch with nil; its error is the stream's status.
		ps.cancel()
	}
	select {
	case r := <-ch:
		if r == nil {
			return nil, streamErr(ps.err)
		}
		if pe := r.GetError(); pe != nil {
			return nil, produceStatus(pe)
		}
		if r.GetResult() == nil {
			return nil, status.Error(codes.Internal, "Produce answer with neither result nor error")
		}
		return r.GetResult(), nil
	case <-ctx.Done():
		ps.mu.Lock()
		if _, ok := ps.pending[id]; ok {
			ps.pending[id] = nil // the answer is dropped when it comes
		}
		ps.mu.Unlock()
		return nil, ctx.Err()
	}
}

// produceStream returns cc's stream, opening one if there is none; nil
// when the node does not serve Produce, or when the Client no longer holds
// cc (a Close came between the send's choice of cc and this: the send's
// call then ends too).
func (c *Client) produceStream(cc *grpc.ClientConn) *produceStream {
	c.mu.Lock()
	defer c.mu.Unlock()
	if until, ok := c.noProduce[cc]; ok {
		if time.Now().Before(until) {
			return nil
		}
		delete(c.noProduce, cc)
	}
	if ps := c.streams[cc]; ps != nil {
		return ps
	}
	held := false
	for _, h := range c.conns {
		held = held || h == cc
	}
	if !held {
		return nil
	}
	// The stream ends with the Client's life (Close).
	ctx, cancel := context.WithCancel(c.outgoing(c.life))
	ps := &produceStream{
		cancel:   cancel,
		ready:    make(chan struct{}),
		slots:    make(chan struct{}, maxStreamInFlight),
		sendTurn: make(chan struct{}, 1),
		pending:  make(map[uint64]chan *forestbusv1.ProduceResponse),
	}
	c.streams[cc] = ps
	go c.runStream(ctx, cc, ps)
	return ps
}

// streamErr is the error of a send whose stream failed: errNoProduce when
// the node does not serve Produce or refused the stream or ended it with
// RESOURCE_EXHAUSTED, so that the send goes as a call. The call carries the
// request's producer pair, so a batch the node stored before the stream
// ended is not stored twice; a batch too large for the node fails that
// call alone, not the other sends of the stream.
func streamErr(err error) error {
	switch status.Code(err) {
	case codes.Unimplemented, codes.ResourceExhausted:
		return errNoProduce
	}
	return err
}

// runStream opens ps on cc and reads its answers until it ends. The
// stream lives as long as the Client (Close cancels it), not as long as the
// send that opened it.
func (c *Client) runStream(ctx context.Context, cc *grpc.ClientConn, ps *produceStream) {
	defer ps.cancel()
	st, err := forestbusv1.NewForestBusServiceClient(cc).Produce(ctx)
	if err != nil {
		ps.err = err
		c.dropStream(cc, ps, err)
		close(ps.ready)
		return
	}
	ps.st = st
	close(ps.ready)
	for {
		r, err := st.Recv()
		if err != nil {
			ps.mu.Lock()
			if ps.abortErr != nil {
				err = ps.abortErr
			}
			ps.mu.Unlock()
			c.dropStream(cc, ps, err)
			ps.mu.Lock()
			ps.err = err
			for id, ch := range ps.pending {
				delete(ps.pending, id)
				<-ps.slots
				if ch != nil {
					ch <- nil
				}
			}
			ps.mu.Unlock()
			return
		}
		ps.mu.Lock()
		ch, ok := ps.pending[r.GetRequestId()]
		if ok {
			delete(ps.pending, r.GetRequestId())
			<-ps.slots
		}
		ps.mu.Unlock()
		if ch != nil {
			ch <- r
		}
	}
}

// dropStream forgets ps, so that the next send opens a new stream; a node
// that answered UNIMPLEMENTED is sent SendMessages calls from now on, and
// one that answered RESOURCE_EXHAUSTED for streamPause.
func (c *Client) dropStream(cc *grpc.ClientConn, ps *produceStream, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.streams[cc] == ps {
		delete(c.streams, cc)
	}
	switch status.Code(err) {
	case codes.Unimplemented:
		c.noProduce[cc] = forever
	case codes.ResourceExhausted:
		c.noProduce[cc] = time.Now().Add(streamPause)
	}
}

// takeStreams empties the Client's Produce streams, for the caller to end,
// and forgets which nodes had none (its keys are the connections Close
// gives up). c.mu must be held.
func (c *Client) takeStreams() map[*grpc.ClientConn]*produceStream {
	streams := c.streams
	c.streams = make(map[*grpc.ClientConn]*produceStream)
	clear(c.noProduce)
	return streams
}

// produceStatus is the status error SendMessages would have returned.
func produceStatus(pe *forestbusv1.ProduceError) error {
	st := status.New(codes.Code(pe.GetCode()), pe.GetMessage())
	if pe.GetReason() != "" {
		info := &errdetails.ErrorInfo{Reason: pe.GetReason(), Domain: ErrorDomain, Metadata: pe.GetMetadata()}
		if withInfo, err := st.WithDetails(info); err == nil {
			st = withInfo
		}
	}
	return st.Err()
}
