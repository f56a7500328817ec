package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"

	forestbusv1 "github.com/forestbus/forestbus/gen/forestbus/v1"
	"github.com/forestbus/forestbus/internal/grpcflow"
	"github.com/forestbus/forestbus/server/api"
	"github.com/forestbus/forestbus/server/commitlog"
	"github.com/forestbus/forestbus/server/replica"
	"github.com/forestbus/forestbus/server/topic"
	"github.com/forestbus/forestbus/server/transport"
)

// Server is a running node.
type Server struct {
	cfg      Config
	log      *slog.Logger
	id       identity
	lis      net.Listener
	engine   *replica.Engine
	journal  *commitlog.Journal
	registry *topic.Registry
	svc      *api.Service
	grpc     *grpc.Server
	health   *health.Server

	served   chan struct{} // closed when Serve returns
	serveErr error
	bg       chan struct{} // closed when the background default-topic creation ends
	stopc    chan struct{} // closed by Stop
	// stopCtx ends when Stop begins (stopCancel, with stopc): the context
	// of the background loops' calls.
	stopCtx    context.Context
	stopCancel context.CancelFunc
	wg         sync.WaitGroup
	cancelBG   context.CancelFunc
	members    []member
	transport  PeerTransport
	stopOnce   sync.Once
	stopErr    error
	addr       string
	advertise  string
	lock       *os.File // the data directory's lock (lockDataDir)

	refusalMu    sync.Mutex                       // guards the two below, refused.json and health updates (refusal.go)
	refusedBy    map[uint64]bool                  // peers refusing this node's streams (raft IDs)
	refusedNames []string                         // their names (applyRefusalLocked)
	gate         *voteGate                        // wraps the peer transport; closed while refused
	peerCreds    credentials.TransportCredentials // PeerCredentials
	shed         chan struct{}                    // signals shedLeadership: a refusal began

	// peersMu guards the two below. memberIDs is the member list of the
	// last setMembers; lingering holds the removed members still in the
	// transport (forgetRemovedPeers).
	peersMu   sync.Mutex
	memberIDs map[uint64]bool
	lingering map[uint64]bool
}

// unlock releases the data directory's lock.
func (s *Server) unlock() {
	if s.lock != nil {
		_ = s.lock.Close()
		s.lock = nil
	}
}

// Start opens the data directory, starts the node and serves gRPC on
// cfg.ListenAddr. A one-node cluster returns once the default topic exists;
// a member of a larger cluster returns once it serves, and creates the
// default topic in the background as soon as the cluster has a quorum.
func Start(ctx context.Context, cfg Config) (*Server, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: cfg.Logger, served: make(chan struct{}), bg: make(chan struct{}), stopc: make(chan struct{}), refusedBy: map[uint64]bool{}, shed: make(chan struct{}, 1)}
	s.stopCtx, s.stopCancel = context.WithCancel(context.Background())
	// Before the topics open: a restart at the limit fails in open.
	s.checkFileLimit()
	if err := commitlog.MkdirAll(cfg.DataDir); err != nil {
		return nil, fmt.Errorf("server: data directory: %w", err)
	}
	lock, err := lockDataDir(cfg.DataDir)
	if errors.Is(err, errNoLocks) {
		s.log.Warn("the data directory's filesystem takes no locks: make sure no other node process uses it", "dir", cfg.DataDir, "err", err)
	} else if err != nil {
		return nil, err
	}
	s.lock = lock
	lis := cfg.Listener
	if lis == nil {
		if lis, err = net.Listen("tcp", cfg.ListenAddr); err != nil {
			s.unlock()
			return nil, fmt.Errorf("server: listen: %w", err)
		}
	}
	s.lis = lis
	s.addr = lis.Addr().String()
	s.advertise = cfg.AdvertiseAddr
	if s.advertise == "" {
		s.advertise = s.addr
	}
	if err := s.open(); err != nil {
		lis.Close()
		if s.transport != nil {
			s.transport.Stop()
		}
		if s.engine != nil {
			s.engine.Stop()
		}
		if s.registry != nil {
			s.registry.Close()
		}
		if s.journal != nil {
			_ = s.journal.Close()
		}
		s.unlock()
		return nil, err
	}
	go func() {
		s.serveErr = s.grpc.Serve(lis)
		close(s.served)
	}()
	s.log.Info("node started", "cluster", cfg.ClusterID, "node", cfg.NodeName, "id", s.id.RaftID, "addr", s.addr, "data", cfg.DataDir, "sync", string(cfg.Sync), "build", Build().String())
	s.checkAddress()

	s.wg.Add(5)
	go s.catchUp()
	go s.reconcile()
	go s.retention()
	go s.shedLeadership()
	go s.balanceLeaders()
	if cfg.DefaultTopic != "" {
		if len(s.registry.Members()) <= 1 && len(s.members) <= 1 {
			ectx, cancel := context.WithTimeout(ctx, 30*time.Second)
			err := s.registry.Ensure(ectx, cfg.DefaultTopic, topic.Settings{})
			cancel()
			if err != nil {
				s.Stop()
				return nil, fmt.Errorf("server: default topic: %w", err)
			}
		} else {
			bctx, cancel := context.WithCancel(context.Background())
			s.cancelBG = cancel
			go func() {
				defer close(s.bg)
				if err := s.registry.Ensure(bctx, cfg.DefaultTopic, topic.Settings{}); err != nil && bctx.Err() == nil {
					s.log.Error("creating the default topic", "topic", cfg.DefaultTopic, "err", err)
				}
			}()
		}
	}
	return s, nil
}

