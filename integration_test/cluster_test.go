package integration_test

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"

	"github.com/forestbus/forestbus/client"
	forestbusv1 "github.com/forestbus/forestbus/gen/forestbus/v1"
)

// cluster is a set of fbnode processes of the cluster "it" started with
// -initial-cluster, each with its own data dir and a fixed address.
type cluster struct {
	t     *testing.T
	procs []*proc

	mu      sync.Mutex
	clients map[string]*client.Client // one single-node client per address
	opts    []client.Option           // theirs (TLS)
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
	return startClusterWith(t, n, nil, extraArgs...)
}

// startClusterWith is startCluster whose clients (node) have opts.
func startClusterWith(t *testing.T, n int, opts []client.Option, extraArgs ...string) *cluster {
	t.Helper()
	if testing.Short() {
		t.Skip("multi-process test")
	}
	c := &cluster{t: t, clients: map[string]*client.Client{}, opts: opts}
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
		cl = client.New("it", []string{p.addr}, append([]client.Option{client.WithRetryWindow(0)}, c.opts...)...)
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
	var d *client.TopicDetails
	var err error
	waitFor(c.t, timeout, 20*time.Millisecond, func() bool {
		d, err = c.details(p, topic)
		return err == nil && d.Leader != ""
	}, func() string {
		return fmt.Sprintf("%s names no leader of %q: last answer %+v, error %v", p.name, topic, d, err)
	})
}

// waitFor polls cond every interval until it holds, and fails the test
// with msg() if it does not within timeout, or at once if one of the
// test's fbnode processes exits unexpectedly.
func waitFor(t *testing.T, timeout, interval time.Duration, cond func() bool, msg func() string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		checkProcs(t)
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %s", timeout, msg())
		}
		time.Sleep(interval)
	}
}

// catchUp waits until p reports a commit ID of topic of at least commit.
func (c *cluster) catchUp(p *proc, topic string, commit int64, timeout time.Duration) {
	c.t.Helper()
	var d *client.TopicDetails
	var err error
	waitFor(c.t, timeout, 20*time.Millisecond, func() bool {
		d, err = c.details(p, topic)
		return err == nil && d.CommitID >= commit
	}, func() string {
		return fmt.Sprintf("%s does not reach commit %d of %q: last answer %+v, error %v", p.name, commit, topic, d, err)
	})
}

// leader returns the running process among procs that reports itself the
// leader of topic.
func (c *cluster) leader(topic string, procs []*proc) *proc {
	c.t.Helper()
	var l *proc
	var seen []string
	waitFor(c.t, 30*time.Second, 20*time.Millisecond, func() bool {
		seen = seen[:0]
		for _, p := range procs {
			if !p.running() {
				continue
			}
			d, err := c.details(p, topic)
			if err == nil && d.Leader == p.name {
				l = p
				return true
			}
			seen = append(seen, fmt.Sprintf("%s: %+v %v", p.name, d, err))
		}
		return false
	}, func() string { return fmt.Sprintf("no node leads %q: %v", topic, seen) })
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
	waitFor(c.t, timeout, 20*time.Millisecond, func() bool {
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
	}, func() string { return fmt.Sprintf("nodes do not reach one commit ID >= %d: %v", min, seen) })
	return commit
}

// readAll reads IDs 1..commit of topic from p alone, checking that IDs are
// contiguous.
func (c *cluster) readAll(p *proc, topic string, commit int64) []string {
	c.t.Helper()
	return c.readRange(p, topic, 1, commit)
}

// readRange reads IDs first..commit of topic from p alone, checking that
// IDs are contiguous.
func (c *cluster) readRange(p *proc, topic string, first, commit int64) []string {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out := make([]string, 0, max(commit-first+1, 0))
	id := first
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
	return c.verifyFrom(topic, procs, l, 1)
}

