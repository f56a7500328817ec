package client

import (
	"context"
	"math"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	forestbusv1 "github.com/forestbus/forestbus/gen/forestbus/v1"
)

// TestStuckProduceStreamHonoursDeadlines: a node that reads nothing of its
// Produce stream (flow control holds the requests) does not hold a send
// past its context, nor the sends queued behind it: the stream ends, and
// its sends still within their contexts fail over to the next node.
func TestStuckProduceStreamHonoursDeadlines(t *testing.T) {
	stuck := startNode(t, grpc.InitialWindowSize(64<<10), grpc.InitialConnWindowSize(64<<10))
	stuck.stallProduce = true
	good := startNode(t)
	good.send = okSend(1)
	c := New("", []string{stuck.addr, good.addr})
	defer c.Close()
	big := [][]byte{make([]byte, 1<<20)} // over the node's window
	long := func() context.Context {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		t.Cleanup(cancel)
		return ctx
	}
	// state waits for c's stream to hold pending requests, and a Send
	// in progress (turn 1) or not (0).
	state := func(pending, turn int) func() bool {
		return func() bool {
			var ps *produceStream
			c.mu.Lock()
			for _, s := range c.streams {
				ps = s
			}
			c.mu.Unlock()
			if ps == nil {
				return false
			}
			ps.mu.Lock()
			defer ps.mu.Unlock()
			return len(ps.pending) == pending && len(ps.sendTurn) == turn
		}
	}

	// The first request fills the stream's flow-control quota: its Send
	// returns, its answer never comes.
	primer := make(chan error, 1)
	go func() { _, err := c.SendMessagesContext(long(), "t", big, true); primer <- err }()
	require.Eventually(t, state(1, 0), 10*time.Second, time.Millisecond, "the first request sent")
	// The next Send blocks: the node reads nothing.
	heldCtx, cancelHeld := context.WithCancel(context.Background())
	defer cancelHeld()
	held := make(chan error, 1)
	go func() { _, err := c.SendMessagesContext(heldCtx, "t", big, true); held <- err }()
	require.Eventually(t, state(2, 1), 10*time.Second, time.Millisecond, "a send to hold the stream")
	// One more queues behind it.
	queued := make(chan error, 1)
	go func() {
		_, err := c.SendMessagesContext(long(), "t", [][]byte{[]byte("small")}, true)
		queued <- err
	}()
	require.Eventually(t, state(3, 1), 10*time.Second, time.Millisecond, "a send queued behind it")
	select {
	case err := <-held:
		t.Fatalf("the held send returned before its context ended: %v", err)
	default:
	}

	cancelHeld()
	select {
	case err := <-held:
		require.ErrorIs(t, err, context.Canceled)
	case <-time.After(10 * time.Second):
		t.Fatal("the held send outlived its context")
	}
	for _, ch := range []chan error{primer, queued} {
		select {
		case err := <-ch:
			require.NoError(t, err, "the stream's other sends fail over to the good node")
		case <-time.After(20 * time.Second):
			t.Fatal("a send of the stuck stream is still held")
		}
	}
	assert.Equal(t, 2, good.count("send"))

	// A send queued behind a stuck Send gives up with its own context.
	c2 := New("", []string{stuck.addr})
	defer c2.Close()
	c = c2
	go func() { _, _ = c2.SendMessagesContext(long(), "t", big, true) }()
	require.Eventually(t, state(1, 0), 10*time.Second, time.Millisecond, "the second client's first request sent")
	go func() { _, _ = c2.SendMessagesContext(long(), "t", big, true) }()
	require.Eventually(t, state(2, 1), 10*time.Second, time.Millisecond, "a send to hold the second client's stream")
	short, cancelShort := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancelShort()
	shortErr := make(chan error, 1)
	go func() { _, err := c2.SendMessagesContext(short, "t", [][]byte{[]byte("small")}, true); shortErr <- err }()
	select {
	case err := <-shortErr:
		require.ErrorIs(t, err, context.DeadlineExceeded)
	case <-time.After(10 * time.Second): // the holder's context lasts 30 s
		t.Fatal("a send waiting for its turn outlived its context")
	}
}

// silentConn is a connection whose node goes silent once frozen: what is
// written vanishes and nothing more is read (a frozen host, a black-holed
// network).
type silentConn struct {
	net.Conn
	mu     sync.Mutex
	frozen bool
	closed chan struct{}
	once   sync.Once
}

func (s *silentConn) isFrozen() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.frozen
}

func (s *silentConn) Write(p []byte) (int, error) {
	if s.isFrozen() {
		return len(p), nil
	}
	return s.Conn.Write(p)
}

func (s *silentConn) Read(p []byte) (int, error) {
	n, err := s.Conn.Read(p)
	if s.isFrozen() {
		<-s.closed
		return 0, net.ErrClosed
	}
	return n, err
}

func (s *silentConn) Close() error {
	s.once.Do(func() { close(s.closed) })
	return s.Conn.Close()
}