// open sets up identity, engine, transport, registry and gRPC server.
func (s *Server) open() error {
	cfg := s.cfg
	// Who is this node, and with whom does a new cluster start?
	var bootstrap []member // members of a new cluster; nil when joining
	want := identity{ClusterID: cfg.ClusterID, NodeName: cfg.NodeName}
	switch {
	case cfg.Join != nil:
		want.RaftID = cfg.Join.ID
		for _, m := range cfg.Join.Members {
			s.members = append(s.members, member{id: m.ID, name: m.Name, addr: m.Address})
		}
	default:
		bootstrap = []member{{id: 1, name: cfg.NodeName, addr: s.advertise}}
		if cfg.InitialCluster != "" {
			var err error
			if bootstrap, err = parseCluster(cfg.InitialCluster); err != nil {
				return err
			}
		}
		for _, m := range bootstrap {
			if m.name == cfg.NodeName {
				want.RaftID = m.id
				if cfg.AdvertiseAddr == "" && cfg.InitialCluster != "" {
					s.advertise = m.addr
				}
			}
		}
		if want.RaftID == 0 && !HasIdentity(cfg.DataDir) {
			// Only a first start needs its place in the list: a node
			// that joined later is in no -initial-cluster, and its data
			// directory knows its ID.
			return fmt.Errorf("server: the initial cluster does not name this node %q", cfg.NodeName)
		}
		s.members = bootstrap
	}
	if cfg.Join == nil {
		want.Initial = topicMembers(bootstrap)
	}
	fresh := !HasIdentity(cfg.DataDir)
	id, err := loadIdentity(cfg.DataDir, want)
	if err != nil {
		return err
	}
	s.id = id
	if !fresh {
		// The metadata log knows the members. An initial member passes
		// the members of its first start (identity.Initial): the group
		// bootstraps with them only if its log is empty, whatever the
		// flags say now.
		stored := membersOf(id.Initial)
		if cfg.Join == nil && len(stored) > 0 && cfg.InitialCluster != "" && !slices.Equal(stored, bootstrap) {
			s.log.Warn("server: the initial cluster differs from the one this node first started with: the members come from the metadata log, and only the first start's list may bootstrap it",
				"initial_cluster", cfg.InitialCluster)
		}
		bootstrap = nil
		if cfg.Join == nil && len(stored) > 0 {
			bootstrap = stored
			s.members = stored
		}
	}

	// The journal first: it replays what a crash left in it into the logs
	// before anything opens them. Also in os mode, which does not use it,
	// so that a node switched from fsync loses nothing.
	if s.journal, err = commitlog.OpenJournal(filepath.Join(cfg.DataDir, "journal"), cfg.DataDir, commitlog.JournalOptions{
		Bytes: cfg.JournalBytes, Logger: cfg.Logger,
	}); err != nil {
		return err
	}

	if err := s.loadRefusals(); err != nil {
		return err
	}
	s.gate = &voteGate{}
	switch {
	case cfg.PeerCredentials != nil:
		s.peerCreds = cfg.PeerCredentials
	case cfg.PeerTLS != nil:
		s.peerCreds = credentials.NewTLS(cfg.PeerTLS)
	default:
		s.peerCreds = insecure.NewCredentials()
	}
	s.gate.closed.Store(len(s.refusedBy) > 0) // until the members are known (applyRefusal)
	handler := &engineHandler{gate: s.gate}
	var grpcTransport *transport.GRPC
	var registry atomic.Pointer[topic.Registry] // for the transport's hooks, once opened
	var removedBy atomic.Uint64                 // a peer that said the cluster removed this node
	if cfg.NewTransport != nil {
		s.gate.PeerTransport = cfg.NewTransport(id.RaftID, handler)
	} else {
		book, err := openPeerBook(cfg.DataDir, s.log)
		if err != nil {
			return err
		}
		grpcTransport = transport.New(transport.Config{
			NodeID: id.RaftID, ClusterID: cfg.ClusterID, Handler: handler, Logger: cfg.Logger,
			Credentials: s.peerCreds,
			Incarnation: uint64(id.Incarnation),
			CheckPeer: func(from, inc uint64) error {
				// Its data directory first: a removed node may still be a
				// voter of some topic for a while, and a wiped one must
				// not vote there either.
				r := registry.Load()
				removed := r != nil && r.Removed(from)
				if err := book.check(from, inc); err != nil {
					if removed {
						// Refused, and told: it is to be deleted,
						// not fixed.
						return fmt.Errorf("%w: %w", transport.ErrRefuseRemoved, err)
					}
					return err
				}
				if removed {
					// A node the cluster removed, started again on its
					// old directory before it applied its removal:
					// tell it.
					return fmt.Errorf("%w: node %d is no member of cluster %q any more", transport.ErrPeerRemoved, from, cfg.ClusterID)
				}
				return nil
			},
			OnRefused: s.peerRefuses,
			OnRemoved: func(peer uint64) {
				// Streams open before the registry does: a peer's word
				// then waits for it (below).
				removedBy.Store(peer)
				if r := registry.Load(); r != nil && r.PeerSaysRemoved(peer) {
					s.recordRemoved(peer)
				}
			},
		})
		s.gate.PeerTransport = grpcTransport
	}
	s.transport = s.gate
	s.engine, err = replica.NewEngine(replica.Config{
		NodeID: id.RaftID, TickInterval: cfg.TickInterval, CommitNoticeDelay: cfg.CommitNoticeDelay, Transport: s.transport,
		MaxUncommittedBytes: cfg.MaxUncommittedBytes, Logger: cfg.Logger,
		Journal: s.journal, AnnounceLater: true,
	})
	if err != nil {
		return err
	}
	handler.e.Store(s.engine)
	s.engine.Start()

	s.svc = api.New(api.Config{
		PeerCredentials:   s.peerCreds,
		ClusterID:         cfg.ClusterID,
		NodeName:          cfg.NodeName,
		MaxMessageBytes:   cfg.MaxMessageBytes,
		MaxBatchBytes:     cfg.MaxBatchBytes,
		MaxReadBytes:      cfg.MaxReadBytes,
		ReadAheadBytes:    cfg.ReadAheadBytes,
		MaxWait:           cfg.MaxWait,
		MaxWaiters:        cfg.MaxWaiters,
		MaxSubscribers:    cfg.MaxSubscribers,
		MaxProduceStreams: cfg.MaxProduceStreams,
		MaxForwarding:     cfg.MaxForwarding,
		Logger:            cfg.Logger,
	}, nil)
	s.registry, err = topic.Open(topic.Config{
		Dir:       cfg.DataDir,
		Engine:    s.engine,
		NodeID:    id.RaftID,
		Members:   topicMembers(bootstrap),
		OnMembers: s.setMembers,
		// Health says SERVING once topic calls are served.
		OnCaughtUp: s.updateServing,
		Log:        commitlog.Options{SegmentBytes: cfg.SegmentBytes, NoSync: cfg.Sync == SyncOS, PageCacheBytes: cfg.PageCacheBytes, Journal: s.journal},

		DefaultRetention:      cfg.Retention,
		DefaultRetentionBytes: cfg.RetentionBytes,
		MaxTopics:             cfg.MaxTopics,
		MinSegmentBytes:       cfg.MinTopicSegmentBytes,
		MetaCheckpointEvery:   cfg.MetaCheckpointEvery,
		MetaSegmentBytes:      cfg.MetaSegmentBytes,
		Logger:                cfg.Logger,
	})
	if err != nil {
		return err
	}
	registry.Store(s.registry)
	if peer, ok := recordedRemoved(cfg.DataDir); ok {
		s.registry.PeerSaysRemoved(peer)
	}
	if peer := removedBy.Load(); peer != 0 && s.registry.PeerSaysRemoved(peer) {
		s.recordRemoved(peer)
	}
	s.svc.SetRegistry(s.registry)
	if ms := s.registry.Members(); len(ms) > 0 {
		s.setMembers(ms)
	} else {
		// A new cluster or a joining node: the configuration entries that
		// name the members are not applied yet.
		s.setMembers(topicMembers(s.members))
	}
	s.engine.Announce() // every group the node had is open

	// The windows, the keepalive and the header cap first, so that
	// cfg.GRPCOptions may replace them.
	opts := append(grpcflow.ServerOptions(),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: cfg.KeepaliveTime, Timeout: cfg.KeepaliveTimeout}),
		// A call's headers (its metadata): the node's own clients send a
		// few hundred bytes; grpc-go would take 16 MiB per call.
		grpc.MaxHeaderListSize(MaxHeaderListBytes),
	)
	opts = append(append(append(opts, cfg.GRPCOptions...), s.svc.ServerOptions()...), transport.ServerOptions()...)
	opts = append(opts,
		grpc.MaxRecvMsgSize(recvMsgLimit(cfg.MaxBatchBytes, cfg.MaxTopics)),
		// An answer stays under MaxReadBytes except for its first message,
		// which may have been stored under larger limits than the node
		// has now: room for the largest any node accepts.
		grpc.MaxSendMsgSize(cfg.MaxReadBytes+MaxBatchBytesLimit+(1<<20)),
		// Calls at once on one connection (HTTP/2 streams); more wait for
		// a free stream on the client side.
		grpc.MaxConcurrentStreams(cfg.MaxStreamsPerConn),
	)
	if cfg.TLS != nil {
		opts = append(opts, grpc.Creds(&handshakeLog{TransportCredentials: credentials.NewTLS(cfg.TLS), log: s.log}))
	}
	s.grpc = grpc.NewServer(opts...)
	forestbusv1.RegisterForestBusServiceServer(s.grpc, s.svc)
	forestbusv1.RegisterAdminServiceServer(s.grpc, s.svc)
	if grpcTransport != nil {
		grpcTransport.Register(s.grpc)
	}
	hs := health.NewServer()
	healthpb.RegisterHealthServer(s.grpc, hs)
	s.refusalMu.Lock() // the transport's OnRefused may read it (refusal.go)
	s.health = hs
	s.refusalMu.Unlock()
	reflection.Register(s.grpc)
	// A node the cluster removed, or that a peer refuses, answers every
	// topic call UNAVAILABLE, and health says so too, also when it
	// restarts removed (then from the start: no probe sees SERVING).
	s.updateServing()
	context.AfterFunc(s.registry.Removal(), s.updateServing)
	return nil
}

