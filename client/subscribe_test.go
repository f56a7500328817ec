package client_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"

	"github.com/forestbus/forestbus/client"
	forestbusv1 "github.com/forestbus/forestbus/gen/forestbus/v1"
	"github.com/forestbus/forestbus/internal/syncbuf"
	"github.com/forestbus/forestbus/server/servertest"
)

func subMsgs(prefix string, from, n int) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		out[i] = fmt.Appendf(nil, "%s-%d", prefix, from+i)
	}
	return out
}

func subCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// delivery is one call of a Subscribe fn.
type delivery struct {
	id  int64
	msg []byte
}

// subscribe runs c.Subscribe in a goroutine, handing each message to the
// returned channel; the error channel gets Subscribe's result.
func subscribe(ctx context.Context, c *client.Client, topic string, from int64, opts ...client.SubscribeOption) (<-chan delivery, <-chan error) {
	ch := make(chan delivery, 1024)
	done := make(chan error, 1)
	go func() {
		done <- c.Subscribe(ctx, topic, from, func(id int64, msg []byte) error {
			select {
			case ch <- delivery{id, msg}:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		}, opts...)
	}()
	return ch, done
}

// expect reads n deliveries, which must have IDs from, from+1, ... and the
// given payloads.
func expect(t *testing.T, ch <-chan delivery, done <-chan error, from int64, want [][]byte) {
	t.Helper()
	for i, w := range want {
		select {
		case d := <-ch:
			require.Equal(t, from+int64(i), d.id, "ID order, no gap, no duplicate")
			require.Equal(t, string(w), string(d.msg))
		case err := <-done:
			require.FailNow(t, "Subscribe returned", "after %d of %d: %v", i, len(want), err)
		}
	}
}

func TestSubscribeExistingThenNew(t *testing.T) {
	n := servertest.StartNode(t)
	c := client.New("test", []string{n.Addr()})
	t.Cleanup(c.Close)
	_, err := c.SendMessagesContext(subCtx(t), "default", subMsgs("m", 1, 10), true)
	require.NoError(t, err)

	ctx, cancel := context.WithCancel(subCtx(t))
	defer cancel()
	ch, done := subscribe(ctx, c, "default", 0)
	expect(t, ch, done, 1, subMsgs("m", 1, 10))
	_, err = c.SendMessagesContext(subCtx(t), "default", subMsgs("m", 11, 5), true)
	require.NoError(t, err)
	expect(t, ch, done, 11, subMsgs("m", 11, 5))

	// ctx cancel returns promptly, with ctx's error.
	cancel()
	select {
	case err := <-done:
		assert.ErrorIs(t, err, context.Canceled)
		assert.Equal(t, context.Canceled, err, "ctx.Err() itself")
	case <-time.After(5 * time.Second):
		t.Fatal("Subscribe did not return after cancel")
	}
}

// TestSubscribeBorrowedMessages: with WithBorrowedMessages fn gets every
// message intact while it runs, across responses that arrive in many
// frames (each ~400 KiB), and no message twice or out of order.
func TestSubscribeBorrowedMessages(t *testing.T) {
	n := servertest.StartNode(t)
	c := client.New("test", []string{n.Addr()})
	t.Cleanup(c.Close)
	const total = 20_000
	want := make([][]byte, 0, total)
	for len(want) < total {
		batch := make([][]byte, 1000)
		for i := range batch {
			id := len(want) + i + 1
			batch[i] = bytes.Repeat(fmt.Appendf(nil, "%07d|", id), 1+id%19) // 8 to 152 bytes
		}
		_, err := c.SendMessagesContext(subCtx(t), "default", batch, true)
		require.NoError(t, err)
		want = append(want, batch...)
	}
	stop := errors.New("stop")
	next := int64(1)
	err := c.Subscribe(subCtx(t), "default", 1, func(id int64, msg []byte) error {
		if id != next {
			return fmt.Errorf("got ID %d, want %d", id, next)
		}
		if !bytes.Equal(want[id-1], msg) {
			return fmt.Errorf("message %d: got %q, want %q", id, msg, want[id-1])
		}
		next++
		if id == total {
			return stop
		}
		return nil
	}, client.WithBorrowedMessages())
	require.Equal(t, stop, err)
}

func TestSubscribeFnError(t *testing.T) {
	n := servertest.StartNode(t)
	c := client.New("test", []string{n.Addr()})
	t.Cleanup(c.Close)
	_, err := c.SendMessagesContext(subCtx(t), "default", subMsgs("m", 1, 10), true)
	require.NoError(t, err)

	boom := errors.New("boom")
	var ids []int64
	err = c.Subscribe(subCtx(t), "default", 2, func(id int64, _ []byte) error {
		ids = append(ids, id)
		if id == 4 {
			return boom
		}
		return nil
	})
	assert.Equal(t, boom, err, "fn's error as it is")
	assert.Equal(t, []int64{2, 3, 4}, ids)
}

func TestSubscribeErrors(t *testing.T) {
	n := servertest.StartNode(t)
	c := client.New("test", []string{n.Addr()})
	t.Cleanup(c.Close)
	noop := func(int64, []byte) error { return nil }

	err := c.Subscribe(subCtx(t), "nope", 1, noop)
	assert.ErrorIs(t, err, client.ErrTopicNotFound)
	err = c.Subscribe(subCtx(t), "default", -1, noop)
	assert.ErrorIs(t, err, client.ErrInvalidArgument)
	err = c.Subscribe(subCtx(t), "a/b", 1, noop)
	assert.ErrorIs(t, err, client.ErrInvalidArgument)

	other := client.New("other", []string{n.Addr()})
	t.Cleanup(other.Close)
	err = other.Subscribe(subCtx(t), "default", 1, noop)
	assert.ErrorIs(t, err, client.ErrClusterIdMismatch)

	// Removed while subscribed.
	require.NoError(t, c.CreateTopic(subCtx(t), "doomed", client.TopicSettings{}))
	_, err = c.SendMessagesContext(subCtx(t), "doomed", subMsgs("d", 1, 1), true)
	require.NoError(t, err)
	ch, done := subscribe(subCtx(t), c, "doomed", 1)
	expect(t, ch, done, 1, subMsgs("d", 1, 1))
	require.NoError(t, c.RemoveTopic(subCtx(t), "doomed"))
	assert.ErrorIs(t, <-done, client.ErrTopicNotFound)
}

// TestSubscribeResumesAfterNodeStop stops the node a subscription reads
// from, in the middle of the stream, and checks that every message arrives
// once, in order.
func TestSubscribeResumesAfterNodeStop(t *testing.T) {
	cl := servertest.NewCluster(t, 3)
	cl.WaitTopic("default")
	prod := client.New("test", cl.Addrs())
	t.Cleanup(prod.Close)
	// The subscriber knows no leader and no read node: it starts with
	// Nodes[0].
	logs := &syncbuf.Buffer{}
	sub := client.New("test", cl.Addrs(), client.WithDebug(),
		client.WithLogger(slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))))
	t.Cleanup(sub.Close)

	for i := 1; i <= 200; i += 20 {
		_, err := prod.SendMessagesContext(subCtx(t), "default", subMsgs("x", i, 20), true)
		require.NoError(t, err)
	}
	ctx, cancel := context.WithCancel(subCtx(t))
	defer cancel()
	stopped := make(chan struct{})
	reached := make(chan struct{})
	ch := make(chan delivery, 1024)
	done := make(chan error, 1)
	go func() {
		done <- sub.Subscribe(ctx, "default", 1, func(id int64, msg []byte) error {
			if id == 50 {
				// Stop the node mid-stream, while it still has
				// messages for us.
				close(reached)
				<-stopped
			}
			ch <- delivery{id, msg}
			return nil
		}, client.WithSubscribeBatch(10))
	}()
	<-reached
	cl.Nodes[0].Stop()
	close(stopped)
	expect(t, ch, done, 1, subMsgs("x", 1, 200))

	// Later messages come from the other nodes.
	for i := 201; i <= 300; i += 20 {
		_, err := prod.SendMessagesContext(subCtx(t), "default", subMsgs("x", i, 20), true)
		require.NoError(t, err)
	}
	expect(t, ch, done, 201, subMsgs("x", 201, 100))
	assert.Contains(t, logs.String(), "node="+cl.Addrs()[0], "a failed stream on node 0")

	// And again when the new node stops too (2 of 3 gone: restart node 0
	// first so the cluster keeps a quorum).
	cl.Nodes[0].Start()
	cl.WaitTopic("default")
	cl.Nodes[1].Stop()
	for i := 301; i <= 400; i += 20 {
		_, err := prod.SendMessagesContext(subCtx(t), "default", subMsgs("x", i, 20), true)
		require.NoError(t, err)
	}
	expect(t, ch, done, 301, subMsgs("x", 301, 100))
	select {
	case d := <-ch:
		t.Fatalf("unexpected extra message %d", d.id)
	default:
	}
	cancel()
	assert.ErrorIs(t, <-done, context.Canceled)
}

