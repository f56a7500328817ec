package transport

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/grpc"
)

// slowConn writes at about bps bytes a second: a loaded link.
type slowConn struct {
	net.Conn
	bps int
}

func (c slowConn) Write(b []byte) (int, error) {
	n := 0
	for len(b) > 0 {
		k := min(len(b), 16<<10)
		time.Sleep(time.Duration(k) * time.Second / time.Duration(c.bps)) // the link's pace
		m, err := c.Conn.Write(b[:k])
		n += m
		if err != nil {
			return n, err
		}
		b = b[k:]
	}
	return n, nil
}

// TestHeartbeatOvertakesAppends: a heartbeat of an idle group queued after
// 48 MiB of a busy group's appends (what six busy groups may have in
// flight to one follower) went out after all of them: on a 20 MiB/s link,
// 2.4 s, over twice the election timeout (review). It goes in the next
// frame now.
func TestHeartbeatOvertakesAppends(t *testing.T) {
	n1 := startNode(t, 1, "c", bigQueue, func(c *Config) {
		c.DialOptions = []grpc.DialOption{grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			var d net.Dialer
			conn, err := d.DialContext(ctx, "tcp", addr)
			if err != nil {
				return nil, err
			}
			return slowConn{conn, 20 << 20}, nil
		})}
	})
	n2 := startNode(t, 2, "c")
	connect(n1, n2)
	n1.tr.Send("warm", []*raftpb.Message{msg(1, 2, 1)})
	require.Eventually(t, func() bool { return n2.h.count() == 1 }, waitFor, tick)

	const appends = 48
	data := make([]byte, 1<<20)
	for i := uint64(1); i <= appends; i++ {
		m := msg(1, 2, i)
		m.Entries = []*raftpb.Entry{{Index: new(i), Term: new(uint64(1)), Data: data}}
		n1.tr.Send("busy", []*raftpb.Message{m})
	}
	hb := &raftpb.Message{Type: raftpb.MessageType_MsgHeartbeat.Enum(), From: new(uint64(1)), To: new(uint64(2)), Term: new(uint64(1))}
	n1.tr.Send("idle", []*raftpb.Message{hb})
	var busyBefore int
	require.Eventually(t, func() bool {
		if len(n2.h.group("idle")) == 0 {
			return false
		}
		busyBefore = len(n2.h.group("busy"))
		return true
	}, 30*time.Second, tick)
	assert.Less(t, busyBefore, appends/2, "appends delivered before the heartbeat")
	require.Eventually(t, func() bool { return len(n2.h.group("busy")) == appends }, 30*time.Second, tick)
	for i, m := range n2.h.group("busy") {
		require.Equal(t, uint64(i+1), m.GetIndex(), "the appends stay in order")
	}
}

// lateReports counts the Handler's reports made after Stop returned.
type lateReports struct {
	stopped atomic.Bool
	late    atomic.Int64
}

func (*lateReports) Step(string, *raftpb.Message) {}
func (h *lateReports) ReportUnreachable(string, uint64) {
	if h.stopped.Load() {
		h.late.Add(1)
	}
}
func (h *lateReports) ReportSnapshot(string, uint64, bool) {
	if h.stopped.Load() {
		h.late.Add(1)
	}
}

// TestNoReportAfterStopDuringAddPeer: a new address for a peer (AddPeer)
// racing Stop reported the old peer's unsent messages after Stop had
// returned, which promises that the Handler is not called again (review).
func TestNoReportAfterStopDuringAddPeer(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var conns sync.WaitGroup
	accepting := make(chan struct{})
	defer func() {
		lis.Close()
		<-accepting
		conns.Wait()
	}()
	go func() { // accepts, never speaks HTTP/2: the stream waits for its handshake
		defer close(accepting)
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			conns.Go(func() {
				_, _ = c.Read(make([]byte, 1))
				c.Close()
			})
		}
	}()
	var late int64
	for range 300 {
		h := &lateReports{}
		tr := New(Config{NodeID: 1, ClusterID: "c", Handler: h})
		tr.AddPeer(2, lis.Addr().String())
		tr.Send("g", []*raftpb.Message{snapMsg(1, 2), msg(1, 2, 1)})
		var wg sync.WaitGroup
		wg.Go(func() { tr.Stop(); h.stopped.Store(true) })
		wg.Go(func() { tr.AddPeer(2, "127.0.0.1:2") })
		wg.Wait()
		late += h.late.Load()
	}
	assert.Zero(t, late, "Handler calls after Stop returned")
}