// TestSilentNodeIsLeft: a call without a deadline on a node that went
// silent after the connection opened fails over to the next node once a
// keepalive ping goes unanswered, instead of waiting on TCP.
func TestSilentNodeIsLeft(t *testing.T) {
	defer func(d time.Duration) { keepaliveTimeout = d }(keepaliveTimeout)
	keepaliveTimeout = time.Second // the ping's Time cannot go under 10 s
	a, b := startNode(t), startNode(t)
	details := func(context.Context, *forestbusv1.GetTopicDetailsRequest) (*forestbusv1.GetTopicDetailsResponse, error) {
		return &forestbusv1.GetTopicDetailsResponse{CommitId: 7}, nil
	}
	a.details, b.details = details, details
	var mu sync.Mutex
	var toA []*silentConn
	dialer := grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
		cn, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, err
		}
		sc := &silentConn{Conn: cn, closed: make(chan struct{})}
		if addr == a.addr {
			mu.Lock()
			toA = append(toA, sc)
			mu.Unlock()
		}
		return sc, nil
	})
	c := New("", []string{a.addr, b.addr}, WithDialOptions(dialer), WithRetryWindow(time.Second))
	defer c.Close()
	_, err := c.GetTopicMaxAvailableIndex("t") // answered by a, which reads go to next
	require.NoError(t, err)
	require.Equal(t, 1, a.count("details"))
	mu.Lock()
	for _, sc := range toA {
		sc.mu.Lock()
		sc.frozen = true
		sc.mu.Unlock()
	}
	mu.Unlock()

	done := make(chan error, 1)
	go func() { _, err := c.GetTopicMaxAvailableIndex("t"); done <- err }()
	select {
	case err := <-done:
		require.NoError(t, err)
		assert.Equal(t, 1, b.count("details"), "answered by the other node")
	case <-time.After(60 * time.Second):
		t.Fatal("the call still waits on the silent node")
	}
}

// TestBusyNodeReadGoesElsewhere: a long-poll read that a node refuses with
// a plain RESOURCE_EXHAUSTED (its cap of waiting reads) is asked of the
// next node; a send refused so is not (too large for the node).
func TestBusyNodeReadGoesElsewhere(t *testing.T) {
	a, b := startNode(t), startNode(t)
	a.get = func(context.Context, *forestbusv1.GetMessagesRequest) (*forestbusv1.GetMessagesResponse, error) {
		return nil, status.Error(codes.ResourceExhausted, "too many waiting reads on this node (limit 10000): retry, or read without wait")
	}
	b.get = func(_ context.Context, req *forestbusv1.GetMessagesRequest) (*forestbusv1.GetMessagesResponse, error) {
		return &forestbusv1.GetMessagesResponse{Messages: [][]byte{[]byte("x")}, NextId: req.GetId() + 1}, nil
	}
	a.send = func(context.Context, *forestbusv1.SendMessagesRequest) (*forestbusv1.SendMessagesResponse, error) {
		return nil, status.Error(codes.ResourceExhausted, "grpc: received message larger than max")
	}
	b.send = okSend(1)
	c := New("", []string{a.addr, b.addr}, WithUnarySends())
	defer c.Close()
	msgs, next, err := c.GetMessages("t", 1, 10, true)
	require.NoError(t, err)
	assert.Equal(t, [][]byte{[]byte("x")}, msgs)
	assert.EqualValues(t, 2, next)
	assert.Equal(t, 1, b.count("get"))

	_, err = c.SendMessages("t", [][]byte{[]byte("m")}, true)
	require.Equal(t, codes.ResourceExhausted, status.Code(err))
	assert.Zero(t, b.count("send"), "a send refused for its size is not sent elsewhere")
}

// TestStreamNotOpenedAfterClose: a send that chose its connection before
// Close opens no Produce stream on it after Close (the stream would
// outlive the Client's hold on the connection).
func TestStreamNotOpenedAfterClose(t *testing.T) {
	n := startNode(t)
	n.send = okSend(1)
	other := New("", []string{n.addr}) // keeps the shared connection open
	defer other.Close()
	_, err := other.conn(n.addr)
	require.NoError(t, err)

	c := New("", []string{n.addr})
	cc, err := c.conn(n.addr) // a send's choice of connection ...
	require.NoError(t, err)
	c.Close()                                                 // ... then Close ...
	require.Nil(t, c.produceStream(cc))                       // ... then the send's stream
	_, err = c.SendMessages("t", [][]byte{[]byte("m")}, true) // a Client is usable after Close
	require.NoError(t, err)
}

// TestStaleAfterSaturates: three heartbeats of a huge interval are for
// ever, not a negative wait (which took every stream for dead at once).
func TestStaleAfterSaturates(t *testing.T) {
	assert.Equal(t, 3*time.Second, staleAfter(time.Second))
	assert.Equal(t, time.Duration(math.MaxInt64), staleAfter(time.Duration(1<<62)))
	assert.Equal(t, time.Duration(math.MaxInt64), staleAfter(math.MaxInt64))
}
