package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	forestbusv1 "github.com/forestbus/forestbus/gen/forestbus/v1"
)

// MaxProduceInFlight is the number of requests of one Produce stream a node
// works on at once. Beyond it the node stops reading the stream until one
// is answered, so HTTP/2 flow control holds the client.
const MaxProduceInFlight = 256

// DefaultMaxProduceStreams caps the Produce streams a node serves at once
// (see SetMaxProduceStreams). Each holds up to MaxProduceInFlight requests.
const DefaultMaxProduceStreams = 10000

// SetMaxProduceStreams caps the number of Produce streams the service
// serves at once; n <= 0 restores DefaultMaxProduceStreams. A stream
// opened over the cap fails with RESOURCE_EXHAUSTED before the node reads
// any of its requests (none is stored). Streams already open are not
// affected by a lower cap.
func (s *Service) SetMaxProduceStreams(n int) { s.producers.max.Store(int64(max(n, 0))) }

// ProduceStreams reports the number of Produce streams being served.
func (s *Service) ProduceStreams() int { return int(s.producers.active.Load()) }

// errTooManyProduceStreams is answered over the stream cap: a plain
// status, as for Subscribe streams.
func errTooManyProduceStreams(limit int64) error {
	return status.Errorf(codes.ResourceExhausted, "too many Produce streams on this node (limit %d): send as SendMessages calls, or retry later", limit)
}

// Produce implements ForestBusService.Produce: SendMessages over one
// stream. Each request is served on its own goroutine, exactly as a
// SendMessages call (without the leader forwarding), and answered on the
// stream when it is done.
//
// The handler's goroutine only waits: for the stream to end, or for
// BeginShutdown. A goroutine reads the stream; it is still blocked in Recv
// when the handler returns on shutdown, and gRPC ends that Recv then.
func (s *Service) Produce(stream forestbusv1.ForestBusService_ProduceServer) error {
	ok, limit := s.producers.take(DefaultMaxProduceStreams)
	if !ok {
		return errTooManyProduceStreams(limit)
	}
	defer s.producers.done()
	p := &producer{svc: s, stream: stream, slots: make(chan struct{}, MaxProduceInFlight)}
	read := make(chan error, 1)
	go func() {
		// The recovery interceptor does not see this goroutine, which
		// decodes the client's requests: a panic fails the stream, not the
		// node.
		defer func() {
			if r := recover(); r != nil {
				read <- s.panicked(stream.Context(), "panic reading a Produce stream", r)
			}
		}()
		read <- p.read()
	}()
	var err error
	select {
	case err = <-read:
	case <-s.stopping:
		err = ErrShuttingDown
	}
	// No request starts from now on; the answers in flight go out before
	// the stream ends (shutdown drains them: they count in s.inflight).
	p.mu.Lock()
	p.closing = true
	p.mu.Unlock()
	p.work.Wait()
	return err
}

// producer is one Produce stream being served.
type producer struct {
	svc    *Service
	stream forestbusv1.ForestBusService_ProduceServer
	slots  chan struct{} // one per request in flight
	sendMu sync.Mutex    // serializes Send

	mu      sync.Mutex
	closing bool           // the handler is returning: no request starts
	work    sync.WaitGroup // requests in flight; Add under mu
}

// read takes requests off the stream until it ends: nil when the client
// closed its side, else the stream's error.
func (p *producer) read() error {
	ctx := p.stream.Context()
	for {
		req, err := p.stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		select {
		case p.slots <- struct{}{}:
		case <-ctx.Done():
			return ctx.Err()
		}
		p.mu.Lock()
		if p.closing {
			p.mu.Unlock()
			return nil
		}
		p.work.Add(1)
		p.mu.Unlock()
		p.svc.inflight.Add(1)
		go p.serve(ctx, req)
	}
}

// serve answers one request.
func (p *producer) serve(ctx context.Context, req *forestbusv1.ProduceRequest) {
	defer func() {
		p.svc.inflight.Add(-1)
		<-p.slots
		p.work.Done()
	}()
	resp := &forestbusv1.ProduceResponse{RequestId: req.GetRequestId()}
	res, err := p.sendBatch(ctx, req.GetBatch())
	if err != nil {
		resp.Outcome = &forestbusv1.ProduceResponse_Error{Error: produceError(toStatus(ctx, err, p.svc.leaderAddr, p.svc.log))}
	} else {
		resp.Outcome = &forestbusv1.ProduceResponse_Result{Result: res}
	}
	p.sendMu.Lock()
	defer p.sendMu.Unlock()
	// An error here is the stream's: the reader sees it too and ends it.
	_ = p.stream.Send(resp)
}

// sendBatch is SendMessages for one request, with the recovery the unary
// interceptor chain gives a call.
func (p *producer) sendBatch(ctx context.Context, batch *forestbusv1.SendMessagesRequest) (res *forestbusv1.SendMessagesResponse, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = p.svc.panicked(ctx, "panic in Produce request", r)
		}
	}()
	if batch == nil {
		return nil, fmt.Errorf("%w: batch: missing", ErrInvalidArgument)
	}
	return p.svc.SendMessages(ctx, batch)
}

// produceError is a status error in ProduceError's fields.
func produceError(err error) *forestbusv1.ProduceError {
	st := status.Convert(err)
	pe := &forestbusv1.ProduceError{Code: int32(st.Code()), Message: st.Message()}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetDomain() == Domain {
			pe.Reason = info.GetReason()
			pe.Metadata = info.GetMetadata()
			break
		}
	}
	return pe
}
