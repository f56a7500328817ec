package client

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	forestbusv1 "github.com/forestbus/forestbus/gen/forestbus/v1"
)

// SendMessages sends a batch of messages to topic and returns their IDs, in
// order. It is SendMessagesContext without a context: it retries for the
// retry window (see WithRetryWindow).
//
// Sending many messages (hundreds) at once gives better throughput than
// sending them one by one; see the batcher package.
//
// If waitForCommit is false, SendMessages returns once the topic's leader
// has the batch in its log; if true, once a majority of the nodes have it
// (committed).
//
// For compatibility with the original client, the errors ErrTopicNotFound,
// ErrClusterIdMismatch and ErrNoNodesAvailable are returned bare, so that
// they compare equal with ==. Other errors are as for SendMessagesContext.
func (c *Client) SendMessages(topic string, messages [][]byte, waitForCommit bool) (indexes []int64, err error) {
	ids, err := c.SendMessagesContext(context.Background(), topic, messages, waitForCommit)
	return ids, LegacyError(err)
}

// SendMessagesContext sends a batch of messages to topic and returns their
// IDs, in order. The messages are stored as a unit with consecutive IDs.
//
// The call goes to the topic's leader when the Client knows it, and fails
// over to the other nodes otherwise (a node that is not the leader forwards
// the batch or names the leader). The batch travels over the node's Produce
// stream (see WithUnarySends); a stream that breaks under the call fails
// that attempt, and the call fails over as it would after a failed call. It retries until ctx ends or, when ctx
// has no deadline, for the retry window.
//
// Errors match, with errors.Is: ErrTopicNotFound, ErrInvalidArgument (empty
// batch, bad topic name), ErrMessageTooLarge, ErrBatchTooLarge,
// ErrClusterIdMismatch, and ErrNoNodesAvailable when no node stored the
// batch in time (it then also matches the last node's error, e.g.
// ErrNoLeader, and ctx's error if ctx ended). Node answers are
// *StatusError values.
//
// Idempotence: every batch carries the Client's producer ID (random,
// non-zero, see ProducerID) and a sequence number taken once per call (1,
// 2, 3, ... per topic). Every retry and failover within the call resends
// the same pair, and the topic stores a batch whose pair it already holds
// only once, answering with the IDs of the first copy. So retries within
// one call never store the batch twice, even when an attempt failed after
// the leader had stored it (a timeout, a leader change). A new call is a
// new batch: sending the same messages again after this call returned an
// error may store them twice (delivery across calls is at least once, as
// in the original; SendMessagesSequence resends a batch as itself). The
// topic remembers which of a producer's last 64 sequence numbers it stored
// and the IDs of its last 64 batches, and a Client's sends to one topic
// never run more than 32 sequences ahead of its oldest send in flight
// (later ones wait; they fail when ctx ends, when Close ends the Client's
// calls, and, when ctx has no deadline, with ErrNoNodesAvailable after the
// retry window), so every retry within a call
// is recognized and answered. A topic forgets a Client once 8,192 other
// producers have stored a batch there after the Client's last one; a
// retry after that is stored again.
func (c *Client) SendMessagesContext(ctx context.Context, topic string, messages [][]byte, waitForCommit bool) ([]int64, error) {
	ts, seq, err := c.beginSend(ctx, topic, 0)
	if err != nil {
		return nil, err
	}
	defer c.endSend(ts, seq)
	return c.sendMessages(ctx, topic, messages, waitForCommit, seq)
}

// NextSequence takes the next producer sequence number of topic for this
// Client (see SendMessagesContext), for SendMessagesSequence. The Client's
// later sends do not wait for it: while the caller holds it between
// sends, they may run more than 32 sequences ahead, and then a resend
// under it may fail with ErrDuplicateBatch or be stored again (see
// SendMessagesContext). ReserveSequence holds them back.
func (c *Client) NextSequence(topic string) uint64 { return c.nextSequence(topic) }

