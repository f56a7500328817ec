package transport

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	peerv1 "github.com/forestbus/forestbus/gen/forestbus/peer/v1"
)

func bigQueue(c *Config) { c.QueueSize = 1 << 20 }

// TestGRPCOrderAndBatching sends many groups' messages from node 1 to
// nodes 2 and 3 and checks per group order and that frames batch them.
func TestGRPCOrderAndBatching(t *testing.T) {
	n1 := startNode(t, 1, "c", bigQueue)
	n2 := startNode(t, 2, "c")
	n3 := startNode(t, 3, "c")
	connect(n1, n2, n3)

	const groups, perGroup = 8, 500
	for i := uint64(1); i <= perGroup; i++ {
		for g := range groups {
			group := fmt.Sprintf("topic-%d", g)
			n1.tr.Send(group, []*raftpb.Message{msg(1, 2, i), msg(1, 3, i)})
		}
	}
	for _, n := range []*node{n2, n3} {
		require.Eventually(t, func() bool { return n.h.count() == groups*perGroup }, waitFor, tick)
		for g := range groups {
			got := n.h.group(fmt.Sprintf("topic-%d", g))
			require.Len(t, got, perGroup)
			for i, m := range got {
				require.Equal(t, uint64(i+1), m.GetIndex(), "group %d message %d", g, i)
				assert.Equal(t, n.id, m.GetTo())
				assert.Equal(t, uint64(1), m.GetFrom())
			}
		}
	}
	// Counted after SendMsg returns, possibly after delivery.
	require.Eventually(t, func() bool { return n1.tr.Stats().MessagesSent == 2*groups*perGroup }, waitFor, tick)
	st := n1.tr.Stats()
	assert.Zero(t, st.MessagesDropped)
	assert.Less(t, st.FramesSent, st.MessagesSent/4, "frames should carry many messages")
	assert.Equal(t, uint64(2), st.Connects)
	assert.Equal(t, uint64(groups*perGroup), n2.tr.Stats().MessagesReceived)
	assert.Zero(t, n1.h.totalUnreachable())
}

// TestGRPCBatchesQueuedMessages: messages queued while the stream is
// being set up go out in one frame.
func TestGRPCBatchesQueuedMessages(t *testing.T) {
	n1 := startNode(t, 1, "c")
	// Node 2 holds the handshake until the messages are queued.
	gate := make(chan struct{})
	n2 := startNode(t, 2, "c", func(*Config) {})
	n2.stopServer()
	n2.opts = []grpc.ServerOption{grpc.StreamInterceptor(func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		<-gate
		return h(srv, ss)
	})}
	n2.serve(t, n2.addr)
	n1.tr.AddPeer(2, n2.addr)
	batch := make([]*raftpb.Message, 2000)
	for i := range batch {
		batch[i] = msg(1, 2, uint64(i+1))
	}
	for i := range batch {
		n1.tr.Send("g", batch[i:i+1])
	}
	close(gate)
	// The sender counts a frame after SendMsg returns, which can be after
	// the receiver has stepped it: wait for both.
	require.Eventually(t, func() bool {
		return n2.h.count() == len(batch) && n1.tr.Stats().MessagesSent == uint64(len(batch))
	}, waitFor, tick)
	st := n1.tr.Stats()
	assert.Equal(t, uint64(len(batch)), st.MessagesSent)
	assert.Equal(t, uint64(1), st.FramesSent)
	assert.Equal(t, uint64(1), n2.tr.Stats().FramesReceived)
}

func TestGRPCLargeMessagesSplitFrames(t *testing.T) {
	n1 := startNode(t, 1, "c")
	n2 := startNode(t, 2, "c")
	n1.tr.AddPeer(2, n2.addr)
	// 12 messages of 1 MiB: at most 3 per frame under gRPC's 4 MiB limit.
	var batch []*raftpb.Message
	for i := range 12 {
		m := msg(1, 2, uint64(i+1))
		m.Entries = []*raftpb.Entry{{Index: new(uint64(i + 1)), Term: new(uint64(1)), Data: make([]byte, 1<<20)}}
		batch = append(batch, m)
	}
	n1.tr.Send("g", batch)
	require.Eventually(t, func() bool { return n2.h.count() == len(batch) }, waitFor, tick)
	assert.GreaterOrEqual(t, n1.tr.Stats().FramesSent, uint64(4))
	assert.Zero(t, n1.tr.Stats().MessagesDropped)
}

