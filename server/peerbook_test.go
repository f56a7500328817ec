package server_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	forestbusv1 "github.com/forestbus/forestbus/gen/forestbus/v1"
	"github.com/forestbus/forestbus/internal/syncbuf"
	"github.com/forestbus/forestbus/server"
	"github.com/forestbus/forestbus/server/servertest"
)

// loggedCluster is a 3-node cluster whose nodes log warnings and errors
// to the returned buffer.
func loggedCluster(t *testing.T) (*servertest.Cluster, *syncbuf.Buffer) {
	t.Helper()
	logs := new(syncbuf.Buffer)
	c := servertest.NewCluster(t, 3, servertest.WithConfig(func(cfg *server.Config) {
		cfg.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}))
	c.WaitTopic("default")
	return c, logs
}

// TestWipedNodeIsRefused: a node whose data directory was wiped, started
// again with its old name and -initial-cluster, takes up its old raft ID
// with an empty log. A review saw such a node vote a candidate that lacked
// acknowledged entries into leadership, and their IDs given to new
// messages. Its peers now refuse its streams (its identity's incarnation
// is not the one they recorded), and say why; the cluster goes on.
func TestWipedNodeIsRefused(t *testing.T) {
	c, logs := loggedCluster(t)
	ctx := ctxT(t)
	_, err := dial(t, c.Nodes[0]).bus.SendMessages(ctx, &forestbusv1.SendMessagesRequest{Topic: "default", Messages: [][]byte{[]byte("a")}, WaitForCommit: true})
	require.NoError(t, err)

	wiped := c.Nodes[1]
	wiped.Stop()
	require.NoError(t, os.RemoveAll(wiped.Cfg.DataDir))
	wiped.Start()
	require.Eventually(t, func() bool {
		return strings.Contains(logs.String(), "came back with another data directory")
	}, 20*time.Second, 10*time.Millisecond, "the peers refuse it")

	// The others serve on.
	_, err = dial(t, c.Nodes[2]).bus.SendMessages(ctx, &forestbusv1.SendMessagesRequest{Topic: "default", Messages: [][]byte{[]byte("b")}, WaitForCommit: true})
	require.NoError(t, err)
	require.Eventually(t, func() bool { return strings.Contains(logs.String(), "peer refuses this node") }, 20*time.Second, 10*time.Millisecond,
		"the wiped node says so too")
	// And takes itself out of service: it looked healthy, and answered
	// clients from its empty logs (review).
	require.Eventually(t, func() bool { return len(wiped.RefusedBy()) == 2 }, 20*time.Second, 10*time.Millisecond)
	assertRefused(t, wiped, c.Nodes[0].Cfg.NodeName, c.Nodes[2].Cfg.NodeName)

	// A peer remembers across its restarts (DataDir/peers.json).
	refusals := func() int { return strings.Count(logs.String(), "came back with another data directory") }
	before := refusals()
	c.Nodes[0].Restart()
	require.Eventually(t, func() bool { return refusals() > before }, 20*time.Second, 10*time.Millisecond, "refused after a restart")
}

// TestRemovedNodeLearnsFromPeers: a node stopped, then removed, then
// started again on its old data directory never applies its own removal
// (the leader sends it nothing more): it served its stale logs as a
// member, its long polls came back empty while the topic moved on, and
// cluster status through it listed the old members (review). Its peers
// say so when they accept its streams, and it takes itself out:
// UNAVAILABLE to clients, GetClusterDetails included; also after a restart
// with its peers down (it records what it was told).
func TestRemovedNodeLearnsFromPeers(t *testing.T) {
	c := servertest.NewCluster(t, 3)
	c.WaitTopic("default")
	ctx := ctxT(t)
	gone := c.Nodes[2]
	gone.Stop()
	require.NoError(t, removeNode(t, dial(t, c.Nodes[0]).admin, gone.Cfg.NodeName))

	gone.Start()
	require.Eventually(t, func() bool { return gone.Registry().RemovedSelf() }, 20*time.Second, 10*time.Millisecond, "told by a peer")
	cc := dial(t, gone)
	_, err := cc.bus.GetClusterDetails(ctx, &forestbusv1.GetClusterDetailsRequest{})
	assert.Equal(t, codes.Unavailable, status.Code(err), "%v", err)
	_, err = cc.bus.GetMessages(ctx, &forestbusv1.GetMessagesRequest{Topic: "default", Id: 1, Quantity: 1})
	assert.Equal(t, codes.Unavailable, status.Code(err), "%v", err)

	c.Nodes[0].Stop()
	c.Nodes[1].Stop()
	gone.Restart()
	assert.True(t, gone.Registry().RemovedSelf(), "from its start, no peer up")
}