// handOffLeadership moves the leadership of every group this node leads to
// another voter before the node stops, so producers see at most a short
// pause instead of an election timeout (rolling restarts).
func (s *Server) handOffLeadership(limit time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	if _, failed := s.handOff(ctx); failed > 0 {
		s.log.Warn("leadership not handed off before stopping", "groups", failed)
	}
}

// handOff moves the leadership of every group this node leads (and that
// has another voter) to another voter, within ctx; it reports how many it
// led and how many of those it could not hand off.
func (s *Server) handOff(ctx context.Context) (led, failed int) {
	var wg sync.WaitGroup
	var nFailed atomic.Int64
	sem := make(chan struct{}, 64)
	for _, g := range s.registry.Groups() {
		if g.Leader() != s.id.RaftID || len(g.ConfState().GetVoters()) < 2 {
			continue
		}
		led++
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := g.TransferLeadership(ctx); err != nil {
				nFailed.Add(1)
				s.log.Debug("leadership not handed off", "group", g.Name(), "err", err)
			}
		}()
	}
	wg.Wait()
	return led, int(nFailed.Load())
}

// catchUp passes the metadata group's read barrier once after the start
// (topic.Registry.CaughtUp), so that topic calls do not wait for it: the
// API serves them only once it has passed. It tries again until it does
// or the node stops.
func (s *Server) catchUp() {
	defer s.wg.Done()
	for s.registry.CaughtUp(s.stopCtx) != nil {
		select {
		case <-s.stopc:
			return
		case <-time.After(100 * time.Millisecond): // a pause between tries, each bounded by the metadata wait
		}
	}
}