func TestGRPCHandshakeRejected(t *testing.T) {
	n1 := startNode(t, 1, "c")
	other := startNode(t, 2, "other")
	n1.tr.AddPeer(2, other.addr)
	require.Eventually(t, func() bool {
		n1.tr.Send("g", []*raftpb.Message{msg(1, 2, 1)})
		return n1.h.unreachableCount("g", 2) > 0
	}, waitFor, tick)
	assert.Zero(t, other.h.count())
	assert.Zero(t, n1.tr.Stats().Connects)

	// The status, seen by a raw client.
	conn, err := grpc.NewClient("passthrough:///"+other.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer conn.Close()
	client := peerv1.NewPeerServiceClient(conn)
	for name, hello := range map[string]*peerv1.StreamRequest{
		"cluster": {ClusterId: "c", From: 1, To: 2},
		"to":      {ClusterId: "other", From: 1, To: 3},
	} {
		t.Run(name, func(t *testing.T) {
			stream, err := client.Stream(context.Background())
			require.NoError(t, err)
			_ = stream.Send(hello)
			_, err = stream.CloseAndRecv()
			assert.Equal(t, codes.FailedPrecondition, status.Code(err), "%v", err)
		})
	}
	t.Run("misaddressed message", func(t *testing.T) {
		stream, err := client.Stream(context.Background())
		require.NoError(t, err)
		data, err := protoMarshal(msg(1, 3, 1))
		require.NoError(t, err)
		_ = stream.Send(&peerv1.StreamRequest{ClusterId: "other", From: 1, To: 2, Messages: []*peerv1.RaftMessage{{Group: "g", Message: data}}})
		_, err = stream.CloseAndRecv()
		assert.Equal(t, codes.InvalidArgument, status.Code(err), "%v", err)
	})
	assert.Zero(t, other.h.count())
}

func TestGRPCUnknownPeerAndOverflow(t *testing.T) {
	n1 := startNode(t, 1, "c", func(c *Config) { c.QueueSize = 10 })
	n1.tr.Send("g", []*raftpb.Message{msg(1, 9, 1), msg(1, 9, 2), snapMsg(1, 9)})
	assert.Equal(t, 1, n1.h.unreachableCount("g", 9), "once per Send call and peer")
	assert.Equal(t, []snapReport{{"g", 9, true}}, n1.h.snapReports())

	// A peer that never answers: the queue fills and the rest is dropped
	// inside Send.
	n1.tr.AddPeer(2, "127.0.0.1:1")
	batch := make([]*raftpb.Message, 100)
	for i := range batch {
		batch[i] = msg(1, 2, uint64(i+1))
	}
	n1.tr.Send("h", batch)
	assert.GreaterOrEqual(t, n1.h.unreachableCount("h", 2), 1)
	assert.GreaterOrEqual(t, n1.tr.Stats().MessagesDropped, uint64(90))
}

// oneOfTwoDown starts nodes 1 and 2, has 1 reach 2, takes 2 down with
// down, and sends from 1 until its sender reports 2 unreachable (and backs
// off). It returns the nodes and the index of the last message sent.
func oneOfTwoDown(t *testing.T, down func(*node)) (n1, n2 *node, last uint64) {
	t.Helper()
	n1 = startNode(t, 1, "c")
	n2 = startNode(t, 2, "c")
	connect(n1, n2)
	n1.tr.Send("g", []*raftpb.Message{msg(1, 2, 1)})
	require.Eventually(t, func() bool { return n2.h.count() == 1 }, waitFor, tick)
	down(n2)
	last = 1
	require.Eventually(t, func() bool {
		last++
		n1.tr.Send("g", []*raftpb.Message{msg(1, 2, last)})
		return n1.h.unreachableCount("g", 2) > 0
	}, waitFor, tick)
	return n1, n2, last
}

func TestGRPCPeerDownAndBack(t *testing.T) {
	n1, n2, i := oneOfTwoDown(t, (*node).stopServer)

	// Same address, new server: delivery resumes on a new stream.
	n2.serve(t, n2.addr)
	before := n2.h.count()
	require.Eventually(t, func() bool {
		i++
		n1.tr.Send("g", []*raftpb.Message{msg(1, 2, i)})
		return n2.h.count() > before
	}, waitFor, tick)
	assert.Equal(t, uint64(2), n1.tr.Stats().Connects)

	// Order holds across the reconnect: what arrived is increasing.
	got := n2.h.group("g")
	for k := 1; k < len(got); k++ {
		assert.Less(t, got[k-1].GetIndex(), got[k].GetIndex())
	}
}

func TestGRPCSnapshotReports(t *testing.T) {
	n1 := startNode(t, 1, "c")
	n2 := startNode(t, 2, "c")
	n3 := startNode(t, 3, "c")
	connect(n1, n2, n3)

	n1.tr.Send("g", []*raftpb.Message{snapMsg(1, 2)})
	require.Eventually(t, func() bool { return len(n1.h.snapReports()) == 1 }, waitFor, tick)
	assert.Equal(t, snapReport{"g", 2, false}, n1.h.snapReports()[0])
	require.Eventually(t, func() bool { return n2.h.count() == 1 }, waitFor, tick)
	got := n2.h.group("g")[0]
	assert.Equal(t, raftpb.MessageType_MsgSnap, got.GetType())
	assert.Equal(t, []byte("state"), got.GetSnapshot().GetData())

	// A down peer: the snapshot fails.
	n3.stopServer()
	require.Eventually(t, func() bool {
		n1.tr.Send("s", []*raftpb.Message{snapMsg(1, 3)})
		for _, r := range n1.h.snapReports() {
			if r == (snapReport{"s", 3, true}) {
				return true
			}
		}
		return false
	}, waitFor, tick)
}

// TestGRPCSlowPeer: a peer whose Handler is stuck blocks neither Send nor
// the other peers.
func TestGRPCSlowPeer(t *testing.T) {
	n1 := startNode(t, 1, "c", func(c *Config) { c.QueueSize = 64 })
	n2 := startNode(t, 2, "c")
	n3 := startNode(t, 3, "c")
	gate := make(chan struct{})
	n2.h.gate = gate
	connect(n1, n2, n3)

	// 50 MB for peer 2: more than HTTP/2 flow control lets the stuck
	// receiver buffer, so its stream stalls and its queue overflows.
	const total = 5000
	for i := uint64(1); i <= total; i++ {
		m2 := msg(1, 2, i)
		m2.Entries = []*raftpb.Entry{{Data: make([]byte, 10<<10)}}
		n1.tr.Send("g", []*raftpb.Message{m2, msg(1, 3, i)})
		if i%32 == 0 { // let peer 3 keep up with the small queue
			require.Eventually(t, func() bool { return n3.h.count() >= int(i)-32 }, waitFor, tick)
		}
	}
	require.Eventually(t, func() bool { return n3.h.count() == total }, waitFor, tick)
	assert.Positive(t, n1.h.unreachableCount("g", 2), "the stuck peer's queue overflowed")
	assert.Zero(t, n1.h.unreachableCount("g", 3))
	close(gate)
	require.Eventually(t, func() bool { return n2.h.count() > 0 }, waitFor, tick)
}

func TestGRPCStopLeavesNoGoroutines(t *testing.T) {
	base := runtime.NumGoroutine()
	func() {
		n1 := startNode(t, 1, "c")
		n2 := startNode(t, 2, "c")
		n3 := startNode(t, 3, "c")
		connect(n1, n2, n3)
		for i := uint64(1); i <= 100; i++ {
			for _, n := range []*node{n1, n2, n3} {
				for _, to := range []uint64{1, 2, 3} {
					if to != n.id {
						n.tr.Send("g", []*raftpb.Message{msg(n.id, to, i)})
					}
				}
			}
		}
		for _, n := range []*node{n1, n2, n3} {
			require.Eventually(t, func() bool { return n.h.count() == 200 }, waitFor, tick)
		}
		n1.tr.RemovePeer(2)
		n1.tr.AddPeer(3, n3.addr) // no-op
		n1.tr.AddPeer(3, "127.0.0.1:1")
		for _, n := range []*node{n1, n2, n3} {
			n.stop()
		}
		// Calls after Stop are harmless.
		n1.tr.Send("g", []*raftpb.Message{msg(1, 2, 1)})
		n1.tr.AddPeer(2, n2.addr)
		n1.tr.Stop()
	}()
	require.Eventually(t, func() bool { return runtime.NumGoroutine() <= base+2 }, waitFor, tick,
		"goroutines: %d before", base)
}

// Stop ends the streams peers keep open to the node, so that its server can
// stop gracefully while they stay connected.
func TestGRPCStopEndsInboundStreams(t *testing.T) {
	n1 := startNode(t, 1, "c")
	n2 := startNode(t, 2, "c")
	n2.tr.AddPeer(1, n1.addr)
	n2.tr.Send("g", []*raftpb.Message{msg(2, 1, 1)})
	require.Eventually(t, func() bool { return n1.h.count() == 1 }, waitFor, tick)

	n1.tr.Stop()
	stopped := async(n1.srv.GracefulStop)
	select {
	case <-stopped:
	case <-time.After(waitFor):
		t.Fatal("the server's GracefulStop still waits for a peer's stream after the transport's Stop")
	}
	<-n1.done
	n1.srv = nil
}

// A frame that reaches deliver after Stop (received before it, stepped
// after) is refused, not stepped.
func TestGRPCNoStepAfterStop(t *testing.T) {
	h := newRecorder()
	tr := New(Config{NodeID: 1, ClusterID: "c", Handler: h})
	b, err := protoMarshal(msg(2, 1, 1))
	require.NoError(t, err)
	frame := &peerv1.StreamRequest{Messages: []*peerv1.RaftMessage{{Group: "g", Message: b}}}
	require.NoError(t, tr.deliver(2, frame))
	require.Equal(t, 1, h.count())

	tr.Stop()
	require.Equal(t, codes.Unavailable, status.Code(tr.deliver(2, frame)))
	require.Equal(t, 1, h.count(), "a frame was stepped after Stop")
}

// Stop returns only once the Step in progress on an inbound stream has.
func TestGRPCStopWaitsForStep(t *testing.T) {
	gate := make(chan struct{})
	n1 := startNode(t, 1, "c", func(c *Config) { c.Handler.(*recorder).gate = gate })
	n2 := startNode(t, 2, "c")
	n2.tr.AddPeer(1, n1.addr)
	n2.tr.Send("g", []*raftpb.Message{msg(2, 1, 1)})
	require.Eventually(t, func() bool { return n1.tr.Stats().FramesReceived == 1 }, waitFor, tick)

	stopped := async(n1.tr.Stop)
	select {
	case <-stopped:
		close(gate)
		t.Fatal("Stop returned while a Step was in progress")
	case <-time.After(200 * time.Millisecond): // Stop must still be waiting
	}
	close(gate)
	<-stopped
	require.Equal(t, 1, n1.h.count())
}

// boom is a Handler whose Step panics.
type boom struct{ *recorder }

func (boom) Step(string, *raftpb.Message) { panic("boom") }

// A panic stepping an inbound frame fails that stream (the peer connects
// again), not the node: the frame is received off the handler's goroutine,
// where the server's recovery interceptor cannot catch it.
func TestGRPCPanicInStepFailsTheStream(t *testing.T) {
	n1 := startNode(t, 1, "c", func(c *Config) { c.Handler = boom{newRecorder()} })
	n2 := startNode(t, 2, "c")
	n2.tr.AddPeer(1, n1.addr)
	require.Eventually(t, func() bool {
		n2.tr.Send("g", []*raftpb.Message{msg(2, 1, 1)})
		return n2.tr.Stats().Connects >= 2
	}, waitFor, tick, "the stream did not fail and reconnect")
}

// TestFrameFitsMinRecvMsgSize: a receiver whose gRPC receive limit is
// MinRecvMsgSize takes a frame of several raft messages up to the frame
// cap. A node with a small batch limit used to set its limit below it
// (4×batch + 1 MiB), and refused such frames whole: the messages were lost
// as sent (a review lost 7 of 9).
func TestFrameFitsMinRecvMsgSize(t *testing.T) {
	n1 := startNode(t, 1, "c")
	h := newRecorder()
	n2 := &node{id: 2, tr: New(Config{NodeID: 2, ClusterID: "c", Handler: h}), h: h}
	n2.opts = []grpc.ServerOption{grpc.MaxRecvMsgSize(MinRecvMsgSize)}
	n2.serve(t, "127.0.0.1:0")
	t.Cleanup(n2.stop)
	connect(n1, n2)
	n1.tr.Send("g", []*raftpb.Message{msg(1, 2, 1)})
	require.Eventually(t, func() bool { return n2.h.count() == 1 }, waitFor, tick)

	var batch []*raftpb.Message // 3.75 MiB in all, under maxFrameBytes: one frame
	for i := uint64(2); i < 10; i++ {
		m := msg(1, 2, i)
		m.Entries = []*raftpb.Entry{{Data: make([]byte, 480<<10)}}
		batch = append(batch, m)
	}
	n1.tr.Send("g", batch)
	require.Eventually(t, func() bool { return n2.h.count() == 9 }, waitFor, tick, "messages of a frame lost")
}

// TestAddPeerNewAddressReportsUnsent: what a peer had not sent when its
// address changes is reported (a snapshot as failed, the rest
// unreachable), as after a broken stream: it was dropped silently, and a
// leader waiting for a snapshot's report replicated nothing more to that
// follower (a review found it).
func TestAddPeerNewAddressReportsUnsent(t *testing.T) {
	// A socket that accepts and never speaks HTTP/2: the stream to it is
	// still being set up when the address changes.
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer lis.Close()
	go func() {
		var conns []net.Conn
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
		}
	}()
	n1 := startNode(t, 1, "c")
	n2 := startNode(t, 2, "c")
	n1.tr.AddPeer(2, lis.Addr().String())
	n1.tr.Send("g", []*raftpb.Message{snapMsg(1, 2), msg(1, 2, 7)})
	n1.tr.AddPeer(2, n2.addr) // the member's address changed
	require.Eventually(t, func() bool {
		return len(n1.h.snapReports()) == 1 && n1.h.unreachableCount("g", 2) > 0
	}, waitFor, tick, "snapshot reports %v, unreachable %d", n1.h.snapReports(), n1.h.unreachableCount("g", 2))
	assert.True(t, n1.h.snapReports()[0].failed)

	// The new address works.
	n1.tr.Send("g", []*raftpb.Message{msg(1, 2, 8)})
	require.Eventually(t, func() bool { return n2.h.count() == 1 }, waitFor, tick)
}

