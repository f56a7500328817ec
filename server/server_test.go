package server_test

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	forestbusv1 "github.com/forestbus/forestbus/gen/forestbus/v1"
	"github.com/forestbus/forestbus/server"
	"github.com/forestbus/forestbus/server/servertest"
	"github.com/forestbus/forestbus/server/transport"
)

type conn struct {
	bus   forestbusv1.ForestBusServiceClient
	admin forestbusv1.AdminServiceClient
}

func dial(t *testing.T, n *servertest.Node) conn {
	t.Helper()
	return dialAddr(t, n.Addr())
}

// dialAddr is dial for the node at addr.
func dialAddr(t *testing.T, addr string) conn {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20), grpc.MaxCallSendMsgSize(64<<20)))
	require.NoError(t, err)
	t.Cleanup(func() { cc.Close() })
	return conn{forestbusv1.NewForestBusServiceClient(cc), forestbusv1.NewAdminServiceClient(cc)}
}

func dialB(b *testing.B, n *servertest.Node) forestbusv1.ForestBusServiceClient {
	cc, err := grpc.NewClient(n.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cc.Close() })
	return forestbusv1.NewForestBusServiceClient(cc)
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func batch(prefix string, n int) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		out[i] = fmt.Appendf(nil, "%s-%d", prefix, i)
	}
	return out
}

func send(t *testing.T, c conn, topic string, msgs [][]byte, wait bool) *forestbusv1.SendMessagesResponse {
	t.Helper()
	resp, err := c.bus.SendMessages(ctxT(t), &forestbusv1.SendMessagesRequest{Topic: topic, Messages: msgs, WaitForCommit: wait})
	require.NoError(t, err)
	return resp
}

// readAll reads [from, to] with the given quantity per call.
func readAll(t *testing.T, c conn, topic string, from, to int64, q int32) [][]byte {
	t.Helper()
	var out [][]byte
	id := from
	for id <= to {
		resp, err := c.bus.GetMessages(ctxT(t), &forestbusv1.GetMessagesRequest{Topic: topic, Id: id, Quantity: q})
		require.NoError(t, err)
		require.NotEmpty(t, resp.Messages, "no messages at id %d (commit %d)", id, resp.CommitId)
		require.Equal(t, id+int64(len(resp.Messages)), resp.NextId)
		out = append(out, resp.Messages...)
		id = resp.NextId
	}
	return out
}

func TestSendAndGet(t *testing.T) {
	for _, mode := range []server.SyncMode{server.SyncFsync, server.SyncOS} {
		t.Run(string(mode), func(t *testing.T) {
			n := servertest.StartNode(t, servertest.WithSync(mode))
			c := dial(t, n)
			var want [][]byte
			next := int64(1)
			for i, size := range []int{1, 7, 100, 3} {
				msgs := batch(fmt.Sprint("b", i), size)
				resp := send(t, c, "default", msgs, i%2 == 0)
				assert.Equal(t, next, resp.FirstId, "IDs are contiguous")
				assert.Equal(t, int32(size), resp.Count)
				next += int64(size)
				want = append(want, msgs...)
			}
			// Every message is committed once a wait_for_commit send returned
			// after it; the last send did not wait, so wait for it by polling.
			require.Eventually(t, func() bool {
				d, err := c.bus.GetTopicDetails(ctxT(t), &forestbusv1.GetTopicDetailsRequest{Topic: "default"})
				return err == nil && d.CommitId == next-1
			}, 10*time.Second, 5*time.Millisecond)
			for _, q := range []int32{1, 3, 500} {
				got := readAll(t, c, "default", 1, next-1, q)
				assert.Equal(t, want, got, "quantity %d", q)
			}
			d, err := c.bus.GetTopicDetails(ctxT(t), &forestbusv1.GetTopicDetailsRequest{Topic: "default"})
			require.NoError(t, err)
			assert.Equal(t, int64(1), d.FirstId)
			assert.Equal(t, next-1, d.LastId)
			assert.Equal(t, "n1", d.Leader)
		})
	}
}

