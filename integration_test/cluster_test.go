package integration_test

import (
	"context"
	"fmt"
	"io/fs"
	"maps"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/forestbus/forestbus/client"
)

// cluster is a set of fbnode processes of the cluster "it" started with
// -initial-cluster, each with its own data dir and a fixed address.
type cluster struct {
	t     *testing.T
	procs []*proc

	mu      sync.Mutex
	clients map[string]*client.Client // one single-node client per address
}

// freeAddrs returns n distinct addresses 127.0.0.1:PORT that were free a
// moment ago: another process may take one before fbnode listens on it
// (startCluster retries once).
func freeAddrs(t *testing.T, n int) []string {
	t.Helper()
	var addrs []string
	var ls []net.Listener
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		ls = append(ls, l)
		addrs = append(addrs, l.Addr().String())
	}
	for _, l := range ls {
		l.Close()
	}
	return addrs
}

// startCluster starts an n-node cluster (nodes n1..nN, raft IDs in that
// order) with extraArgs on every node, and waits until every node names a
// leader for the topic "default". A start that fails (a port taken in the
// meantime) is retried once on new ports.
func startCluster(t *testing.T, n int, extraArgs ...string) *cluster {
	t.Helper()
	if testing.Short() {
		t.Skip("multi-process test")
	}
	c := &cluster{t: t, clients: map[string]*client.Client{}}
	t.Cleanup(func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		for _, cl := range c.clients {
			cl.Close()
		}
	})
	started := time.Now()
	for attempt := 1; ; attempt++ {
		err := c.tryStart(n, extraArgs)
		if err == nil {
			break
		}
		for _, p := range c.procs {
			p.kill()
		}
		c.procs = nil
		if attempt == 2 {
			t.Fatalf("starting the cluster: %v", err)
		}
		t.Logf("starting the cluster failed, retrying on new ports: %v", err)
	}
	for _, p := range c.procs {
		c.waitLeader(p, "default", 60*time.Second)
	}
	t.Logf("%d-node cluster ready in %v", n, time.Since(started).Round(time.Millisecond))
	return c
}

func (c *cluster) tryStart(n int, extraArgs []string) error {
	addrs := freeAddrs(c.t, n)
	var members []string
	for i, a := range addrs {
		members = append(members, fmt.Sprintf("n%d=%s", i+1, a))
	}
	initial := strings.Join(members, ",")
	for i, a := range addrs {
		p := newProc(c.t, fmt.Sprintf("n%d", i+1), append([]string{"-initial-cluster", initial}, extraArgs...)...)
		c.procs = append(c.procs, p)
		if err := p.startErr(a); err != nil {
			return err
		}
	}
	return nil
}

// addrs returns the address of every process, running or not.
func (c *cluster) addrs() []string {
	var a []string
	for _, p := range c.procs {
		a = append(a, p.addr)
	}
	return a
}

// node returns a Client that talks to p only (one pass, no retries), for
// asking one node what it sees.
func (c *cluster) node(p *proc) *client.Client {
	c.mu.Lock()
	defer c.mu.Unlock()
	cl, ok := c.clients[p.addr]
	if !ok {
		cl = client.New("it", []string{p.addr}, client.WithRetryWindow(0))
		c.clients[p.addr] = cl
	}
	return cl
}

// details asks p alone for topic's details, waiting at most 2 s.
func (c *cluster) details(p *proc, topic string) (*client.TopicDetails, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return c.node(p).TopicDetails(ctx, topic)
}

// waitLeader waits until p names a leader for topic.
func (c *cluster) waitLeader(p *proc, topic string, timeout time.Duration) {
	c.t.Helper()
	var last error
	require.Eventually(c.t, func() bool {
		d, err := c.details(p, topic)
		if err != nil {
			last = err
			return false
		}
		return d.Leader != ""
	}, timeout, 20*time.Millisecond, "%s names no leader of %q (last error: %v)", p.name, topic, last)
}

// leader returns the running process among procs that reports itself the
// leader of topic.
func (c *cluster) leader(topic string, procs []*proc) *proc {
	c.t.Helper()
	var l *proc
	require.Eventually(c.t, func() bool {
		for _, p := range procs {
			if !p.running() {
				continue
			}
			if d, err := c.details(p, topic); err == nil && d.Leader == p.name {
				l = p
				return true
			}
		}
		return false
	}, 30*time.Second, 20*time.Millisecond, "no node leads %q", topic)
	return l
}

// others returns procs without the ones in except.
func others(procs []*proc, except ...*proc) []*proc {
	var o []*proc
	for _, p := range procs {
		if !slices.Contains(except, p) {
			o = append(o, p)
		}
	}
	return o
}