// reconcile brings the groups this node leads to the cluster's membership
// (reconcileLoop with the registry's rounds), until Stop.
func (s *Server) reconcile() {
	defer s.wg.Done()
	reconcileLoop(s.stopc, s.registry.Changed(), s.registry.ChangeCount, func(ctx context.Context) bool {
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		settled := s.registry.Reconcile(ctx)
		s.forgetRemovedPeers() // a round comes at least every reconcileIdle
		return settled
	}, reconcileEvery, reconcileIdle)
}

// forgetRemovedPeers removes from the transport the nodes the cluster
// removed that no group on this node counts any more (as voter or
// learner): each held a sending goroutine and a connection for the life
// of the process (a review found them).
func (s *Server) forgetRemovedPeers() {
	s.peersMu.Lock()
	ids := slices.Collect(maps.Keys(s.lingering))
	s.peersMu.Unlock()
	if len(ids) == 0 {
		return
	}
	groups := s.registry.Groups()
	for _, id := range ids {
		counted := false
		for _, g := range groups {
			cs := g.ConfState()
			if slices.Contains(cs.GetVoters(), id) || slices.Contains(cs.GetLearners(), id) ||
				slices.Contains(cs.GetVotersOutgoing(), id) || slices.Contains(cs.GetLearnersNext(), id) {
				counted = true
				break
			}
		}
		if counted {
			continue
		}
		s.peersMu.Lock()
		still := s.lingering[id]
		delete(s.lingering, id)
		s.peersMu.Unlock()
		if still {
			s.transport.RemovePeer(id)
		}
	}
}