// TestGetMessagesReadAhead: an answer holds ReadAheadBytes (framing counted) when
// that much is committed, whatever quantity asked for, ending on a stored
// batch; with read-ahead off it ends at the first batch boundary at or after
// quantity; MaxReadBytes caps both.
func TestGetMessagesReadAhead(t *testing.T) {
	// Ten batches of 100 messages of 1,000 bytes: 100,000 bytes per batch.
	fill := func(t *testing.T, c conn) {
		for b := range 10 {
			msgs := make([][]byte, 100)
			for i := range msgs {
				msgs[i] = bytes.Repeat([]byte{byte(b)}, 1000)
			}
			send(t, c, "default", msgs, true)
		}
	}
	// get returns how many messages an answer holds.
	get := func(t *testing.T, c conn, id int64, q int32) int {
		resp, err := c.bus.GetMessages(ctxT(t), &forestbusv1.GetMessagesRequest{Topic: "default", Id: id, Quantity: q})
		require.NoError(t, err)
		require.Equal(t, id+int64(len(resp.Messages)), resp.NextId)
		return len(resp.Messages)
	}
	t.Run("on", func(t *testing.T) {
		c := dial(t, servertest.StartNode(t, servertest.WithConfig(func(c *server.Config) { c.ReadAheadBytes = 250_000 })))
		fill(t, c)
		// 250,000 bytes end inside the third batch: the answer finishes it.
		assert.Equal(t, 300, get(t, c, 1, 1))
		assert.Equal(t, 250, get(t, c, 51, 1))  // from mid-batch: 50 + 100 + 100 messages
		assert.Equal(t, 500, get(t, c, 1, 450)) // quantity beyond the fill wins
		assert.Equal(t, 100, get(t, c, 901, 1)) // the tail: what there is
	})
	t.Run("off", func(t *testing.T) {
		c := dial(t, servertest.StartNode(t, servertest.WithConfig(func(c *server.Config) { c.ReadAheadBytes = -1 })))
		fill(t, c)
		assert.Equal(t, 100, get(t, c, 1, 1))
		assert.Equal(t, 50, get(t, c, 51, 1))
		assert.Equal(t, 200, get(t, c, 1, 101))
	})
	t.Run("capped by MaxReadBytes", func(t *testing.T) {
		c := dial(t, servertest.StartNode(t, servertest.WithConfig(func(c *server.Config) { c.MaxReadBytes = 150_000 })))
		fill(t, c)
		// The default read-ahead (3 MiB) asks for more than the cap allows;
		// each 1,000-byte message counts 1,003 with its framing.
		assert.Equal(t, 149, get(t, c, 1, 1))
	})
}

// TestAnswersFitDefaultReceiveLimit: a client with gRPC's default 4 MiB
// receive limit (grpcurl, grpc-js, Python, Java) reads a topic from a node
// with the default limits, however many messages it asks for: the cap
// counts each message's framing, so an answer of small messages (20 bytes,
// 22 on the wire) stays under 4 MiB too. (TestReadLimitsCountFraming in
// commitlog takes the count down to 1-byte messages.)
func TestAnswersFitDefaultReceiveLimit(t *testing.T) {
	n := servertest.StartNode(t)
	c := dial(t, n) // sends
	cc, err := grpc.NewClient(n.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { cc.Close() })
	plain := forestbusv1.NewForestBusServiceClient(cc)
	ctx := ctxT(t)
	for _, tc := range []struct {
		topic   string
		size    int // bytes per message
		batches int // of 1,000,000 bytes of payload
	}{{"kb", 1000, 5}, {"small", 20, 5}} {
		_, err := c.admin.CreateTopic(ctx, &forestbusv1.CreateTopicRequest{Name: tc.topic})
		require.NoError(t, err)
		var sent int64
		for range tc.batches {
			msgs := make([][]byte, 1_000_000/tc.size)
			for i := range msgs {
				msgs[i] = bytes.Repeat([]byte{'m'}, tc.size)
			}
			send(t, c, tc.topic, msgs, true)
			sent += int64(len(msgs))
		}
		for _, q := range []int32{1, 500, math.MaxInt32} {
			resp, err := plain.GetMessages(ctx, &forestbusv1.GetMessagesRequest{Topic: tc.topic, Id: 1, Quantity: q})
			require.NoError(t, err, "%s, quantity %d", tc.topic, q)
			require.NotEmpty(t, resp.Messages)
			assert.Less(t, proto.Size(resp), 4<<20, "%s, quantity %d", tc.topic, q)
			assert.Less(t, int64(len(resp.Messages)), sent, "%s, quantity %d: capped", tc.topic, q)
		}
	}
}

