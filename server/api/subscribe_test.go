package api_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/forestbus/forestbus/client"
	forestbusv1 "github.com/forestbus/forestbus/gen/forestbus/v1"
	"github.com/forestbus/forestbus/server/api"
	"github.com/forestbus/forestbus/server/servertest"
	"github.com/forestbus/forestbus/server/transport"
)

// These tests run Subscribe through real gRPC against in-process nodes.

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return metadata.AppendToOutgoingContext(ctx, api.ClusterIDKey, "test")
}

func dialBus(t testing.TB, addr string) forestbusv1.ForestBusServiceClient {
	t.Helper()
	cc, err := grpc.NewClient("passthrough:///"+addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)))
	require.NoError(t, err)
	t.Cleanup(func() { _ = cc.Close() })
	return forestbusv1.NewForestBusServiceClient(cc)
}

func payloads(prefix string, from, n int) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		out[i] = fmt.Appendf(nil, "%s-%d", prefix, from+i)
	}
	return out
}

func send(t testing.TB, c *client.Client, topic string, msgs [][]byte) []int64 {
	t.Helper()
	ids, err := c.SendMessagesContext(testCtx(t), topic, msgs, true)
	require.NoError(t, err)
	return ids
}

type subStream = grpc.ServerStreamingClient[forestbusv1.SubscribeResponse]

// recvN receives until n messages have arrived, checking that every
// response continues at the ID after the previous one (from want on), and
// returns the messages.
func recvN(t testing.TB, s subStream, want int64, n int) [][]byte {
	t.Helper()
	var got [][]byte
	for len(got) < n {
		resp, err := s.Recv()
		require.NoError(t, err)
		require.Equal(t, want, resp.GetFirstId(), "first_id")
		want += int64(len(resp.GetMessages()))
		got = append(got, resp.GetMessages()...)
		require.LessOrEqual(t, want-1, resp.GetCommitId(), "only committed messages")
	}
	require.Len(t, got, n, "more messages than sent")
	return got
}

func reason(t testing.TB, err error) string {
	t.Helper()
	st, ok := status.FromError(err)
	require.True(t, ok, "not a status: %v", err)
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			return info.GetReason()
		}
	}
	return ""
}

// recvErr receives until the stream fails and returns the error.
func recvErr(s subStream) error {
	for {
		if _, err := s.Recv(); err != nil {
			return err
		}
	}
}

func TestSubscribeExistingThenNew(t *testing.T) {
	n := servertest.StartNode(t)
	c := client.New("test", []string{n.Addr()})
	t.Cleanup(c.Close)
	bus := dialBus(t, n.Addr())

	send(t, c, "default", payloads("m", 1, 5))
	s, err := bus.Subscribe(testCtx(t), &forestbusv1.SubscribeRequest{Topic: "default", FromId: 0, MaxBatch: 2})
	require.NoError(t, err)
	got := recvN(t, s, 1, 5)
	assert.Equal(t, payloads("m", 1, 5), got)

	// At the tail: new commits arrive as they happen.
	for i := 6; i <= 30; i += 5 {
		send(t, c, "default", payloads("m", i, 5))
		got = recvN(t, s, int64(i), 5)
		assert.Equal(t, payloads("m", i, 5), got)
	}
}

func TestSubscribeFromMiddleAndBatchCap(t *testing.T) {
	n := servertest.StartNode(t)
	c := client.New("test", []string{n.Addr()})
	t.Cleanup(c.Close)
	bus := dialBus(t, n.Addr())
	send(t, c, "default", payloads("m", 1, 2500))
	send(t, c, "default", payloads("m", 2501, 5000))

	s, err := bus.Subscribe(testCtx(t), &forestbusv1.SubscribeRequest{Topic: "default", FromId: 1001, MaxBatch: 9000})
	require.NoError(t, err)
	resp, err := s.Recv()
	require.NoError(t, err)
	assert.Equal(t, int64(1001), resp.GetFirstId())
	// The rest of the first stored batch (IDs 1001-2500), then on into
	// the 5000-message batch up to the cap (the read's buffer, sized from
	// the first batch, ends before it: the read goes on in a second one).
	require.Len(t, resp.GetMessages(), api.DefaultSubscribeBatch, "max_batch is capped")
	got := resp.GetMessages()
	got = append(got, recvN(t, s, 1001+int64(len(got)), 6500-len(got))...)
	assert.Equal(t, payloads("m", 1001, 6500), got)
}