// waitCommit waits until every process in procs reports the same commit ID
// for topic, at least min, and returns it.
func (c *cluster) waitCommit(topic string, procs []*proc, min int64, timeout time.Duration) int64 {
	c.t.Helper()
	var commit int64
	var seen []string
	require.Eventually(c.t, func() bool {
		seen = seen[:0]
		var ids []int64
		for _, p := range procs {
			d, err := c.details(p, topic)
			if err != nil {
				seen = append(seen, fmt.Sprintf("%s: %v", p.name, err))
				return false
			}
			seen = append(seen, fmt.Sprintf("%s: commit %d last %d leader %q", p.name, d.CommitID, d.LastID, d.Leader))
			ids = append(ids, d.CommitID)
		}
		commit = ids[0]
		for _, id := range ids {
			if id != commit || id < min {
				return false
			}
		}
		return true
	}, timeout, 20*time.Millisecond, "nodes do not reach one commit ID >= %d: %v", min, seen)
	return commit
}

// readAll reads IDs 1..commit of topic from p alone, checking that IDs are
// contiguous.
func (c *cluster) readAll(p *proc, topic string, commit int64) []string {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out := make([]string, 0, commit)
	id := int64(1)
	for id <= commit {
		msgs, next, err := c.node(p).GetMessagesContext(ctx, topic, id, 5000, false)
		require.NoError(c.t, err, "%s: reading from ID %d", p.name, id)
		require.NotEmpty(c.t, msgs, "%s: no message at ID %d <= commit %d", p.name, id, commit)
		require.Equal(c.t, id+int64(len(msgs)), next, "%s: IDs not contiguous from %d", p.name, id)
		for _, m := range msgs {
			if id > commit {
				break
			}
			out = append(out, string(m))
			id++
		}
	}
	return out
}

// verify waits until procs agree on topic's commit ID (at least the highest
// acknowledged ID), reads 1..commit from every one of them, and checks that
// they hold the same messages, that every acknowledged ID holds its bytes,
// that every stored message was sent, and that no payload is stored twice.
func (c *cluster) verify(topic string, procs []*proc, l *load) int64 {
	c.t.Helper()
	t := c.t
	acked, sent := l.snapshot()
	var maxAcked int64
	for id := range acked {
		maxAcked = max(maxAcked, id)
	}
	commit := c.waitCommit(topic, procs, maxAcked, 60*time.Second)
	logs := make([][]string, len(procs))
	for i, p := range procs {
		logs[i] = c.readAll(p, topic, commit)
	}
	for i := 1; i < len(procs); i++ {
		for id := range logs[0] {
			if logs[i][id] != logs[0][id] {
				t.Fatalf("ID %d: %s holds %q, %s holds %q", id+1, procs[0].name, logs[0][id], procs[i].name, logs[i][id])
			}
		}
	}
	log := logs[0]
	for id, want := range acked {
		require.Equal(t, want, log[id-1], "acknowledged ID %d", id)
	}
	stored := map[string]int64{}
	var dups []string
	for i, m := range log {
		id := int64(i + 1)
		require.True(t, sent[m], "ID %d holds %q, which was never sent", id, m)
		if prev, dup := stored[m]; dup {
			_, ackedPrev := acked[prev]
			_, ackedThis := acked[id]
			dups = append(dups, fmt.Sprintf("%q at IDs %d (acked %v) and %d (acked %v)", m, prev, ackedPrev, id, ackedThis))
		}
		stored[m] = id
	}
	assert.Empty(t, dups, "%d payloads stored twice (idempotent sends must not duplicate); first: %v", len(dups), dups[:min(len(dups), 10)])
	t.Logf("verified on %d nodes: commit %d, %d acknowledged, %d sent, %d stored twice", len(procs), commit, len(acked), len(sent), len(dups))
	return commit
}

// load is a set of producers, each with its own Client over every given
// node, sending batches with wait-for-commit until stopped, until their
// batch count is reached, or until the deadline.
type load struct {
	t      *testing.T
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	sent    map[string]bool  // every payload sent
	acked   map[int64]string // acknowledged ID -> payload
	batches int              // acknowledged batches
	errs    int
	lastErr error
}

