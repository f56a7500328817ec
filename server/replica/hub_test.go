package replica

// The in-memory cluster helpers every platform's tests use (the power-loss
// tests, which also use them, are Linux-only).

import (
	"io"
	"log/slog"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"
	"go.etcd.io/raft/v3/raftpb"

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