// reconcileLoop runs round every `every` while it reports work left; once a
// round finds none (settled), the next waits until changes() moves past
// what it was before that round (changed is signalled when it does) or
// idle has passed since the round, so that an idle node neither walks its
// topics nor even wakes for this (a wakeup costs an idle node more than the
// walk). Rounds are at least `every` apart, however often changes move. It
// returns when stop is closed; the context a round is given ends then too,
// so that Stop does not wait for a round's proposals to time out.
func reconcileLoop(stop, changed <-chan struct{}, changes func() uint64, round func(ctx context.Context) (settled bool), every, idle time.Duration) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	t := time.NewTimer(every)
	defer t.Stop()
	var (
		settled bool
		seen    = changes()
	)
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		if settled {
			t.Reset(idle - every)
		wait:
			for changes() == seen {
				select {
				case <-stop:
					return
				case <-t.C:
					break wait
				case <-changed:
				}
			}
		}
		select {
		case <-stop:
			return // no round starts after stop
		default:
		}
		seen = changes()
		settled = round(ctx)
		t.Reset(every) // no stale tick survives a Reset (Go ≥ 1.23)
	}
}

const (
	reconcileEvery = 500 * time.Millisecond
	reconcileIdle  = 5 * time.Second
)

// Config.KeepaliveTime's and KeepaliveTimeout's defaults.
const (
	DefaultKeepaliveTime    = 2 * time.Minute
	DefaultKeepaliveTimeout = 20 * time.Second
)