// TestRemovedVoterStillCounts: the cluster's removal of a node goes to the
// topic groups later (Reconcile, one change per group at a time), and
// until then a topic counts the node as a voter. Peers that refused a
// removed node's streams left such a topic without a quorum for good (a
// review: stop n4, remove it, remove n2 at once, restart n2: the topic,
// still with voters 1-4, had only n1 and n3). Its streams are accepted,
// the node told it was removed.
func TestRemovedVoterStillCounts(t *testing.T) {
	c := servertest.NewCluster(t, 4)
	c.WaitTopic("default")
	ctx := ctxT(t)
	c.Nodes[3].Stop()
	require.NoError(t, removeNode(t, dial(t, c.Nodes[0]).admin, c.Nodes[3].Cfg.NodeName))
	require.NoError(t, removeNode(t, dial(t, c.Nodes[0]).admin, c.Nodes[1].Cfg.NodeName))
	c.Nodes[1].Restart()
	require.Eventually(t, func() bool {
		_, err := dial(t, c.Nodes[0]).bus.SendMessages(ctx, &forestbusv1.SendMessagesRequest{Topic: "default", Messages: [][]byte{[]byte("x")}, WaitForCommit: true})
		return err == nil
	}, 20*time.Second, 50*time.Millisecond, "the topic has a quorum")
	require.Eventually(t, func() bool { return c.Nodes[1].Registry().RemovedSelf() }, 20*time.Second, 10*time.Millisecond)
}

// TestWipedRemovedNodeIsRefused: a removed node, wiped and started again
// under its old raft ID, is refused like any wiped node: a topic may count
// the removed ID as a voter for a while yet, and the empty log must not
// vote there. (Its removal was checked first, and let it through.) The
// refusal tells it that it is removed.
func TestWipedRemovedNodeIsRefused(t *testing.T) {
	c, logs := loggedCluster(t)
	gone := c.Nodes[2]
	gone.Stop()
	require.NoError(t, removeNode(t, dial(t, c.Nodes[0]).admin, gone.Cfg.NodeName))
	require.NoError(t, os.RemoveAll(gone.Cfg.DataDir))
	gone.Start()
	require.Eventually(t, func() bool {
		return strings.Contains(logs.String(), "came back with another data directory")
	}, 20*time.Second, 10*time.Millisecond, "the peers refuse it")
	// And tell it that it is removed: it said only that it was refused,
	// "until the operator acts", who had (review).
	require.Eventually(t, func() bool { return gone.Registry().RemovedSelf() }, 20*time.Second, 10*time.Millisecond)
}

// assertRefused checks that n, refused by the members named, serves no
// client: topic calls and GetClusterDetails answer UNAVAILABLE naming
// them, and health says NOT_SERVING.
func assertRefused(t *testing.T, n *servertest.Node, by ...string) {
	t.Helper()
	ctx := ctxT(t)
	assert.ElementsMatch(t, by, n.RefusedBy())
	cc := dial(t, n)
	_, err := cc.bus.GetClusterDetails(ctx, &forestbusv1.GetClusterDetailsRequest{})
	assert.Equal(t, codes.Unavailable, status.Code(err), "%v", err)
	for _, name := range by {
		assert.Contains(t, status.Convert(err).Message(), name)
	}
	_, err = cc.bus.GetMessages(ctx, &forestbusv1.GetMessagesRequest{Topic: "default", Id: 1, Quantity: 1})
	assert.Equal(t, codes.Unavailable, status.Code(err), "%v", err)
	_, err = cc.admin.ListTopics(ctx, &forestbusv1.ListTopicsRequest{})
	assert.Equal(t, codes.Unavailable, status.Code(err), "admin calls too: %v", err)
	assert.Equal(t, healthpb.HealthCheckResponse_NOT_SERVING, healthOf(t, n))
}

