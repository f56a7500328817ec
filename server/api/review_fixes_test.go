package api_test

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/forestbus/forestbus/client"
	forestbusv1 "github.com/forestbus/forestbus/gen/forestbus/v1"
	"github.com/forestbus/forestbus/internal/fastcodec"
	"github.com/forestbus/forestbus/server"
	"github.com/forestbus/forestbus/server/api"
	"github.com/forestbus/forestbus/server/replica"
	"github.com/forestbus/forestbus/server/servertest"
	"github.com/forestbus/forestbus/server/topic"
	"github.com/forestbus/forestbus/server/transport"
)

// TestSequenceZeroWithAProducerIsRefused: sequences start at 1. A client
// that sets producer_id and leaves sequence at proto3's 0 would have every
// batch after its first taken for a retry of it: answered, not stored.
func TestSequenceZeroWithAProducerIsRefused(t *testing.T) {
	n := servertest.StartNode(t)
	bus := dialBus(t, n.Addr())
	_, err := bus.SendMessages(testCtx(t), &forestbusv1.SendMessagesRequest{
		Topic: "default", Messages: [][]byte{[]byte("a")}, ProducerId: 42, WaitForCommit: true})
	require.Equal(t, codes.InvalidArgument, status.Code(err), "%v", err)
	assert.ErrorContains(t, err, "sequence")
	r, err := bus.SendMessages(testCtx(t), &forestbusv1.SendMessagesRequest{
		Topic: "default", Messages: [][]byte{[]byte("b"), []byte("c")}, ProducerId: 42, Sequence: 1, WaitForCommit: true})
	require.NoError(t, err)
	assert.Equal(t, int32(2), r.GetCount())
}

func adminOf(t *testing.T, addr string) forestbusv1.AdminServiceClient {
	t.Helper()
	cc, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { _ = cc.Close() })
	return forestbusv1.NewAdminServiceClient(cc)
}

// pickNode returns the first node of c that pick accepts (given its copy
// of topic "default"), that copy, and the other nodes' addresses; a nil
// node when pick accepts none.
func pickNode(t *testing.T, c *servertest.Cluster, pick func(*servertest.Node, *topic.Topic) bool) (*servertest.Node, *topic.Topic, []string) {
	t.Helper()
	var (
		picked *servertest.Node
		tp     *topic.Topic
		others []string
	)
	for _, n := range c.Nodes {
		nt, err := n.Registry().Get("default")
		require.NoError(t, err)
		if picked == nil && pick(n, nt) {
			picked, tp = n, nt
		} else {
			others = append(others, n.Addr())
		}
	}
	return picked, tp, others
}

// bystander accepts a node that leads neither the topic nor the metadata
// group.
func bystander(n *servertest.Node, tp *topic.Topic) bool {
	id := n.RaftID()
	return tp.Group.Leader() != id && n.Registry().Meta().Leader() != id
}

// TestSubscribeEndsOnARemovedNode: a Subscribe stream on a node the
// cluster then removes ends (UNAVAILABLE, so the client goes elsewhere).
// The node still knows its groups' leader, so its heartbeats went on with
// a frozen commit point, and the reader missed every later message.
func TestSubscribeEndsOnARemovedNode(t *testing.T) {
	c := servertest.NewCluster(t, 3)
	c.WaitTopic("default")
	// A node that leads neither the metadata group nor the topic (a
	// leader steps down when removed, and its stream ends anyway).
	gone, _, addrs := pickNode(t, c, bystander)
	if gone == nil {
		t.Skip("every node leads a group")
	}
	others := client.New("test", addrs)
	defer others.Close()
	send(t, others, "default", payloads("a", 1, 2))
	ctx, cancel := context.WithTimeout(testCtx(t), 30*time.Second)
	defer cancel()
	s, err := dialBus(t, gone.Addr()).Subscribe(ctx, &forestbusv1.SubscribeRequest{Topic: "default", FromId: 1, HeartbeatMs: 100})
	require.NoError(t, err)
	recvN(t, s, 1, 2)

	admin := adminOf(t, addrs[0])
	require.Eventually(t, func() bool {
		_, err := admin.RemoveNode(ctx, &forestbusv1.RemoveNodeRequest{Name: gone.Cfg.NodeName})
		return err == nil
	}, 20*time.Second, 20*time.Millisecond)
	for {
		_, err := s.Recv()
		if err != nil {
			require.Equal(t, codes.Unavailable, status.Code(err), "%v", err)
			return
		}
		require.NoError(t, ctx.Err(), "the stream on the removed node runs on")
	}
}