// MaxHeaderListBytes caps the headers (metadata) of one call; a call
// with more fails.
const MaxHeaderListBytes = 64 << 10

// DefaultMaxTopics is Config.MaxTopics's default.
const DefaultMaxTopics = topic.DefaultMaxTopics

// DefaultMinTopicSegmentBytes is Config.MinTopicSegmentBytes's default.
const DefaultMinTopicSegmentBytes = topic.DefaultMinSegmentBytes

// DefaultMaxStreamsPerConn is Config.MaxStreamsPerConn's default: 1,000
// calls for each of the 32 Clients the client package puts on one shared
// connection (its clientsPerConn).
const DefaultMaxStreamsPerConn = 32 * 1000

// retention enforces the topics' retention settings on the topics this
// node leads, and deletes the files of topics removed more than
// RemovedRetention ago, every RetentionInterval, until Stop.
func (s *Server) retention() {
	defer s.wg.Done()
	t := time.NewTicker(s.cfg.RetentionInterval)
	defer t.Stop()
	for {
		select {
		case <-s.stopc:
			return
		case now := <-t.C:
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			s.registry.EnforceRetention(ctx, now)
			cancel()
			s.registry.PurgeRemoved(now, s.cfg.RemovedRetention)
		}
	}
}

// setMembers updates the transport's peers and the API's node list.
func (s *Server) setMembers(ms []topic.Member) {
	nodes := make([]api.Node, len(ms))
	ids := make([]uint64, len(ms))
	for i, m := range ms {
		ids[i] = m.ID
	}
	for i, m := range ms {
		nodes[i] = api.Node{Name: m.Name, Address: m.Address, RaftID: m.ID, Learner: m.Learner}
		if m.ID != s.id.RaftID && m.Address != "" {
			s.transport.AddPeer(m.ID, m.Address)
		}
	}
	s.engine.SetPeers(ids) // after AddPeer: it pings them at once
	// Removed nodes stay in the transport for now: one may still lead a
	// topic group until it hands the leadership over, and followers forward
	// to it meanwhile. forgetRemovedPeers drops them once no group counts
	// them.
	s.peersMu.Lock()
	now := make(map[uint64]bool, len(ids))
	for _, id := range ids {
		now[id] = true
		delete(s.lingering, id)
	}
	for id := range s.memberIDs {
		if !now[id] && id != s.id.RaftID {
			if s.lingering == nil {
				s.lingering = map[uint64]bool{}
			}
			s.lingering[id] = true
		}
	}
	s.memberIDs = now
	s.peersMu.Unlock()
	s.svc.SetNodes(nodes)
	s.applyRefusal() // the refusing peers' names, from the new list
}

// engineHandler passes the transport's deliveries to the engine. The
// transport exists before the engine, and a peer's message can arrive in
// between (a ping): it is dropped, as for a node not up yet.
type engineHandler struct {
	e    atomic.Pointer[replica.Engine]
	gate *voteGate
}

func (h *engineHandler) Step(group string, m *raftpb.Message) {
	if h.gate.dropsInbound(m) {
		return
	}
	if e := h.e.Load(); e != nil {
		e.Step(group, m)
	}
}

func (h *engineHandler) ReportUnreachable(group string, to uint64) {
	if e := h.e.Load(); e != nil {
		e.ReportUnreachable(group, to)
	}
}

func (h *engineHandler) ReportSnapshot(group string, to uint64, failed bool) {
	if e := h.e.Load(); e != nil {
		e.ReportSnapshot(group, to, failed)
	}
}

