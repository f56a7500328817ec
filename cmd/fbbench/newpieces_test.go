package main

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/xml"
	"errors"
	"io"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/forestbus/forestbus/server/servertest"
)

// A /proc/PID/stat line whose command name holds spaces and parentheses.
const statFixture = "4242 (fb node) (x)) S 1 4242 4242 0 -1 4194560 1234 0 0 0 " +
	"1500 250 0 0 20 0 12 0 98765 1234567890 4321 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n"

const statusFixture = `Name:	fbnode
Umask:	0022
State:	S (sleeping)
VmPeak:	 1300000 kB
VmHWM:	   70000 kB
VmRSS:	   65536 kB
RssAnon:	   40000 kB
Threads:	12
`

func TestParseProc(t *testing.T) {
	ticks, err := parseStatCPU(statFixture)
	require.NoError(t, err)
	assert.EqualValues(t, 1750, ticks, "utime 1500 + stime 250")

	_, err = parseStatCPU("4242 fbnode S 1")
	assert.Error(t, err)
	_, err = parseStatCPU("4242 (fbnode) S 1 2 3")
	assert.Error(t, err)

	rss, err := parseStatusRSS(statusFixture)
	require.NoError(t, err)
	assert.EqualValues(t, 64<<20, rss)
	_, err = parseStatusRSS("Name:\tkthreadd\nState:\tS\n")
	assert.Error(t, err)

	// This process, for real.
	s, err := readProc(os.Getpid())
	require.NoError(t, err)
	assert.Positive(t, s.rssBytes)
	assert.GreaterOrEqual(t, s.cpuTicks, int64(0))

	before := []procSample{{at: time.Unix(100, 0), cpuTicks: 100, rssBytes: 1 << 20}}
	after := []procSample{{at: time.Unix(110, 0), cpuTicks: 150, rssBytes: 3 << 20}}
	ps := procDelta([]int{7}, before, after, []error{nil})
	assert.Equal(t, []Proc{{PID: 7, RSSMiB: 3, CPUS: 0.5, CorePct: 5}}, ps)
	ps = procDelta([]int{7}, before, after, []error{errors.New("gone")})
	assert.Equal(t, "gone", ps[0].Error)
}

func TestParsePIDs(t *testing.T) {
	ps, err := parsePIDs(" 12,34 ,,56")
	require.NoError(t, err)
	assert.Equal(t, []int{12, 34, 56}, ps)
	ps, err = parsePIDs("")
	require.NoError(t, err)
	assert.Empty(t, ps)
	_, err = parsePIDs("12,x")
	assert.Error(t, err)
	_, err = parsePIDs("-3")
	assert.Error(t, err)

	_, _, err = parseFlags([]string{"-forestbus", "b@127.0.0.1:1", "-workload", "IDLE"}, io.Discard)
	assert.ErrorContains(t, err, "-pids")
	_, _, err = parseFlags([]string{"-forestbus", "b@127.0.0.1:1,127.0.0.1:2", "-read-node", "2"}, io.Discard)
	assert.ErrorContains(t, err, "-read-node")
	c, _, err := parseFlags([]string{"-forestbus", "b@127.0.0.1:1,127.0.0.1:2", "-read-node", "1", "-pids", "1,2"}, io.Discard)
	require.NoError(t, err)
	assert.Equal(t, 1, c.ReadNode)
	assert.Equal(t, []int{1, 2}, c.PIDs)
}

// svgCounts checks doc is well-formed XML with an <svg> root and counts
// its series polylines and text elements.
func svgCounts(t *testing.T, doc []byte) (series int, texts []string) {
	t.Helper()
	d := xml.NewDecoder(bytes.NewReader(doc))
	root := ""
	inText := false
	for {
		tok, err := d.Token()
		if err == io.EOF {
			break
		}
		require.NoError(t, err, string(doc))
		switch e := tok.(type) {
		case xml.StartElement:
			if root == "" {
				root = e.Name.Local
			}
			if e.Name.Local == "polyline" {
				for _, a := range e.Attr {
					if a.Name.Local == "class" && a.Value == "series" {
						series++
					}
				}
			}
			inText = e.Name.Local == "text"
		case xml.CharData:
			if inText {
				texts = append(texts, string(e))
			}
		case xml.EndElement:
			inText = false
		}
	}
	assert.Equal(t, "svg", root)
	return series, texts
}

