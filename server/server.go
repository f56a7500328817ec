package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"

	forestbusv1 "github.com/forestbus/forestbus/gen/forestbus/v1"
	"github.com/forestbus/forestbus/server/api"
	"github.com/forestbus/forestbus/server/commitlog"
	"github.com/forestbus/forestbus/server/replica"
	"github.com/forestbus/forestbus/server/topic"
)

// Server is a running node.
type Server struct {
	cfg      Config
	log      *slog.Logger
	id       identity
	lis      net.Listener
	engine   *replica.Engine
	registry *topic.Registry
	svc      *api.Service
	grpc     *grpc.Server
	health   *health.Server

	served    chan struct{} // closed when Serve returns
	serveErr  error
	stopOnce  sync.Once
	stopErr   error
	addr      string
	advertise string
}

// Start opens the data directory, starts the node and serves gRPC on
// cfg.ListenAddr. It returns once the node is ready: the metadata log is
// replayed and the default topic exists.
func Start(ctx context.Context, cfg Config) (*Server, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: cfg.Logger, served: make(chan struct{})}
	if err := os.MkdirAll(cfg.DataDir, 0o755); err != nil {
		return nil, fmt.Errorf("server: data directory: %w", err)
	}
	id, err := loadIdentity(cfg.DataDir, identity{ClusterID: cfg.ClusterID, NodeName: cfg.NodeName, RaftID: 1})
	if err != nil {
		return nil, err
	}
	s.id = id

	lis, err := net.Listen("tcp", cfg.ListenAddr)
	if err != nil {
		return nil, fmt.Errorf("server: listen: %w", err)
	}
	s.lis = lis
	s.addr = lis.Addr().String()
	s.advertise = cfg.AdvertiseAddr
	if s.advertise == "" {
		s.advertise = s.addr
	}

	s.engine, err = replica.NewEngine(replica.Config{NodeID: id.RaftID, TickInterval: cfg.TickInterval, Logger: cfg.Logger})
	if err != nil {
		lis.Close()
		return nil, err
	}
	s.engine.Start()
	s.registry, err = topic.Open(topic.Config{
		Dir:    cfg.DataDir,
		Engine: s.engine,
		Peers:  []uint64{id.RaftID},
		Log:    commitlog.Options{SegmentBytes: cfg.SegmentBytes, NoSync: cfg.Sync == SyncOS},
		Logger: cfg.Logger,
	})
	if err != nil {
		s.engine.Stop()
		lis.Close()
		return nil, err
	}
	if cfg.DefaultTopic != "" {
		ectx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := s.registry.Ensure(ectx, cfg.DefaultTopic, topic.Settings{})
		cancel()
		if err != nil {
			s.engine.Stop()
			lis.Close()
			return nil, fmt.Errorf("server: default topic: %w", err)
		}
	}

	s.svc = api.New(api.Config{
		ClusterID:       cfg.ClusterID,
		NodeName:        cfg.NodeName,
		Nodes:           []api.Node{{Name: cfg.NodeName, Address: s.advertise, RaftID: id.RaftID}},
		MaxMessageBytes: cfg.MaxMessageBytes,
		MaxBatchBytes:   cfg.MaxBatchBytes,
		MaxReadBytes:    cfg.MaxReadBytes,
		MaxWait:         cfg.MaxWait,
		Logger:          cfg.Logger,
	}, s.registry)
	opts := append(s.svc.ServerOptions(),
		grpc.MaxRecvMsgSize(cfg.MaxBatchBytes+(1<<20)),
		grpc.MaxSendMsgSize(cfg.MaxReadBytes+cfg.MaxMessageBytes+(1<<20)),
	)
	s.grpc = grpc.NewServer(opts...)
	forestbusv1.RegisterForestBusServiceServer(s.grpc, s.svc)
	forestbusv1.RegisterAdminServiceServer(s.grpc, s.svc)
	s.health = health.NewServer()
	healthpb.RegisterHealthServer(s.grpc, s.health)
	reflection.Register(s.grpc)
	s.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	s.health.SetServingStatus(forestbusv1.ForestBusService_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)

	go func() {
		s.serveErr = s.grpc.Serve(lis)
		close(s.served)
	}()
	s.log.Info("node started", "cluster", cfg.ClusterID, "node", cfg.NodeName, "addr", s.addr, "data", cfg.DataDir, "sync", string(cfg.Sync))
	return s, nil
}

// Addr is the address the node listens on.
func (s *Server) Addr() string { return s.addr }

// ConnectionString is the client connection string for this node and its
// default topic: cluster#topic@address.
func (s *Server) ConnectionString() string {
	return fmt.Sprintf("%s#%s@%s", s.cfg.ClusterID, s.cfg.DefaultTopic, s.advertise)
}

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
		s.health.Shutdown()
		s.svc.BeginShutdown()
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
		<-s.served
		s.stopErr = s.Err()
		s.log.Info("node stopped", "node", s.cfg.NodeName)
	})
	return s.stopErr
}