// silentNode accepts Subscribe streams and never answers them, like a node
// behind a network that drops everything.
type silentNode struct {
	forestbusv1.UnimplementedForestBusServiceServer
	calls atomic.Int64
}

func (s *silentNode) Subscribe(_ *forestbusv1.SubscribeRequest, stream grpc.ServerStreamingServer[forestbusv1.SubscribeResponse]) error {
	s.calls.Add(1)
	<-stream.Context().Done()
	return stream.Context().Err()
}

func TestSubscribeLeavesSilentNode(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	silent := &silentNode{}
	srv := grpc.NewServer()
	forestbusv1.RegisterForestBusServiceServer(srv, silent)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)

	n := servertest.StartNode(t)
	c := client.New("test", []string{lis.Addr().String(), n.Addr()})
	t.Cleanup(c.Close)
	prod := client.New("test", []string{n.Addr()})
	t.Cleanup(prod.Close)
	_, err = prod.SendMessagesContext(subCtx(t), "default", subMsgs("s", 1, 3), true)
	require.NoError(t, err)

	ctx, cancel := context.WithCancel(subCtx(t))
	defer cancel()
	ch, done := subscribe(ctx, c, "default", 1, client.WithSubscribeHeartbeat(50*time.Millisecond))
	expect(t, ch, done, 1, subMsgs("s", 1, 3))
	assert.Equal(t, int64(1), silent.calls.Load())
	cancel()
	assert.ErrorIs(t, <-done, context.Canceled)
}