// ReserveSequence is NextSequence for a caller that sends the batch, and
// sends it again after an error, until it calls release: meanwhile the
// sequence counts as a send in flight, so the Client's later sends to
// topic do not run 32 or more sequences ahead of it (they wait, see
// SendMessagesContext) and every resend is recognized. It waits, like a
// send, while that bound holds the new sequence back, and fails with
// ctx's error if ctx ends first. Call release once, when the batch is
// stored or given up.
func (c *Client) ReserveSequence(ctx context.Context, topic string) (seq uint64, release func(), err error) {
	ts, seq, err := c.beginSend(ctx, topic, 0)
	if err != nil {
		return 0, nil, err
	}
	var once sync.Once
	return seq, func() { once.Do(func() { c.endSend(ts, seq) }) }, nil
}

// SendMessagesSequence is SendMessagesContext for a batch whose sequence
// number the caller took with ReserveSequence (or NextSequence), once per
// batch: a batch sent again with its sequence (a retry after an error that
// left its outcome unknown, such as ErrNoNodesAvailable when a majority
// was down) is stored once, and a retry of a stored batch answers with its
// IDs, as retries within one call do (within the limits given there, which
// hold across calls for a reserved sequence). A different batch must not
// reuse a sequence: the topic would take it for the first one's duplicate
// and not store it. The batcher package's retries use it.
//
// A sequence not handed out for topic yet fails with
// ErrInvalidArgument: the Client's own later batches would take it.
func (c *Client) SendMessagesSequence(ctx context.Context, topic string, messages [][]byte, waitForCommit bool, sequence uint64) ([]int64, error) {
	c.mu.Lock()
	issued := c.topicSeqsLocked(topic).last
	c.mu.Unlock()
	if sequence == 0 || sequence > issued {
		return nil, fmt.Errorf("forestbus: send to %q: sequence %d was not taken with NextSequence or ReserveSequence: %w", topic, sequence, ErrInvalidArgument)
	}
	ts, _, err := c.beginSend(ctx, topic, sequence)
	if err != nil {
		return nil, err
	}
	defer c.endSend(ts, sequence)
	return c.sendMessages(ctx, topic, messages, waitForCommit, sequence)
}

func (c *Client) sendMessages(ctx context.Context, topic string, messages [][]byte, waitForCommit bool, sequence uint64) ([]int64, error) {
	if len(messages) == 0 {
		return nil, fmt.Errorf("forestbus: send to %q: no messages: %w", topic, ErrInvalidArgument)
	}
	// The caller's slices go into the request as they are: no copy. The
	// producer pair is set once, before the failover loop, so that every
	// attempt carries the same one.
	req := &forestbusv1.SendMessagesRequest{
		Topic:         topic,
		Messages:      messages,
		WaitForCommit: waitForCommit,
		ProducerId:    c.producerID,
		Sequence:      sequence,
	}
	var resp *forestbusv1.SendMessagesResponse
	err := c.invoke(ctx, "send", topic, routeLeader, func(ctx context.Context, cc *grpc.ClientConn, opts ...grpc.CallOption) error {
		if !c.unarySends {
			r, err := c.sendBatch(ctx, cc, req)
			if !errors.Is(err, errNoProduce) {
				resp = r
				return err
			}
		}
		r, err := forestbusv1.NewForestBusServiceClient(cc).SendMessages(ctx, req, opts...)
		resp = r
		return err
	})
	if err != nil {
		var se *StatusError
		if errors.As(err, &se) && se.Code == codes.ResourceExhausted && se.Reason == "" && se.sentinel == nil {
			// The request was larger than the node's gRPC receive limit
			// (which it sets above its batch limit): too large a batch,
			// for callers (the batcher splits it) as for BATCH_TOO_LARGE.
			se.sentinel = ErrBatchTooLarge
		}
		return nil, err
	}
	if int(resp.GetCount()) != len(messages) {
		return nil, fmt.Errorf("forestbus: send to %q: node stored %d of %d messages", topic, resp.GetCount(), len(messages))
	}
	ids := make([]int64, len(messages))
	for i := range ids {
		ids[i] = resp.GetFirstId() + int64(i)
	}
	return ids, nil
}

// GetMessages returns messages of topic starting at ID index, and the ID to
// ask for next. It is GetMessagesContext without a context: with wait set
// it blocks until a message arrives, however long that takes.
//
// For compatibility with the original client, the errors ErrTopicNotFound,
// ErrClusterIdMismatch and ErrNoNodesAvailable are returned bare.
func (c *Client) GetMessages(topic string, index int64, quantity int, wait bool) (msgs [][]byte, nextID int64, err error) {
	msgs, nextID, err = c.GetMessagesContext(context.Background(), topic, index, quantity, wait)
	return msgs, nextID, LegacyError(err)
}

