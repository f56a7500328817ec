package httpapi_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/forestbus/forestbus/client"
	forestbusv1 "github.com/forestbus/forestbus/gen/forestbus/v1"
	"github.com/forestbus/forestbus/server/httpapi"
	"github.com/forestbus/forestbus/server/servertest"
)

func get(t *testing.T, url string) (string, http.Header) {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode, "GET %s: %s", url, body)
	return string(body), resp.Header
}

func scrape(t *testing.T, base string) map[string]*dto.MetricFamily {
	t.Helper()
	body, hdr := get(t, base+"/metrics")
	assert.Contains(t, hdr.Get("Content-Type"), "text/plain")
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(body))
	require.NoError(t, err)
	return fams
}

// value finds the sample of family name whose labels include want.
func value(fams map[string]*dto.MetricFamily, name string, want map[string]string) (float64, bool) {
	f, ok := fams[name]
	if !ok {
		return 0, false
	}
next:
	for _, m := range f.GetMetric() {
		have := map[string]string{}
		for _, l := range m.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if have[k] != v {
				continue next
			}
		}
		switch {
		case m.GetGauge() != nil:
			return m.GetGauge().GetValue(), true
		case m.GetCounter() != nil:
			return m.GetCounter().GetValue(), true
		case m.GetUntyped() != nil:
			return m.GetUntyped().GetValue(), true
		}
	}
	return 0, false
}

func statusJSON(t *testing.T, base string) httpapi.Status {
	t.Helper()
	body, hdr := get(t, base+"/status.json")
	assert.Equal(t, "application/json", hdr.Get("Content-Type"))
	var st httpapi.Status
	require.NoError(t, json.Unmarshal([]byte(body), &st))
	return st
}

func topicOf(st httpapi.Status, name string) (httpapi.TopicStatus, bool) {
	for _, tp := range st.Topics {
		if tp.Name == name {
			return tp, true
		}
	}
	return httpapi.TopicStatus{}, false
}