// BenchmarkSubscribe delivers 100k prefilled 100-byte messages to a
// Subscribe fn.
func BenchmarkSubscribe(b *testing.B) {
	const total = 100_000
	n := servertest.StartNode(b)
	c := client.New("test", []string{n.Addr()})
	b.Cleanup(c.Close)
	msg := make([]byte, 100)
	batch := make([][]byte, 1000)
	for i := range batch {
		batch[i] = msg
	}
	for i := 0; i < total/len(batch); i++ {
		_, err := c.SendMessagesContext(subCtx(b), "default", batch, true)
		require.NoError(b, err)
	}
	stop := errors.New("done")
	for _, bc := range []struct {
		name string
		opts []client.SubscribeOption
	}{{"copied", nil}, {"borrowed", []client.SubscribeOption{client.WithBorrowedMessages()}}} {
		b.Run(bc.name, func(b *testing.B) {
			b.SetBytes(total * 100)
			b.ReportAllocs()
			start := time.Now()
			for b.Loop() {
				got := 0
				err := c.Subscribe(subCtx(b), "default", 1, func(id int64, m []byte) error {
					got++
					if id == total {
						return stop
					}
					return nil
				}, bc.opts...)
				require.Equal(b, stop, err)
				require.Equal(b, total, got)
			}
			b.ReportMetric(float64(b.N)*total/time.Since(start).Seconds(), "msgs/s")
		})
	}
}