func TestSubscribeHeartbeat(t *testing.T) {
	n := servertest.StartNode(t)
	c := client.New("test", []string{n.Addr()})
	t.Cleanup(c.Close)
	bus := dialBus(t, n.Addr())
	send(t, c, "default", payloads("m", 1, 3))

	s, err := bus.Subscribe(testCtx(t), &forestbusv1.SubscribeRequest{Topic: "default", FromId: 1, HeartbeatMs: 100})
	require.NoError(t, err)
	recvN(t, s, 1, 3)
	// Nothing commits: heartbeats name the next ID.
	for range 2 {
		resp, err := s.Recv()
		require.NoError(t, err)
		assert.Empty(t, resp.GetMessages())
		assert.Equal(t, int64(4), resp.GetFirstId())
		assert.Equal(t, int64(3), resp.GetCommitId())
	}
}

func TestSubscribeBelowRetention(t *testing.T) {
	n := servertest.StartNode(t, servertest.WithSegmentBytes(4<<10))
	c := client.New("test", []string{n.Addr()})
	t.Cleanup(c.Close)
	for i := 0; i < 40; i++ {
		send(t, c, "default", payloads("r", 1+20*i, 20))
	}
	tp, err := n.Registry().Get("default")
	require.NoError(t, err)
	require.NoError(t, tp.Group.Compact(testCtx(t), tp.Group.Applied()))
	first := int64(tp.Group.Details().FirstID)
	require.Greater(t, first, int64(1), "compaction deleted nothing")

	bus := dialBus(t, n.Addr())
	s, err := bus.Subscribe(testCtx(t), &forestbusv1.SubscribeRequest{Topic: "default", FromId: 1})
	require.NoError(t, err)
	got := recvN(t, s, first, int(800-first+1))
	assert.Equal(t, payloads("r", int(first), int(800-first+1)), got)
}

func TestSubscribeTopicRemoved(t *testing.T) {
	n := servertest.StartNode(t)
	c := client.New("test", []string{n.Addr()})
	t.Cleanup(c.Close)
	require.NoError(t, c.CreateTopic(testCtx(t), "doomed", client.TopicSettings{}))
	send(t, c, "doomed", payloads("d", 1, 2))

	bus := dialBus(t, n.Addr())
	s, err := bus.Subscribe(testCtx(t), &forestbusv1.SubscribeRequest{Topic: "doomed"})
	require.NoError(t, err)
	recvN(t, s, 1, 2) // the stream is live, waiting at the tail
	require.NoError(t, c.RemoveTopic(testCtx(t), "doomed"))
	err = recvErr(s)
	assert.Equal(t, codes.NotFound, status.Code(err), "%v", err)
	assert.Equal(t, "TOPIC_NOT_FOUND", reason(t, err))
}

func TestSubscribeErrors(t *testing.T) {
	n := servertest.StartNode(t)
	bus := dialBus(t, n.Addr())
	for _, tc := range []struct {
		name   string
		ctx    context.Context
		req    *forestbusv1.SubscribeRequest
		code   codes.Code
		reason string
	}{
		{"unknown topic", testCtx(t), &forestbusv1.SubscribeRequest{Topic: "nope"}, codes.NotFound, "TOPIC_NOT_FOUND"},
		{"bad name", testCtx(t), &forestbusv1.SubscribeRequest{Topic: "a/b"}, codes.InvalidArgument, "INVALID_ARGUMENT"},
		{"negative from_id", testCtx(t), &forestbusv1.SubscribeRequest{Topic: "default", FromId: -1}, codes.InvalidArgument, "INVALID_ARGUMENT"},
		{"negative max_batch", testCtx(t), &forestbusv1.SubscribeRequest{Topic: "default", MaxBatch: -1}, codes.InvalidArgument, "INVALID_ARGUMENT"},
		{"negative heartbeat", testCtx(t), &forestbusv1.SubscribeRequest{Topic: "default", HeartbeatMs: -1}, codes.InvalidArgument, "INVALID_ARGUMENT"},
		{"other cluster", metadata.AppendToOutgoingContext(context.Background(), api.ClusterIDKey, "other"),
			&forestbusv1.SubscribeRequest{Topic: "default"}, codes.FailedPrecondition, "CLUSTER_ID_MISMATCH"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(tc.ctx, 10*time.Second)
			defer cancel()
			s, err := bus.Subscribe(ctx, tc.req)
			require.NoError(t, err)
			err = recvErr(s)
			assert.Equal(t, tc.code, status.Code(err), "%v", err)
			assert.Equal(t, tc.reason, reason(t, err))
		})
	}
}

