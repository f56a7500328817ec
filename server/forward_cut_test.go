package server_test

import (
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	forestbusv1 "github.com/forestbus/forestbus/gen/forestbus/v1"
	"github.com/forestbus/forestbus/server"
	"github.com/forestbus/forestbus/server/servertest"
	"github.com/forestbus/forestbus/server/transport"
)

// cutProxy forwards TCP connections on 127.0.0.1 to a target the test
// sets, and can cut every connection it carries.
type cutProxy struct {
	lis    net.Listener
	target chan string // the target, once set
	mu     sync.Mutex
	conns  []net.Conn
}

func newCutProxy(t *testing.T) *cutProxy {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	p := &cutProxy{lis: l, target: make(chan string, 1)}
	t.Cleanup(func() { l.Close(); p.cut() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go p.carry(c)
		}
	}()
	return p
}

func (p *cutProxy) carry(c net.Conn) {
	target := <-p.target
	p.target <- target
	d, err := net.Dial("tcp", target)
	if err != nil {
		c.Close()
		return
	}
	p.mu.Lock()
	p.conns = append(p.conns, c, d)
	p.mu.Unlock()
	go func() { _, _ = io.Copy(d, c); d.Close() }()
	_, _ = io.Copy(c, d)
	c.Close()
}

func (p *cutProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

// TestForwardCutAfterSendIsNoNotLeader: a follower whose forward of a
// send to the leader broke after the request went out answered
// NOT_LEADER ("not stored: send it there") though the leader had the
// batch: a client without a producer pair that followed the hint stored
// it twice. The outcome is unknown then, and the answer says so
// (UNAVAILABLE). Client traffic to each node goes through a proxy the test
// cuts; peer traffic over the Hub, whose delay holds the commit meanwhile.
func TestForwardCutAfterSendIsNoNotLeader(t *testing.T) {
	hub := transport.NewHub()
	px := []*cutProxy{newCutProxy(t), newCutProxy(t), newCutProxy(t)}
	var members []string
	for i, p := range px {
		members = append(members, fmt.Sprintf("n%d=%s", i+1, p.lis.Addr()))
	}
	c := servertest.NewCluster(t, 3, servertest.WithHub(hub), servertest.WithConfig(func(cfg *server.Config) {
		cfg.InitialCluster = strings.Join(members, ",")
		cfg.TickInterval = 200 * time.Millisecond // election timeout 2 s: the delay below elects no one
	}))
	for i, n := range c.Nodes {
		px[i].target <- n.Cfg.ListenAddr
	}
	c.WaitTopic("default")
	l := leaderIndex(t, c, "default")
	f := (l + 1) % 3
	send(t, dial(t, c.Nodes[l]), "default", batch("warm", 1), true)
	fc := dial(t, c.Nodes[f])
	_, err := fc.bus.SendMessages(ctxT(t), &forestbusv1.SendMessagesRequest{Topic: "default", Messages: batch("fwd", 1), WaitForCommit: true})
	require.NoError(t, err, "the follower forwards")
	lt, err := c.Nodes[l].Registry().Get("default")
	require.NoError(t, err)
	before := lt.Group.Log().NextID()
	for i := range c.Nodes { // hold the commit
		if i != l {
			hub.SetDelay(uint64(l+1), uint64(i+1), 800*time.Millisecond)
		}
	}
	errc := make(chan error, 1)
	go func() {
		_, err := fc.bus.SendMessages(ctxT(t), &forestbusv1.SendMessagesRequest{Topic: "default", Messages: batch("once", 1), WaitForCommit: true})
		errc <- err
	}()
	require.Eventually(t, func() bool { return lt.Group.Log().NextID() > before }, 10*time.Second, time.Millisecond, "the leader has the batch")
	px[l].cut() // the follower's forward connection to the leader breaks
	err = <-errc
	for i := range c.Nodes {
		hub.SetDelay(uint64(l+1), uint64(i+1), 0)
	}
	require.Error(t, err)
	assert.NotEqual(t, "NOT_LEADER", reasonOf(err), "%v", err)
	assert.Equal(t, codes.Unavailable, status.Code(err), "%v", err)
	assert.Contains(t, status.Convert(err).Message(), "outcome unknown")
}

// TestReusedSequenceOtherBatch: a producer sequence sent again with a
// batch of another size (a raw client's bug) was answered OK with the
// stored batch's IDs and count, telling the caller its messages had them;
// none was stored. It is DUPLICATE_BATCH now; a retry of the same batch
// still gets the first copy's IDs.
func TestReusedSequenceOtherBatch(t *testing.T) {
	n := servertest.StartNode(t)
	c := dial(t, n)
	sendSeq := func(seq uint64, msgs [][]byte) (*forestbusv1.SendMessagesResponse, error) {
		return c.bus.SendMessages(ctxT(t), &forestbusv1.SendMessagesRequest{Topic: "default", Messages: msgs, WaitForCommit: true, ProducerId: 42, Sequence: seq})
	}
	_, err := sendSeq(1, batch("s1", 2))
	require.NoError(t, err)
	first, err := sendSeq(2, batch("s2", 3))
	require.NoError(t, err)
	again, err := sendSeq(2, batch("s2", 3))
	require.NoError(t, err, "a retry of the same batch")
	assert.Equal(t, first.GetFirstId(), again.GetFirstId())
	_, err = sendSeq(2, batch("other", 7))
	require.Error(t, err)
	assert.Equal(t, codes.AlreadyExists, status.Code(err), "%v", err)
	assert.Equal(t, "DUPLICATE_BATCH", reasonOf(err))
	assert.Contains(t, status.Convert(err).Message(), "holds a batch of 3 messages (IDs 3 to 5); this one has 7 and was not stored")
}
