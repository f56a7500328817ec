package api_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/forestbus/forestbus/client"
	forestbusv1 "github.com/forestbus/forestbus/gen/forestbus/v1"
	"github.com/forestbus/forestbus/server/servertest"
	"github.com/forestbus/forestbus/server/topic"
)

// TestFencedFollowerSendsReadersElsewhere: a follower whose topic group is
// fenced after a storage error (here its topic directory is gone, so its
// next segment cannot be made) still knows its last leader, so it did not
// count as cut off: its long polls ended empty, its Subscribe streams sent
// heartbeats and its details a commit point that no longer moved, for
// ever, and a Client reading there never saw another message. Now such a
// node answers reads at its tail, and its details, STORAGE_FAILED
// (UNAVAILABLE), a poll waiting when the group is fenced at once, and
// Clients move on; what it had committed stays readable.
func TestFencedFollowerSendsReadersElsewhere(t *testing.T) {
	cl := servertest.NewCluster(t, 3, servertest.WithSegmentBytes(4096), servertest.WithMaxWait(time.Minute))
	cl.WaitTopic("default")
	x, xt, others := pickNode(t, cl, func(n *servertest.Node, tp *topic.Topic) bool { return tp.Group.Leader() != n.RaftID() })
	require.NotNil(t, x)
	prod := client.New("test", others)
	t.Cleanup(prod.Close)
	send(t, prod, "default", payloads("a", 1, 2))
	require.Eventually(t, func() bool { return xt.Group.CommitID() == 2 }, 20*time.Second, 5*time.Millisecond)

	// A long poll waits on x for an ID past what the test writes (the
	// wait cap is a minute).
	bus := dialBus(t, x.Addr())
	polled := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(testCtx(t), 20*time.Second)
		defer cancel()
		_, err := bus.GetMessages(ctx, &forestbusv1.GetMessagesRequest{Topic: "default", Id: 1000, Quantity: 1, Wait: true})
		polled <- err
	}()
	require.Eventually(t, func() bool { return x.LongPolls() == 1 }, 10*time.Second, time.Millisecond)

	// x's storage fails: writes past its segment's end need a new file.
	dir := filepath.Join(x.Cfg.DataDir, "topics", xt.Group.Name())
	require.NoError(t, os.Rename(dir, dir+".gone"))
	t.Cleanup(func() { _ = os.Rename(dir+".gone", dir) }) // so the node stops cleanly
	big := make([]byte, 1500)
	for i := 0; i < 100 && !xt.Group.Failed(); i++ {
		send(t, prod, "default", [][]byte{big})
	}
	require.True(t, xt.Group.Failed(), "x's group is fenced")
	frozen := int64(xt.Group.CommitID())
	ids := send(t, prod, "default", payloads("b", 1, 1)) // committed by the others
	require.Greater(t, ids[0], frozen)

	isStorageFailed := func(err error) bool {
		return status.Code(err) == codes.Unavailable && assert.Contains(t, status.Convert(err).Message(), "storage failed")
	}
	// The waiting poll ended at once, not at its cap (nor its deadline).
	perr := <-polled
	assert.True(t, isStorageFailed(perr), "the waiting poll: %v", perr)
	// At x's tail, with or without wait, and its details: elsewhere.
	for _, wait := range []bool{false, true} {
		_, err := bus.GetMessages(testCtx(t), &forestbusv1.GetMessagesRequest{Topic: "default", Id: frozen + 1, Quantity: 1, Wait: wait})
		assert.True(t, isStorageFailed(err), "a read at the tail, wait %v: %v", wait, err)
	}
	_, err := bus.GetTopicDetails(testCtx(t), &forestbusv1.GetTopicDetailsRequest{Topic: "default"})
	assert.True(t, isStorageFailed(err), "details: %v", err)
	// What x committed stays readable.
	resp, err := bus.GetMessages(testCtx(t), &forestbusv1.GetMessagesRequest{Topic: "default", Id: 1, Quantity: 1})
	require.NoError(t, err)
	assert.Equal(t, []byte("a-1"), resp.GetMessages()[0])

	// A Client that starts with x moves on for a long poll, the commit
	// point and a subscription.
	reader := client.New("test", append([]string{x.Addr()}, others...))
	t.Cleanup(reader.Close)
	msgs, _, err := reader.GetMessagesContext(testCtx(t), "default", frozen+1, 1, true)
	require.NoError(t, err)
	assert.NotEmpty(t, msgs)
	d, err := reader.TopicDetails(testCtx(t), "default")
	require.NoError(t, err)
	assert.NotEqual(t, x.Addr(), d.Node, "the commit point from another node")
	sctx, cancel := context.WithCancel(testCtx(t))
	defer cancel()
	var first int64
	stop := errors.New("got one")
	err = reader.Subscribe(sctx, "default", frozen+1, func(id int64, _ []byte) error {
		first = id
		return stop
	})
	require.ErrorIs(t, err, stop)
	assert.Equal(t, frozen+1, first)
}