// TestSilentStreamEndsAtHandshakeTimeout: a PeerService stream that never
// sends its handshake is ended by the node after handshakeTimeout, instead
// of holding a goroutine and an HTTP/2 stream for the connection's life.
func TestSilentStreamEndsAtHandshakeTimeout(t *testing.T) {
	defer func(d time.Duration) { handshakeTimeout = d }(handshakeTimeout)
	handshakeTimeout = 200 * time.Millisecond
	n := startNode(t, 1, "c")
	cc, err := grpc.NewClient(n.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	st, err := peerv1.NewPeerServiceClient(cc).Stream(ctx)
	require.NoError(t, err)
	err = st.RecvMsg(new(peerv1.StreamResponse)) // sends nothing, waits for the node
	require.Equal(t, codes.DeadlineExceeded, status.Code(err), "%v", err)
	require.NoError(t, ctx.Err(), "ended by the node, not by the test's deadline")
}

// TestGRPCRestartedPeerEndsBackoff: a sender waiting out its reconnect
// backoff (here 30-60 s) towards a peer that went down reconnects as soon
// as the restarted peer opens a stream to this node, so that what this
// node sends it next (a leader's heartbeat, which a restarted node asks
// for) is not dropped for the rest of the backoff.
func TestGRPCRestartedPeerEndsBackoff(t *testing.T) {
	oldMin, oldMax := backoffMin, backoffMax
	backoffMin, backoffMax = 30*time.Second, time.Minute
	t.Cleanup(func() { backoffMin, backoffMax = oldMin, oldMax })
	n1, n2, i := oneOfTwoDown(t, (*node).stop)
	addr2 := n2.addr

	// Node 2 restarts at the same address and sends to node 1.
	h := newRecorder()
	n2 = &node{id: 2, tr: New(Config{NodeID: 2, ClusterID: "c", Handler: h}), h: h}
	n2.serve(t, addr2)
	t.Cleanup(n2.stop)
	n2.tr.AddPeer(1, n1.addr)
	n2.tr.Send("g", []*raftpb.Message{msg(2, 1, 1)})
	require.Eventually(t, func() bool { return len(n1.h.group("g")) > 0 }, waitFor, tick)
	require.Eventually(t, func() bool {
		i++
		n1.tr.Send("g", []*raftpb.Message{msg(1, 2, i)})
		return n2.h.count() > 0
	}, waitFor, tick, "node 1 reaches the restarted node before its backoff ends")
}

// TestGRPCPeerUpFromUnreachablePeer: a stream from a peer that this node
// cannot reach (one-way, or gone again) ends the sender's backoff, but its
// wait for the connection is bounded by peerUpWait: what is queued for the
// peer is reported unreachable then, not after the handshake timeout (here
// a minute). Found by a review (4.9 s at the 5 s default).
func TestGRPCPeerUpFromUnreachablePeer(t *testing.T) {
	old := handshakeTimeout
	handshakeTimeout = time.Minute
	t.Cleanup(func() { handshakeTimeout = old })
	n1, _, _ := oneOfTwoDown(t, (*node).stop)

	// Node 2 opens a stream to node 1 from elsewhere; nothing listens at
	// its address.
	ghost := New(Config{NodeID: 2, ClusterID: "c", Handler: newRecorder()})
	t.Cleanup(ghost.Stop)
	ghost.AddPeer(1, n1.addr)
	ghost.Send("g", []*raftpb.Message{msg(2, 1, 1)})
	require.Eventually(t, func() bool { return len(n1.h.group("g")) > 0 }, waitFor, tick)

	before := n1.h.unreachableCount("g", 2)
	n1.tr.Send("g", []*raftpb.Message{msg(1, 2, 100)})
	require.Eventually(t, func() bool { return n1.h.unreachableCount("g", 2) > before }, waitFor, tick,
		"the message is reported within peerUpWait")
}

// TestGRPCCheckPeer: a node sends its incarnation with every handshake,
// and a peer's CheckPeer can refuse it: nothing it sends is delivered
// (a wiped node's votes must not count), and the refusal is counted.
func TestGRPCCheckPeer(t *testing.T) {
	var seen atomic.Uint64
	refuse := atomic.Bool{}
	n2 := startNode(t, 2, "c", func(c *Config) {
		c.CheckPeer = func(from, inc uint64) error {
			seen.Store(inc)
			if refuse.Load() {
				return errors.New("not you")
			}
			return nil
		}
	})
	n1 := startNode(t, 1, "c", func(c *Config) { c.Incarnation = 0xabc })
	n1.tr.AddPeer(2, n2.addr)
	n1.tr.Send("g", []*raftpb.Message{msg(1, 2, 1)})
	require.Eventually(t, func() bool { return n2.h.count() == 1 }, waitFor, tick)
	assert.Equal(t, uint64(0xabc), seen.Load(), "the handshake carries the incarnation")

	refuse.Store(true)
	n1.tr.RemovePeer(2) // a new stream
	n1.tr.AddPeer(2, n2.addr)
	require.Eventually(t, func() bool {
		n1.tr.Send("g", []*raftpb.Message{msg(1, 2, 2)})
		return n1.h.unreachableCount("g", 2) > 0 && n2.tr.Stats().Refused > 0
	}, waitFor, tick)
	assert.Equal(t, 1, n2.h.count(), "nothing delivered from a refused node")
}

// TestGRPCPeerRemoved: a CheckPeer that says ErrPeerRemoved accepts the
// stream (its messages are delivered: a topic may count the node as a
// voter for a while yet) and tells the node, through OnRemoved.
func TestGRPCPeerRemoved(t *testing.T) {
	n2 := startNode(t, 2, "c", func(c *Config) {
		c.CheckPeer = func(uint64, uint64) error { return fmt.Errorf("%w: node 1", ErrPeerRemoved) }
	})
	told := make(chan uint64, 4)
	n1 := startNode(t, 1, "c", func(c *Config) { c.OnRemoved = func(peer uint64) { told <- peer } })
	n1.tr.AddPeer(2, n2.addr)
	n1.tr.Send("g", []*raftpb.Message{msg(1, 2, 1)})
	require.Eventually(t, func() bool { return n2.h.count() == 1 }, waitFor, tick)
	assert.Equal(t, uint64(2), <-told)
	assert.Zero(t, n2.tr.Stats().Refused)
}

// TestGRPCOnRefused: a node learns when a peer starts refusing its streams
// and when it accepts one again (an operator reset the peer's record), so
// that it can stop serving meanwhile: a refused node otherwise looked
// healthy (review). The first outcome of a peer is reported too: a peer
// that replaces one (a new address) starts with no word of the old one's.
func TestGRPCOnRefused(t *testing.T) {
	old := refusedRetry
	refusedRetry = 50 * time.Millisecond
	t.Cleanup(func() { refusedRetry = old })
	var refuse atomic.Bool
	refuse.Store(true)
	n2 := startNode(t, 2, "c", func(c *Config) {
		c.CheckPeer = func(uint64, uint64) error {
			if refuse.Load() {
				return errors.New("not you")
			}
			return nil
		}
	})
	events := make(chan bool, 16)
	n1 := startNode(t, 1, "c", func(c *Config) {
		c.OnRefused = func(peer uint64, refused bool) {
			assert.Equal(t, uint64(2), peer)
			events <- refused
		}
	})
	next := func() bool {
		select {
		case r := <-events:
			return r
		case <-time.After(waitFor):
			t.Fatal("no OnRefused call")
			return false
		}
	}
	// A new stream, as for a new address; the old peer, retried every
	// 50 ms, reports nothing once removed.
	replace := func(refusing bool) {
		n1.tr.RemovePeer(2)
		refuse.Store(refusing)
		n1.tr.AddPeer(2, n2.addr)
		n1.tr.Send("g", []*raftpb.Message{msg(1, 2, 1)})
	}
	n1.tr.AddPeer(2, n2.addr)
	n1.tr.Send("g", []*raftpb.Message{msg(1, 2, 1)})
	assert.True(t, next(), "refused")
	replace(false)
	assert.False(t, next(), "the new peer reports its first acceptance")
	require.Eventually(t, func() bool {
		n1.tr.Send("g", []*raftpb.Message{msg(1, 2, 2)})
		return n2.h.count() > 0
	}, waitFor, tick)

	replace(true)
	assert.True(t, next(), "refused again")
	refuse.Store(false)
	assert.False(t, next(), "accepted again at the next attempt")
	assert.Empty(t, events, "one call per change")
}

// TestGRPCRefusedRemoved: a CheckPeer error wrapping ErrRefuseRemoved
// refuses the stream (nothing delivered) and tells the node that the
// cluster removed it (OnRemoved): a wiped node the operator removed only
// heard that it was refused, and said so for ever.
func TestGRPCRefusedRemoved(t *testing.T) {
	n2 := startNode(t, 2, "c", func(c *Config) {
		c.CheckPeer = func(uint64, uint64) error { return fmt.Errorf("%w: node 1: wiped", ErrRefuseRemoved) }
	})
	told := make(chan uint64, 4)
	refused := make(chan bool, 4)
	n1 := startNode(t, 1, "c", func(c *Config) {
		c.OnRemoved = func(peer uint64) { told <- peer }
		c.OnRefused = func(_ uint64, r bool) { refused <- r }
	})
	n1.tr.AddPeer(2, n2.addr)
	n1.tr.Send("g", []*raftpb.Message{msg(1, 2, 1)})
	select {
	case peer := <-told:
		assert.Equal(t, uint64(2), peer)
	case <-time.After(waitFor):
		t.Fatal("not told")
	}
	assert.True(t, <-refused)
	assert.Zero(t, n2.h.count())
	assert.NotZero(t, n2.tr.Stats().Refused)
}
