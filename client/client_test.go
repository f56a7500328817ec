package client

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	forestbusv1 "github.com/forestbus/forestbus/gen/forestbus/v1"
	"github.com/forestbus/forestbus/internal/syncbuf"
)

var msgs = [][]byte{[]byte("one"), []byte("two"), []byte("three")}

func TestSendMessagesExpandsIDs(t *testing.T) {
	n := startNode(t)
	var got *forestbusv1.SendMessagesRequest
	n.send = func(_ context.Context, req *forestbusv1.SendMessagesRequest) (*forestbusv1.SendMessagesResponse, error) {
		got = req
		return &forestbusv1.SendMessagesResponse{FirstId: 41, Count: 3}, nil
	}
	c := New("", []string{n.addr})
	defer c.Close()

	ids, err := c.SendMessages("t", msgs, true)
	require.NoError(t, err)
	assert.Equal(t, []int64{41, 42, 43}, ids)
	assert.Equal(t, "t", got.GetTopic())
	assert.True(t, got.GetWaitForCommit())
	assert.Equal(t, msgs, got.GetMessages())
}

func TestSendMessagesRejectsEmptyBatchLocally(t *testing.T) {
	n := startNode(t)
	c := New("", []string{n.addr})
	defer c.Close()
	_, err := c.SendMessagesContext(t.Context(), "t", nil, false)
	require.ErrorIs(t, err, ErrInvalidArgument)
	assert.Zero(t, n.count("send"))
}

func TestSendMessagesCountMismatch(t *testing.T) {
	n := startNode(t)
	n.send = func(context.Context, *forestbusv1.SendMessagesRequest) (*forestbusv1.SendMessagesResponse, error) {
		return &forestbusv1.SendMessagesResponse{FirstId: 1, Count: 1}, nil
	}
	c := New("", []string{n.addr})
	defer c.Close()
	_, err := c.SendMessagesContext(t.Context(), "t", msgs, false)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "stored 1 of 3")
}

func TestFailoverToSecondNode(t *testing.T) {
	n := startNode(t)
	n.send = okSend(1)
	n.get = func(_ context.Context, req *forestbusv1.GetMessagesRequest) (*forestbusv1.GetMessagesResponse, error) {
		return &forestbusv1.GetMessagesResponse{Messages: msgs, NextId: req.GetId() + 3, CommitId: 3}, nil
	}
	dead := deadAddr(t)
	c := New("", []string{dead, n.addr}, WithRetryWindow(0))
	defer c.Close()

	ids, err := c.SendMessages("t", msgs, false)
	require.NoError(t, err)
	assert.Equal(t, []int64{1, 2, 3}, ids)
	assert.Equal(t, n.addr, c.leader("t"), "leader cache follows the node that answered")

	got, next, err := c.GetMessages("t", 1, 10, false)
	require.NoError(t, err)
	assert.Equal(t, msgs, got)
	assert.EqualValues(t, 4, next)

	// Both caches now start at the live node: no more attempts on the dead
	// one are needed, and the calls keep working.
	for range 3 {
		_, err = c.SendMessages("t", msgs[:1], false)
		require.NoError(t, err)
		_, _, err = c.GetMessages("t", 1, 10, false)
		require.NoError(t, err)
	}
	assert.Equal(t, 4, n.count("send"))
	assert.Equal(t, 4, n.count("get"))
}

func TestLeaderHeaderRedirectsLaterSends(t *testing.T) {
	leader := startNode(t)
	leader.send = okSend(100)
	follower := startNode(t)
	// Forwarding, and the header that comes with it, are SendMessages'
	// (a node answers Produce requests it cannot lead with NOT_LEADER).
	leader.unaryOnly, follower.unaryOnly = true, true
	follower.send = func(ctx context.Context, req *forestbusv1.SendMessagesRequest) (*forestbusv1.SendMessagesResponse, error) {
		// A follower forwards to the leader and says who that is.
		require.NoError(t, grpc.SetHeader(ctx, metadata.Pairs(LeaderMetadataKey, leader.addr)))
		return &forestbusv1.SendMessagesResponse{FirstId: 1, Count: int32(len(req.GetMessages()))}, nil
	}
	c := New("", []string{follower.addr, leader.addr})
	defer c.Close()

	_, err := c.SendMessages("t", msgs, false)
	require.NoError(t, err)
	assert.Equal(t, leader.addr, c.leader("t"))

	ids, err := c.SendMessages("t", msgs[:1], false)
	require.NoError(t, err)
	assert.Equal(t, []int64{100}, ids)
	assert.Equal(t, 1, follower.count("send"))
	assert.Equal(t, 1, leader.count("send"))

	// The cache is per topic: another topic starts from the first node.
	_, err = c.SendMessages("other", msgs[:1], false)
	require.NoError(t, err)
	assert.Equal(t, 2, follower.count("send"))
}

func TestNotLeaderHintIsTriedNext(t *testing.T) {
	a, b, leader := startNode(t), startNode(t), startNode(t)
	a.send = func(context.Context, *forestbusv1.SendMessagesRequest) (*forestbusv1.SendMessagesResponse, error) {
		return nil, reasonError(t, codes.FailedPrecondition, "NOT_LEADER", map[string]string{"leader": leader.addr})
	}
	b.send = okSend(1)
	leader.send = okSend(7)
	c := New("", []string{a.addr, b.addr, leader.addr})
	defer c.Close()

	ids, err := c.SendMessages("t", msgs[:1], true)
	require.NoError(t, err)
	assert.Equal(t, []int64{7}, ids)
	assert.Equal(t, 1, a.count("send"))
	assert.Zero(t, b.count("send"), "the hinted leader goes before the rest of the list")
	assert.Equal(t, leader.addr, c.leader("t"))
}