// GetMessagesContext returns committed messages of topic starting at ID
// index, and the ID to ask for next. Any node can answer; the Client starts
// with the last node that answered a read.
//
// The answer usually holds more or fewer messages than quantity: nodes end
// answers on their stored batches, read ahead (by default an answer holds
// about 3 MiB when that much is committed, however small quantity is) and
// cap an answer's size. If a message
// exists at index, at least one message is returned. msgs[0] has ID index
// and the last message has ID nextID-1.
//
// If index is no longer retained, no messages are returned and nextID is
// the first retained ID. The same holds for an index below 1, which no
// message has: nextID is then 1 unless retention deleted the first
// messages (the original client's answer; a reader starting at 0 reads on
// from nextID). At the end of the topic, nextID is the ID the next
// message will get. With wait set and no message at index yet, the call
// blocks until one is committed or ctx ends (nodes cap each wait, and the
// Client asks again).
//
// Errors match, with errors.Is: ErrTopicNotFound, ErrInvalidArgument,
// ErrClusterIdMismatch, ErrNoNodesAvailable (see SendMessagesContext), and
// ctx's error when ctx ends.
func (c *Client) GetMessagesContext(ctx context.Context, topic string, index int64, quantity int, wait bool) ([][]byte, int64, error) {
	below := index < 1
	if below {
		// Only the first retained ID is wanted: read one message from 1,
		// without waiting. (A node would read an ID of 0 as 1 and refuse a
		// negative one.)
		index, quantity, wait = 1, 1, false
	}
	req := &forestbusv1.GetMessagesRequest{
		Topic:    topic,
		Id:       index,
		Quantity: int32(min(max(quantity, math.MinInt32), math.MaxInt32)),
		Wait:     wait,
	}
	want := max(index, 1)
	pause := minPassBackoff
	// One binding to the Client's life for every re-issue of a long poll:
	// a Close between two of them ends the poll too.
	callCtx, unbind := c.bind(ctx)
	defer unbind()
	for {
		var resp *forestbusv1.GetMessagesResponse
		started := time.Now()
		err := c.invokeBound(ctx, callCtx, "get", topic, routeRead, wait, func(ctx context.Context, cc *grpc.ClientConn, opts ...grpc.CallOption) error {
			r, err := forestbusv1.NewForestBusServiceClient(cc).GetMessages(ctx, req, opts...)
			resp = r
			return err
		})
		if err != nil {
			return nil, 0, err
		}
		if below { // msgs[0], if any, has the first retained ID
			return nil, resp.GetNextId() - int64(len(resp.GetMessages())), nil
		}
		// A node ends a long wait with an empty answer; the original call
		// blocked until a message arrived, so ask again. An empty answer
		// whose next ID is past index (index no longer retained) is final.
		if !wait || len(resp.GetMessages()) > 0 || resp.GetNextId() > want {
			return resp.GetMessages(), resp.GetNextId(), nil
		}
		// Guard against a node that answers a wait at once: pace the
		// re-issues.
		if time.Since(started) < maxPassBackoff {
			t := time.NewTimer(pause)
			select {
			case <-callCtx.Done(): // ctx ended, or Close
				t.Stop()
				return nil, 0, c.ended(ctx, "get", nil, nil)
			case <-t.C:
			}
			pause = min(2*pause, maxPassBackoff)
		} else {
			pause = minPassBackoff
		}
	}
}

// GetTopicMaxAvailableIndex returns the commit point of topic, the highest
// ID a read can return, on the node the Client talks to. It is
// GetTopicMaxAvailableIndexContext without a context.
//
// For compatibility with the original client, the errors ErrTopicNotFound,
// ErrClusterIdMismatch and ErrNoNodesAvailable are returned bare.
func (c *Client) GetTopicMaxAvailableIndex(topic string) (maxAvailableIndex int64, err error) {
	idx, err := c.GetTopicMaxAvailableIndexContext(context.Background(), topic)
	return idx, LegacyError(err)
}