// cluster starts three nodes, sends a few batches to "default" and returns
// the cluster, a client and the last ID sent.
func cluster(t *testing.T) (*servertest.Cluster, *client.Client, int64) {
	t.Helper()
	c := servertest.NewCluster(t, 3)
	c.WaitTopic("default")
	cl := client.New("test", c.Addrs())
	t.Cleanup(cl.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var last int64
	for i := range 5 {
		ids, err := cl.SendMessagesContext(ctx, "default", [][]byte{[]byte(fmt.Sprint("a", i)), []byte(fmt.Sprint("b", i))}, true)
		require.NoError(t, err)
		last = ids[len(ids)-1]
	}
	return c, cl, last
}

// nodeDetails asks node addr (only) for the topic's details.
func nodeDetails(t *testing.T, addr, topic string) *client.TopicDetails {
	t.Helper()
	cl := client.New("test", []string{addr})
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d, err := cl.TopicDetails(ctx, topic)
	require.NoError(t, err)
	return d
}

// waitCommit waits until node addr has committed up to id, as its API says.
func waitCommit(t *testing.T, addr, topic string, id int64) *client.TopicDetails {
	t.Helper()
	var d *client.TopicDetails
	require.Eventually(t, func() bool {
		d = nodeDetails(t, addr, topic)
		return d.CommitID >= id
	}, 10*time.Second, 10*time.Millisecond, "node %s never committed %d", addr, id)
	return d
}

func TestHTTPAPI(t *testing.T) {
	c, cl, last := cluster(t)
	g := httpapi.NewGRPCMetrics()
	servers := make([]*httptest.Server, len(c.Nodes))
	for i, n := range c.Nodes {
		servers[i] = httptest.NewServer(httpapi.New(n.Server, httpapi.WithGRPCMetrics(g)))
		t.Cleanup(servers[i].Close)
	}
	leader := -1
	for i := range c.Nodes {
		d := waitCommit(t, c.Addrs()[i], "default", last)
		require.Equal(t, last, d.CommitID)
		if d.Node == c.Addrs()[i] && d.Leader == c.Nodes[i].Cfg.NodeName {
			leader = i
		}
	}

	require.NoError(t, cl.CreateTopic(t.Context(), "quiet", client.TopicSettings{}))
	for _, n := range c.Nodes {
		require.Eventually(t, func() bool { _, err := n.Registry().Get("quiet"); return err == nil }, 20*time.Second, 10*time.Millisecond)
	}

	t.Run("metrics", func(t *testing.T) {
		for i, ts := range servers {
			api := nodeDetails(t, c.Addrs()[i], "default")
			fams := scrape(t, ts.URL)
			topic := map[string]string{"topic": "default"}
			v, ok := value(fams, "forestbus_topic_commit_id", topic)
			require.True(t, ok, "node %d: no forestbus_topic_commit_id{topic=default}", i)
			assert.Equal(t, float64(api.CommitID), v, "node %d", i)
			v, _ = value(fams, "forestbus_topic_committed_messages_total", topic)
			assert.Equal(t, float64(api.CommitID), v)
			assert.Equal(t, dto.MetricType_COUNTER, fams["forestbus_topic_committed_messages_total"].GetType())
			v, _ = value(fams, "forestbus_topic_last_id", topic)
			assert.Equal(t, float64(api.LastID), v)
			v, _ = value(fams, "forestbus_topic_first_id", topic)
			assert.Equal(t, float64(api.FirstID), v)
			v, _ = value(fams, "forestbus_cluster_members", nil)
			assert.Equal(t, 3.0, v)
			v, _ = value(fams, "forestbus_topic_segments", topic)
			assert.GreaterOrEqual(t, v, 1.0)
			v, _ = value(fams, "forestbus_topic_disk_bytes", topic)
			assert.Greater(t, v, 0.0)
			v, _ = value(fams, "forestbus_topic_leader_id", topic)
			assert.NotZero(t, v)
			v, _ = value(fams, "forestbus_topic_term", topic)
			assert.NotZero(t, v)
			_, ok = value(fams, "forestbus_node_info", map[string]string{"node": c.Nodes[i].Cfg.NodeName})
			assert.True(t, ok)
			_, ok = fams["go_goroutines"]
			assert.True(t, ok, "Go collector registered")
			v, _ = value(fams, "forestbus_topic_appended_messages_total", topic)
			assert.Equal(t, float64(api.LastID), v, "node %d appended every message since it started", i)
			v, _ = value(fams, "forestbus_topic_committed_bytes_total", topic)
			assert.Greater(t, v, 0.0)
			_, ok = value(fams, "forestbus_long_poll_waiters", nil)
			assert.True(t, ok)
			_, ok = value(fams, "forestbus_subscribe_streams", nil)
			assert.True(t, ok)
			require.Contains(t, fams, "forestbus_node_sync_seconds")
			syncs := fams["forestbus_node_sync_seconds"].GetMetric()[0].GetHistogram().GetSampleCount()
			assert.NotZero(t, syncs, "node %d synced the messages it stored", i)
			v, _ = value(fams, "forestbus_node_synced_writes_total", nil)
			assert.GreaterOrEqual(t, v, float64(syncs), "a sync covers at least one write")
			var latencies uint64
			for _, m := range fams["forestbus_topic_commit_latency_seconds"].GetMetric() {
				latencies += m.GetHistogram().GetSampleCount()
			}
			if api.Leader == c.Nodes[i].Cfg.NodeName {
				assert.NotZero(t, latencies, "the leader timed its commits")
			}
			// Nothing was proposed to "quiet": no fifteen series of zeros
			// per topic (half of a scrape at 1,000 topics).
			_, ok = value(fams, "forestbus_topic_commit_id", map[string]string{"topic": "quiet"})
			assert.True(t, ok, "node %d has the topic", i)
			for _, m := range fams["forestbus_topic_commit_latency_seconds"].GetMetric() {
				for _, lp := range m.GetLabel() {
					assert.False(t, lp.GetName() == "topic" && lp.GetValue() == "quiet", "node %d: a latency histogram for a topic without proposals", i)
				}
			}
			v, _ = value(fams, "forestbus_node_serving", nil)
			assert.Equal(t, 1.0, v)
			v, ok = value(fams, "forestbus_topic_failed", topic)
			assert.True(t, ok)
			assert.Zero(t, v)

			leads, _ := value(fams, "forestbus_topic_is_leader", topic)
			if api.Leader == c.Nodes[i].Cfg.NodeName {
				assert.Equal(t, 1.0, leads)
				for j, n := range c.Nodes {
					if j == i {
						continue
					}
					_, ok := value(fams, "forestbus_topic_follower_lag_entries", map[string]string{"topic": "default", "follower": n.Cfg.NodeName})
					assert.True(t, ok, "leader reports the lag of %s", n.Cfg.NodeName)
					_, ok = value(fams, "forestbus_topic_follower_lag_messages", map[string]string{"topic": "default", "follower": n.Cfg.NodeName})
					assert.True(t, ok, "leader reports the message lag of %s", n.Cfg.NodeName)
				}
			} else {
				assert.Equal(t, 0.0, leads)
				for _, n := range c.Nodes {
					_, ok := value(fams, "forestbus_topic_follower_lag_entries", map[string]string{"topic": "default", "follower": n.Cfg.NodeName})
					assert.False(t, ok, "a follower reports no lag of %s", n.Cfg.NodeName)
				}
			}
		}
	})

	t.Run("grpc metrics", func(t *testing.T) {
		// Not in the server's chain yet: drive the interceptor by hand.
		_, err := g.Unary(context.Background(), nil, &grpcUnaryInfo, func(context.Context, any) (any, error) { return nil, nil })
		require.NoError(t, err)
		fams := scrape(t, servers[0].URL)
		v, ok := value(fams, "grpc_server_handled_total", map[string]string{"grpc_method": "SendMessages", "grpc_code": "OK"})
		require.True(t, ok)
		assert.Equal(t, 1.0, v)
		assert.Contains(t, fams, "grpc_server_handling_seconds", "the handling-time histogram the README lists")
	})

	t.Run("status.json", func(t *testing.T) {
		for i, ts := range servers {
			api := nodeDetails(t, c.Addrs()[i], "default")
			st := statusJSON(t, ts.URL)
			assert.Equal(t, "test", st.Cluster)
			assert.Equal(t, c.Nodes[i].Cfg.NodeName, st.Node)
			require.Len(t, st.Nodes, 3)
			for j, n := range st.Nodes {
				assert.Equal(t, fmt.Sprint("n", j+1), n.Name)
				assert.True(t, n.Up, "node %s seen from %s: %s", n.Name, st.Node, n.Error)
				assert.Equal(t, i == j, n.Self)
			}
			tp, ok := topicOf(st, "default")
			require.True(t, ok)
			assert.Equal(t, api.Leader, tp.Leader)
			assert.Equal(t, uint64(api.CommitID), tp.CommitID)
			assert.Equal(t, i == leader, tp.IsLeader)
			if tp.IsLeader {
				require.Len(t, tp.Followers, 2)
				for _, f := range tp.Followers {
					assert.NotEmpty(t, f.Name)
					assert.NotNil(t, f.LagMessages)
				}
			} else {
				assert.Empty(t, tp.Followers)
			}
		}
	})

	t.Run("metadata and build", func(t *testing.T) {
		// Every node names the same metadata leader; that node alone
		// leads it and reports both followers' lag in entries (no
		// messages: the log holds commands). The build is the running
		// binary's.
		require.EventuallyWithT(t, func(ct *assert.CollectT) {
			leaders := 0
			var leaderID uint64
			for i, ts := range servers {
				st := statusJSON(t, ts.URL)
				m := st.Metadata
				assert.NotZero(ct, m.LeaderID, "node %d knows the metadata leader", i)
				if leaderID == 0 {
					leaderID = m.LeaderID
				}
				assert.Equal(ct, leaderID, m.LeaderID, "node %d", i)
				assert.NotZero(ct, m.Term)
				assert.NotZero(ct, m.Applied, "node %d applied the members and topics", i)
				assert.GreaterOrEqual(ct, m.LastIndex, m.Applied)
				assert.Equal(ct, runtime.Version(), st.Build.GoVersion)
				assert.NotEmpty(ct, st.Build.Version)

				fams := scrape(t, ts.URL)
				v, _ := value(fams, "forestbus_build_info", map[string]string{"goversion": runtime.Version()})
				assert.Equal(ct, 1.0, v, "node %d: forestbus_build_info", i)
				v, _ = value(fams, "forestbus_metadata_leader_id", nil)
				assert.Equal(ct, float64(m.LeaderID), v)
				v, _ = value(fams, "forestbus_metadata_applied_index", nil)
				assert.GreaterOrEqual(ct, v, float64(m.Applied), "applied never goes back")
				v, _ = value(fams, "forestbus_metadata_is_leader", nil)
				assert.Equal(ct, flag(m.IsLeader), v)
				if !m.IsLeader {
					assert.Empty(ct, m.Followers)
					continue
				}
				leaders++
				assert.Equal(ct, st.NodeID, m.LeaderID)
				if assert.Len(ct, m.Followers, 2) {
					for _, f := range m.Followers {
						assert.NotEmpty(ct, f.Name)
						assert.NotNil(ct, f.LagEntries, "lag of %s", f.Name)
						assert.Nil(ct, f.LagMessages)
						_, ok := value(fams, "forestbus_metadata_follower_lag_entries", map[string]string{"follower": f.Name})
						assert.True(ct, ok, "leader reports the metadata lag of %s", f.Name)
					}
				}
			}
			assert.Equal(ct, 1, leaders)
		}, 20*time.Second, 50*time.Millisecond)
	})

	t.Run("status", func(t *testing.T) {
		body, hdr := get(t, servers[0].URL+"/status")
		assert.Contains(t, hdr.Get("Content-Type"), "text/html")
		assert.Contains(t, body, "status.json")
		api := nodeDetails(t, c.Addrs()[0], "default")
		require.NotEmpty(t, api.Leader)
		assert.Contains(t, body, "<tr><td>default</td><td>"+api.Leader+"</td>", "the topic's row names its leader")
	})

	t.Run("pprof off", func(t *testing.T) {
		resp, err := http.Get(servers[0].URL + "/debug/pprof/")
		require.NoError(t, err)
		resp.Body.Close()
		assert.Equal(t, http.StatusNotFound, resp.StatusCode)
	})

	t.Run("pprof on", func(t *testing.T) {
		ts := httptest.NewServer(httpapi.New(c.Nodes[0].Server, httpapi.WithGRPCMetrics(nil), httpapi.WithPprof()))
		defer ts.Close()
		body, _ := get(t, ts.URL+"/debug/pprof/")
		assert.Contains(t, body, "goroutine")
		// Without gRPC metrics, the registry has none of them.
		assert.NotContains(t, scrape(t, ts.URL), "grpc_server_handled_total")
	})

	t.Run("message rate", func(t *testing.T) {
		ts := httptest.NewServer(httpapi.New(c.Nodes[0].Server, httpapi.WithGRPCMetrics(nil)))
		defer ts.Close()
		st := statusJSON(t, ts.URL) // first sample
		tp, _ := topicOf(st, "default")
		assert.Zero(t, tp.MessagesPerSecond)
		cl := client.New("test", c.Addrs())
		defer cl.Close()
		ids, err := cl.SendMessages("default", [][]byte{[]byte("x"), []byte("y"), []byte("z")}, true)
		require.NoError(t, err)
		waitCommit(t, c.Addrs()[0], "default", ids[2])
		// The rate needs two samples a second apart: poll until it shows.
		require.Eventually(t, func() bool {
			tp, _ := topicOf(statusJSON(t, ts.URL), "default")
			return tp.MessagesPerSecond > 0
		}, 10*time.Second, 100*time.Millisecond)
	})

	t.Run("node down", func(t *testing.T) {
		// Stop a follower of node 0's view; node 0 must report it down.
		down := 2
		if leader == 2 {
			down = 1
		}
		c.Nodes[down].Stop()
		require.Eventually(t, func() bool {
			st := statusJSON(t, servers[0].URL)
			return !st.Nodes[down].Up && st.Nodes[down].Error != "" && st.Nodes[0].Up
		}, 10*time.Second, 50*time.Millisecond)
	})
}

// TestStatusPageInBrowser loads /status in headless Chromium and checks the
// DOM after the page's script has refreshed it from status.json.
func TestStatusPageInBrowser(t *testing.T) {
	const chromium = "/usr/bin/chromium"
	if _, err := os.Stat(chromium); err != nil {
		t.Skipf("%s not found (apt-get install -y chromium): skipping the browser test", chromium)
	}
	c, _, last := cluster(t)
	n := c.Nodes[0]
	ts := httptest.NewServer(httpapi.New(n.Server, httpapi.WithGRPCMetrics(nil)))
	defer ts.Close()
	api := waitCommit(t, c.Addrs()[0], "default", last)
	require.NotEmpty(t, api.Leader)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, chromium,
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--user-data-dir="+t.TempDir(), "--virtual-time-budget=5000",
		"--dump-dom", ts.URL+"/status")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	require.NoError(t, err, "chromium: %s", stderr.String())
	dom := string(out)
	// The script ran: it marks each refresh from status.json on <body>.
	assert.Regexp(t, `<body data-refreshes="[1-9]`, dom, "the page's script did not refresh it; chromium stderr: %s", stderr.String())
	assert.Contains(t, dom, `<span id="live"></span>`, "the script reported an error")
	// The leader may have moved since waitCommit asked (an election on a
	// loaded machine: 20 ms ticks): the row names the one known before
	// the page loaded or the one known after.
	after := nodeDetails(t, c.Addrs()[0], "default").Leader
	assert.True(t, strings.Contains(dom, "<tr><td>default</td><td>"+api.Leader+"</td>") ||
		strings.Contains(dom, "<tr><td>default</td><td>"+after+"</td>"),
		"the topic's row names its leader (%s before the page loaded, %s after)", api.Leader, after)
	assert.Regexp(t, `<td>n1 \(this node\)</td><td>[^<]+</td><td><span class="up">up</span>`, dom)
	assert.Contains(t, dom, `<span id="cluster">test</span>`)
	assert.Regexp(t, `<span id="build">\S+ .*`+regexp.QuoteMeta(runtime.Version())+`</span>`, dom)
	assert.Regexp(t, `<span id="metaleader" data-leader-id="[123]">n[123]</span>`, dom, "the script shows the metadata leader")
}