func TestNotLeaderHintOutsideNodeList(t *testing.T) {
	a, leader := startNode(t), startNode(t)
	a.send = func(context.Context, *forestbusv1.SendMessagesRequest) (*forestbusv1.SendMessagesResponse, error) {
		return nil, reasonError(t, codes.FailedPrecondition, "NOT_LEADER", map[string]string{"leader": leader.addr})
	}
	leader.send = okSend(5)
	c := New("", []string{a.addr})
	defer c.Close()
	ids, err := c.SendMessages("t", msgs[:1], true)
	require.NoError(t, err)
	assert.Equal(t, []int64{5}, ids)
}

func TestErrorReasons(t *testing.T) {
	tests := []struct {
		reason   string
		code     codes.Code
		sentinel error
		failover bool
	}{
		{"TOPIC_NOT_FOUND", codes.NotFound, ErrTopicNotFound, false},
		{"TOPIC_EXISTS", codes.AlreadyExists, ErrTopicExists, false},
		{"INVALID_ARGUMENT", codes.InvalidArgument, ErrInvalidArgument, false},
		{"MESSAGE_TOO_LARGE", codes.InvalidArgument, ErrMessageTooLarge, false},
		{"BATCH_TOO_LARGE", codes.InvalidArgument, ErrBatchTooLarge, false},
		{"CLUSTER_ID_MISMATCH", codes.FailedPrecondition, ErrClusterIdMismatch, false},
		{"NOT_LEADER", codes.FailedPrecondition, ErrNotLeader, true},
		{"NO_LEADER", codes.Unavailable, ErrNoLeader, true},
		{"SHUTTING_DOWN", codes.Unavailable, ErrShuttingDown, true},
		{"PROPOSAL_DROPPED", codes.ResourceExhausted, ErrProposalDropped, true},
		{"STORAGE_FAILED", codes.Unavailable, ErrStorageFailed, true},
		{"NODE_NOT_FOUND", codes.NotFound, ErrNodeNotFound, false},
		{"NODE_EXISTS", codes.AlreadyExists, ErrNodeExists, false},
		{"DUPLICATE_BATCH", codes.AlreadyExists, ErrDuplicateBatch, false},
		{"TOO_MANY_TOPICS", codes.ResourceExhausted, ErrTooManyTopics, false},
	}
	covered := make(map[string]bool)
	for _, tt := range tests {
		covered[tt.reason] = true
		t.Run(tt.reason, func(t *testing.T) {
			first, second := startNode(t), startNode(t)
			fail := func(context.Context, *forestbusv1.SendMessagesRequest) (*forestbusv1.SendMessagesResponse, error) {
				return nil, reasonError(t, tt.code, tt.reason, nil)
			}
			first.send, second.send = fail, fail
			c := New("", []string{first.addr, second.addr}, WithRetryWindow(0))
			defer c.Close()

			_, err := c.SendMessagesContext(t.Context(), "t", msgs, false)
			require.ErrorIs(t, err, tt.sentinel)
			var se *StatusError
			require.ErrorAs(t, err, &se)
			assert.Equal(t, tt.code, se.Code)
			assert.Equal(t, tt.reason, se.Reason)
			assert.Equal(t, tt.code, status.Code(se), "StatusError exposes its gRPC status")
			assert.Equal(t, 1, first.count("send"))
			if tt.failover {
				assert.ErrorIs(t, err, ErrNoNodesAvailable)
				assert.Equal(t, 1, second.count("send"), "retryable answers move to the next node")
			} else {
				assert.NotErrorIs(t, err, ErrNoNodesAvailable)
				assert.Zero(t, second.count("send"), "final answers stop at once")
			}
		})
	}
	for v, name := range forestbusv1.ErrorReason_name {
		if v == 0 {
			continue
		}
		reason := strings.TrimPrefix(name, "ERROR_REASON_")
		assert.True(t, covered[reason], "ErrorReason %s has no test row", name)
		assert.NotNil(t, reasonSentinels[reason], "ErrorReason %s has no sentinel", name)
	}
}

func TestErrorsWithoutReason(t *testing.T) {
	tests := []struct {
		code     codes.Code
		failover bool
	}{
		{codes.Unavailable, true},
		{codes.Internal, true},
		{codes.Unknown, true},
		{codes.PermissionDenied, false},
		{codes.Unimplemented, false},
	}
	for _, tt := range tests {
		t.Run(tt.code.String(), func(t *testing.T) {
			first, second := startNode(t), startNode(t)
			fail := func(context.Context, *forestbusv1.SendMessagesRequest) (*forestbusv1.SendMessagesResponse, error) {
				return nil, status.Error(tt.code, "plain")
			}
			first.send, second.send = fail, fail
			c := New("", []string{first.addr, second.addr}, WithRetryWindow(0))
			defer c.Close()
			_, err := c.SendMessagesContext(t.Context(), "t", msgs, false)
			var se *StatusError
			require.ErrorAs(t, err, &se)
			assert.Equal(t, tt.code, se.Code)
			assert.Empty(t, se.Reason)
			assert.Equal(t, tt.failover, errors.Is(err, ErrNoNodesAvailable))
			assert.Equal(t, tt.failover, second.count("send") == 1)
		})
	}
}

