package api_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/forestbus/forestbus/client"
	forestbusv1 "github.com/forestbus/forestbus/gen/forestbus/v1"
	"github.com/forestbus/forestbus/server/servertest"
)

// TestWaitsEndOnARemovedNode: when the cluster removes a node, a long
// poll and a Subscribe stream waiting on it end at once with UNAVAILABLE
// (newer commits are elsewhere), and its health turns NOT_SERVING, also
// after a restart. The poll ran to its wait cap and answered an empty OK,
// the stream waited out its heartbeat, and health said SERVING for ever.
func TestWaitsEndOnARemovedNode(t *testing.T) {
	c := servertest.NewCluster(t, 3, servertest.WithMaxWait(time.Minute))
	c.WaitTopic("default")
	gone, gt, addrs := pickNode(t, c, bystander)
	if gone == nil {
		t.Skip("every node leads a group")
	}
	others := client.New("test", addrs)
	defer others.Close()
	send(t, others, "default", payloads("a", 1, 2))
	require.Eventually(t, func() bool { return gt.Group.CommitID() == 2 }, 20*time.Second, 5*time.Millisecond)

	cc, err := grpc.NewClient("passthrough:///"+gone.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer cc.Close()
	health := healthpb.NewHealthClient(cc)
	// The node and each of its public services report alike (AdminService
	// was unknown to health).
	serving := func() healthpb.HealthCheckResponse_ServingStatus {
		r, err := health.Check(testCtx(t), &healthpb.HealthCheckRequest{})
		require.NoError(t, err)
		for _, svc := range []string{forestbusv1.ForestBusService_ServiceDesc.ServiceName, forestbusv1.AdminService_ServiceDesc.ServiceName} {
			rs, err := health.Check(testCtx(t), &healthpb.HealthCheckRequest{Service: svc})
			require.NoError(t, err, svc)
			require.Equal(t, r.GetStatus(), rs.GetStatus(), svc)
		}
		return r.GetStatus()
	}
	require.Equal(t, healthpb.HealthCheckResponse_SERVING, serving())

	// Both wait at the tail, for up to a minute; the test's calls end in 30 s.
	ctx, cancel := context.WithTimeout(testCtx(t), 30*time.Second)
	defer cancel()
	bus := dialBus(t, gone.Addr())
	polled := make(chan error, 1)
	go func() {
		_, err := bus.GetMessages(ctx, &forestbusv1.GetMessagesRequest{Topic: "default", Id: 3, Quantity: 1, Wait: true})
		polled <- err
	}()
	sub, err := bus.Subscribe(ctx, &forestbusv1.SubscribeRequest{Topic: "default", FromId: 1, HeartbeatMs: 60_000})
	require.NoError(t, err)
	recvN(t, sub, 1, 2)
	require.Eventually(t, func() bool { return gone.LongPolls() == 1 }, 10*time.Second, time.Millisecond)

	admin := adminOf(t, addrs[0])
	require.Eventually(t, func() bool {
		_, err := admin.RemoveNode(ctx, &forestbusv1.RemoveNodeRequest{Name: gone.Cfg.NodeName})
		return err == nil
	}, 20*time.Second, 20*time.Millisecond)

	err = <-polled
	assert.Equal(t, codes.Unavailable, status.Code(err), "the long poll: %v", err)
	_, err = sub.Recv()
	assert.Equal(t, codes.Unavailable, status.Code(err), "the stream: %v", err)
	assert.Equal(t, healthpb.HealthCheckResponse_NOT_SERVING, serving())

	gone.Restart()
	cc2, err := grpc.NewClient("passthrough:///"+gone.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer cc2.Close()
	r, err := healthpb.NewHealthClient(cc2).Check(testCtx(t), &healthpb.HealthCheckRequest{})
	require.NoError(t, err)
	assert.Equal(t, healthpb.HealthCheckResponse_NOT_SERVING, r.GetStatus(), "restarted after its removal")
}

// TestShutdownAnswerAtIDZero: a wait at id 0 (read as 1) that shutdown
// ends answers next_id 1, as one the wait cap ends; it answered 0, which
// is no ID (the original clients read a next ID of 0 as "commit index
// zero after a full cluster restart").
func TestShutdownAnswerAtIDZero(t *testing.T) {
	n := servertest.StartNode(t)
	bus := dialBus(t, n.Addr())
	polled := make(chan *forestbusv1.GetMessagesResponse, 1)
	go func() {
		resp, err := bus.GetMessages(testCtx(t), &forestbusv1.GetMessagesRequest{Topic: "default", Id: 0, Quantity: 1, Wait: true})
		assert.NoError(t, err)
		polled <- resp
	}()
	require.Eventually(t, func() bool { return n.LongPolls() == 1 }, 10*time.Second, time.Millisecond)
	stopped := make(chan struct{})
	go func() { n.Stop(); close(stopped) }()
	resp := <-polled
	<-stopped
	assert.EqualValues(t, 1, resp.GetNextId())
}