// checkAddress warns when peers and clients will not find this node where
// it listens: the cluster knows it at another address than it advertises
// (restarted with another -listen: the member list keeps the address the
// node joined with, and a member's address does not change; remove the
// member and join again with a new data directory), or it advertises
// another port than it listens on (a first start whose -initial-cluster
// names it at another port than -listen).
//
// Without -advertise, a member address that names this listener in other
// words (a host name for its IP, or any address at its port when it
// listens on every interface) is no move: the node advertises that
// address, as the cluster records it.
func (s *Server) checkAddress() {
	known := ""
	for _, m := range s.registry.Members() {
		if m.ID == s.id.RaftID {
			known = m.Address
		}
	}
	if known != "" && known != s.advertise {
		if s.cfg.AdvertiseAddr == "" && sameListener(known, s.addr) {
			s.advertise = known
		} else {
			s.log.Warn("the cluster knows this node at another address than it now advertises: peers and clients will look for it there", "member_address", known, "advertised", s.advertise, "listen", s.addr)
		}
	}
	_, lport, lerr := net.SplitHostPort(s.addr)
	_, aport, aerr := net.SplitHostPort(s.advertise)
	if lerr == nil && aerr == nil && lport != aport {
		s.log.Warn("this node advertises another port than it listens on: unless a proxy forwards it, peers and clients will not reach it", "advertised", s.advertise, "listen", s.addr)
	}
}