func TestLegacyMethodsReturnBareSentinels(t *testing.T) {
	n := startNode(t)
	n.send = func(context.Context, *forestbusv1.SendMessagesRequest) (*forestbusv1.SendMessagesResponse, error) {
		return nil, reasonError(t, codes.NotFound, "TOPIC_NOT_FOUND", nil)
	}
	n.get = func(context.Context, *forestbusv1.GetMessagesRequest) (*forestbusv1.GetMessagesResponse, error) {
		return nil, reasonError(t, codes.FailedPrecondition, "CLUSTER_ID_MISMATCH", nil)
	}
	n.details = func(context.Context, *forestbusv1.GetTopicDetailsRequest) (*forestbusv1.GetTopicDetailsResponse, error) {
		return nil, reasonError(t, codes.Unavailable, "NO_LEADER", nil)
	}
	c := New("c1", []string{n.addr}, WithRetryWindow(0))
	defer c.Close()

	_, err := c.SendMessages("t", msgs, false)
	assert.Equal(t, ErrTopicNotFound, err)
	_, _, err = c.GetMessages("t", 1, 1, false)
	assert.Equal(t, ErrClusterIdMismatch, err)
	_, err = c.GetTopicMaxAvailableIndex("t")
	assert.Equal(t, ErrNoNodesAvailable, err)

	// The context variants keep the detail.
	_, err = c.SendMessagesContext(t.Context(), "t", msgs, false)
	assert.NotEqual(t, ErrTopicNotFound, err)
	assert.ErrorIs(t, err, ErrTopicNotFound)
	assert.Contains(t, err.Error(), n.addr)
}

func TestClusterIDMetadata(t *testing.T) {
	t.Run("sent when set", func(t *testing.T) {
		n := startNode(t)
		n.send = okSend(1)
		c := New("cluster-a", []string{n.addr})
		defer c.Close()
		_, err := c.SendMessages("t", msgs, false)
		require.NoError(t, err)
		assert.Equal(t, []string{"cluster-a"}, n.lastClusterID())
	})
	t.Run("absent when empty", func(t *testing.T) {
		n := startNode(t)
		n.send = okSend(1)
		c := New("", []string{n.addr})
		defer c.Close()
		_, err := c.SendMessages("t", msgs, false)
		require.NoError(t, err)
		assert.Empty(t, n.lastClusterID())
	})
	t.Run("mismatch stops at once", func(t *testing.T) {
		wrong, right := startNode(t), startNode(t)
		wrong.send = func(ctx context.Context, _ *forestbusv1.SendMessagesRequest) (*forestbusv1.SendMessagesResponse, error) {
			return nil, reasonError(t, codes.FailedPrecondition, "CLUSTER_ID_MISMATCH", nil)
		}
		right.send = okSend(1)
		c := New("cluster-a", []string{wrong.addr, right.addr})
		defer c.Close()
		_, err := c.SendMessagesContext(t.Context(), "t", msgs, false)
		require.ErrorIs(t, err, ErrClusterIdMismatch)
		assert.Zero(t, right.count("send"))
	})
	t.Run("cluster details checks the ID", func(t *testing.T) {
		n := startNode(t)
		n.cluster = func(context.Context) (*forestbusv1.GetClusterDetailsResponse, error) {
			return &forestbusv1.GetClusterDetailsResponse{ClusterId: "other", NodeName: "n1"}, nil
		}
		c := New("cluster-a", []string{n.addr})
		defer c.Close()
		_, err := c.ClusterDetails(t.Context())
		require.ErrorIs(t, err, ErrClusterIdMismatch)
	})
}

func TestRetryWindowThenNoNodesAvailable(t *testing.T) {
	n := startNode(t)
	n.send = func(context.Context, *forestbusv1.SendMessagesRequest) (*forestbusv1.SendMessagesResponse, error) {
		return nil, reasonError(t, codes.Unavailable, "NO_LEADER", nil)
	}
	dead := deadAddr(t)
	const window = 300 * time.Millisecond
	c := New("", []string{dead, n.addr}, WithRetryWindow(window))
	defer c.Close()

	start := time.Now()
	_, err := c.SendMessagesContext(t.Context(), "t", msgs, false)
	elapsed := time.Since(start)
	require.ErrorIs(t, err, ErrNoNodesAvailable)
	assert.ErrorIs(t, err, ErrNoLeader, "the last cause is wrapped")
	assert.Contains(t, err.Error(), ErrNoNodesAvailable.Error())
	assert.Contains(t, err.Error(), "NO_LEADER")
	assert.GreaterOrEqual(t, elapsed, window)
	assert.Less(t, elapsed, window+2*time.Second)
	assert.Greater(t, n.count("send"), 1, "several passes were made")

	// The legacy call uses the same window and returns the bare sentinel.
	_, err = c.SendMessages("t", msgs, false)
	assert.Equal(t, ErrNoNodesAvailable, err)
}

