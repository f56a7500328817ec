package api

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// refusal takes the node out of client service while a peer refuses its
// streams: the data directory is not the one that peer knew under the
// node's raft ID (wiped, or another node's), and its logs are not the
// cluster's. Unlike a removal it can end: the operator may reset a peer's
// record, which then accepts the node again.
type refusal struct {
	err atomic.Pointer[error] // why, while refused

	mu   sync.Mutex
	ctx  context.Context // done once refused; a fresh one when it ends (New makes the first)
	done context.CancelFunc
}

// SetRefusedBy sets the peers (names) that refuse this node's streams;
// none ends the refusal. While one does, topic calls, GetClusterDetails
// and admin calls answer UNAVAILABLE, and waiting reads end at once.
func (s *Service) SetRefusedBy(names []string) {
	r := &s.refused
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(names) == 0 {
		if r.err.Swap(nil) != nil {
			r.ctx, r.done = context.WithCancel(context.Background())
		}
		return
	}
	err := status.Errorf(codes.Unavailable, "this node's data directory is not the one its peers knew under its raft ID (refused by %s): it serves no client until the operator acts (see its log); ask another node", strings.Join(names, ", "))
	r.err.Store(&err)
	r.done()
}

// refusedCtx is done while the node is refused (SetRefusedBy).
func (s *Service) refusedCtx() context.Context {
	r := &s.refused
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.ctx
}

// unavailable is why this node serves no client: the cluster removed it
// (errRemoved), or a peer refuses it (SetRefusedBy); nil when it serves.
func (s *Service) unavailable() error {
	if s.registry != nil && s.registry.RemovedSelf() {
		return errRemoved
	}
	if err := s.refused.err.Load(); err != nil {
		return *err
	}
	return nil
}