// verifyFrom is verify for a topic whose retention removed the IDs below
// first on every node (verify's checks apply to first..commit).
func (c *cluster) verifyFrom(topic string, procs []*proc, l *load, first int64) int64 {
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
		logs[i] = c.readRange(p, topic, first, commit)
	}
	for i := 1; i < len(procs); i++ {
		for k := range logs[0] {
			if logs[i][k] != logs[0][k] {
				t.Fatalf("ID %d: %s holds %q, %s holds %q", first+int64(k), procs[0].name, logs[0][k], procs[i].name, logs[i][k])
			}
		}
	}
	log := logs[0]
	for id, want := range acked {
		if id >= first {
			require.Equal(t, want, log[id-first], "acknowledged ID %d", id)
		}
	}
	stored := map[string]int64{}
	var dups []string
	for i, m := range log {
		id := first + int64(i)
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
	// notFound counts TOPIC_NOT_FOUND answers: the topic exists for the
	// whole load, so each is a node answering wrongly.
	notFound int
}

// Payloads are "TAG-pP-bB-mM" followed by pad bytes of filler.
func startLoad(t *testing.T, tag string, addrs []string, producers, maxBatches, pad int, deadline time.Duration) *load {
	return startTopicLoad(t, tag, "default", addrs, producers, maxBatches, pad, deadline)
}