// TestLagOfAFollowerTheLeaderHasNotHeard: a leader elected while a
// follower is down knows nothing of its position (raft's Match is 0): it
// reported the whole log as that follower's lag (millions of entries on a
// large topic for a follower perhaps current). It now reports no lag for
// it, and the lag of the follower it hears.
func TestLagOfAFollowerTheLeaderHasNotHeard(t *testing.T) {
	c, cl, last := cluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for range 20 {
		ids, err := cl.SendMessagesContext(ctx, "default", [][]byte{[]byte("x"), []byte("y")}, true)
		require.NoError(t, err)
		last = ids[1]
	}
	for i := range c.Nodes {
		waitCommit(t, c.Addrs()[i], "default", last)
	}
	leader := -1
	for i, n := range c.Nodes {
		if d := nodeDetails(t, n.Addr(), "default"); d.Leader == n.Cfg.NodeName {
			leader = i
		}
	}
	require.NotEqual(t, -1, leader)
	down, live := (leader+1)%3, (leader+2)%3
	c.Nodes[down].Stop()
	c.Nodes[leader].Restart() // a new election, without the stopped node
	c.WaitTopic("default")
	follower := func(name string) map[string]string {
		return map[string]string{"topic": "default", "follower": name}
	}
	require.Eventually(t, func() bool {
		for i, n := range c.Nodes {
			if i == down {
				continue
			}
			ts := httptest.NewServer(httpapi.New(n.Server, httpapi.WithGRPCMetrics(nil)))
			fams := scrape(t, ts.URL)
			ts.Close()
			other := c.Nodes[live+leader-i].Cfg.NodeName // the other live node
			if _, ok := value(fams, "forestbus_topic_follower_lag_entries", follower(other)); !ok {
				continue // not the leader, or it has not heard the other yet
			}
			_, ok := value(fams, "forestbus_topic_follower_lag_entries", follower(c.Nodes[down].Cfg.NodeName))
			assert.False(t, ok, "%s reports a lag for %s, which it has not heard", n.Cfg.NodeName, c.Nodes[down].Cfg.NodeName)
			return true
		}
		return false
	}, 20*time.Second, 50*time.Millisecond)
}

