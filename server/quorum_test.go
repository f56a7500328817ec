package server_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	forestbusv1 "github.com/forestbus/forestbus/gen/forestbus/v1"
	"github.com/forestbus/forestbus/server/servertest"
)

// TestAdminWithoutQuorumAnswers: on a node whose cluster lost its
// metadata quorum, every admin call answers UNAVAILABLE (NO_LEADER), so a
// client can go elsewhere or retry. CreateTopic, ListTopics, AddNode and
// RemoveNode waited for a leader or a read barrier until the caller's
// deadline, for ever from grpcurl, which sets none (a review found it).
func TestAdminWithoutQuorumAnswers(t *testing.T) {
	c := servertest.NewCluster(t, 3)
	c.WaitTopic("default")
	c.Nodes[1].Stop()
	c.Nodes[2].Stop()
	survivor := c.Nodes[0]
	// Once it knows no leader (a leader steps down, a follower campaigns),
	// nothing answers it.
	require.Eventually(t, func() bool { return survivor.Registry().Meta().Leader() == 0 }, 10*time.Second, 5*time.Millisecond)
	admin := dial(t, survivor).admin
	for _, call := range []struct {
		name string
		do   func() error
	}{
		{"CreateTopic", func() error {
			_, err := admin.CreateTopic(ctxT(t), &forestbusv1.CreateTopicRequest{Name: "x"})
			return err
		}},
		{"ListTopics", func() error {
			_, err := admin.ListTopics(ctxT(t), &forestbusv1.ListTopicsRequest{})
			return err
		}},
		{"AddNode", func() error {
			_, err := admin.AddNode(ctxT(t), &forestbusv1.AddNodeRequest{Name: "n9", Address: "127.0.0.1:1"})
			return err
		}},
		{"RemoveNode", func() error {
			_, err := admin.RemoveNode(ctxT(t), &forestbusv1.RemoveNodeRequest{Name: "n2"})
			return err
		}},
		{"UpdateTopic", func() error {
			_, err := admin.UpdateTopic(ctxT(t), &forestbusv1.UpdateTopicRequest{Name: "default"})
			return err
		}},
		{"RemoveTopic", func() error {
			_, err := admin.RemoveTopic(ctxT(t), &forestbusv1.RemoveTopicRequest{Name: "default"})
			return err
		}},
	} {
		err := call.do()
		assert.Equal(t, codes.Unavailable, status.Code(err), "%s: %v", call.name, err)
		assert.Contains(t, status.Convert(err).Message(), "no leader", call.name)
	}
}