func TestRetryUntilContextDeadline(t *testing.T) {
	n := startNode(t)
	n.get = func(context.Context, *forestbusv1.GetMessagesRequest) (*forestbusv1.GetMessagesResponse, error) {
		return nil, reasonError(t, codes.Unavailable, "SHUTTING_DOWN", nil)
	}
	// The retry window is short, but a context deadline takes precedence.
	c := New("", []string{n.addr}, WithRetryWindow(0))
	defer c.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	_, _, err := c.GetMessagesContext(ctx, "t", 1, 1, false)
	require.ErrorIs(t, err, ErrNoNodesAvailable)
	assert.ErrorIs(t, err, ErrShuttingDown)
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Greater(t, n.count("get"), 1)
}

func TestRetryRecovers(t *testing.T) {
	n := startNode(t)
	var mu sync.Mutex
	failures := 2
	n.send = func(_ context.Context, req *forestbusv1.SendMessagesRequest) (*forestbusv1.SendMessagesResponse, error) {
		mu.Lock()
		defer mu.Unlock()
		if failures > 0 {
			failures--
			return nil, reasonError(t, codes.ResourceExhausted, "PROPOSAL_DROPPED", nil)
		}
		return &forestbusv1.SendMessagesResponse{FirstId: 9, Count: int32(len(req.GetMessages()))}, nil
	}
	c := New("", []string{n.addr})
	defer c.Close()
	ids, err := c.SendMessages("t", msgs[:2], true)
	require.NoError(t, err)
	assert.Equal(t, []int64{9, 10}, ids)
	assert.Equal(t, 3, n.count("send"))
}

func TestContextErrors(t *testing.T) {
	n := startNode(t)
	n.get = func(ctx context.Context, _ *forestbusv1.GetMessagesRequest) (*forestbusv1.GetMessagesResponse, error) {
		<-ctx.Done() // a long-poll that never sees a message
		return nil, status.FromContextError(ctx.Err()).Err()
	}
	c := New("", []string{n.addr})
	defer c.Close()

	t.Run("canceled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() {
			_, _, err := c.GetMessagesContext(ctx, "t", 1, 10, true)
			done <- err
		}()
		require.Eventually(t, func() bool { return n.count("get") > 0 }, 5*time.Second, time.Millisecond)
		cancel()
		err := <-done
		require.ErrorIs(t, err, context.Canceled)
		assert.NotErrorIs(t, err, ErrNoNodesAvailable)
	})
	t.Run("deadline", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
		defer cancel()
		_, _, err := c.GetMessagesContext(ctx, "t", 1, 10, true)
		require.ErrorIs(t, err, context.DeadlineExceeded)
	})
	t.Run("already done", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		_, err := c.SendMessagesContext(ctx, "t", msgs, false)
		require.ErrorIs(t, err, context.Canceled)
	})
}

func TestGetMessagesWaitReissuesOnEmpty(t *testing.T) {
	n := startNode(t)
	var mu sync.Mutex
	empties := 2
	n.get = func(_ context.Context, req *forestbusv1.GetMessagesRequest) (*forestbusv1.GetMessagesResponse, error) {
		mu.Lock()
		defer mu.Unlock()
		if !req.GetWait() {
			return nil, status.Error(codes.InvalidArgument, "want wait")
		}
		if empties > 0 {
			empties--
			// The node's capped wait ended with nothing new.
			return &forestbusv1.GetMessagesResponse{NextId: req.GetId(), CommitId: req.GetId() - 1}, nil
		}
		return &forestbusv1.GetMessagesResponse{Messages: msgs[:1], NextId: req.GetId() + 1, CommitId: req.GetId()}, nil
	}
	c := New("", []string{n.addr})
	defer c.Close()
	got, next, err := c.GetMessages("t", 5, 10, true)
	require.NoError(t, err)
	assert.Equal(t, msgs[:1], got)
	assert.EqualValues(t, 6, next)
	assert.Equal(t, 3, n.count("get"))
}

func TestGetMessagesEmptyAnswersThatAreFinal(t *testing.T) {
	tests := []struct {
		name     string
		index    int64
		wait     bool
		nextID   int64
		wantNext int64
	}{
		{"no wait at the tail", 5, false, 5, 5},
		{"index below retention", 2, true, 10, 10},
		{"commit index zero without wait", 1, false, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := startNode(t)
			n.get = func(context.Context, *forestbusv1.GetMessagesRequest) (*forestbusv1.GetMessagesResponse, error) {
				return &forestbusv1.GetMessagesResponse{NextId: tt.nextID}, nil
			}
			c := New("", []string{n.addr})
			defer c.Close()
			got, next, err := c.GetMessages("t", tt.index, 10, tt.wait)
			require.NoError(t, err)
			assert.Empty(t, got)
			assert.Equal(t, tt.wantNext, next)
			assert.Equal(t, 1, n.count("get"))
		})
	}
}

func TestTopicDetailsAndMaxAvailableIndex(t *testing.T) {
	n := startNode(t)
	n.details = func(_ context.Context, req *forestbusv1.GetTopicDetailsRequest) (*forestbusv1.GetTopicDetailsResponse, error) {
		if req.GetTopic() != "t" {
			return nil, reasonError(t, codes.NotFound, "TOPIC_NOT_FOUND", nil)
		}
		return &forestbusv1.GetTopicDetailsResponse{Topic: "t", FirstId: 3, LastId: 20, CommitId: 17, Leader: "n2"}, nil
	}
	c := New("", []string{deadAddr(t), n.addr})
	defer c.Close()

	idx, err := c.GetTopicMaxAvailableIndex("t")
	require.NoError(t, err)
	assert.EqualValues(t, 17, idx)

	d, err := c.TopicDetails(t.Context(), "t")
	require.NoError(t, err)
	assert.Equal(t, &TopicDetails{Topic: "t", FirstID: 3, LastID: 20, CommitID: 17, Leader: "n2", Node: n.addr}, d)

	_, err = c.GetTopicMaxAvailableIndexContext(t.Context(), "missing")
	require.ErrorIs(t, err, ErrTopicNotFound)
}