// GetTopicMaxAvailableIndexContext returns the commit point of topic (the
// highest ID a read can return, 0 when nothing is committed) on the node
// the Client talks to, which may lag the leader's.
//
// Errors as for TopicDetails.
func (c *Client) GetTopicMaxAvailableIndexContext(ctx context.Context, topic string) (int64, error) {
	d, err := c.TopicDetails(ctx, topic)
	if err != nil {
		return 0, err
	}
	return d.CommitID, nil
}

// TopicDetails describes a topic as seen by one node.
type TopicDetails struct {
	// Topic is the topic's name.
	Topic string
	// FirstID is the first retained message ID (1 until retention removes
	// messages).
	FirstID int64
	// LastID is the ID of the last message in the node's log, committed or
	// not; FirstID-1 when the log holds no message.
	LastID int64
	// CommitID is the ID of the last committed message on the node (0 when
	// none): the highest ID a read can return.
	CommitID int64
	// Leader names the topic's leader; empty when the node does not know.
	Leader string
	// Node is the address of the node that answered.
	Node string
}

// TopicDetails returns the retained ID range and commit point of topic on
// the node the Client talks to (the last node that answered a read).
//
// Errors match, with errors.Is: ErrTopicNotFound, ErrInvalidArgument,
// ErrClusterIdMismatch, ErrNoNodesAvailable, and ctx's error.
func (c *Client) TopicDetails(ctx context.Context, topic string) (*TopicDetails, error) {
	req := &forestbusv1.GetTopicDetailsRequest{Topic: topic}
	var (
		resp *forestbusv1.GetTopicDetailsResponse
		node string
	)
	err := c.invoke(ctx, "topic details", topic, routeRead, func(ctx context.Context, cc *grpc.ClientConn, opts ...grpc.CallOption) error {
		r, err := forestbusv1.NewForestBusServiceClient(cc).GetTopicDetails(ctx, req, opts...)
		resp, node = r, cc.Target()
		return err
	})
	if err != nil {
		return nil, err
	}
	return &TopicDetails{
		Topic:    resp.GetTopic(),
		FirstID:  resp.GetFirstId(),
		LastID:   resp.GetLastId(),
		CommitID: resp.GetCommitId(),
		Leader:   resp.GetLeader(),
		Node:     nodeName(node),
	}, nil
}

// ClusterDetails identifies a cluster.
type ClusterDetails struct {
	// ClusterID is the ID every node of the cluster was started with.
	ClusterID string
	// NodeName is the name of the node that answered.
	NodeName string
	// Nodes lists every node of the cluster.
	Nodes []Node
}

// Node is one member of a cluster.
type Node struct {
	// Name is the node's stable name.
	Name string
	// Address is the address clients dial, host:port.
	Address string
	// Learner: the node joined and is still catching up; it becomes a
	// voter once it has (nodes before this field always report false).
	Learner bool
}

// ClusterDetails asks a node for the cluster's ID and members.
//
// Errors match, with errors.Is: ErrClusterIdMismatch (also when the node
// reports another cluster ID than the Client's non-empty one),
// ErrNoNodesAvailable, and ctx's error.
func (c *Client) ClusterDetails(ctx context.Context) (*ClusterDetails, error) {
	var resp *forestbusv1.GetClusterDetailsResponse
	err := c.invoke(ctx, "cluster details", "", routeRead, func(ctx context.Context, cc *grpc.ClientConn, opts ...grpc.CallOption) error {
		r, err := forestbusv1.NewForestBusServiceClient(cc).GetClusterDetails(ctx, &forestbusv1.GetClusterDetailsRequest{}, opts...)
		resp = r
		return err
	})
	if err != nil {
		return nil, err
	}
	if c.clusterID != "" && resp.GetClusterId() != c.clusterID {
		return nil, fmt.Errorf("forestbus: node %s reports cluster %q, want %q: %w", resp.GetNodeName(), resp.GetClusterId(), c.clusterID, ErrClusterIdMismatch)
	}
	d := &ClusterDetails{ClusterID: resp.GetClusterId(), NodeName: resp.GetNodeName()}
	for _, n := range resp.GetNodes() {
		d.Nodes = append(d.Nodes, Node{Name: n.GetName(), Address: n.GetAddress(), Learner: n.GetLearner()})
	}
	return d, nil
}

// nodeName turns a connection target back into the node's address.
func nodeName(target string) string {
	const p = "passthrough:///"
	if len(target) > len(p) && target[:len(p)] == p {
		return target[len(p):]
	}
	return target
}