func TestCharts(t *testing.T) {
	runs := []*Result{
		{Type: "run", Workload: "W1", Label: "a<&>", Run: 1, Runs: 2, Params: map[string]any{"duration_s": 3.0, "producers": 50.0}, PerSecond: []int64{100, 200, 300, 5}},
		{Type: "run", Workload: "W1", Label: "a<&>", Run: 2, Runs: 2, Params: map[string]any{"duration_s": 3.0, "producers": 50.0}, PerSecond: []int64{150, 250, 350}},
		{Type: "run", Workload: "W1", Label: "b", Run: 1, Runs: 1, Params: map[string]any{"duration_s": 3.0, "producers": 50.0}, PerSecond: []int64{1e6, 2e6, 1.5e6}},
		{Type: "run", Workload: "W2", Label: "a", Run: 1, Runs: 1, CDF: cdf(durs(1, 2, 3, 50))},
		{Type: "run", Workload: "W2", Label: "b", Run: 1, Runs: 1, Latency: summarize(durs(1, 1, 3, 30, 6000))},
		{Type: "run", Workload: "W3", Label: "a", Run: 1, Runs: 1, Latency: summarize(durs(1))},
	}
	c := w1Chart(runs)
	require.Len(t, c.series, 3)
	assert.Len(t, c.series[0].pts, 3, "the partial last second is left out")
	n, texts := svgCounts(t, c.svg())
	assert.Equal(t, 3, n)
	assert.Contains(t, texts, "a<&> run 1", "escaped, and read back")
	assert.Contains(t, texts, "msgs/s")
	assert.Contains(t, texts, "2M")

	c = w2Chart(runs)
	n, texts = svgCounts(t, c.svg())
	assert.Equal(t, 2, n)
	assert.Contains(t, texts, "latency, ms (log scale)")
	assert.Contains(t, texts, "1", "a decade tick")
	assert.Contains(t, texts, "100")

	n, texts = svgCounts(t, (&lineChart{title: "empty"}).svg())
	assert.Zero(t, n)
	assert.Contains(t, texts, "no data")

	// charts reads JSON lines and writes both files.
	dir := t.TempDir()
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	for _, r := range runs {
		require.NoError(t, enc.Encode(r))
	}
	file := filepath.Join(dir, "in.jsonl")
	require.NoError(t, os.WriteFile(file, buf.Bytes(), 0o644))
	paths, err := charts(filepath.Join(dir, "out"), []string{file})
	require.NoError(t, err)
	require.Len(t, paths, 2)
	for _, p := range paths {
		b, err := os.ReadFile(p)
		require.NoError(t, err)
		n, _ := svgCounts(t, b)
		assert.Positive(t, n, p)
	}
}

func TestTicks(t *testing.T) {
	assert.Equal(t, []float64{0, 0.5, 1}, niceTicks(0, 1, 2))
	ts := niceTicks(-0.0001, 1, 2)
	assert.Equal(t, []float64{0, 1}, ts)
	assert.False(t, math.Signbit(ts[0]), "0, not -0")
	assert.Equal(t, []float64{0.1, 0.2, 0.5, 1, 2, 5, 10}, logTicks(0.1, 10))
	assert.Equal(t, "1.5M", siFmt(1.5e6))
	assert.Equal(t, "250k", siFmt(250000))
	assert.Equal(t, "0", siFmt(0))
}

func TestReportTables(t *testing.T) {
	procs := func(rss ...float64) []Proc {
		var out []Proc
		for i, r := range rss {
			out = append(out, Proc{PID: i + 1, RSSMiB: r, CorePct: 10})
		}
		return out
	}
	runs := []*Result{
		{Type: "run", Workload: "W1", Label: "x", Params: map[string]any{"producers": 10.0}, MsgsPerS: 100, Latency: &Latency{P50Ms: 1}, Procs: procs(100, 120, 110)},
		{Type: "run", Workload: "W1", Label: "x", Params: map[string]any{"producers": 1.0}, MsgsPerS: 10, Latency: &Latency{P50Ms: 1}, Procs: procs(100, 300, 110)},
		{Type: "run", Workload: "W4", Label: "x", Params: map[string]any{"topics": 1000.0}, MsgsPerS: 5},
		{Type: "run", Workload: "IDLE", Label: "x", Params: map[string]any{"idle_topics": 100.0},
			Idle: &Idle{Topics: 100, TopicsTotal: 201, WindowS: 20, TotalCorePct: 9, Procs: []Proc{{CorePct: 4, RSSMiB: 55}, {CorePct: 5, RSSMiB: 58}}}},
		{Type: "run", Workload: "IDLE", Label: "x", Params: map[string]any{"idle_topics": 100.0},
			Idle: &Idle{Topics: 100, TopicsTotal: 201, WindowS: 20, TotalCorePct: 3, Procs: []Proc{{CorePct: 1, RSSMiB: 50}, {CorePct: 2, RSSMiB: 60}}}},
		{Type: "run", Workload: "IDLE", Label: "x", Params: map[string]any{"idle_topics": 100.0},
			Idle: &Idle{Topics: 100, TopicsTotal: 201, WindowS: 20, TotalCorePct: 0.5, Procs: []Proc{{CorePct: 0.25, RSSMiB: 52}, {CorePct: 0.25, RSSMiB: 59}}}},
	}
	var b bytes.Buffer
	require.NoError(t, scalingTable(&b, runs))
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	require.Len(t, lines, 2+3, b.String())
	assert.Contains(t, lines[2], "| W1 | x | 1 | 1 | 10 |")
	assert.Contains(t, lines[3], "| W1 | x | 10 | 1 | 100 |")
	assert.Contains(t, lines[4], "| W4 | x | 1000 |")

	b.Reset()
	require.NoError(t, idleTable(&b, runs))
	// Each run's total in run order; the median; the median run's nodes; the
	// largest RSS of each node over the runs.
	assert.Contains(t, b.String(), "| x | 100 | 201 | 3 × 20.0 | 9.00 / 3.00 / 0.50 | 3.00 | 1.00 / 2.00 | 55 / 60 |")

	b.Reset()
	require.NoError(t, rssTable(&b, runs))
	assert.Contains(t, b.String(), "| W1 | x | 1 | 1 | 100 / 300 / 110 | 10 / 10 / 10 | **no** |")
	assert.Contains(t, b.String(), "| W1 | x | 10 | 1 | 100 / 120 / 110 | 10 / 10 / 10 | yes |")

	assert.Error(t, idleTable(&b, runs[:1]))
}