// TestStatusSaysRemoved: a removed node's /status.json says so; it showed
// the members and topics as of its removal as if it were one of them.
func TestStatusSaysRemoved(t *testing.T) {
	c := servertest.NewCluster(t, 3)
	c.WaitTopic("default")
	gone := c.Nodes[2]
	ts := httptest.NewServer(httpapi.New(gone.Server))
	t.Cleanup(ts.Close)
	assert.False(t, statusJSON(t, ts.URL).Removed)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cc, err := grpc.NewClient("passthrough:///"+c.Nodes[0].Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { _ = cc.Close() })
	admin := forestbusv1.NewAdminServiceClient(cc)
	require.Eventually(t, func() bool {
		_, err := admin.RemoveNode(ctx, &forestbusv1.RemoveNodeRequest{Name: gone.Cfg.NodeName})
		return err == nil
	}, 20*time.Second, 50*time.Millisecond)
	require.Eventually(t, func() bool { return statusJSON(t, ts.URL).Removed }, 20*time.Second, 10*time.Millisecond)
	assert.Equal(t, gone.Cfg.NodeName, statusJSON(t, ts.URL).Node, "its name, not its raft ID")
	// And its metrics: it scraped as any serving node (review).
	v, ok := value(scrape(t, ts.URL), "forestbus_node_serving", nil)
	assert.True(t, ok)
	assert.Zero(t, v)
	body, _ := get(t, ts.URL+"/status")
	assert.Contains(t, body, "This node was removed from the cluster")
}