// startTopicLoad is startLoad for another topic than "default".
func startTopicLoad(t *testing.T, tag, topic string, addrs []string, producers, maxBatches, pad int, deadline time.Duration) *load {
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
				ids, err := c.SendMessagesContext(cctx, topic, msgs, true)
				ccancel()
				l.mu.Lock()
				if err != nil {
					if ctx.Err() == nil {
						l.errs++
						l.lastErr = err
					}
					if errors.Is(err, client.ErrTopicNotFound) {
						l.notFound++
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
	waitFor(l.t, timeout, 5*time.Millisecond, func() bool { return l.count() >= want }, func() string {
		return fmt.Sprintf("%s: fewer than %d batches acknowledged (%d); %s", why, want, l.count(), l.errString())
	})
}

func (l *load) errString() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return fmt.Sprintf("%d send errors (%d TOPIC_NOT_FOUND), last: %v", l.errs, l.notFound, l.lastErr)
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
		c.catchUp(leader, "default", d.CommitID, 30*time.Second)
		t.Logf("round %d: %s restarted and reached commit %d %v after the kill", round, leader.name, d.CommitID, time.Since(t0).Round(time.Millisecond))
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
	t0 := time.Now()
	l := startLoad(t, "fr", c.addrs(), 4, 100, 0, 60*time.Second)
	l.wait()
	t.Logf("load: %d batches acknowledged in %v", l.count(), time.Since(t0).Round(time.Millisecond))
	commit := c.verify("default", c.procs, l)
	t0 = time.Now()
	for _, p := range c.procs {
		p.stop()
	}
	t.Logf("3 nodes stopped with SIGTERM in %v", time.Since(t0).Round(time.Millisecond))
	t0 = time.Now()
	for _, p := range c.procs {
		p.restart()
	}
	for _, p := range c.procs {
		var d *client.TopicDetails
		var err error
		waitFor(t, 30*time.Second, 10*time.Millisecond, func() bool {
			d, err = c.details(p, "default")
			return err == nil
		}, func() string { return fmt.Sprintf("%s does not answer after the restart: %v", p.name, err) })
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
			t0 := time.Now()
			l := startLoad(t, "cu", c.addrs(), 4, 120, 100, 60*time.Second)
			l.wait()
			t.Logf("load: %d batches acknowledged in %v while %s was down", l.count(), time.Since(t0).Round(time.Millisecond), follower.name)
			running := others(c.procs, follower)
			commit := c.waitCommit("default", running, 0, 30*time.Second)
			t0 = time.Now()
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
	c.catchUp(follower, "default", d.CommitID, 30*time.Second)
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

// admin calls f with an AdminServiceClient of each node of addrs in turn,
// with the cluster ID in the metadata, until one succeeds, an answer is
// final, or 30 s have passed.
func admin(t *testing.T, addrs []string, f func(context.Context, forestbusv1.AdminServiceClient) error) error {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var err error
	for time.Now().Before(deadline) {
		for _, a := range addrs {
			conn, cerr := grpc.NewClient("passthrough:///"+a, grpc.WithTransportCredentials(insecure.NewCredentials()))
			require.NoError(t, cerr)
			ctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(context.Background(), client.ClusterIDMetadataKey, "it"), 5*time.Second)
			err = f(ctx, forestbusv1.NewAdminServiceClient(conn))
			cancel()
			conn.Close()
			switch status.Code(err) {
			case codes.OK:
				return nil
			case codes.Unavailable, codes.DeadlineExceeded, codes.FailedPrecondition, codes.ResourceExhausted, codes.Aborted:
				continue
			default:
				return err
			}
		}
		time.Sleep(100 * time.Millisecond) // pause between passes over the nodes
	}
	return err
}

// clusterNodes asks p alone for the cluster's members, by name.
func (c *cluster) clusterNodes(p *proc) ([]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	d, err := c.node(p).ClusterDetails(ctx)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, n := range d.Nodes {
		names = append(names, n.Name)
	}
	slices.Sort(names)
	return names, nil
}

// waitMembers waits until every process in procs lists exactly names.
func (c *cluster) waitMembers(procs []*proc, names ...string) {
	c.t.Helper()
	slices.Sort(names)
	for _, p := range procs {
		var got []string
		var err error
		waitFor(c.t, 60*time.Second, 20*time.Millisecond, func() bool {
			got, err = c.clusterNodes(p)
			return err == nil && slices.Equal(got, names)
		}, func() string { return fmt.Sprintf("%s lists %v (error %v), want %v", p.name, got, err, names) })
	}
}

// TestClusterAddAndRemoveNodeUnderLoad: while producers send, a 4th node
// joins (fbnode -join), every node lists it and it serves the topic up to
// the commit point; then an original follower is removed (AdminService
// RemoveNode) and stopped. The producers keep succeeding and the remaining
// three nodes agree.
func TestClusterAddAndRemoveNodeUnderLoad(t *testing.T) {
	c := startCluster(t, 3)
	l := startLoad(t, "ar", c.addrs(), 4, 40000, 0, 120*time.Second)
	l.waitMore(200, 30*time.Second, "before the join")

	// The port may be taken between freeAddrs and fbnode's listen; unlike
	// the cluster start this is not retried: the failed join would leave a
	// member behind.
	t0 := time.Now()
	n4 := newProc(t, "n4", "-join", c.procs[0].addr)
	n4.start(freeAddrs(t, 1)[0])
	all := append(slices.Clone(c.procs), n4)
	c.waitMembers(all, "n1", "n2", "n3", "n4")
	t.Logf("n4 joined: listed by all 4 nodes %v after its start", time.Since(t0).Round(time.Millisecond))
	leader := c.leader("default", c.procs)
	d, err := c.details(leader, "default")
	require.NoError(t, err)
	c.catchUp(n4, "default", d.CommitID, 60*time.Second)
	require.Equal(t, c.readAll(leader, "default", d.CommitID), c.readAll(n4, "default", d.CommitID), "n4's copy differs from the leader's")
	t.Logf("n4 serves IDs 1..%d, identical to the leader's, %v after its start", d.CommitID, time.Since(t0).Round(time.Millisecond))
	l.waitMore(200, 30*time.Second, "with n4 in the cluster")

	leader = c.leader("default", all)
	victim := others(c.procs, leader)[0]
	t1 := time.Now()
	require.NoError(t, admin(t, c.addrs(), func(ctx context.Context, a forestbusv1.AdminServiceClient) error {
		_, err := a.RemoveNode(ctx, &forestbusv1.RemoveNodeRequest{Name: victim.name})
		return err
	}), "RemoveNode %s", victim.name)
	rest := others(all, victim)
	var names []string
	for _, p := range rest {
		names = append(names, p.name)
	}
	c.waitMembers(rest, names...)
	t.Logf("removed %s: the others list %v after %v", victim.name, names, time.Since(t1).Round(time.Millisecond))
	victim.stop()
	l.waitMore(300, 30*time.Second, fmt.Sprintf("after removing %s", victim.name))
	l.stop()
	t.Logf("load: %d batches acknowledged, %s", l.count(), l.errString())
	c.verify("default", rest, l)
}

// waitRefused waits until p answers GetClusterDetails with an error that
// says it is refused (says), and returns that error.
func (c *cluster) waitRefused(p *proc, says string) error {
	c.t.Helper()
	var err error
	waitFor(c.t, 30*time.Second, 20*time.Millisecond, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, err = c.node(p).ClusterDetails(ctx)
		return err != nil && strings.Contains(err.Error(), says)
	}, func() string { return fmt.Sprintf("%s is not refused (%q): %v", p.name, says, err) })
	return err
}

// TestClusterWipedNode: a follower whose data directory is wiped, started
// again with its usual command line, takes up its old raft ID with an
// empty log. Its peers refuse it (their record of its data directory), so
// it takes no part: the leader is killed while it runs, and no acknowledged
// ID changes. It serves no client meanwhile (it looked healthy and
// answered from its empty logs): its calls answer UNAVAILABLE naming the
// members that refuse it, and its health says NOT_SERVING; producers
// listing it go on.
func TestClusterWipedNode(t *testing.T) {
	c := startCluster(t, 3)
	l := startLoad(t, "wp", c.addrs(), 4, 20000, 0, 120*time.Second)
	l.waitMore(200, 30*time.Second, "before the wipe")
	leader := c.leader("default", c.procs)
	wiped := others(c.procs, leader)[0]
	wiped.kill()
	require.NoError(t, os.RemoveAll(wiped.data))
	wiped.restart()

	err := c.waitRefused(wiped, "refused by")
	for _, p := range others(c.procs, wiped) {
		assert.Contains(t, err.Error(), p.name)
	}
	_, err = c.details(wiped, "default")
	var se *client.StatusError
	if assert.ErrorAs(t, err, &se) {
		assert.Equal(t, codes.Unavailable, se.Code, "%v", err)
	}
	cc, err := grpc.NewClient("passthrough:///"+wiped.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer cc.Close()
	hctx, hcancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer hcancel()
	h, err := healthpb.NewHealthClient(cc).Check(hctx, &healthpb.HealthCheckRequest{})
	require.NoError(t, err)
	assert.Equal(t, healthpb.HealthCheckResponse_NOT_SERVING, h.GetStatus())
	l.waitMore(200, 30*time.Second, "with the wiped node refused")

	// The leader goes: the wiped node's vote must not elect the other,
	// which may lack acknowledged entries (none here: each is on two
	// nodes of three, the other among them or not).
	leader.kill()
	leader.restart()
	l.waitMore(200, 60*time.Second, "after the leader's restart")
	l.stop()
	t.Logf("load: %d batches acknowledged, %s", l.count(), l.errString())
	c.verify("default", others(c.procs, wiped), l)
}

// TestClusterWipedNodeGrantsNoVote: the wipe guard's gap. A peer that
// never knew a wiped node's old directory (here n3, its record reset)
// accepts its streams; that peer may lack entries the old directory
// acknowledged (n3 was paused while n1 and n2 committed them), and the
// wiped node's vote could elect it, and those IDs would be given to other
// messages. While a member (n1) refuses the wiped node, the node grants no
// vote: with n1 paused nobody is elected, and once n1 is back it leads and
// every acknowledged ID holds what it held.
func TestClusterWipedNodeGrantsNoVote(t *testing.T) {
	c := startCluster(t, 3)
	n1, n2, n3 := c.procs[0], c.procs[1], c.procs[2]
	l := startLoad(t, "gv", c.addrs(), 4, 20000, 0, 120*time.Second)
	l.waitMore(100, 30*time.Second, "before the pause")
	n3.pause()
	l.waitMore(200, 60*time.Second, "with n3 paused")
	l.stop()
	for _, p := range c.procs {
		p.kill()
	}
	require.NoError(t, os.RemoveAll(n2.data))
	require.NoError(t, os.Remove(filepath.Join(n3.data, "peers.json")))

	n1.restart()
	n2.restart()
	c.waitRefused(n2, "refused by n1")
	n1.pause()
	n3.restart()
	// Ten election timeouts at the default tick, and more.
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		checkProcs(t)
		if d, err := c.details(n3, "default"); err == nil && d.Leader != "" {
			t.Fatalf("n3, lacking acknowledged entries, was elected (%+v): the wiped node voted", d)
		}
		time.Sleep(20 * time.Millisecond) // the poll's interval
	}
	n1.resume()
	c.waitLeader(n3, "default", 60*time.Second)
	c.verify("default", []*proc{n1, n3}, l)
}

// TestClusterBadInput: a client of another cluster gets
// ErrClusterIdMismatch, an unknown topic is ErrTopicNotFound, and a topic
// removed while long-poll readers wait on a follower ends their wait with
// ErrTopicNotFound (not a hang until the wait cap).
func TestClusterBadInput(t *testing.T) {
	c := startCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	wrong := client.New("other", c.addrs(), client.WithRetryWindow(0))
	defer wrong.Close()
	_, err := wrong.SendMessagesContext(ctx, "default", [][]byte{[]byte("x")}, true)
	require.ErrorIs(t, err, client.ErrClusterIdMismatch)
	_, _, err = wrong.GetMessagesContext(ctx, "default", 1, 10, false)
	require.ErrorIs(t, err, client.ErrClusterIdMismatch)
	_, err = wrong.TopicDetails(ctx, "default")
	require.ErrorIs(t, err, client.ErrClusterIdMismatch)
	_, err = wrong.ClusterDetails(ctx)
	require.ErrorIs(t, err, client.ErrClusterIdMismatch)

	cl := client.New("it", c.addrs())
	defer cl.Close()
	_, err = cl.SendMessagesContext(ctx, "nosuch", [][]byte{[]byte("x")}, true)
	require.ErrorIs(t, err, client.ErrTopicNotFound)
	_, _, err = cl.GetMessagesContext(ctx, "nosuch", 1, 10, false)
	require.ErrorIs(t, err, client.ErrTopicNotFound)
	_, err = cl.TopicDetails(ctx, "nosuch")
	require.ErrorIs(t, err, client.ErrTopicNotFound)

	// A topic removed while readers long-poll its tail on a follower.
	require.NoError(t, cl.CreateTopic(ctx, "lp", client.TopicSettings{}))
	for _, p := range c.procs {
		c.waitLeader(p, "lp", 30*time.Second)
	}
	ids, err := cl.SendMessagesContext(ctx, "lp", [][]byte{[]byte("a"), []byte("b")}, true)
	require.NoError(t, err)
	leader := c.leader("lp", c.procs)
	follower := others(c.procs, leader)[0]
	c.waitCommit("lp", []*proc{follower}, ids[1], 30*time.Second)

	// Two readers wait at ID 3 on the follower: the Client, and a bare gRPC
	// call that sees the node's own answer. A stats handler on their
	// connections signals once a GetMessages request is written out.
	sentc := make(chan struct{}, 2)
	onSend := grpc.WithStatsHandler(sentSignal(sentc))
	type result struct {
		err  error
		msgs int
		took time.Duration
	}
	rctx, rcancel := context.WithTimeout(ctx, 25*time.Second)
	defer rcancel()
	viaClient, viaGRPC := make(chan result, 1), make(chan result, 1)
	reader := client.New("it", []string{follower.addr}, client.WithDialOptions(onSend))
	defer reader.Close()
	go func() {
		t0 := time.Now()
		msgs, _, err := reader.GetMessagesContext(rctx, "lp", 3, 10, true)
		viaClient <- result{err, len(msgs), time.Since(t0)}
	}()
	conn, err := grpc.NewClient("passthrough:///"+follower.addr, grpc.WithTransportCredentials(insecure.NewCredentials()), onSend)
	require.NoError(t, err)
	defer conn.Close()
	go func() {
		t0 := time.Now()
		resp, err := forestbusv1.NewForestBusServiceClient(conn).GetMessages(
			metadata.AppendToOutgoingContext(rctx, client.ClusterIDMetadataKey, "it"),
			&forestbusv1.GetMessagesRequest{Topic: "lp", Id: 3, Quantity: 10, Wait: true})
		viaGRPC <- result{err, len(resp.GetMessages()), time.Since(t0)}
	}()
	for range 2 {
		select {
		case <-sentc:
		case <-rctx.Done():
			t.Fatal("the readers' requests were not sent")
		}
	}
	// A call on each connection after the long polls were written: once
	// answered, the follower has read the long polls (HTTP/2 keeps a
	// connection's frames in order). The removal then reaches the follower
	// only through the metadata group's replication, so the readers are
	// waiting when it arrives.
	_, err = reader.TopicDetails(rctx, "lp")
	require.NoError(t, err)
	_, err = forestbusv1.NewForestBusServiceClient(conn).GetTopicDetails(
		metadata.AppendToOutgoingContext(rctx, client.ClusterIDMetadataKey, "it"),
		&forestbusv1.GetTopicDetailsRequest{Topic: "lp"})
	require.NoError(t, err)
	select {
	case r := <-viaClient:
		t.Fatalf("the Client's long poll answered before the removal: %+v", r)
	case r := <-viaGRPC:
		t.Fatalf("the gRPC long poll answered before the removal: %+v", r)
	default:
	}
	t0 := time.Now()
	require.NoError(t, cl.RemoveTopic(ctx, "lp"))
	t.Logf("RemoveTopic lp took %v (readers wait on follower %s)", time.Since(t0).Round(time.Millisecond), follower.name)
	for name, ch := range map[string]chan result{"Client": viaClient, "gRPC": viaGRPC} {
		select {
		case r := <-ch:
			t.Logf("%s reader: %d messages, err %v, after %v", name, r.msgs, r.err, r.took.Round(time.Millisecond))
			if name == "Client" {
				require.ErrorIs(t, r.err, client.ErrTopicNotFound, "Client reader")
			} else {
				require.Equal(t, codes.NotFound, status.Code(r.err), "gRPC reader: %v", r.err)
				require.Contains(t, fmt.Sprint(status.Convert(r.err).Details()), "TOPIC_NOT_FOUND", "gRPC reader")
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s reader still waits 10 s after the topic was removed", name)
		}
	}
	for _, p := range c.procs {
		var err error
		waitFor(t, 30*time.Second, 20*time.Millisecond, func() bool {
			_, err = c.details(p, "lp")
			return errors.Is(err, client.ErrTopicNotFound)
		}, func() string { return fmt.Sprintf("%s still serves lp: %v", p.name, err) })
	}
}

// sentSignal is a gRPC stats handler that sends on c each time a
// GetMessages request has been written to the connection.
type sentSignal chan<- struct{}

type methodKey struct{}

func (s sentSignal) TagRPC(ctx context.Context, info *stats.RPCTagInfo) context.Context {
	return context.WithValue(ctx, methodKey{}, info.FullMethodName)
}

func (s sentSignal) HandleRPC(ctx context.Context, st stats.RPCStats) {
	if _, ok := st.(*stats.OutPayload); ok {
		if m, _ := ctx.Value(methodKey{}).(string); strings.HasSuffix(m, "/GetMessages") {
			s <- struct{}{}
		}
	}
}

func (sentSignal) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }
func (sentSignal) HandleConn(context.Context, stats.ConnStats)                       {}