// Payloads are "TAG-pP-bB-mM" followed by pad bytes of filler.
func startLoad(t *testing.T, tag string, addrs []string, producers, maxBatches, pad int, deadline time.Duration) *load {
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	l := &load{t: t, cancel: cancel, sent: map[string]bool{}, acked: map[int64]string{}}
	for p := range producers {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			c := client.New("it", addrs, client.WithRetryWindow(10*time.Second))
			defer c.Close()
			for i := 0; i < maxBatches && ctx.Err() == nil; i++ {
				msgs := make([][]byte, 1+i%16)
				for j := range msgs {
					msgs[j] = fmt.Appendf(nil, "%s-p%d-b%d-m%d%s", tag, p, i, j, filler[:pad])
				}
				l.mu.Lock()
				for _, m := range msgs {
					l.sent[string(m)] = true
				}
				l.mu.Unlock()
				cctx, ccancel := context.WithTimeout(ctx, 10*time.Second)
				ids, err := c.SendMessagesContext(cctx, "default", msgs, true)
				ccancel()
				l.mu.Lock()
				if err != nil {
					if ctx.Err() == nil {
						l.errs++
						l.lastErr = err
					}
				} else {
					l.batches++
					for j, id := range ids {
						l.acked[id] = string(msgs[j])
					}
				}
				l.mu.Unlock()
			}
		}()
	}
	t.Cleanup(l.stop)
	return l
}

var filler = strings.Repeat(".", 4096)

// wait waits for the producers to send their batches (or reach their
// deadline) and requires that every batch was acknowledged.
func (l *load) wait() {
	l.t.Helper()
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	require.Zero(l.t, l.errs, "send errors, last: %v", l.lastErr)
}

// stop stops the producers and waits for them.
func (l *load) stop() {
	l.cancel()
	l.wg.Wait()
}

func (l *load) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.batches
}

// waitMore waits until n more batches than now are acknowledged.
func (l *load) waitMore(n int, timeout time.Duration, why string) {
	l.t.Helper()
	want := l.count() + n
	require.Eventually(l.t, func() bool { return l.count() >= want }, timeout, 5*time.Millisecond,
		"%s: fewer than %d batches acknowledged (%d); %s", why, want, l.count(), l.errString())
}

func (l *load) errString() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return fmt.Sprintf("%d send errors, last: %v", l.errs, l.lastErr)
}

func (l *load) snapshot() (acked map[int64]string, sent map[string]bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return maps.Clone(l.acked), maps.Clone(l.sent)
}

// TestClusterLeaderKill9: four producers send with wait-for-commit while the
// topic's leader is killed with SIGKILL, the cluster goes on without it,
// and it is restarted, three times. Afterwards every node holds the same
// contiguous log, every acknowledged ID holds its bytes everywhere, and no
// payload is stored twice (sends are idempotent within a call).
func TestClusterLeaderKill9(t *testing.T) {
	c := startCluster(t, 3)
	started := time.Now()
	l := startLoad(t, "k9", c.addrs(), 4, 20000, 0, 90*time.Second)
	l.waitMore(200, 30*time.Second, "before the first kill")
	for round := 1; round <= 3; round++ {
		leader := c.leader("default", c.procs)
		t0 := time.Now()
		leader.kill()
		before := l.count()
		l.waitMore(1, 30*time.Second, fmt.Sprintf("round %d, without %s", round, leader.name))
		failover := time.Since(t0)
		l.waitMore(200, 30*time.Second, fmt.Sprintf("round %d, without %s", round, leader.name))
		t.Logf("round %d: killed leader %s at %d batches; first batch acknowledged after %v, 200 more after %v",
			round, leader.name, before, failover.Round(time.Millisecond), time.Since(t0).Round(time.Millisecond))
		leader.restart()
		// Let it catch up before the next leader goes, so that two nodes
		// left are a working quorum.
		rest := others(c.procs, leader)
		d, err := c.details(c.leader("default", rest), "default")
		require.NoError(t, err)
		require.Eventually(t, func() bool {
			e, err := c.details(leader, "default")
			return err == nil && e.CommitID >= d.CommitID
		}, 30*time.Second, 20*time.Millisecond, "%s does not catch up to commit %d after the restart", leader.name, d.CommitID)
	}
	l.waitMore(100, 30*time.Second, "after the last restart")
	l.stop()
	t.Logf("load: %d batches acknowledged, %s, in %v", l.count(), l.errString(), time.Since(started).Round(time.Millisecond))
	c.verify("default", c.procs, l)
}