// healthOf is n's health status (service "").
func healthOf(t *testing.T, n *servertest.Node) healthpb.HealthCheckResponse_ServingStatus {
	t.Helper()
	cc, err := grpc.NewClient("passthrough:///"+n.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer cc.Close()
	r, err := healthpb.NewHealthClient(cc).Check(ctxT(t), &healthpb.HealthCheckRequest{})
	require.NoError(t, err)
	return r.GetStatus()
}

// TestRefusalEnds: a node that its peers refuse serves no client until
// they accept it again; here they recorded another incarnation for it (the
// README's case of a node started by mistake under its name), and the
// operator resets each peer's record (peers.json), one at a time. A
// long poll waiting on the node when the refusal begins ends at once.
func TestRefusalEnds(t *testing.T) {
	c := servertest.NewCluster(t, 3, servertest.WithMaxWait(time.Minute))
	c.WaitTopic("default")
	x, p0, p2 := c.Nodes[1], c.Nodes[0], c.Nodes[2]
	require.Equal(t, healthpb.HealthCheckResponse_SERVING, healthOf(t, x))

	// A long poll waits on x, past the test's writes.
	polled := make(chan error, 1)
	xc, pollCtx := dial(t, x), ctxT(t) // not in the goroutine: they may fail the test
	go func() {
		_, err := xc.bus.GetMessages(pollCtx, &forestbusv1.GetMessagesRequest{Topic: "default", Id: 1000, Quantity: 1, Wait: true})
		polled <- err
	}()
	require.Eventually(t, func() bool { return x.LongPolls() == 1 }, 10*time.Second, time.Millisecond)
	// So does a Subscribe stream (its heartbeat a minute away).
	sub, err := dial(t, x).bus.Subscribe(ctxT(t), &forestbusv1.SubscribeRequest{Topic: "default", FromId: 1000, HeartbeatMs: 60_000})
	require.NoError(t, err)
	require.Eventually(t, func() bool { return x.Subscriptions() == 1 }, 10*time.Second, time.Millisecond)

	// Each peer records another directory for x's raft ID.
	wrongRecord := func(p *servertest.Node) { recordWrongIncarnation(t, p, x) }
	wrongRecord(p0)
	require.Eventually(t, func() bool { return len(x.RefusedBy()) == 1 }, 20*time.Second, 10*time.Millisecond)
	select {
	case err := <-polled:
		assert.Equal(t, codes.Unavailable, status.Code(err), "the long poll ends: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("the long poll still waits")
	}
	_, err = sub.Recv()
	assert.Equal(t, codes.Unavailable, status.Code(err), "the stream ends: %v", err)
	assertRefused(t, x, p0.Cfg.NodeName)
	wrongRecord(p2)
	require.Eventually(t, func() bool { return len(x.RefusedBy()) == 2 }, 20*time.Second, 10*time.Millisecond)
	assertRefused(t, x, p0.Cfg.NodeName, p2.Cfg.NodeName)

	reset := func(p *servertest.Node) {
		p.Stop()
		require.NoError(t, os.Remove(filepath.Join(p.Cfg.DataDir, "peers.json")))
		p.Start()
	}
	reset(p0)
	require.Eventually(t, func() bool { return len(x.RefusedBy()) == 1 }, 20*time.Second, 10*time.Millisecond)
	assertRefused(t, x, p2.Cfg.NodeName)
	reset(p2)
	require.Eventually(t, func() bool { return len(x.RefusedBy()) == 0 }, 20*time.Second, 10*time.Millisecond)
	assert.Equal(t, healthpb.HealthCheckResponse_SERVING, healthOf(t, x))
	_, err = dial(t, x).bus.GetClusterDetails(ctxT(t), &forestbusv1.GetClusterDetailsRequest{})
	assert.NoError(t, err)
	_, err = dial(t, x).bus.GetMessages(ctxT(t), &forestbusv1.GetMessagesRequest{Topic: "default", Id: 1, Quantity: 1})
	assert.NoError(t, err)
}

// recordWrongIncarnation restarts p with another incarnation recorded for
// x's raft ID (peers.json), so that it refuses x.
func recordWrongIncarnation(t *testing.T, p, x *servertest.Node) {
	t.Helper()
	p.Stop()
	book := filepath.Join(p.Cfg.DataDir, "peers.json")
	b, err := os.ReadFile(book)
	require.NoError(t, err)
	var known map[string]string
	require.NoError(t, json.Unmarshal(b, &known))
	known[strconv.FormatUint(x.RaftID(), 10)] = "1"
	b, err = json.Marshal(known)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(book, b, 0o644))
	p.Start()
}

// TestRefusalByFormerMember: a refusal by a member the cluster removed
// since still counts: its record of the node's first directory stays true,
// and removing the one member that knew it must not let a wiped node vote
// again (review; the first version dropped it).
func TestRefusalByFormerMember(t *testing.T) {
	c := servertest.NewCluster(t, 3)
	c.WaitTopic("default")
	x, p, l := c.Nodes[1], c.Nodes[0], c.Nodes[2]
	refuse(t, p, x)
	leadAll(t, l) // with p down, x's vote cannot elect anyone
	p.Stop()
	require.NoError(t, removeNode(t, dial(t, l).admin, p.Cfg.NodeName))
	require.Eventually(t, func() bool {
		by := x.RefusedBy()
		return len(by) == 1 && strings.HasPrefix(by[0], "node ")
	}, 20*time.Second, 10*time.Millisecond, "named by raft ID once no member")
	assertRefused(t, x, x.RefusedBy()...)
}

// TestRefusedNodeLeadsNothing: a refused node that leads hands its
// leaderships off. A review: it kept them (CheckQuorum held through the
// peer that accepts it), answered writes UNAVAILABLE as it answers every
// client, and followers forwarded writes to it, so none succeeded anywhere
// for as long as the refusal lasted.
func TestRefusedNodeLeadsNothing(t *testing.T) {
	c := servertest.NewCluster(t, 3)
	c.WaitTopic("default")
	p0, x := c.Nodes[0], c.Nodes[1]
	ctx := ctxT(t)
	leadAll(t, x)

	refuse(t, p0, x)
	require.Eventually(t, func() bool {
		for _, g := range x.Registry().Groups() {
			if g.Leader() == x.RaftID() {
				return false
			}
		}
		return true
	}, 20*time.Second, 10*time.Millisecond, "x hands its leaderships off")
	for _, n := range []*servertest.Node{p0, c.Nodes[2]} {
		_, err := dial(t, n).bus.SendMessages(ctx, &forestbusv1.SendMessagesRequest{Topic: "default", Messages: [][]byte{[]byte("w")}, WaitForCommit: true})
		require.NoError(t, err, "a write through %s", n.Cfg.NodeName)
	}
}

// TestRefusalSurvivesRestart: a refused node restarted while the member
// that refuses it is down still serves no client and takes no part in
// elections (DataDir/refused.json): a wiped node restarted by its service
// manager would otherwise vote again. The refusal ends when the member
// accepts it.
func TestRefusalSurvivesRestart(t *testing.T) {
	c := servertest.NewCluster(t, 3)
	c.WaitTopic("default")
	p0, x := c.Nodes[0], c.Nodes[1]
	refuse(t, p0, x)
	p0.Stop()
	x.Restart()
	assertRefused(t, x, p0.Cfg.NodeName)

	require.NoError(t, os.Remove(filepath.Join(p0.Cfg.DataDir, "peers.json")))
	p0.Start()
	require.Eventually(t, func() bool { return len(x.RefusedBy()) == 0 }, 20*time.Second, 10*time.Millisecond)
	assert.NoFileExists(t, filepath.Join(x.Cfg.DataDir, "refused.json"))
	// Serving once it has caught up with the metadata too, which it could
	// not while refused and p0 was down.
	require.Eventually(t, func() bool { return healthOf(t, x) == healthpb.HealthCheckResponse_SERVING }, 20*time.Second, 10*time.Millisecond)
}

// TestUnreadableRefusalRecord: a refused.json that cannot be read fails
// the start, as an unreadable peers.json does. It was ignored, and the
// node voted again while the member that refused it was down (review).
func TestUnreadableRefusalRecord(t *testing.T) {
	n := servertest.StartNode(t)
	cfg := n.Cfg
	n.Stop()
	require.NoError(t, os.WriteFile(filepath.Join(cfg.DataDir, "refused.json"), []byte(`{"peers": [1`), 0o644))
	ctx := ctxT(t)
	_, err := server.Start(ctx, cfg)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "refused.json")
}