func TestGetMessagesSemantics(t *testing.T) {
	n := servertest.StartNode(t, servertest.WithMaxWait(200*time.Millisecond))
	c := dial(t, n)
	ctx := ctxT(t)

	// Empty topic: nothing, next_id 1.
	resp, err := c.bus.GetMessages(ctx, &forestbusv1.GetMessagesRequest{Topic: "default", Id: 1, Quantity: 10})
	require.NoError(t, err)
	assert.Empty(t, resp.Messages)
	assert.Equal(t, int64(1), resp.NextId)

	send(t, c, "default", batch("m", 5), true)

	t.Run("id 0 reads as 1", func(t *testing.T) {
		resp, err := c.bus.GetMessages(ctx, &forestbusv1.GetMessagesRequest{Topic: "default", Id: 0, Quantity: 2})
		require.NoError(t, err)
		require.NotEmpty(t, resp.Messages)
		assert.Equal(t, []byte("m-0"), resp.Messages[0])
	})
	t.Run("mid batch start", func(t *testing.T) {
		resp, err := c.bus.GetMessages(ctx, &forestbusv1.GetMessagesRequest{Topic: "default", Id: 3, Quantity: 100})
		require.NoError(t, err)
		assert.Equal(t, [][]byte{[]byte("m-2"), []byte("m-3"), []byte("m-4")}, resp.Messages)
		assert.Equal(t, int64(6), resp.NextId)
		assert.Equal(t, int64(5), resp.CommitId)
	})
	t.Run("at the tail without wait", func(t *testing.T) {
		resp, err := c.bus.GetMessages(ctx, &forestbusv1.GetMessagesRequest{Topic: "default", Id: 6, Quantity: 1})
		require.NoError(t, err)
		assert.Empty(t, resp.Messages)
		assert.Equal(t, int64(6), resp.NextId)
	})
	t.Run("wait cap returns empty", func(t *testing.T) {
		resp, err := c.bus.GetMessages(ctx, &forestbusv1.GetMessagesRequest{Topic: "default", Id: 6, Quantity: 1, Wait: true})
		require.NoError(t, err)
		assert.Empty(t, resp.Messages)
		assert.Equal(t, int64(6), resp.NextId)
	})
	t.Run("long poll wakes on commit", func(t *testing.T) {
		n2 := servertest.StartNode(t) // 30 s cap: the wake must come from the commit
		c2 := dial(t, n2)
		got := make(chan *forestbusv1.GetMessagesResponse, 1)
		errc := make(chan error, 1)
		go func() {
			resp, err := c2.bus.GetMessages(ctx, &forestbusv1.GetMessagesRequest{Topic: "default", Id: 1, Quantity: 10, Wait: true})
			if err != nil {
				errc <- err
				return
			}
			got <- resp
		}()
		send(t, c2, "default", [][]byte{[]byte("hello")}, true)
		select {
		case resp := <-got:
			assert.Equal(t, [][]byte{[]byte("hello")}, resp.Messages)
			assert.Equal(t, int64(2), resp.NextId)
		case err := <-errc:
			t.Fatal(err)
		case <-ctx.Done():
			t.Fatal("long poll did not return")
		}
	})
}

func TestReadCaps(t *testing.T) {
	n := servertest.StartNode(t, servertest.WithConfig(func(c *server.Config) { c.MaxReadBytes = 1000 }))
	c := dial(t, n)
	big := [][]byte{make([]byte, 600), make([]byte, 600), make([]byte, 600)}
	send(t, c, "default", big, true)
	resp, err := c.bus.GetMessages(ctxT(t), &forestbusv1.GetMessagesRequest{Topic: "default", Id: 1, Quantity: 100})
	require.NoError(t, err)
	assert.NotEmpty(t, resp.Messages, "at least one message even when it alone nears the cap")
	assert.Less(t, len(resp.Messages), 3, "the byte cap applies")
	assert.Equal(t, int64(1+len(resp.Messages)), resp.NextId)
}

func TestRestartKeepsCommittedReadable(t *testing.T) {
	n := servertest.StartNode(t, servertest.WithSegmentBytes(4096))
	c := dial(t, n)
	var want [][]byte
	for i := 0; i < 30; i++ {
		msgs := batch(fmt.Sprint("r", i), 20)
		send(t, c, "default", msgs, true)
		want = append(want, msgs...)
	}
	n.Restart()
	c = dial(t, n)
	// Readable at once: no new message needed to learn the commit point.
	d, err := c.bus.GetTopicDetails(ctxT(t), &forestbusv1.GetTopicDetailsRequest{Topic: "default"})
	require.NoError(t, err)
	assert.Equal(t, int64(len(want)), d.CommitId)
	assert.Equal(t, want, readAll(t, c, "default", 1, int64(len(want)), 500))
	// IDs continue after the restart.
	resp := send(t, c, "default", [][]byte{[]byte("after")}, true)
	assert.Equal(t, int64(len(want)+1), resp.FirstId)
}

