package transport

import (
	"fmt"
	protobuf "google.golang.org/protobuf/proto"
	"io"
	"log"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/grpc"
)

const (
	waitFor = 10 * time.Second
	tick    = 5 * time.Millisecond
)

type snapReport struct {
	group  string
	to     uint64
	failed bool
}

// recorder is a Handler that records what it is told. A non-nil gate
// blocks Step until it is closed.
type recorder struct {
	gate chan struct{}

	mu          sync.Mutex
	steps       map[string][]*raftpb.Message
	n           int
	unreachable map[string]int // by group/to
	snaps       []snapReport
}

func newRecorder() *recorder {
	return &recorder{steps: make(map[string][]*raftpb.Message), unreachable: make(map[string]int)}
}

func (r *recorder) Step(group string, m *raftpb.Message) {
	if r.gate != nil {
		<-r.gate
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.steps[group] = append(r.steps[group], m)
	r.n++
}

func (r *recorder) ReportUnreachable(group string, to uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.unreachable[key(group, to)]++
}

func (r *recorder) ReportSnapshot(group string, to uint64, failed bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.snaps = append(r.snaps, snapReport{group, to, failed})
}

func key(group string, to uint64) string { return fmt.Sprintf("%s/%d", group, to) }

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.n
}

func (r *recorder) group(g string) []*raftpb.Message {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*raftpb.Message(nil), r.steps[g]...)
}

func (r *recorder) unreachableCount(group string, to uint64) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.unreachable[key(group, to)]
}

func (r *recorder) totalUnreachable() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, c := range r.unreachable {
		n += c
	}
	return n
}

func (r *recorder) snapReports() []snapReport {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]snapReport(nil), r.snaps...)
}

// msg returns a MsgApp from → to whose Index identifies it.
func msg(from, to, index uint64) *raftpb.Message {
	return &raftpb.Message{
		Type:  raftpb.MessageType_MsgApp.Enum(),
		From:  new(from),
		To:    new(to),
		Term:  new(uint64(1)),
		Index: new(index),
	}
}

func snapMsg(from, to uint64) *raftpb.Message {
	return &raftpb.Message{
		Type: raftpb.MessageType_MsgSnap.Enum(),
		From: new(from),
		To:   new(to),
		Term: new(uint64(1)),
		Snapshot: &raftpb.Snapshot{
			Data:     []byte("state"),
			Metadata: &raftpb.SnapshotMetadata{Index: new(uint64(10)), Term: new(uint64(1)), ConfState: &raftpb.ConfState{Voters: []uint64{1, 2}}},
		},
	}
}

// node is a GRPC transport served on a loopback listener.
type node struct {
	id   uint64
	tr   *GRPC
	h    *recorder
	addr string
	srv  *grpc.Server
	done chan struct{}
	opts []grpc.ServerOption // extra server options for serve
}

func startNode(t testing.TB, id uint64, cluster string, mutate ...func(*Config)) *node {
	t.Helper()
	h := newRecorder()
	cfg := Config{NodeID: id, ClusterID: cluster, Handler: h}
	for _, m := range mutate {
		m(&cfg)
	}
	n := &node{id: id, tr: New(cfg), h: h}
	n.serve(t, "127.0.0.1:0")
	t.Cleanup(n.stop)
	return n
}

// serve starts a gRPC server for n's transport on addr.
func (n *node) serve(t testing.TB, addr string) {
	t.Helper()
	var lis net.Listener
	require.Eventually(t, func() bool { // the old socket may linger briefly
		var err error
		lis, err = net.Listen("tcp", addr)
		return err == nil
	}, waitFor, tick)
	n.addr = lis.Addr().String()
	n.srv = grpc.NewServer(append(ServerOptions(), n.opts...)...)
	n.tr.Register(n.srv)
	n.done = make(chan struct{})
	go func(srv *grpc.Server, done chan struct{}) {
		defer close(done)
		_ = srv.Serve(lis)
	}(n.srv, n.done)
}

// stopServer stops n's gRPC server (the node goes down) but keeps its
// transport.
func (n *node) stopServer() {
	if n.srv == nil {
		return
	}
	n.srv.Stop()
	<-n.done
	n.srv = nil
}

func (n *node) stop() {
	n.tr.Stop()
	n.stopServer()
}

// connect makes every node a peer of every other.
func connect(nodes ...*node) {
	for _, a := range nodes {
		for _, b := range nodes {
			if a != b {
				a.tr.AddPeer(b.id, b.addr)
			}
		}
	}
}

// async runs f on a goroutine of its own and returns a channel closed when
// f has returned.
func async(f func()) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		f()
	}()
	return done
}

func protoMarshal(m *raftpb.Message) ([]byte, error) { return protobuf.Marshal(m) }

func discardLogger() *log.Logger { return log.New(io.Discard, "", 0) }