func TestClusterDetails(t *testing.T) {
	n := startNode(t)
	n.cluster = func(context.Context) (*forestbusv1.GetClusterDetailsResponse, error) {
		return &forestbusv1.GetClusterDetailsResponse{
			ClusterId: "c1",
			NodeName:  "n1",
			Nodes:     []*forestbusv1.Node{{Name: "n1", Address: n.addr}, {Name: "n2", Address: "x:1", Learner: true}},
		}, nil
	}
	c := New("c1", []string{n.addr})
	defer c.Close()
	d, err := c.ClusterDetails(t.Context())
	require.NoError(t, err)
	assert.Equal(t, &ClusterDetails{ClusterID: "c1", NodeName: "n1", Nodes: []Node{{Name: "n1", Address: n.addr}, {Name: "n2", Address: "x:1", Learner: true}}}, d)
}

func TestAdmin(t *testing.T) {
	n := startNode(t)
	topics := map[string]*forestbusv1.TopicSettings{}
	var mu sync.Mutex
	n.admin = func(_ context.Context, op string, req any) (any, error) {
		mu.Lock()
		defer mu.Unlock()
		switch r := req.(type) {
		case *forestbusv1.CreateTopicRequest:
			if _, ok := topics[r.GetName()]; ok {
				return nil, reasonError(t, codes.AlreadyExists, "TOPIC_EXISTS", nil)
			}
			topics[r.GetName()] = r.GetSettings()
			return &forestbusv1.CreateTopicResponse{}, nil
		case *forestbusv1.UpdateTopicRequest:
			if _, ok := topics[r.GetName()]; !ok {
				return nil, reasonError(t, codes.NotFound, "TOPIC_NOT_FOUND", nil)
			}
			topics[r.GetName()] = r.GetSettings()
			return &forestbusv1.UpdateTopicResponse{}, nil
		case *forestbusv1.RemoveTopicRequest:
			if _, ok := topics[r.GetName()]; !ok {
				return nil, reasonError(t, codes.NotFound, "TOPIC_NOT_FOUND", nil)
			}
			delete(topics, r.GetName())
			return &forestbusv1.RemoveTopicResponse{}, nil
		case *forestbusv1.ListTopicsRequest:
			resp := &forestbusv1.ListTopicsResponse{}
			for _, name := range []string{"a", "b"} {
				if s, ok := topics[name]; ok {
					resp.Topics = append(resp.Topics, &forestbusv1.Topic{Name: name, Settings: s})
				}
			}
			return resp, nil
		}
		return nil, fmt.Errorf("unexpected %s", op)
	}
	c := New("", []string{deadAddr(t), n.addr})
	defer c.Close()
	ctx := t.Context()

	require.NoError(t, c.CreateTopic(ctx, "a", TopicSettings{SegmentBytes: 4096}))
	require.NoError(t, c.CreateTopic(ctx, "b", TopicSettings{}))
	require.ErrorIs(t, c.CreateTopic(ctx, "a", TopicSettings{}), ErrTopicExists)
	require.NoError(t, c.UpdateTopic(ctx, "b", TopicSettings{RetentionSeconds: 60, RetentionBytes: 1 << 20}))
	require.ErrorIs(t, c.UpdateTopic(ctx, "zzz", TopicSettings{}), ErrTopicNotFound)

	list, err := c.ListTopics(ctx)
	require.NoError(t, err)
	assert.Equal(t, []Topic{
		{Name: "a", Settings: TopicSettings{SegmentBytes: 4096}},
		{Name: "b", Settings: TopicSettings{RetentionSeconds: 60, RetentionBytes: 1 << 20}},
	}, list)

	require.NoError(t, c.RemoveTopic(ctx, "a"))
	require.ErrorIs(t, c.RemoveTopic(ctx, "a"), ErrTopicNotFound)
	list, err = c.ListTopics(ctx)
	require.NoError(t, err)
	assert.Len(t, list, 1)
}

func TestCloseThenReuse(t *testing.T) {
	n := startNode(t)
	n.send = okSend(1)
	c := New("", []string{n.addr})
	_, err := c.SendMessages("t", msgs, false)
	require.NoError(t, err)
	c.Close()
	c.Close() // twice is fine
	ids, err := c.SendMessages("t", msgs[:1], false)
	require.NoError(t, err)
	assert.Equal(t, []int64{4}, ids)
	c.Close()
}

func TestCloseFailsCallsInFlight(t *testing.T) {
	n := startNode(t)
	entered := make(chan struct{})
	n.send = func(ctx context.Context, _ *forestbusv1.SendMessagesRequest) (*forestbusv1.SendMessagesResponse, error) {
		close(entered)
		<-ctx.Done()
		return nil, ctx.Err()
	}
	c := New("", []string{n.addr})
	done := make(chan error, 1)
	go func() {
		_, err := c.SendMessages("t", msgs, true)
		done <- err
	}()
	<-entered
	c.Close()
	err := <-done
	assert.Equal(t, ErrNoNodesAvailable, err)
}