// TestUpdateSegmentBytesReachesRunningLog: a topic's new segment size
// applies to its running log at once, not from the node's next restart
// (nodes rolled at different sizes until each restarted).
func TestUpdateSegmentBytesReachesRunningLog(t *testing.T) {
	ctx := ctxT(t)
	n := servertest.StartNode(t, servertest.WithConfig(func(c *server.Config) { c.MinTopicSegmentBytes = 4096 }))
	c := dial(t, n)
	_, err := c.admin.CreateTopic(ctx, &forestbusv1.CreateTopicRequest{Name: "t", Settings: &forestbusv1.TopicSettings{SegmentBytes: 1 << 20}})
	require.NoError(t, err)
	tp, err := n.Registry().Get("t")
	require.NoError(t, err)
	msg := bytes.Repeat([]byte("x"), 1000)
	send(t, c, "t", [][]byte{msg, msg}, true)
	require.Len(t, tp.Group.Log().Segments(), 1)
	_, err = c.admin.UpdateTopic(ctx, &forestbusv1.UpdateTopicRequest{Name: "t", Settings: &forestbusv1.TopicSettings{SegmentBytes: 4096}})
	require.NoError(t, err)
	for range 20 {
		send(t, c, "t", [][]byte{msg, msg}, true)
	}
	assert.Greater(t, len(tp.Group.Log().Segments()), 5, "rolled at 4 KiB without a restart")
}

// TestTopicSegmentFloor: a client may not give a topic segments smaller
// than the node's MinTopicSegmentBytes (1 MiB by default), in a create or
// an update; a node configured lower accepts them. A topic created with
// smaller segments before the floor rose keeps them, and its other
// settings can still be updated with its segment size resent unchanged
// (as fbctl does).
func TestTopicSegmentFloor(t *testing.T) {
	ctx := ctxT(t)
	c := dial(t, servertest.StartNode(t))
	for _, size := range []int64{4096, server.DefaultMinTopicSegmentBytes - 1} {
		_, err := c.admin.CreateTopic(ctx, &forestbusv1.CreateTopicRequest{Name: "small", Settings: &forestbusv1.TopicSettings{SegmentBytes: size}})
		assert.Equal(t, codes.InvalidArgument, status.Code(err), "create with %d: %v", size, err)
		assert.ErrorContains(t, err, "at least 1048576")
	}
	_, err := c.admin.CreateTopic(ctx, &forestbusv1.CreateTopicRequest{Name: "small", Settings: &forestbusv1.TopicSettings{SegmentBytes: server.DefaultMinTopicSegmentBytes}})
	require.NoError(t, err)
	_, err = c.admin.UpdateTopic(ctx, &forestbusv1.UpdateTopicRequest{Name: "small", Settings: &forestbusv1.TopicSettings{SegmentBytes: 4096}})
	assert.Equal(t, codes.InvalidArgument, status.Code(err), "update: %v", err)

	n := servertest.StartNode(t, servertest.WithConfig(func(c *server.Config) { c.MinTopicSegmentBytes = 4096 }))
	low := dial(t, n)
	_, err = low.admin.CreateTopic(ctx, &forestbusv1.CreateTopicRequest{Name: "small", Settings: &forestbusv1.TopicSettings{SegmentBytes: 4096}})
	require.NoError(t, err)
	_, err = low.admin.CreateTopic(ctx, &forestbusv1.CreateTopicRequest{Name: "smaller", Settings: &forestbusv1.TopicSettings{SegmentBytes: 4095}})
	assert.Equal(t, codes.InvalidArgument, status.Code(err), "%v", err)
	send(t, low, "small", batch("s", 3), true)

	// The floor rises to its default: "small" opens with its 4 KiB segments.
	n.Stop()
	n.Cfg.MinTopicSegmentBytes = 0
	n.Start()
	low = dial(t, n)
	_, err = low.admin.UpdateTopic(ctx, &forestbusv1.UpdateTopicRequest{Name: "small", Settings: &forestbusv1.TopicSettings{SegmentBytes: 4096, RetentionSeconds: 3600}})
	require.NoError(t, err)
	_, err = low.admin.UpdateTopic(ctx, &forestbusv1.UpdateTopicRequest{Name: "small", Settings: &forestbusv1.TopicSettings{SegmentBytes: 8192}})
	assert.Equal(t, codes.InvalidArgument, status.Code(err), "a change below the floor: %v", err)
	assert.Len(t, readAll(t, low, "small", 1, 3, 10), 3)
}