// TestCloseEndsSubscribeOnSharedConnection: Close ends the Client's
// subscriptions with ErrNoNodesAvailable even when another Client keeps
// their connection to the node open.
func TestCloseEndsSubscribeOnSharedConnection(t *testing.T) {
	n := servertest.StartNode(t)
	c, other := client.New("test", []string{n.Addr()}), client.New("test", []string{n.Addr()})
	t.Cleanup(other.Close)
	_, err := other.SendMessagesContext(subCtx(t), "default", subMsgs("m", 1, 2), true)
	require.NoError(t, err)
	ch, done := subscribe(subCtx(t), c, "default", 1)
	expect(t, ch, done, 1, subMsgs("m", 1, 2)) // streaming, now waiting at the tail
	c.Close()
	select {
	case err := <-done:
		assert.ErrorIs(t, err, client.ErrNoNodesAvailable)
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not end the subscription on the shared connection")
	}
	_, err = other.SendMessagesContext(subCtx(t), "default", subMsgs("m", 3, 1), true)
	assert.NoError(t, err, "the other Client's connection is unharmed")
}

// TestSubscribeHugeHeartbeat: a heartbeat too long to count three of (a
// caller's "never") turns the silence detection off rather than
// overflowing into a stream taken for dead at once.
func TestSubscribeHugeHeartbeat(t *testing.T) {
	n := servertest.StartNode(t)
	c := client.New("test", []string{n.Addr()})
	t.Cleanup(c.Close)
	_, err := c.SendMessagesContext(subCtx(t), "default", subMsgs("m", 1, 10), true)
	require.NoError(t, err)
	errDone := errors.New("done")
	got := 0
	// Seconds, not the usual test deadline: streams taken for dead at once
	// still delivered, now and then, within tens of seconds.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err = c.Subscribe(ctx, "default", 1, func(id int64, _ []byte) error {
		got++
		if id == 10 {
			return errDone
		}
		return nil
	}, client.WithSubscribeHeartbeat(time.Duration(1<<62)))
	require.ErrorIs(t, err, errDone)
	require.Equal(t, 10, got)
}

// TestSendMessagesSequence: a batch sent again under its sequence is
// stored once and answered with the first copy's IDs; a sequence the
// Client did not hand out is refused.
func TestSendMessagesSequence(t *testing.T) {
	n := servertest.StartNode(t)
	c := client.New("test", []string{n.Addr()})
	t.Cleanup(c.Close)
	ctx := subCtx(t)
	seq := c.NextSequence("default")
	first, err := c.SendMessagesSequence(ctx, "default", subMsgs("a", 1, 3), true, seq)
	require.NoError(t, err)
	again, err := c.SendMessagesSequence(ctx, "default", subMsgs("a", 1, 3), true, seq)
	require.NoError(t, err)
	require.Equal(t, first, again)
	ids, err := c.SendMessagesContext(ctx, "default", subMsgs("b", 1, 1), true)
	require.NoError(t, err)
	require.Equal(t, first[len(first)-1]+1, ids[0], "the second send stored nothing")

	_, err = c.SendMessagesSequence(ctx, "default", subMsgs("c", 1, 1), true, c.NextSequence("default")+1)
	require.ErrorIs(t, err, client.ErrInvalidArgument)
	_, err = c.SendMessagesSequence(ctx, "default", subMsgs("c", 1, 1), true, 0)
	require.ErrorIs(t, err, client.ErrInvalidArgument)
}