// TestHandOffSkipsRefusedNode: a hand-off picks the most caught-up voter,
// which may be a node that stands aside (refused, it ignores the transfer);
// raft then waits an election timeout with the group's proposals dropped,
// and the hand-off waited out its whole limit (review: 1 to 3 of 10
// failed). It asks the next voter.
func TestHandOffSkipsRefusedNode(t *testing.T) {
	c := servertest.NewCluster(t, 3)
	c.WaitTopic("default")
	p0, x, l := c.Nodes[0], c.Nodes[1], c.Nodes[2]
	refuse(t, p0, x)
	tp, err := l.Registry().Get("default")
	require.NoError(t, err)
	g := tp.Group
	for i := range 10 {
		require.Eventually(t, func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			_ = g.RequestLeadership(ctx)
			return g.Leader() == l.RaftID()
		}, 20*time.Second, 20*time.Millisecond, "round %d: l leads", i)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := g.TransferLeadership(ctx)
		cancel()
		require.NoError(t, err, "round %d", i)
		assert.NotEqual(t, x.RaftID(), g.Leader(), "round %d", i)
	}
}

// refuse makes p refuse x (recordWrongIncarnation) and waits until x
// knows.
func refuse(t *testing.T, p, x *servertest.Node) {
	t.Helper()
	recordWrongIncarnation(t, p, x)
	require.Eventually(t, func() bool { return slices.Contains(x.RefusedBy(), p.Cfg.NodeName) }, 20*time.Second, 10*time.Millisecond)
}

// leadAll makes n the leader of every group it has.
func leadAll(t *testing.T, n *servertest.Node) {
	t.Helper()
	require.Eventually(t, func() bool {
		all := true
		for _, g := range n.Registry().Groups() {
			if g.Leader() != n.RaftID() {
				all = false
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				_ = g.RequestLeadership(ctx)
				cancel()
			}
		}
		return all
	}, 20*time.Second, 50*time.Millisecond, "%s leads every group", n.Cfg.NodeName)
}