func TestAdminTopics(t *testing.T) {
	n := servertest.StartNode(t)
	c := dial(t, n)
	ctx := ctxT(t)
	_, err := c.admin.CreateTopic(ctx, &forestbusv1.CreateTopicRequest{Name: "orders", Settings: &forestbusv1.TopicSettings{SegmentBytes: 1 << 20}})
	require.NoError(t, err)
	list, err := c.admin.ListTopics(ctx, &forestbusv1.ListTopicsRequest{})
	require.NoError(t, err)
	var names []string
	for _, tp := range list.Topics {
		names = append(names, tp.Name)
	}
	assert.Equal(t, []string{"default", "orders"}, names)

	send(t, c, "orders", batch("o", 3), true)
	_, err = c.admin.UpdateTopic(ctx, &forestbusv1.UpdateTopicRequest{Name: "orders", Settings: &forestbusv1.TopicSettings{RetentionSeconds: 3600}})
	require.NoError(t, err)

	// A reader waiting on a topic that is removed gets NOT_FOUND.
	errc := make(chan error, 1)
	go func() {
		_, err := c.bus.GetMessages(ctx, &forestbusv1.GetMessagesRequest{Topic: "orders", Id: 4, Quantity: 1, Wait: true})
		errc <- err
	}()
	_, err = c.admin.RemoveTopic(ctx, &forestbusv1.RemoveTopicRequest{Name: "orders"})
	require.NoError(t, err)
	select {
	case err := <-errc:
		assert.Equal(t, codes.NotFound, status.Code(err), "%v", err)
	case <-ctx.Done():
		t.Fatal("waiting reader not released by topic removal")
	}
	_, err = c.bus.SendMessages(ctx, &forestbusv1.SendMessagesRequest{Topic: "orders", Messages: batch("o", 1)})
	assert.Equal(t, codes.NotFound, status.Code(err))

	// Created again: a new, empty topic whose IDs start at 1, also after a
	// restart (the removed incarnation stays aside).
	_, err = c.admin.CreateTopic(ctx, &forestbusv1.CreateTopicRequest{Name: "orders"})
	require.NoError(t, err)
	assert.Equal(t, int64(1), send(t, c, "orders", batch("x", 2), true).FirstId)
	n.Restart()
	c = dial(t, n)
	assert.Equal(t, int64(3), send(t, c, "orders", batch("y", 1), true).FirstId)
	got := readAll(t, c, "orders", 1, 3, 10)
	assert.Equal(t, [][]byte{[]byte("x-0"), []byte("x-1"), []byte("y-0")}, got)
}

// TestRemovedTopicFilesPurged: a removed topic's files leave the data
// directory once RemovedRetention has passed; a topic created again under
// the name keeps its own.
func TestRemovedTopicFilesPurged(t *testing.T) {
	n := servertest.StartNode(t, servertest.WithConfig(func(c *server.Config) {
		c.RemovedRetention = 200 * time.Millisecond
		c.RetentionInterval = 20 * time.Millisecond
	}))
	c := dial(t, n)
	ctx := ctxT(t)
	_, err := c.admin.CreateTopic(ctx, &forestbusv1.CreateTopicRequest{Name: "orders"})
	require.NoError(t, err)
	send(t, c, "orders", batch("o", 3), true)
	_, err = c.admin.RemoveTopic(ctx, &forestbusv1.RemoveTopicRequest{Name: "orders"})
	require.NoError(t, err)
	_, err = c.admin.CreateTopic(ctx, &forestbusv1.CreateTopicRequest{Name: "orders"})
	require.NoError(t, err)
	send(t, c, "orders", batch("n", 2), true)

	names := func(sub string) []string {
		des, err := os.ReadDir(filepath.Join(n.Cfg.DataDir, sub))
		require.NoError(t, err)
		var out []string
		for _, de := range des {
			if strings.HasPrefix(de.Name(), "orders.") {
				out = append(out, de.Name())
			}
		}
		return out
	}
	require.Eventually(t, func() bool { return len(names("removed")) == 0 }, 15*time.Second, 10*time.Millisecond,
		"removed/ still holds %v", names("removed"))
	assert.Len(t, names("topics"), 1, "the new incarnation's files")
	assert.Equal(t, [][]byte{[]byte("n-0"), []byte("n-1")}, readAll(t, c, "orders", 1, 2, 10))
}