// TestClusterFullRestart: after all three nodes are stopped with SIGTERM
// and started again, each one serves every committed message at once: its
// commit ID is the old one before anything new is sent.
func TestClusterFullRestart(t *testing.T) {
	c := startCluster(t, 3)
	l := startLoad(t, "fr", c.addrs(), 4, 100, 0, 60*time.Second)
	l.wait()
	commit := c.verify("default", c.procs, l)
	for _, p := range c.procs {
		p.stop()
	}
	t0 := time.Now()
	for _, p := range c.procs {
		p.restart()
	}
	for _, p := range c.procs {
		var d *client.TopicDetails
		require.Eventually(t, func() bool {
			var err error
			d, err = c.details(p, "default")
			return err == nil
		}, 30*time.Second, 10*time.Millisecond, "%s does not answer after the restart", p.name)
		// The first answer already has the old commit point.
		require.Equal(t, commit, d.CommitID, "%s: first commit ID after the restart", p.name)
		require.Equal(t, commit, d.LastID, "%s: last ID after the restart", p.name)
	}
	t.Logf("all 3 nodes restarted and reported commit %d within %v", commit, time.Since(t0).Round(time.Millisecond))
	c.verify("default", c.procs, l)
	// And the cluster goes on from there.
	cl := client.New("it", c.addrs(), client.WithRetryWindow(30*time.Second))
	defer cl.Close()
	ids, err := cl.SendMessages("default", [][]byte{[]byte("after")}, true)
	require.NoError(t, err)
	require.Equal(t, []int64{commit + 1}, ids)
}

// TestClusterFollowerCatchesUp: a follower stopped with SIGTERM misses a few
// thousand messages; started again, it reaches the same commit ID and
// serves the same messages. With 64 KiB segments the messages it fetches
// span several segment files.
func TestClusterFollowerCatchesUp(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"default-segments", nil},
		{"segment-bytes-65536", []string{"-segment-bytes", "65536"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := startCluster(t, 3, tc.args...)
			leader := c.leader("default", c.procs)
			follower := others(c.procs, leader)[0]
			follower.stop()
			// 4 producers x 120 batches of 1..16 messages: 4080 messages of
			// about 120 bytes, about 500 KB.
			l := startLoad(t, "cu", c.addrs(), 4, 120, 100, 60*time.Second)
			l.wait()
			running := others(c.procs, follower)
			commit := c.waitCommit("default", running, 0, 30*time.Second)
			t0 := time.Now()
			follower.restart()
			c.waitCommit("default", c.procs, commit, 60*time.Second)
			t.Logf("%s caught up to commit %d in %v after its start", follower.name, commit, time.Since(t0).Round(time.Millisecond))
			c.verify("default", c.procs, l)
			segs := segmentFiles(t, follower.data)
			t.Logf("%s holds %d files in its topic directory", follower.name, segs)
			if tc.args != nil {
				assert.GreaterOrEqual(t, segs, 4, "several segments")
			}
		})
	}
}

// TestClusterFollowerPaused: a follower stopped with SIGSTOP while
// producers go on does not stop the cluster; continued with SIGCONT, it
// catches up, and the logs agree.
func TestClusterFollowerPaused(t *testing.T) {
	c := startCluster(t, 3)
	l := startLoad(t, "ps", c.addrs(), 4, 20000, 0, 90*time.Second)
	l.waitMore(200, 30*time.Second, "before the pause")
	leader := c.leader("default", c.procs)
	follower := others(c.procs, leader)[0]
	follower.pause()
	t0 := time.Now()
	l.waitMore(3000, 60*time.Second, fmt.Sprintf("while %s is paused", follower.name))
	d, err := c.details(leader, "default")
	require.NoError(t, err)
	t.Logf("3000 batches acknowledged in %v while %s was paused; leader commit %d", time.Since(t0).Round(time.Millisecond), follower.name, d.CommitID)
	follower.resume()
	t1 := time.Now()
	require.Eventually(t, func() bool {
		e, err := c.details(follower, "default")
		return err == nil && e.CommitID >= d.CommitID
	}, 30*time.Second, 20*time.Millisecond, "%s does not catch up to %d after SIGCONT", follower.name, d.CommitID)
	t.Logf("%s reached commit %d %v after SIGCONT", follower.name, d.CommitID, time.Since(t1).Round(time.Millisecond))
	l.waitMore(200, 30*time.Second, "after the pause")
	l.stop()
	t.Logf("load: %d batches acknowledged, %s", l.count(), l.errString())
	c.verify("default", c.procs, l)
}

// segmentFiles counts the segment files (*.log) of the topic "default"
// under a node's data directory.
func segmentFiles(t *testing.T, data string) int {
	t.Helper()
	n := 0
	err := filepath.WalkDir(data, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(data, path)
		if !d.IsDir() && strings.HasSuffix(path, ".log") && strings.Contains(rel, "default") {
			n++
		}
		return nil
	})
	require.NoError(t, err)
	return n
}