func TestConcurrentUse(t *testing.T) {
	a, b := startNode(t), startNode(t)
	a.send = okSend(1)
	b.send = okSend(1)
	a.get = func(_ context.Context, req *forestbusv1.GetMessagesRequest) (*forestbusv1.GetMessagesResponse, error) {
		return &forestbusv1.GetMessagesResponse{Messages: msgs[:1], NextId: req.GetId() + 1}, nil
	}
	b.get = a.get
	c := New("", []string{a.addr, b.addr}, WithShuffledNodes())
	defer c.Close()
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Go(func() {
			topic := fmt.Sprintf("t%d", i%3)
			for range 10 {
				// Close fails the calls in flight on the closed
				// connections; later calls reopen them.
				_, err := c.SendMessages(topic, msgs, false)
				if err != ErrNoNodesAvailable {
					assert.NoError(t, err)
				}
				_, _, err = c.GetMessages(topic, 1, 1, false)
				if err != ErrNoNodesAvailable {
					assert.NoError(t, err)
				}
				if i == 0 {
					c.Close()
				}
			}
		})
	}
	wg.Wait()
}

func TestNewSplitsNodeEntries(t *testing.T) {
	tests := []struct {
		in   []string
		want []string
	}{
		{nil, nil},
		{[]string{"localhost:3000"}, []string{"localhost:3000"}},
		{[]string{"localhost:3000,localhost:3001,localhost:3002"}, []string{"localhost:3000", "localhost:3001", "localhost:3002"}},
		{[]string{"a:1, b:2", "c:3", "a:1", ""}, []string{"a:1", "b:2", "c:3"}},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.in, "|"), func(t *testing.T) {
			assert.Equal(t, tt.want, New("", tt.in).Nodes())
		})
	}
	shuffled := New("", []string{"a:1,b:2,c:3,d:4"}, WithShuffledNodes()).Nodes()
	assert.ElementsMatch(t, []string{"a:1", "b:2", "c:3", "d:4"}, shuffled)
}

func TestNoNodes(t *testing.T) {
	c := New("", nil, WithRetryWindow(0))
	_, err := c.SendMessages("t", msgs, false)
	assert.Equal(t, ErrNoNodesAvailable, err)
}

func TestParseConnectionString(t *testing.T) {
	tests := []struct {
		in             string
		cluster, topic string
		nodes          []string
	}{
		{"", "", "", nil},
		{"@:1010", "", "", []string{":1010"}},
		{"#t1@host:1010,:2020", "", "t1", []string{"host:1010", ":2020"}},
		{"t1@host:1010,:2020", "t1", "", []string{"host:1010", ":2020"}},
		{"t1#t2@host:1010,otherhost:2020", "t1", "t2", []string{"host:1010", "otherhost:2020"}},
		{"no-at-sign", "", "", nil},
		{"c#@h:1", "c", "", []string{"h:1"}},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			cluster, topic, nodes := ParseConnectionString(tt.in)
			assert.Equal(t, tt.cluster, cluster)
			assert.Equal(t, tt.topic, topic)
			assert.Equal(t, tt.nodes, nodes)
		})
	}
}

func TestDebugLogging(t *testing.T) {
	n := startNode(t)
	n.send = okSend(1)
	var buf syncbuf.Buffer
	logger := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	c := New("", []string{n.addr}, WithDebug(), WithLogger(logger))
	defer c.Close()
	_, err := c.SendMessages("topic-x", msgs, false)
	require.NoError(t, err)
	assert.Contains(t, buf.String(), "topic-x")
	assert.Contains(t, buf.String(), n.addr)

	var quiet syncbuf.Buffer
	c2 := New("", []string{n.addr}, WithLogger(slog.New(slog.NewTextHandler(&quiet, &slog.HandlerOptions{Level: slog.LevelDebug}))))
	defer c2.Close()
	_, err = c2.SendMessages("topic-x", msgs, false)
	require.NoError(t, err)
	assert.Empty(t, quiet.String(), "no logging without WithDebug")
}

func TestBufconnDialOption(t *testing.T) {
	lis := bufconn.Listen(1 << 20)
	n := &fakeNode{calls: make(map[string]int)}
	n.send = okSend(1)
	srv := grpc.NewServer()
	forestbusv1.RegisterForestBusServiceServer(srv, n)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)

	c := New("", []string{"bufnet"}, WithDialOptions(grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
		return lis.DialContext(ctx)
	})))
	defer c.Close()
	ids, err := c.SendMessages("t", msgs, false)
	require.NoError(t, err)
	assert.Equal(t, []int64{1, 2, 3}, ids)
}

func TestEachNodeAtMostOncePerPass(t *testing.T) {
	a, b := startNode(t), startNode(t)
	// Each names the other as leader.
	a.send = func(context.Context, *forestbusv1.SendMessagesRequest) (*forestbusv1.SendMessagesResponse, error) {
		return nil, reasonError(t, codes.FailedPrecondition, "NOT_LEADER", map[string]string{"leader": b.addr})
	}
	b.send = func(context.Context, *forestbusv1.SendMessagesRequest) (*forestbusv1.SendMessagesResponse, error) {
		return nil, reasonError(t, codes.FailedPrecondition, "NOT_LEADER", map[string]string{"leader": a.addr})
	}
	c := New("", []string{a.addr, b.addr}, WithRetryWindow(0))
	defer c.Close()
	_, err := c.SendMessagesContext(t.Context(), "t", msgs, false)
	require.ErrorIs(t, err, ErrNoNodesAvailable)
	assert.ErrorIs(t, err, ErrNotLeader)
	assert.Equal(t, 1, a.count("send"))
	assert.Equal(t, 1, b.count("send"))
}