// laggingFollower starts a 3-node cluster and returns its metadata leader
// and a follower that hears from it 300 ms late.
func laggingFollower(t *testing.T) (leader, lag *servertest.Node) {
	t.Helper()
	hub := transport.NewHub()
	c := servertest.NewCluster(t, 3, servertest.WithHub(hub))
	c.WaitTopic("default")
	for _, n := range c.Nodes {
		if n.Registry().Meta().Leader() == n.RaftID() {
			leader = n
		} else {
			lag = n
		}
	}
	require.NotNil(t, leader)
	require.NotNil(t, lag)
	hub.SetDelay(leader.RaftID(), lag.RaftID(), 300*time.Millisecond)
	return leader, lag
}

// TestMembershipCallsOnALaggingFollower: a follower that has not yet
// applied a node's addition confirms the member list with the metadata
// leader before it judges a RemoveNode (it answered NOT_FOUND from its
// own list).
func TestMembershipCallsOnALaggingFollower(t *testing.T) {
	leader, lag := laggingFollower(t)
	_, err := adminOf(t, leader.Addr()).AddNode(testCtx(t), &forestbusv1.AddNodeRequest{Name: "n9", Address: "127.0.0.1:1"})
	require.NoError(t, err)
	_, err = adminOf(t, lag.Addr()).RemoveNode(testCtx(t), &forestbusv1.RemoveNodeRequest{Name: "n9"})
	assert.NoError(t, err)
}

// TestBatchLimitCountsFraming: a batch's messages count towards the max
// batch size with their framing, so a batch of empty messages is not free
// of it (millions of them decoded and stored as one entry); a message
// alone is bounded by the message limit only.
func TestBatchLimitCountsFraming(t *testing.T) {
	n := servertest.StartNode(t, servertest.WithConfig(func(c *server.Config) {
		c.MaxBatchBytes, c.MaxMessageBytes = 64<<10, 64<<10
	}))
	bus := dialBus(t, n.Addr())
	_, err := bus.SendMessages(testCtx(t), &forestbusv1.SendMessagesRequest{Topic: "default", Messages: make([][]byte, 40_000)})
	require.Equal(t, codes.InvalidArgument, status.Code(err), "%v", err)
	assert.ErrorContains(t, err, "40000 messages")
	r, err := bus.SendMessages(testCtx(t), &forestbusv1.SendMessagesRequest{Topic: "default", Messages: make([][]byte, 20_000), WaitForCommit: true})
	require.NoError(t, err, "20,000 empty messages: 40,000 bytes")
	assert.Equal(t, int32(20_000), r.GetCount())
	r, err = bus.SendMessages(testCtx(t), &forestbusv1.SendMessagesRequest{Topic: "default", Messages: [][]byte{make([]byte, 64<<10)}, WaitForCommit: true})
	require.NoError(t, err, "one message of the message limit, the batch limit too")
	assert.Equal(t, int32(1), r.GetCount())
}

// TestListTopicsShowsAcknowledgedUpdates: ListTopics on a node that has
// not yet applied an update acknowledged through the metadata leader
// answered the old settings (fbctl topic update, which reads them and
// sends every one back, then undid the update). It now confirms with the
// leader first.
func TestListTopicsShowsAcknowledgedUpdates(t *testing.T) {
	leader, lag := laggingFollower(t)
	_, err := adminOf(t, leader.Addr()).UpdateTopic(testCtx(t), &forestbusv1.UpdateTopicRequest{Name: "default", Settings: &forestbusv1.TopicSettings{RetentionSeconds: 7200}})
	require.NoError(t, err)
	_, err = adminOf(t, leader.Addr()).CreateTopic(testCtx(t), &forestbusv1.CreateTopicRequest{Name: "fresh"})
	require.NoError(t, err)
	list, err := adminOf(t, lag.Addr()).ListTopics(testCtx(t), &forestbusv1.ListTopicsRequest{})
	require.NoError(t, err)
	got := map[string]int64{}
	for _, tp := range list.GetTopics() {
		got[tp.GetName()] = tp.GetSettings().GetRetentionSeconds()
	}
	assert.Equal(t, map[string]int64{"default": 7200, "fresh": 0}, got)
}