// TestCommittedCounterAfterRestart: forestbus_topic_committed_messages_total
// counts from the topic's opening on this node. It was the commit ID,
// which a restart may show lower than before it (the stored commit point
// trails), and Prometheus read the drop as a reset and counted the whole
// value again (review: 98,600 before a kill -9, 97,200 after).
func TestCommittedCounterAfterRestart(t *testing.T) {
	c, cl, last := cluster(t)
	n := c.Nodes[1]
	waitCommit(t, n.Addr(), "default", last)
	n.Restart()
	ts := httptest.NewServer(httpapi.New(n.Server, httpapi.WithGRPCMetrics(nil)))
	t.Cleanup(ts.Close)
	ids, err := cl.SendMessages("default", [][]byte{[]byte("after")}, true)
	require.NoError(t, err)
	d := waitCommit(t, n.Addr(), "default", ids[0])
	fams := scrape(t, ts.URL)
	committed, _ := value(fams, "forestbus_topic_committed_messages_total", map[string]string{"topic": "default"})
	assert.GreaterOrEqual(t, committed, 1.0, "the message sent since the restart")
	assert.Less(t, committed, float64(d.CommitID), "not the commit ID: the messages before the restart were counted by the last run")
}

// TestStatusShowsFailedTopic: a node's copy of a topic fenced after a
// storage error showed nowhere in /metrics or /status.json: leader 0, a
// commit ID that no longer moved (review). It shows as failed, in both
// and on the status page.
func TestStatusShowsFailedTopic(t *testing.T) {
	c := servertest.NewCluster(t, 3, servertest.WithSegmentBytes(4096))
	c.WaitTopic("default")
	cl := client.New("test", c.Addrs())
	t.Cleanup(cl.Close)
	_, err := cl.SendMessages("default", [][]byte{[]byte("a")}, true)
	require.NoError(t, err)
	// A follower's storage fails: writes past its segment's end need a
	// new file in a directory that is gone.
	var x *servertest.Node
	for _, n := range c.Nodes {
		if d := nodeDetails(t, n.Addr(), "default"); d.Leader != n.Cfg.NodeName {
			x = n
			break
		}
	}
	require.NotNil(t, x)
	tp, err := x.Registry().Get("default")
	require.NoError(t, err)
	dir := filepath.Join(x.Cfg.DataDir, "topics", tp.Group.Name())
	require.NoError(t, os.Rename(dir, dir+".gone"))
	t.Cleanup(func() { _ = os.Rename(dir+".gone", dir) }) // so the node stops cleanly
	big := make([]byte, 1500)
	for i := 0; i < 100 && !tp.Group.Failed(); i++ {
		_, err := cl.SendMessages("default", [][]byte{big}, true)
		require.NoError(t, err)
	}
	require.Eventually(t, tp.Group.Failed, 20*time.Second, 10*time.Millisecond)

	ts := httptest.NewServer(httpapi.New(x.Server, httpapi.WithGRPCMetrics(nil)))
	t.Cleanup(ts.Close)
	v, _ := value(scrape(t, ts.URL), "forestbus_topic_failed", map[string]string{"topic": "default"})
	assert.Equal(t, 1.0, v)
	st, ok := topicOf(statusJSON(t, ts.URL), "default")
	require.True(t, ok)
	assert.True(t, st.Failed)
	assert.Zero(t, st.LeaderID, "a fenced copy follows no leader")
	assert.Zero(t, tp.Group.Leader(), "nor does its group say one: the node's own rounds skip it")
	assert.False(t, st.IsLeader)
	body, _ := get(t, ts.URL+"/status")
	assert.Contains(t, body, "storage failed")
}

// flag is 1 for true, 0 for false (as the metrics say it).
func flag(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