// TestRestartedNodeServesTheCurrentTopic: a node down while a topic was
// removed and created again under the same name restarts with the old
// one in its own metadata log. It serves topic calls only once it has
// caught up with the cluster's metadata (UNAVAILABLE/NO_LEADER before, as
// while cut off): it served the removed topic's messages under the new
// topic's name and IDs (a review found it, at every restart).
func TestRestartedNodeServesTheCurrentTopic(t *testing.T) {
	hub := transport.NewHub()
	c := servertest.NewCluster(t, 3, servertest.WithHub(hub))
	c.WaitTopic("default")
	ctx := ctxT(t)
	up := dial(t, c.Nodes[0])
	_, err := up.admin.CreateTopic(ctx, &forestbusv1.CreateTopicRequest{Name: "x"})
	require.NoError(t, err)
	c.WaitTopic("x")
	send(t, up, "x", batch("old", 3), true)
	down := c.Nodes[2]
	cd := dial(t, down)
	require.Eventually(t, func() bool {
		d, err := cd.bus.GetTopicDetails(ctx, &forestbusv1.GetTopicDetailsRequest{Topic: "x"})
		return err == nil && d.GetCommitId() == 3
	}, 20*time.Second, 10*time.Millisecond, "the old x is on the node that goes down")
	id := down.RaftID()
	down.Stop()
	_, err = up.admin.RemoveTopic(ctx, &forestbusv1.RemoveTopicRequest{Name: "x"})
	require.NoError(t, err)
	_, err = up.admin.CreateTopic(ctx, &forestbusv1.CreateTopicRequest{Name: "x"})
	require.NoError(t, err)
	send(t, up, "x", batch("new", 3), true)

	hub.Isolate(id) // it comes back cut off
	down.Start()
	_, err = cd.bus.GetMessages(ctx, &forestbusv1.GetMessagesRequest{Topic: "x", Id: 1, Quantity: 10})
	require.Equal(t, codes.Unavailable, status.Code(err), "%v", err)
	assert.Equal(t, "NO_LEADER", reasonOf(err))
	assert.Equal(t, healthpb.HealthCheckResponse_NOT_SERVING, healthOf(t, down), "health says so too")

	hub.Heal()
	require.Eventually(t, func() bool { return healthOf(t, down) == healthpb.HealthCheckResponse_SERVING }, 20*time.Second, 10*time.Millisecond)
	require.Eventually(t, func() bool {
		m, err := cd.bus.GetMessages(ctx, &forestbusv1.GetMessagesRequest{Topic: "x", Id: 1, Quantity: 10})
		if err != nil || len(m.GetMessages()) == 0 {
			return false
		}
		require.Equal(t, batch("new", 3), m.GetMessages(), "the restarted node serves the current x")
		return true
	}, 20*time.Second, 10*time.Millisecond)
}

func reasonOf(err error) string {
	st, _ := status.FromError(err)
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			return info.GetReason()
		}
	}
	return ""
}

func TestBadInput(t *testing.T) {
	n := servertest.StartNode(t, servertest.WithConfig(func(c *server.Config) {
		c.MaxMessageBytes = 100
		c.MaxBatchBytes = 250
	}))
	c := dial(t, n)
	base := ctxT(t)
	wrongCluster := metadata.AppendToOutgoingContext(base, "forestbus-cluster-id", "other")
	rightCluster := metadata.AppendToOutgoingContext(base, "forestbus-cluster-id", "test")
	sendReq := func(topic string, msgs [][]byte) *forestbusv1.SendMessagesRequest {
		return &forestbusv1.SendMessagesRequest{Topic: topic, Messages: msgs}
	}
	cases := []struct {
		name   string
		call   func() error
		code   codes.Code
		reason string
	}{
		{"unknown topic send", func() error { _, err := c.bus.SendMessages(base, sendReq("nope", batch("a", 1))); return err }, codes.NotFound, "TOPIC_NOT_FOUND"},
		{"unknown topic get", func() error {
			_, err := c.bus.GetMessages(base, &forestbusv1.GetMessagesRequest{Topic: "nope", Id: 1, Quantity: 1})
			return err
		}, codes.NotFound, "TOPIC_NOT_FOUND"},
		{"unknown topic details", func() error {
			_, err := c.bus.GetTopicDetails(base, &forestbusv1.GetTopicDetailsRequest{Topic: "nope"})
			return err
		}, codes.NotFound, "TOPIC_NOT_FOUND"},
		{"wrong cluster id", func() error {
			_, err := c.bus.SendMessages(wrongCluster, sendReq("default", batch("a", 1)))
			return err
		}, codes.FailedPrecondition, "CLUSTER_ID_MISMATCH"},
		{"empty batch", func() error { _, err := c.bus.SendMessages(base, sendReq("default", nil)); return err }, codes.InvalidArgument, "INVALID_ARGUMENT"},
		{"message too large", func() error {
			_, err := c.bus.SendMessages(base, sendReq("default", [][]byte{make([]byte, 101)}))
			return err
		}, codes.InvalidArgument, "MESSAGE_TOO_LARGE"},
		{"batch too large", func() error {
			_, err := c.bus.SendMessages(base, sendReq("default", [][]byte{make([]byte, 100), make([]byte, 100), make([]byte, 100)}))
			return err
		}, codes.InvalidArgument, "BATCH_TOO_LARGE"},
		{"invalid topic name", func() error { _, err := c.bus.SendMessages(base, sendReq("a/b", batch("a", 1))); return err }, codes.InvalidArgument, "INVALID_ARGUMENT"},
		{"empty topic name", func() error { _, err := c.bus.SendMessages(base, sendReq("", batch("a", 1))); return err }, codes.InvalidArgument, "INVALID_ARGUMENT"},
		{"topic name too long", func() error {
			_, err := c.admin.CreateTopic(base, &forestbusv1.CreateTopicRequest{Name: strings.Repeat("a", 201)})
			return err
		}, codes.InvalidArgument, "INVALID_ARGUMENT"},
		{"negative index", func() error {
			_, err := c.bus.GetMessages(base, &forestbusv1.GetMessagesRequest{Topic: "default", Id: -1, Quantity: 1})
			return err
		}, codes.InvalidArgument, "INVALID_ARGUMENT"},
		{"zero quantity", func() error {
			_, err := c.bus.GetMessages(base, &forestbusv1.GetMessagesRequest{Topic: "default", Id: 1, Quantity: 0})
			return err
		}, codes.InvalidArgument, "INVALID_ARGUMENT"},
		{"negative quantity", func() error {
			_, err := c.bus.GetMessages(base, &forestbusv1.GetMessagesRequest{Topic: "default", Id: 1, Quantity: -5})
			return err
		}, codes.InvalidArgument, "INVALID_ARGUMENT"},
		{"topic exists", func() error {
			_, err := c.admin.CreateTopic(base, &forestbusv1.CreateTopicRequest{Name: "default"})
			return err
		}, codes.AlreadyExists, "TOPIC_EXISTS"},
		{"bad settings", func() error {
			_, err := c.admin.CreateTopic(base, &forestbusv1.CreateTopicRequest{Name: "t2", Settings: &forestbusv1.TopicSettings{SegmentBytes: 10}})
			return err
		}, codes.InvalidArgument, "INVALID_ARGUMENT"},
		{"remove unknown", func() error {
			_, err := c.admin.RemoveTopic(base, &forestbusv1.RemoveTopicRequest{Name: "nope"})
			return err
		}, codes.NotFound, "TOPIC_NOT_FOUND"},
		{"update unknown", func() error {
			_, err := c.admin.UpdateTopic(base, &forestbusv1.UpdateTopicRequest{Name: "nope"})
			return err
		}, codes.NotFound, "TOPIC_NOT_FOUND"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			require.Error(t, err)
			assert.Equal(t, tc.code, status.Code(err), "%v", err)
			assert.Equal(t, tc.reason, reasonOf(err))
		})
	}
	// Nothing above changed anything.
	d, err := c.bus.GetTopicDetails(rightCluster, &forestbusv1.GetTopicDetailsRequest{Topic: "default"})
	require.NoError(t, err)
	assert.Equal(t, int64(0), d.LastId)
	list, err := c.admin.ListTopics(base, &forestbusv1.ListTopicsRequest{})
	require.NoError(t, err)
	assert.Len(t, list.Topics, 1)
}

