package api_test

import (
	"context"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/forestbus/forestbus/client"
	forestbusv1 "github.com/forestbus/forestbus/gen/forestbus/v1"
	"github.com/forestbus/forestbus/internal/fastcodec"
	"github.com/forestbus/forestbus/server/api"
	"github.com/forestbus/forestbus/server/servertest"
)

// TestGetMessagesPooledReadBuffers: a GetMessages answer points into a
// pooled read buffer until gRPC has encoded it. Readers at once, each from
// its own IDs, must each get exactly their messages (a buffer given back
// before its answer was encoded would be overwritten by another read), and
// every buffer lent to the codec comes back: after answers with messages,
// with none, from a long poll, and errors.
func TestGetMessagesPooledReadBuffers(t *testing.T) {
	n := servertest.StartNode(t)
	c := client.New("test", []string{n.Addr()})
	t.Cleanup(c.Close)
	bus := dialBus(t, n.Addr())
	const total = 3000
	for i := 1; i <= total; i += 100 {
		send(t, c, "default", payloads("m", i, 100))
	}
	all := payloads("m", 1, total)

	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			rnd := rand.New(rand.NewPCG(uint64(g), 7))
			for range 400 {
				id := 1 + rnd.IntN(total)
				resp, err := bus.GetMessages(testCtx(t), &forestbusv1.GetMessagesRequest{Topic: "default", Id: int64(id), Quantity: int32(1 + rnd.IntN(300))})
				if !assert.NoError(t, err) {
					return
				}
				next := resp.GetNextId()
				if !assert.Greater(t, next, int64(id)) || !assert.LessOrEqual(t, next, int64(total+1)) {
					return
				}
				if !assert.Equal(t, all[id-1:next-1], resp.GetMessages(), "reader %d from %d", g, id) {
					return
				}
			}
		})
	}
	wg.Wait()

	// No messages at the tail; an error; a long poll answered by a send.
	resp, err := bus.GetMessages(testCtx(t), &forestbusv1.GetMessagesRequest{Topic: "default", Id: total + 1, Quantity: 10})
	require.NoError(t, err)
	assert.Empty(t, resp.GetMessages())
	_, err = bus.GetMessages(testCtx(t), &forestbusv1.GetMessagesRequest{Topic: "default", Id: 1, Quantity: 0})
	assert.Equal(t, codes.InvalidArgument, status.Code(err), "%v", err)
	polled := make(chan *forestbusv1.GetMessagesResponse, 1)
	go func() {
		resp, err := bus.GetMessages(testCtx(t), &forestbusv1.GetMessagesRequest{Topic: "default", Id: total + 1, Quantity: 10, Wait: true})
		assert.NoError(t, err)
		polled <- resp
	}()
	require.Eventually(t, func() bool { return n.LongPolls() == 1 }, 10*time.Second, time.Millisecond)
	send(t, c, "default", payloads("m", total+1, 3))
	assert.Equal(t, payloads("m", total+1, 3), (<-polled).GetMessages())

	assert.Zero(t, fastcodec.Lent(), "answers lent to the codec and never given back")
}

// TestGetMessagesLongPollEndsAtShutdown: shutdown ends a waiting
// GetMessages with an empty answer at the asked ID, as the wait cap does,
// and its read buffer goes back.
func TestGetMessagesLongPollEndsAtShutdown(t *testing.T) {
	n := servertest.StartNode(t)
	c := client.New("test", []string{n.Addr()})
	t.Cleanup(c.Close)
	bus := dialBus(t, n.Addr())
	send(t, c, "default", payloads("m", 1, 3))
	type answer struct {
		resp *forestbusv1.GetMessagesResponse
		err  error
	}
	polled := make(chan answer, 1)
	go func() {
		resp, err := bus.GetMessages(testCtx(t), &forestbusv1.GetMessagesRequest{Topic: "default", Id: 4, Quantity: 10, Wait: true})
		polled <- answer{resp, err}
	}()
	require.Eventually(t, func() bool { return n.LongPolls() == 1 }, 10*time.Second, time.Millisecond)
	stopped := make(chan struct{})
	go func() { n.Stop(); close(stopped) }()
	a := <-polled
	require.NoError(t, a.err)
	assert.Empty(t, a.resp.GetMessages())
	assert.Equal(t, int64(4), a.resp.GetNextId())
	assert.Equal(t, int64(3), a.resp.GetCommitId())
	<-stopped
	assert.Zero(t, fastcodec.Lent())
}

// TestWaiterCapCountsOnlyWaits: the long-poll cap counts calls waiting at
// the tail. A call with wait set and a message at its id answers at once,
// also when the cap is full (it was counted, and refused, before reading).
func TestWaiterCapCountsOnlyWaits(t *testing.T) {
	n := servertest.StartNode(t)
	c := client.New("test", []string{n.Addr()})
	t.Cleanup(c.Close)
	send(t, c, "default", payloads("m", 1, 3))
	svc, bus := ownService(t, n, func(c *api.Config) { c.MaxWaiters = 1 })

	ctx, cancel := context.WithCancel(testCtx(t))
	defer cancel()
	polled := make(chan error, 1)
	go func() {
		_, err := bus.GetMessages(ctx, &forestbusv1.GetMessagesRequest{Topic: "default", Id: 4, Quantity: 1, Wait: true})
		polled <- err
	}()
	require.Eventually(t, func() bool { return svc.Waiters() == 1 }, 10*time.Second, time.Millisecond)

	resp, err := bus.GetMessages(testCtx(t), &forestbusv1.GetMessagesRequest{Topic: "default", Id: 1, Quantity: 3, Wait: true})
	require.NoError(t, err, "a message at id: no wait")
	assert.Equal(t, payloads("m", 1, 3), resp.GetMessages())
	_, err = bus.GetMessages(testCtx(t), &forestbusv1.GetMessagesRequest{Topic: "default", Id: 4, Quantity: 1, Wait: true})
	assert.Equal(t, codes.ResourceExhausted, status.Code(err), "a second wait at the tail: %v", err)
	cancel()
	<-polled
}
