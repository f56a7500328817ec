package replica

// The in-memory cluster helpers every platform's tests use (the power-loss
// tests, which also use them, are Linux-only).

import (
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"

	"github.com/forestbus/forestbus/server/commitlog"
	"github.com/forestbus/forestbus/server/transport"
)

// handlerRef lets a hub transport exist before the engine it delivers to.
type handlerRef struct{ e atomic.Pointer[Engine] }

func (h *handlerRef) Step(group string, m *raftpb.Message) {
	if e := h.e.Load(); e != nil {
		e.Step(group, m)
	}
}

func (h *handlerRef) ReportUnreachable(group string, to uint64) {
	if e := h.e.Load(); e != nil {
		e.ReportUnreachable(group, to)
	}
}

func (h *handlerRef) ReportSnapshot(group string, to uint64, failed bool) {
	if e := h.e.Load(); e != nil {
		e.ReportSnapshot(group, to, failed)
	}
}

// startHubEngine starts node id's engine on hub, a peer of every node in
// ids, with cfg (its NodeID, Transport and Logger filled in); wrap, when
// not nil, wraps the node's transport. It stops when the test ends.
func startHubEngine(t *testing.T, hub *transport.Hub, id uint64, ids []uint64, cfg Config, wrap func(Transport) Transport) *Engine {
	t.Helper()
	e, tr := newHubEngine(t, hub, id, ids, cfg, wrap)
	e.Start()
	t.Cleanup(func() {
		tr.Stop()
		e.Stop()
	})
	return e
}

// newHubEngine is startHubEngine without the start: node id on hub, peers
// ids (pinged), its transport wrapped by wrap when not nil. The caller
// stops the transport it returns.
func newHubEngine(t *testing.T, hub *transport.Hub, id uint64, ids []uint64, cfg Config, wrap func(Transport) Transport) (*Engine, *transport.HubTransport) {
	t.Helper()
	ref := &handlerRef{}
	tr := hub.Transport(id, ref)
	for _, p := range ids {
		tr.AddPeer(p, "")
	}
	cfg.NodeID, cfg.Transport, cfg.Logger = id, tr, slog.New(slog.NewTextHandler(io.Discard, nil))
	if wrap != nil {
		cfg.Transport = wrap(tr)
	}
	e, err := NewEngine(cfg)
	require.NoError(t, err)
	ref.e.Store(e)
	e.SetPeers(ids)
	return e, tr
}

// openHubTrio starts nodes 1, 2 and 3 on hub with cfg (ticks default
// 50 ms), each with the groups names (logs in a temporary directory), and
// waits until node 1, which campaigns and starts last (see
// openNoticeCluster), leads every group on every node. wrap, when not nil,
// wraps node id's transport. It returns the engines and, per node, the
// groups in names' order; index k is node k+1.
func openHubTrio(t *testing.T, hub *transport.Hub, cfg Config, names []string, wrap func(id uint64, tr Transport) Transport) ([]*Engine, [][]*Group) {
	t.Helper()
	if cfg.TickInterval == 0 {
		cfg.TickInterval = 50 * time.Millisecond
	}
	ids := []uint64{1, 2, 3}
	root := t.TempDir()
	engines, groups := make([]*Engine, 3), make([][]*Group, 3)
	for k := 2; k >= 0; k-- {
		id := ids[k]
		var w func(Transport) Transport
		if wrap != nil {
			w = func(tr Transport) Transport { return wrap(id, tr) }
		}
		engines[k] = startHubEngine(t, hub, id, ids, cfg, w)
		for _, name := range names {
			l, err := commitlog.Open(filepath.Join(root, fmt.Sprint("n", id, "-", name)), commitlog.Options{})
			require.NoError(t, err)
			g, err := engines[k].AddGroup(GroupConfig{Name: name, Log: l, Peers: []raft.Peer{{ID: 1}, {ID: 2}, {ID: 3}}, Campaign: id == 1})
			require.NoError(t, err)
			groups[k] = append(groups[k], g)
		}
	}
	for i := range names {
		require.Eventually(t, func() bool {
			return groups[0][i].Leader() == 1 && groups[1][i].Leader() == 1 && groups[2][i].Leader() == 1
		}, 10*time.Second, time.Millisecond, "node 1 leads %s", names[i])
	}
	return engines, groups
}