func TestRefusesOtherClustersDataDir(t *testing.T) {
	n := servertest.StartNode(t)
	n.Stop()
	cfg := n.Cfg
	cfg.ClusterID = "another"
	_, err := server.Start(context.Background(), cfg)
	require.ErrorIs(t, err, server.ErrClusterMismatch)
	assert.Contains(t, err.Error(), `cluster "test"`)

	// Another node's directory: the message names the node and the fix.
	cfg = n.Cfg
	cfg.NodeName = "nX"
	_, err = server.Start(context.Background(), cfg)
	require.ErrorIs(t, err, server.ErrClusterMismatch)
	assert.Contains(t, err.Error(), `another cluster or node: `)
	assert.Contains(t, err.Error(), `holds node "n1", this node was started as "nX" (use another -data directory, or -name n1)`)
}

func TestClusterDetails(t *testing.T) {
	n := servertest.StartNode(t)
	c := dial(t, n)
	d, err := c.bus.GetClusterDetails(ctxT(t), &forestbusv1.GetClusterDetailsRequest{})
	require.NoError(t, err)
	assert.Equal(t, "test", d.ClusterId)
	assert.Equal(t, "n1", d.NodeName)
	require.Len(t, d.Nodes, 1)
	assert.Equal(t, n.Addr(), d.Nodes[0].Address)
}

func TestIdempotentRetryStoresOnce(t *testing.T) {
	n := servertest.StartNode(t)
	c := dial(t, n)
	req := &forestbusv1.SendMessagesRequest{Topic: "default", Messages: batch("i", 3), WaitForCommit: true, ProducerId: 77, Sequence: 1}
	first, err := c.bus.SendMessages(ctxT(t), req)
	require.NoError(t, err)
	again, err := c.bus.SendMessages(ctxT(t), req)
	require.NoError(t, err)
	assert.Equal(t, first.FirstId, again.FirstId, "a retry answers the original IDs")
	assert.Equal(t, first.Count, again.Count)
	req.WaitForCommit = false
	again, err = c.bus.SendMessages(ctxT(t), req)
	require.NoError(t, err)
	assert.Equal(t, first.FirstId, again.FirstId)

	next, err := c.bus.SendMessages(ctxT(t), &forestbusv1.SendMessagesRequest{Topic: "default", Messages: batch("j", 1), WaitForCommit: true, ProducerId: 77, Sequence: 2})
	require.NoError(t, err)
	assert.Equal(t, int64(4), next.FirstId, "no IDs were consumed by the duplicates")
	n.Restart()
	c = dial(t, n)
	again, err = c.bus.SendMessages(ctxT(t), &forestbusv1.SendMessagesRequest{Topic: "default", Messages: batch("i", 3), WaitForCommit: true, ProducerId: 77, Sequence: 1})
	require.NoError(t, err)
	assert.Equal(t, first.FirstId, again.FirstId, "deduplicated across a restart")
	assert.Len(t, readAll(t, c, "default", 1, 4, 100), 4)
}