func TestSubscribeShutdown(t *testing.T) {
	n := servertest.StartNode(t)
	c := client.New("test", []string{n.Addr()})
	t.Cleanup(c.Close)
	send(t, c, "default", payloads("m", 1, 1))
	bus := dialBus(t, n.Addr())
	s, err := bus.Subscribe(testCtx(t), &forestbusv1.SubscribeRequest{Topic: "default"})
	require.NoError(t, err)
	recvN(t, s, 1, 1)
	stopped := make(chan struct{})
	go func() { n.Stop(); close(stopped) }()
	err = recvErr(s)
	assert.Equal(t, codes.Unavailable, status.Code(err), "%v", err)
	assert.Equal(t, "SHUTTING_DOWN", reason(t, err))
	<-stopped
}

// ownService serves a second api.Service over the registry of a running
// node, so a test can reach the Service's knobs (and set its Config with
// opts).
func ownService(t *testing.T, n *servertest.Node, opts ...func(*api.Config)) (*api.Service, forestbusv1.ForestBusServiceClient) {
	t.Helper()
	cfg := api.Config{ClusterID: "test", NodeName: "own"}
	for _, o := range opts {
		o(&cfg)
	}
	svc := api.New(cfg, n.Registry())
	srv := grpc.NewServer(svc.ServerOptions()...)
	forestbusv1.RegisterForestBusServiceServer(srv, svc)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(func() {
		svc.BeginShutdown()
		srv.Stop()
	})
	return svc, dialBus(t, lis.Addr().String())
}

func TestSubscribeStreamCap(t *testing.T) {
	n := servertest.StartNode(t)
	svc, bus := ownService(t, n)
	svc.SetMaxSubscribers(1)

	ctx1, cancel1 := context.WithCancel(testCtx(t))
	s1, err := bus.Subscribe(ctx1, &forestbusv1.SubscribeRequest{Topic: "default", HeartbeatMs: 100})
	require.NoError(t, err)
	_, err = s1.Recv() // a heartbeat: the stream is served
	require.NoError(t, err)
	assert.Equal(t, 1, svc.Subscribers())

	s2, err := bus.Subscribe(testCtx(t), &forestbusv1.SubscribeRequest{Topic: "default"})
	require.NoError(t, err)
	err = recvErr(s2)
	assert.Equal(t, codes.ResourceExhausted, status.Code(err), "%v", err)

	cancel1()
	require.Eventually(t, func() bool { return svc.Subscribers() == 0 }, 10*time.Second, time.Millisecond)
	s3, err := bus.Subscribe(testCtx(t), &forestbusv1.SubscribeRequest{Topic: "default", HeartbeatMs: 100})
	require.NoError(t, err)
	_, err = s3.Recv()
	require.NoError(t, err)
}

func TestSubscribeFollowerInCluster(t *testing.T) {
	cl := servertest.NewCluster(t, 3)
	cl.WaitTopic("default")
	c := client.New("test", cl.Addrs())
	t.Cleanup(c.Close)

	streams := make([]subStream, len(cl.Nodes))
	for i, nd := range cl.Nodes {
		s, err := dialBus(t, nd.Addr()).Subscribe(testCtx(t), &forestbusv1.SubscribeRequest{Topic: "default", FromId: 1})
		require.NoError(t, err)
		streams[i] = s
	}
	for i := 1; i <= 100; i += 10 {
		send(t, c, "default", payloads("c", i, 10))
	}
	for i, s := range streams {
		assert.Equal(t, payloads("c", 1, 100), recvN(t, s, 1, 100), "node %d", i)
	}
}