// TestCloseUnblocksLongPoll: Close fails a long poll in flight, on a
// connection of the Client's own and on one another Client keeps open
// (which Close leaves unharmed).
func TestCloseUnblocksLongPoll(t *testing.T) {
	for _, shared := range []bool{false, true} {
		t.Run(fmt.Sprintf("shared=%v", shared), func(t *testing.T) {
			n := startNode(t)
			n.send = okSend(1)
			n.get = func(ctx context.Context, _ *forestbusv1.GetMessagesRequest) (*forestbusv1.GetMessagesResponse, error) {
				<-ctx.Done()
				return nil, status.FromContextError(ctx.Err()).Err()
			}
			c := New("", []string{n.addr})
			var other *Client
			if shared {
				other = New("", []string{n.addr})
				defer other.Close()
				_, err := other.SendMessages("t", msgs, false) // other holds the connection
				require.NoError(t, err)
			}
			done := getAsync(c, true)
			require.Eventually(t, func() bool { return n.count("get") == 1 }, 5*time.Second, time.Millisecond)
			c.Close()
			requireClosedErr(t, done, "the long poll")
			if other != nil {
				_, err := other.SendMessages("t", msgs, false)
				assert.NoError(t, err, "the other Client's connection is unharmed")
			}
		})
	}
}