// TestLongPollsAreBounded: with room for two waiting reads, further ones are
// refused with RESOURCE_EXHAUSTED at once, and the two still get the next
// message.
func TestLongPollsAreBounded(t *testing.T) {
	n := servertest.StartNode(t, servertest.WithConfig(func(c *server.Config) { c.MaxWaiters = 2 }))
	c := dial(t, n)
	ctx := ctxT(t)
	errs := make(chan error, 5)
	for i := 0; i < 5; i++ {
		go func() {
			resp, err := c.bus.GetMessages(ctx, &forestbusv1.GetMessagesRequest{Topic: "default", Id: 1, Quantity: 1, Wait: true})
			if err == nil && len(resp.Messages) != 1 {
				err = fmt.Errorf("woke with %d messages", len(resp.Messages))
			}
			errs <- err
		}()
	}
	for i := 0; i < 3; i++ {
		select {
		case err := <-errs:
			require.Equal(t, codes.ResourceExhausted, status.Code(err), "%v", err)
		case <-ctx.Done():
			t.Fatal("extra long polls were not refused")
		}
	}
	send(t, c, "default", [][]byte{[]byte("m")}, true)
	requireWoke(t, ctx, errs, 2)
}

// requireWoke waits for n waiting reads to end, each without error, until
// ctx ends.
func requireWoke(t *testing.T, ctx context.Context, errs <-chan error, n int) {
	t.Helper()
	for range n {
		select {
		case err := <-errs:
			require.NoError(t, err)
		case <-ctx.Done():
			t.Fatal("waiting reads did not wake")
		}
	}
}

// TestConnectionCarriesManyLongPolls: one connection carries more waiting
// calls than 1,000 (what one Client had on a connection of its own; the
// Clients of a process share one), and a send on it still goes through.
func TestConnectionCarriesManyLongPolls(t *testing.T) {
	n := servertest.StartNode(t)
	c := dial(t, n)
	ctx := ctxT(t)
	const polls = 1500
	errs := make(chan error, polls)
	for range polls {
		go func() {
			resp, err := c.bus.GetMessages(ctx, &forestbusv1.GetMessagesRequest{Topic: "default", Id: 1, Quantity: 1, Wait: true})
			if err == nil && len(resp.Messages) != 1 {
				err = fmt.Errorf("woke with %d messages", len(resp.Messages))
			}
			errs <- err
		}()
	}
	var early error // a poll that ended before the send
	require.Eventually(t, func() bool {
		select {
		case early = <-errs:
			return true
		default:
			return n.LongPolls() == polls
		}
	}, 15*time.Second, 5*time.Millisecond, "long polls waiting on the node")
	require.NoError(t, early, "a long poll ended before the send")
	send(t, c, "default", [][]byte{[]byte("m")}, true)
	requireWoke(t, ctx, errs, polls)
}

// TestMaxStreamsPerConn: a connection carries at most MaxStreamsPerConn
// calls at once; a call beyond them waits for one to end, and another
// connection is not held back.
func TestMaxStreamsPerConn(t *testing.T) {
	n := servertest.StartNode(t, servertest.WithConfig(func(c *server.Config) { c.MaxStreamsPerConn = 2 }))
	c := dial(t, n)
	ctx := ctxT(t)
	errs := make(chan error, 2)
	for range 2 {
		go func() {
			_, err := c.bus.GetMessages(ctx, &forestbusv1.GetMessagesRequest{Topic: "default", Id: 1, Quantity: 1, Wait: true})
			errs <- err
		}()
	}
	require.Eventually(t, func() bool { return n.LongPolls() == 2 }, 15*time.Second, 5*time.Millisecond)
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	_, err := c.bus.GetTopicDetails(short, &forestbusv1.GetTopicDetailsRequest{Topic: "default"})
	require.Equal(t, codes.DeadlineExceeded, status.Code(err), "a third call on the connection got a stream: %v", err)
	send(t, dial(t, n), "default", [][]byte{[]byte("m")}, true) // another connection
	requireWoke(t, ctx, errs, 2)
	_, err = c.bus.GetTopicDetails(ctx, &forestbusv1.GetTopicDetailsRequest{Topic: "default"})
	require.NoError(t, err, "the streams are free again")
}