// TestForwardedErrorNamesTheLeader: a follower that forwards a send sets
// forestbus-leader on the leader's error answers too (here
// DUPLICATE_BATCH), not only on its successes, so a client goes to the
// leader next time either way.
func TestForwardedErrorNamesTheLeader(t *testing.T) {
	c := servertest.NewCluster(t, 3)
	c.WaitTopic("default")
	// Through a follower of the moment, as a new producer each round: an
	// election on a loaded machine between the sends would move the
	// leader (and the header with it).
	producer := uint64(0)
	require.Eventually(t, func() bool {
		producer++
		f, _, _ := pickNode(t, c, func(n *servertest.Node, tp *topic.Topic) bool {
			l := tp.Group.Leader()
			return l != 0 && l != n.RaftID()
		})
		if f == nil {
			return false
		}
		bus := dialBus(t, f.Addr())
		var first, second metadata.MD
		_, err := bus.SendMessages(testCtx(t), &forestbusv1.SendMessagesRequest{Topic: "default", Messages: payloads("a", 1, 2), WaitForCommit: true, ProducerId: producer, Sequence: 1}, grpc.Header(&first))
		if err != nil || len(first.Get(api.LeaderKey)) != 1 {
			return false // not forwarded: the leadership moved
		}
		_, err = bus.SendMessages(testCtx(t), &forestbusv1.SendMessagesRequest{Topic: "default", Messages: payloads("b", 1, 3), WaitForCommit: true, ProducerId: producer, Sequence: 1}, grpc.Header(&second))
		if status.Code(err) != codes.AlreadyExists {
			return false
		}
		assert.Equal(t, "DUPLICATE_BATCH", reason(t, err), "%v", err)
		assert.Equal(t, first.Get(api.LeaderKey), second.Get(api.LeaderKey), "the leader's error answer")
		return true
	}, 30*time.Second, 20*time.Millisecond)
}

// rawCodec sends []byte messages as they are, to put on the wire what no
// protobuf library would write; the rest is protobuf.
type rawCodec struct{}

func (rawCodec) Name() string { return "proto" }

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	if b, ok := v.([]byte); ok {
		return mem.BufferSlice{mem.SliceBuffer(b)}, nil
	}
	b, err := proto.Marshal(v.(proto.Message))
	return mem.BufferSlice{mem.SliceBuffer(b)}, err
}

func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	return proto.Unmarshal(data.Materialize(), v.(proto.Message))
}

// TestProduceAnswersANonUTF8Topic: a Produce request whose topic is not
// valid UTF-8 gets its own INVALID_ARGUMENT answer, and the stream goes on.
// Decoding failed on it, which ended the stream with INTERNAL: the
// requests before it, already stored, went unanswered (proto review).
func TestProduceAnswersANonUTF8Topic(t *testing.T) {
	n := servertest.StartNode(t)
	cc, err := grpc.NewClient("passthrough:///"+n.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { _ = cc.Close() })
	st, err := cc.NewStream(testCtx(t), &grpc.StreamDesc{ClientStreams: true, ServerStreams: true},
		"/forestbus.v1.ForestBusService/Produce", grpc.ForceCodecV2(rawCodec{}))
	require.NoError(t, err)
	request := func(id uint64, topic string) []byte {
		batch := protowire.AppendBytes(protowire.AppendTag(nil, 1, protowire.BytesType), []byte(topic))
		batch = protowire.AppendBytes(protowire.AppendTag(batch, 2, protowire.BytesType), []byte("m"))
		batch = protowire.AppendVarint(protowire.AppendTag(batch, 3, protowire.VarintType), 1)
		req := protowire.AppendVarint(protowire.AppendTag(nil, 1, protowire.VarintType), id)
		return protowire.AppendBytes(protowire.AppendTag(req, 2, protowire.BytesType), batch)
	}
	require.NoError(t, st.SendMsg(request(1, "default")))
	require.NoError(t, st.SendMsg(request(2, "bad\xff")))
	require.NoError(t, st.SendMsg(request(3, "default")))
	require.NoError(t, st.CloseSend())
	answers := map[uint64]*forestbusv1.ProduceResponse{}
	for range 3 {
		var resp forestbusv1.ProduceResponse
		require.NoError(t, st.RecvMsg(&resp))
		answers[resp.GetRequestId()] = &resp
	}
	assert.NotNil(t, answers[1].GetResult(), "request 1: %v", answers[1])
	assert.Equal(t, int32(codes.InvalidArgument), answers[2].GetError().GetCode(), "request 2: %v", answers[2])
	assert.Equal(t, "INVALID_ARGUMENT", answers[2].GetError().GetReason())
	assert.NotNil(t, answers[3].GetResult(), "request 3: %v", answers[3])
	var end forestbusv1.ProduceResponse
	assert.ErrorIs(t, st.RecvMsg(&end), io.EOF, "the stream ends OK")
}