// TestCloseEndsLongPollBetweenReissues: a long poll whose node answers
// each wait at once (empty) re-issues it after a pause; a Close during the
// pause ends the poll, as one during a call does (the re-issue used to
// bind to the Client's next life and poll on).
func TestCloseEndsLongPollBetweenReissues(t *testing.T) {
	n := startNode(t)
	n.get = func(_ context.Context, req *forestbusv1.GetMessagesRequest) (*forestbusv1.GetMessagesResponse, error) {
		return &forestbusv1.GetMessagesResponse{NextId: req.GetId()}, nil
	}
	// The debug log's record of a call that succeeded comes once its answer
	// is in, so a Close after it lands between two calls, not in one.
	answered := make(chan struct{}, 1)
	c := New("", []string{n.addr}, WithDebug(), WithLogger(slog.New(signalHandler{"forestbus: call", answered})))
	done := getAsync(c, true)
	select {
	case <-answered:
	case err := <-done:
		t.Fatalf("the long poll ended before Close: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("no answer to the long poll")
	}
	c.Close()
	requireClosedErr(t, done, "the long poll between its re-issues")
}

// getAsync runs c.GetMessages on topic "t" from ID 1 on a goroutine; its
// error comes on the channel.
func getAsync(c *Client, wait bool) <-chan error {
	done := make(chan error, 1)
	go func() {
		_, _, err := c.GetMessages("t", 1, 10, wait)
		done <- err
	}()
	return done
}

// requireClosedErr waits for the call behind done, ended by Close, and
// checks it failed as a Close makes it fail.
func requireClosedErr(t *testing.T, done <-chan error, what string) {
	t.Helper()
	select {
	case err := <-done:
		assert.Equal(t, ErrNoNodesAvailable, err)
	case <-time.After(10 * time.Second):
		t.Fatalf("Close did not end %s", what)
	}
}

// signalHandler is a slog.Handler that sends on ch (without blocking) for
// each record with message msg, and drops every record.
type signalHandler struct {
	msg string
	ch  chan struct{}
}

func (h signalHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h signalHandler) Handle(_ context.Context, r slog.Record) error {
	if r.Message == h.msg {
		select {
		case h.ch <- struct{}{}:
		default:
		}
	}
	return nil
}

func (h signalHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h signalHandler) WithGroup(string) slog.Handler      { return h }

func TestFailedLeaderIsForgotten(t *testing.T) {
	a, b := startNode(t), startNode(t)
	var mu sync.Mutex
	bDown := false
	a.send = okSend(1)
	b.send = func(ctx context.Context, req *forestbusv1.SendMessagesRequest) (*forestbusv1.SendMessagesResponse, error) {
		mu.Lock()
		defer mu.Unlock()
		if bDown {
			return nil, reasonError(t, codes.Unavailable, "SHUTTING_DOWN", nil)
		}
		return &forestbusv1.SendMessagesResponse{FirstId: 50, Count: int32(len(req.GetMessages()))}, nil
	}
	c := New("", []string{a.addr, b.addr})
	defer c.Close()
	c.setLeader("t", b.addr)
	ids, err := c.SendMessages("t", msgs[:1], false)
	require.NoError(t, err)
	assert.Equal(t, []int64{50}, ids)

	mu.Lock()
	bDown = true
	mu.Unlock()
	ids, err = c.SendMessages("t", msgs[:1], false)
	require.NoError(t, err)
	assert.Equal(t, []int64{1}, ids)
	assert.Equal(t, a.addr, c.leader("t"))
}

// TestClientsShareConnections: Clients with the default dial options share
// one connection per node; the connection stays open while any of them
// uses it, and closes with the last Close. A Client with its own dial
// options, or WithPrivateConnections, gets its own connection.
func TestClientsShareConnections(t *testing.T) {
	n := startNode(t)
	n.send = okSend(1)
	a, b := New("", []string{n.addr}), New("", []string{n.addr})
	own := New("", []string{n.addr}, WithDialOptions(grpc.WithUserAgent("own")))
	defer own.Close()
	private := New("", []string{n.addr}, WithPrivateConnections())
	defer private.Close()
	cp, err := private.conn(n.addr)
	require.NoError(t, err)
	ca, err := a.conn(n.addr)
	require.NoError(t, err)
	cb, err := b.conn(n.addr)
	require.NoError(t, err)
	assert.Same(t, ca, cb, "one connection for both")
	co, err := own.conn(n.addr)
	require.NoError(t, err)
	assert.NotSame(t, ca, co, "its own dial options, its own connection")
	assert.NotSame(t, ca, cp, "WithPrivateConnections")

	_, err = a.SendMessages("t", msgs, false)
	require.NoError(t, err)
	a.Close()
	assert.NotEqual(t, connectivity.Shutdown, cb.GetState(), "b still holds it")
	_, err = b.SendMessages("t", msgs, false)
	require.NoError(t, err, "a's Close left b's connection open")
	b.Close()
	assert.Equal(t, connectivity.Shutdown, cb.GetState(), "the last Close closes it")

	// Closed Clients reconnect as before.
	_, err = a.SendMessages("t", msgs, false)
	require.NoError(t, err)
	a.Close()
}

// TestTLSClientsShareConnections: Clients given the same TLS
// configuration share their connection to a node; another configuration,
// or none, gets another one; the last Close closes it.
func TestTLSClientsShareConnections(t *testing.T) {
	const node = "127.0.0.1:1" // no I/O: conn only makes the connection
	cfg, other := &tls.Config{ServerName: "a"}, &tls.Config{ServerName: "a"}
	a, b := New("", []string{node}, WithTLS(cfg)), New("", []string{node}, WithTLS(cfg))
	c, plain := New("", []string{node}, WithTLS(other)), New("", []string{node})
	defer c.Close()
	defer plain.Close()
	ca, err := a.conn(node)
	require.NoError(t, err)
	cb, err := b.conn(node)
	require.NoError(t, err)
	cc, err := c.conn(node)
	require.NoError(t, err)
	cp, err := plain.conn(node)
	require.NoError(t, err)
	assert.Same(t, ca, cb, "the same configuration: one connection")
	assert.NotSame(t, ca, cc, "another configuration")
	assert.NotSame(t, ca, cp, "plaintext")
	a.Close()
	assert.NotEqual(t, connectivity.Shutdown, cb.GetState(), "b still holds it")
	b.Close()
	assert.Equal(t, connectivity.Shutdown, cb.GetState(), "the last Close closes it")
	assert.NotEqual(t, connectivity.Shutdown, cc.GetState())
}

// TestPoolSpreadsClients: a shared connection serves at most clientsPerConn
// Clients; the next one gets a connection of its own in the pool, and
// releasing references closes only the connection whose last one went.
func TestPoolSpreadsClients(t *testing.T) {
	target := poolKey{target: "passthrough:///pool-test:1"}
	dials := 0
	dial := func() (*grpc.ClientConn, error) {
		dials++
		return grpc.NewClient(target.target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	}
	var got []*grpc.ClientConn
	for range clientsPerConn + 1 {
		cc, err := acquire(target, dial)
		require.NoError(t, err)
		got = append(got, cc)
	}
	assert.Equal(t, 2, dials)
	first, second := got[0], got[clientsPerConn]
	assert.NotSame(t, first, second)
	for _, cc := range got[1:clientsPerConn] {
		assert.Same(t, first, cc)
	}
	pooled, err := release(target, second)
	assert.True(t, pooled)
	assert.NoError(t, err)
	assert.Equal(t, connectivity.Shutdown, second.GetState(), "its last reference")
	for _, cc := range got[:clientsPerConn] {
		pooled, err := release(target, cc)
		assert.True(t, pooled)
		assert.NoError(t, err)
	}
	assert.Equal(t, connectivity.Shutdown, first.GetState())
	pooled, _ = release(target, first)
	assert.False(t, pooled, "not in the pool any more")
	pool.mu.Lock()
	assert.NotContains(t, pool.conns, target)
	pool.mu.Unlock()
}

// TestCloseEndsRetries: a call waiting between two passes over failing
// nodes ends at Close with ErrNoNodesAvailable, not at the end of its retry
// window, and takes no connection after it.
func TestCloseEndsRetries(t *testing.T) {
	n := startNode(t)
	n.get = func(context.Context, *forestbusv1.GetMessagesRequest) (*forestbusv1.GetMessagesResponse, error) {
		return nil, status.Error(codes.Unavailable, "down")
	}
	c := New("", []string{n.addr}, WithRetryWindow(time.Minute))
	done := getAsync(c, false)
	require.Eventually(t, func() bool { return n.count("get") >= 2 }, 10*time.Second, time.Millisecond, "retrying")
	c.Close()
	requireClosedErr(t, done, "the retries")
	c.mu.Lock()
	assert.Empty(t, c.conns, "no connection taken after Close")
	c.mu.Unlock()
}