// TestSubscribeAndIdleAgainstNode runs W3S, W3, IDLE and W3SC briefly against a
// real node, with this process standing in for the node process.
func TestSubscribeAndIdleAgainstNode(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a node")
	}
	n := servertest.StartNode(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	err := run(ctx, []string{
		"-forestbus", "test#default@" + n.Addr(), "-workload", "W3S,W3,IDLE,W3SC",
		"-read-messages", "3000", "-quantity", "100", "-fill-batch", "500", "-size", "64",
		"-idle-topics", "5", "-idle-window", "300ms", "-idle-settle", "10ms",
		"-pids", strconv.Itoa(os.Getpid()),
	}, &stdout, &stderr)
	require.NoError(t, err, stderr.String())
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	require.Len(t, lines, 4, stdout.String())
	var rs []Result
	for _, l := range lines {
		var r Result
		require.NoError(t, json.Unmarshal([]byte(l), &r), l)
		rs = append(rs, r)
		require.Len(t, r.Procs, 1, r.Workload)
		assert.Positive(t, r.Procs[0].RSSMiB, r.Workload)
		assert.Empty(t, r.Procs[0].Error)
		assert.Zero(t, r.Errors, "%s: %s", r.Workload, r.FirstError)
	}
	s := rs[0]
	assert.Equal(t, "W3S", s.Workload)
	assert.Equal(t, true, s.Params["borrowed"], "W3S borrows")
	require.NotNil(t, s.Fill, "the empty topic is filled first")
	assert.EqualValues(t, 3000, s.Messages, "Subscribe stops at the count")
	assert.EqualValues(t, 3000*64, s.Bytes)
	assert.Positive(t, s.MsgsPerS)
	require.NotNil(t, s.Latency)
	assert.Equal(t, 3, s.Latency.Count, "a sample per 1000 messages")
	require.NotNil(t, s.ReadNode)
	assert.True(t, s.ReadNode.IsLeader, "one node: it leads")
	assert.Equal(t, n.Addr(), s.ReadNode.Address)

	assert.Equal(t, "W3", rs[1].Workload)
	assert.Nil(t, rs[1].Fill, "W3S filled it")
	assert.GreaterOrEqual(t, rs[1].Messages, int64(3000))

	id := rs[2]
	assert.Equal(t, "IDLE", id.Workload)
	require.NotNil(t, id.Idle)
	assert.Equal(t, 5, id.Idle.Topics)
	assert.Equal(t, 6, id.Idle.TopicsTotal, "and default")
	assert.EqualValues(t, 5, id.Messages)
	assert.InDelta(t, 0.3, id.Idle.WindowS, 0.2)
	require.Len(t, id.Idle.Procs, 1)
	assert.GreaterOrEqual(t, id.Idle.TotalCorePct, 0.0)

	sc := rs[3]
	assert.Equal(t, "W3SC", sc.Workload)
	assert.Equal(t, false, sc.Params["borrowed"], "W3SC keeps its messages")
	assert.EqualValues(t, 3000, sc.Messages)
	assert.EqualValues(t, 3000*64, sc.Bytes)
}

// TestReadNodePicksFollower checks W3 reads from a node that does not lead
// the topic in a 3-node cluster.
func TestReadNodePicksFollower(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a cluster")
	}
	c := servertest.NewCluster(t, 3)
	c.WaitTopic("default")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	r := runResult(ctx, t,
		"-forestbus", "test#default@"+strings.Join(c.Addrs(), ","), "-workload", "W3S",
		"-read-messages", "1000", "-quantity", "100", "-fill-batch", "500", "-size", "64")
	require.NotNil(t, r.ReadNode)
	assert.True(t, r.ReadNode.Auto)
	assert.False(t, r.ReadNode.IsLeader)
	assert.NotEmpty(t, r.ReadNode.Leader)
	assert.NotEqual(t, r.ReadNode.Leader, r.ReadNode.Name)
	assert.Equal(t, c.Addrs()[r.ReadNode.Index], r.ReadNode.Address)
	assert.EqualValues(t, 1000, r.Messages)
}