// TestNonUTF8TopicIsABadName: a topic name that is not valid UTF-8 is
// refused as a bad name (INVALID_ARGUMENT with its ErrorInfo, naming it)
// by every call that takes one, as by SendMessages. Decoding refused it
// before the handler, and gRPC answered INTERNAL without a reason: a
// server fault, which clients take for "try another node" (review).
func TestNonUTF8TopicIsABadName(t *testing.T) {
	n := servertest.StartNode(t)
	cc, err := grpc.NewClient("passthrough:///"+n.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { _ = cc.Close() })
	// Field 1 is the topic (or the name) of each request below; fields 2
	// and 3 an ID and a quantity where they exist.
	req := protowire.AppendBytes(protowire.AppendTag(nil, 1, protowire.BytesType), []byte("bad\xff"))
	withID := protowire.AppendVarint(protowire.AppendTag(req, 2, protowire.VarintType), 1)
	withID = protowire.AppendVarint(protowire.AppendTag(withID, 3, protowire.VarintType), 1)
	check := func(what string, err error) {
		t.Helper()
		require.Equal(t, codes.InvalidArgument, status.Code(err), "%s: %v", what, err)
		assert.Equal(t, "INVALID_ARGUMENT", reason(t, err), what)
		assert.Contains(t, status.Convert(err).Message(), "bad\uFFFD", "%s names the topic", what)
	}
	check("GetMessages", cc.Invoke(testCtx(t), forestbusv1.ForestBusService_GetMessages_FullMethodName,
		withID, new(forestbusv1.GetMessagesResponse), grpc.ForceCodecV2(rawCodec{})))
	check("GetTopicDetails", cc.Invoke(testCtx(t), forestbusv1.ForestBusService_GetTopicDetails_FullMethodName,
		req, new(forestbusv1.GetTopicDetailsResponse), grpc.ForceCodecV2(rawCodec{})))
	check("CreateTopic", cc.Invoke(testCtx(t), forestbusv1.AdminService_CreateTopic_FullMethodName,
		req, new(forestbusv1.CreateTopicResponse), grpc.ForceCodecV2(rawCodec{})))
	st, err := cc.NewStream(testCtx(t), &grpc.StreamDesc{ServerStreams: true},
		forestbusv1.ForestBusService_Subscribe_FullMethodName, grpc.ForceCodecV2(rawCodec{}))
	require.NoError(t, err)
	require.NoError(t, st.SendMsg(withID))
	require.NoError(t, st.CloseSend())
	check("Subscribe", st.RecvMsg(new(forestbusv1.SubscribeResponse)))
}

// TestMessageCountCaps: a batch holds at most fastcodec.MaxSendMessages
// messages, and a read answers at most replica.MaxReadMessages. Only bytes
// counted before: a request of empty messages (2 bytes each on the wire,
// ~24 bytes of memory each decoded) took a node from 55 MB to 845 MB, and a
// 4 MiB answer held 2 million of them (limits review).
func TestMessageCountCaps(t *testing.T) {
	n := servertest.StartNode(t)
	bus := dialBus(t, n.Addr())
	_, err := bus.SendMessages(testCtx(t), &forestbusv1.SendMessagesRequest{Topic: "default", Messages: make([][]byte, fastcodec.MaxSendMessages+1)})
	assert.Equal(t, "BATCH_TOO_LARGE", reason(t, err), "%v", err)

	const stored = replica.MaxReadMessages + 100
	msgs := make([][]byte, stored)
	for i := range msgs {
		msgs[i] = []byte{'x'}
	}
	_, err = bus.SendMessages(testCtx(t), &forestbusv1.SendMessagesRequest{Topic: "default", Messages: msgs, WaitForCommit: true})
	require.NoError(t, err)
	resp, err := bus.GetMessages(testCtx(t), &forestbusv1.GetMessagesRequest{Topic: "default", Id: 1, Quantity: stored})
	require.NoError(t, err)
	assert.Equal(t, replica.MaxReadMessages, len(resp.GetMessages()))
	assert.Equal(t, int64(replica.MaxReadMessages+1), resp.GetNextId())
	resp, err = bus.GetMessages(testCtx(t), &forestbusv1.GetMessagesRequest{Topic: "default", Id: resp.GetNextId(), Quantity: stored})
	require.NoError(t, err)
	assert.Equal(t, 100, len(resp.GetMessages()), "the rest")
}