// BenchmarkSubscribe streams 100k prefilled 100-byte messages from one
// node through a raw gRPC stream.
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
		send(b, c, "default", batch)
	}
	bus := dialBus(b, n.Addr())
	b.SetBytes(total * 100)
	b.ResetTimer()
	start := time.Now()
	for b.Loop() {
		ctx, cancel := context.WithCancel(testCtx(b))
		s, err := bus.Subscribe(ctx, &forestbusv1.SubscribeRequest{Topic: "default", FromId: 1})
		require.NoError(b, err)
		got := 0
		for got < total {
			resp, err := s.Recv()
			require.NoError(b, err)
			got += len(resp.GetMessages())
		}
		cancel()
	}
	b.ReportMetric(float64(b.N)*total/time.Since(start).Seconds(), "msgs/s")
}

// TestRemovedAndRecreatedTopic: a node that applies a topic's removal and
// its re-creation together (cut off while both happened) ends a Subscribe,
// and answers a long poll, of the old topic with TOPIC_NOT_FOUND: the new
// topic of the same name numbers from 1 again, and a reader resuming its
// position on it would skip messages. The check looked the name up and
// found the new topic, and the answer was SHUTTING_DOWN, which the Go
// client resumes after (a review found it splicing the new topic's IDs 6
// on onto the old 1–5).
func TestRemovedAndRecreatedTopic(t *testing.T) {
	hub := transport.NewHub()
	cl := servertest.NewCluster(t, 3, servertest.WithHub(hub))
	cl.WaitTopic("default")
	x := cl.Nodes[2]
	var xid uint64
	for _, m := range x.Registry().Members() {
		if m.Name == "n3" {
			xid = m.ID
		}
	}
	require.NotZero(t, xid)
	others := client.New("test", []string{cl.Nodes[0].Addr(), cl.Nodes[1].Addr()})
	t.Cleanup(others.Close)
	require.NoError(t, others.CreateTopic(testCtx(t), "t", client.TopicSettings{}))
	cl.WaitTopic("t")
	send(t, others, "t", payloads("old", 1, 5))
	require.Eventually(t, func() bool {
		tp, err := x.Registry().Get("t")
		return err == nil && tp.Group.CommitID() == 5
	}, 20*time.Second, 5*time.Millisecond)

	bus := dialBus(t, x.Addr())
	// No heartbeat within the test (the node's 30 s cap), nor an expired
	// poll: a cut-off node ends those with NO_LEADER
	// (TestCutOffFollowerSendsReadersElsewhere); here the stream and the
	// poll must end at the removal.
	s, err := bus.Subscribe(testCtx(t), &forestbusv1.SubscribeRequest{Topic: "t", FromId: 1})
	require.NoError(t, err)
	recvN(t, s, 1, 5)
	poll := make(chan error, 1)
	go func() {
		_, err := bus.GetMessages(testCtx(t), &forestbusv1.GetMessagesRequest{Topic: "t", Id: 6, Quantity: 1, Wait: true})
		poll <- err
	}()

	hub.Isolate(xid)
	require.NoError(t, others.RemoveTopic(testCtx(t), "t"))
	require.NoError(t, others.CreateTopic(testCtx(t), "t", client.TopicSettings{}))
	send(t, others, "t", payloads("new", 1, 8))
	hub.Heal()

	last := recvEmptyUntilError(t, s)
	assert.Equal(t, codes.NotFound, status.Code(last), "%v", last)
	assert.Equal(t, "TOPIC_NOT_FOUND", reason(t, last))
	select {
	case err := <-poll:
		assert.Equal(t, codes.NotFound, status.Code(err), "the long poll: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("the long poll of the removed topic still waits")
	}
}

// TestCutOffFollowerSendsReadersElsewhere: a follower cut off from the
// others ends a Subscribe at the tail, and answers an expired long poll,
// with NO_LEADER once it has known no leader for two election timeouts,
// instead of heartbeats and empty answers that keep the reader there while
// the cluster commits on (a review counted 20 heartbeats in 4 s, the
// stream never failing over).
func TestCutOffFollowerSendsReadersElsewhere(t *testing.T) {
	hub := transport.NewHub()
	cl := servertest.NewCluster(t, 3, servertest.WithHub(hub), servertest.WithMaxWait(300*time.Millisecond))
	cl.WaitTopic("default")
	var x *servertest.Node
	var xid uint64
	for _, nd := range cl.Nodes {
		tp, err := nd.Registry().Get("default")
		require.NoError(t, err)
		for _, m := range nd.Registry().Members() {
			if m.Name == nd.Cfg.NodeName && tp.Group.Leader() != m.ID {
				x, xid = nd, m.ID
			}
		}
	}
	require.NotNil(t, x)
	var addrs []string
	for _, nd := range cl.Nodes {
		if nd != x {
			addrs = append(addrs, nd.Addr())
		}
	}
	others := client.New("test", addrs)
	t.Cleanup(others.Close)
	send(t, others, "default", payloads("a", 1, 2))
	xt, err := x.Registry().Get("default")
	require.NoError(t, err)
	require.Eventually(t, func() bool { return xt.Group.CommitID() == 2 }, 20*time.Second, 5*time.Millisecond)

	bus := dialBus(t, x.Addr())
	s, err := bus.Subscribe(testCtx(t), &forestbusv1.SubscribeRequest{Topic: "default", FromId: 1, HeartbeatMs: 100})
	require.NoError(t, err)
	recvN(t, s, 1, 2)
	hub.Isolate(xid)
	send(t, others, "default", payloads("a", 3, 3))

	last := recvEmptyUntilError(t, s)
	assert.Equal(t, codes.Unavailable, status.Code(last), "%v", last)
	assert.Equal(t, "NO_LEADER", reason(t, last))
	_, err = bus.GetMessages(testCtx(t), &forestbusv1.GetMessagesRequest{Topic: "default", Id: 3, Quantity: 1, Wait: true})
	assert.Equal(t, "NO_LEADER", reason(t, err), "%v", err)

	// Committed messages are still served there.
	resp, err := bus.GetMessages(testCtx(t), &forestbusv1.GetMessagesRequest{Topic: "default", Id: 1, Quantity: 2, Wait: true})
	require.NoError(t, err)
	assert.Len(t, resp.GetMessages(), 2)
}

// recvEmptyUntilError reads s until it fails, requiring every response
// before that to hold no message, and returns the error.
func recvEmptyUntilError(t *testing.T, s subStream) error {
	t.Helper()
	for {
		resp, err := s.Recv()
		if err != nil {
			return err
		}
		require.Empty(t, resp.GetMessages(), "a message after the point the stream should end")
	}
}

// TestIdleSubscribersHoldNoReadBuffers: a stream caught up at the tail
// waits without read buffers. They used to stay with the stream for its
// life, as large as the largest stored batch it had read: an idle
// subscriber of a topic with 4 MiB batches held 4 MiB.
func TestIdleSubscribersHoldNoReadBuffers(t *testing.T) {
	n := servertest.StartNode(t)
	c := client.New("test", []string{n.Addr()})
	t.Cleanup(c.Close)
	bus := dialBus(t, n.Addr())
	big := make([][]byte, 8)
	for i := range big {
		big[i] = bytes.Repeat([]byte{byte('a' + i)}, 512<<10)
	}
	send(t, c, "default", big) // one stored batch of 4 MiB

	heap := func() uint64 {
		runtime.GC()
		runtime.GC() // sync.Pool keeps what it held for one collection
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	before := heap()
	const streams = 10
	for range streams {
		s, err := bus.Subscribe(testCtx(t), &forestbusv1.SubscribeRequest{Topic: "default", FromId: 1, HeartbeatMs: 100})
		require.NoError(t, err)
		for got := 0; got < len(big); {
			resp, err := s.Recv()
			require.NoError(t, err)
			got += len(resp.GetMessages())
		}
		resp, err := s.Recv() // a heartbeat: the stream waits at the tail
		require.NoError(t, err)
		require.Empty(t, resp.GetMessages())
	}
	grown := int64(heap()) - int64(before)
	assert.Less(t, grown, int64(streams*(4<<20)/4), "%d idle streams hold %d bytes", streams, grown)
}

// TestSubscribeHeadersAtOnce: a stream started at the tail has its
// response headers before any response (the first heartbeat is the
// long-poll cap away), so a client can tell that the call started.
func TestSubscribeHeadersAtOnce(t *testing.T) {
	n := servertest.StartNode(t)
	bus := dialBus(t, n.Addr())
	ctx, cancel := context.WithTimeout(testCtx(t), 5*time.Second)
	defer cancel()
	s, err := bus.Subscribe(ctx, &forestbusv1.SubscribeRequest{Topic: "default", FromId: 1})
	require.NoError(t, err)
	_, err = s.Header()
	require.NoError(t, err)
	require.NoError(t, ctx.Err(), "the headers came only as the call ended")
}