// sameListener reports whether member (host:port) reaches a listener at
// listen (its bound address): the same port, and a listen on every
// interface or a member host that is, or resolves to, the listen IP.
func sameListener(member, listen string) bool {
	mh, mp, err := net.SplitHostPort(member)
	if err != nil {
		return false
	}
	lh, lp, err := net.SplitHostPort(listen)
	if err != nil || mp != lp {
		return false
	}
	lip := net.ParseIP(lh)
	switch {
	case lh == "" || lip != nil && lip.IsUnspecified():
		return true
	case mh == lh:
		return true
	case lip == nil:
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	addrs, err := net.DefaultResolver.LookupIPAddr(ctx, mh)
	if err != nil {
		return false
	}
	for _, a := range addrs {
		if a.IP.Equal(lip) {
			return true
		}
	}
	return false
}

// Addr is the address the node listens on.
func (s *Server) Addr() string { return s.addr }

// PeerCredentials are what the node dials other nodes with:
// Config.PeerCredentials, TLS from Config.PeerTLS, else plaintext.
func (s *Server) PeerCredentials() credentials.TransportCredentials { return s.peerCreds }

// ServingCertificate is the certificate the node serves TLS with now, nil
// without TLS. Config.TLS may choose it per handshake
// (GetConfigForClient, GetCertificate: fbnode's follows its files); it is
// asked as for a client that names no server.
func (s *Server) ServingCertificate() (leaf *x509.Certificate) {
	c := s.cfg.TLS
	if c == nil {
		return nil
	}
	defer func() {
		// A caller's callback that needs a real handshake (hello.Conn)
		// must not take the status page or a scrape down with it.
		if recover() != nil {
			leaf = nil
		}
	}()
	hello := &tls.ClientHelloInfo{}
	if c.GetConfigForClient != nil {
		if cc, err := c.GetConfigForClient(hello); err == nil && cc != nil {
			c = cc
		}
	}
	var cert *tls.Certificate
	switch {
	case len(c.Certificates) > 0:
		cert = &c.Certificates[0]
	case c.GetCertificate != nil:
		cert, _ = c.GetCertificate(hello)
	}
	if cert == nil || len(cert.Certificate) == 0 {
		return nil
	}
	if cert.Leaf != nil {
		return cert.Leaf
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return nil
	}
	return leaf
}

// NodeName is the node's name (Config.NodeName).
func (s *Server) NodeName() string { return s.cfg.NodeName }

// ConnectionString is the client connection string for the node's
// cluster and default topic: cluster#topic@address,address,... with this
// node's address first, then the other members' it knows of (a client
// should list every node, to fail over).
func (s *Server) ConnectionString() string {
	addrs := []string{s.advertise}
	add := func(addr string) {
		if addr != "" && !slices.Contains(addrs, addr) {
			addrs = append(addrs, addr)
		}
	}
	if s.registry != nil {
		for _, m := range s.registry.Members() {
			add(m.Address)
		}
	}
	if len(addrs) == 1 {
		// A new cluster's members are in the metadata log only once
		// its first leader commits them: the start's list until then.
		for _, m := range s.members {
			add(m.addr)
		}
	}
	return fmt.Sprintf("%s#%s@%s", s.cfg.ClusterID, s.cfg.DefaultTopic, strings.Join(addrs, ","))
}

// LongPolls is the number of GetMessages calls waiting on this node.
func (s *Server) LongPolls() int { return s.svc.Waiters() }

// Subscriptions is the number of Subscribe streams this node serves.
func (s *Server) Subscriptions() int { return s.svc.Subscribers() }

// ProduceStreams is the number of Produce streams this node serves.
func (s *Server) ProduceStreams() int { return s.svc.ProduceStreams() }

// EngineMetrics returns the node's sync counters (replica.EngineMetrics).
func (s *Server) EngineMetrics() replica.EngineMetrics { return s.engine.Metrics() }

// Registry is the node's topic registry (tests and tools).
func (s *Server) Registry() *topic.Registry { return s.registry }

// Done is closed when gRPC serving has stopped, after Stop or on a listener
// failure; Err then tells why.
func (s *Server) Done() <-chan struct{} { return s.served }

// Err is the serve error once Done is closed (nil after a clean Stop).
func (s *Server) Err() error {
	select {
	case <-s.served:
		if errors.Is(s.serveErr, grpc.ErrServerStopped) {
			return nil
		}
		return s.serveErr
	default:
		return nil
	}
}

// Stop shuts the node down: health reports NOT_SERVING, long polls return,
// in-flight calls finish (up to a grace period), then the raft engine stops
// and every log is closed with its state persisted.
func (s *Server) Stop() error {
	s.stopOnce.Do(func() {
		close(s.stopc)
		s.stopCancel()
		s.wg.Wait()
		if s.cancelBG != nil {
			s.cancelBG()
			<-s.bg
		}
		s.health.Shutdown()
		s.refusalMu.Lock() // applyRefusal sets StandAside too
		s.gate.stopping.Store(true)
		s.engine.StandAside(true) // its pings tell peers to hand it nothing
		s.refusalMu.Unlock()
		s.handOffLeadership(5 * time.Second)
		s.svc.BeginShutdown()
		// Let calls in flight finish while peers are still connected (a
		// commit needs them), then close the peer streams, which would
		// otherwise hold GracefulStop.
		dctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		s.svc.Drain(dctx)
		cancel()
		s.transport.Stop()
		done := make(chan struct{})
		go func() {
			s.grpc.GracefulStop()
			close(done)
		}()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			s.grpc.Stop()
			<-done
		}
		s.engine.Stop()
		s.registry.Close() // topic starts in progress: they close their logs
		if err := s.journal.Close(); err != nil {
			s.log.Warn("closing the journal", "err", err)
		}
		s.svc.Close()
		<-s.served
		s.stopErr = s.Err()
		s.unlock() // last: every file of the directory is closed
		s.log.Info("node stopped", "node", s.cfg.NodeName)
	})
	return s.stopErr
}

// recvMsgLimit is the node's gRPC receive limit: room for the framing of
// a batch of many small messages, so that an oversized batch reaches the
// handler and gets BATCH_TOO_LARGE; at least what a peer's frame of raft
// messages may hold (transport.MinRecvMsgSize): with a small batch limit,
// 4×batch + 1 MiB was below a 4 MiB frame of several raft messages, and
// the peer stream refused it whole; and room for the largest snapshot a
// peer may send, which raft sends as one message: a topic's (its dedup
// table) or the metadata group's (the registry, by its topic cap; without
// a cap, MaxBatchBytesLimit). A snapshot over the limit was refused by
// every peer, for ever, and a follower behind the retained log, or a new
// member, never caught up.
func recvMsgLimit(maxBatchBytes, maxTopics int) int {
	if maxTopics == 0 {
		maxTopics = DefaultMaxTopics
	}
	meta := MaxBatchBytesLimit
	if maxTopics > 0 {
		meta = maxTopics * topic.MaxCheckpointTopicBytes
	}
	snap := max(commitlog.MaxSnapshotDataBytes(), meta) + (1 << 20)
	return max(4*maxBatchBytes+(1<<20), transport.MinRecvMsgSize, snap)
}
