package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/forestbus/forestbus/internal/tlstest"
	"github.com/forestbus/forestbus/server/servertest"
)

// TestWorkloadsAgainstNode runs every workload briefly against a real node
// and checks the JSON lines, then the report built from them.
func TestWorkloadsAgainstNode(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a node")
	}
	n := servertest.StartNode(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	err := run(ctx, []string{
		"-forestbus", "test#default@" + n.Addr(),
		"-workload", "all", "-runs", "2", "-label", "test",
		"-producers", "4", "-batch", "10", "-size", "64", "-duration", "200ms",
		"-warmup", "2", "-sends", "20",
		"-read-messages", "2000", "-quantity", "100", "-fill-batch", "300",
		"-topics", "3", "-w4-batch", "5",
	}, &stdout, &stderr)
	require.NoError(t, err, stderr.String())

	runs := map[string]int{}
	summaries := map[string]int{}
	sc := bufio.NewScanner(bytes.NewReader(stdout.Bytes()))
	for sc.Scan() {
		var l map[string]any
		require.NoError(t, json.Unmarshal(sc.Bytes(), &l), sc.Text())
		w := l["workload"].(string)
		switch l["type"] {
		case "run":
			var r Result
			require.NoError(t, json.Unmarshal(sc.Bytes(), &r))
			runs[w]++
			assert.Positive(t, r.MsgsPerS, w)
			assert.Positive(t, r.MBPerS, w)
			assert.Positive(t, r.Messages, w)
			assert.Positive(t, r.DurationS, w)
			assert.Zero(t, r.Errors, "%s: %s", w, r.FirstError)
			assert.Equal(t, "test", r.Label)
			require.NotNil(t, r.Latency, w)
			assert.Positive(t, r.Latency.P50Ms, w)
			assert.GreaterOrEqual(t, r.Latency.P99Ms, r.Latency.P50Ms, w)
			assert.GreaterOrEqual(t, r.Latency.MaxMs, r.Latency.P99Ms, w)
			assert.NotEmpty(t, r.Env.GoVersion)
			assert.Positive(t, r.Env.GOMAXPROCS)
			require.NotNil(t, r.Cluster)
			assert.Equal(t, "test", r.Cluster.ID)
			assert.False(t, r.Start.IsZero())
			switch w {
			case "W1", "W4":
				assert.NotEmpty(t, r.PerSecond, w)
				assert.Less(t, r.DurationS, 5.0, "%s stops by itself", w)
			case "W2":
				assert.EqualValues(t, 20, r.Messages)
				assert.NotEmpty(t, r.Latency.Histogram)
			case "W3", "W3S", "W3SC":
				assert.GreaterOrEqual(t, r.Messages, int64(2000))
				assert.Positive(t, r.Calls)
				require.NotNil(t, r.ReadNode)
			}
		case "summary":
			var s Summary
			require.NoError(t, json.Unmarshal(sc.Bytes(), &s))
			summaries[w]++
			assert.Equal(t, 2, s.Runs)
			assert.Positive(t, s.Median["msgs_per_s"], w)
			assert.Len(t, s.Values["msgs_per_s"], 2)
		default:
			t.Fatalf("unknown line type: %s", sc.Text())
		}
	}
	assert.Equal(t, map[string]int{"W1": 2, "W2": 2, "W3": 2, "W3S": 2, "W3SC": 2, "W4": 2}, runs)
	assert.Equal(t, map[string]int{"W1": 1, "W2": 1, "W3": 1, "W3S": 1, "W3SC": 1, "W4": 1}, summaries)

	file := filepath.Join(t.TempDir(), "out.jsonl")
	require.NoError(t, os.WriteFile(file, stdout.Bytes(), 0o644))
	var table bytes.Buffer
	require.NoError(t, run(ctx, []string{"-report", file}, &table, &stderr))
	lines := strings.Split(strings.TrimSpace(table.String()), "\n")
	require.Len(t, lines, 2+6, table.String())
	assert.Contains(t, lines[2], "W1")
	assert.Contains(t, lines[5], "W3S subscribe")
	assert.Contains(t, lines[6], "W3SC")
	assert.Contains(t, lines[7], "W4")
	assert.Contains(t, lines[7], "| test | 2 |")
}

// TestW3Fills checks W3 fills an empty topic first and reports the fill
// apart from the read.
func TestW3Fills(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a node")
	}
	n := servertest.StartNode(t)
	r := runResult(context.Background(), t,
		"-forestbus", "test#default@"+n.Addr(), "-workload", "W3",
		"-read-messages", "2500", "-quantity", "100", "-fill-batch", "300", "-fill-producers", "3")
	require.NotNil(t, r.Fill)
	assert.GreaterOrEqual(t, r.Fill.Messages, int64(2500))
	assert.Positive(t, r.Fill.MsgsPerS)
	assert.GreaterOrEqual(t, r.Messages, int64(2500))
	assert.Positive(t, r.MsgsPerS)
}

// TestFatalErrorStops checks an unknown topic ends a run at once, with an
// error, instead of counting errors for the whole duration.
func TestFatalErrorStops(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a node")
	}
	n := servertest.StartNode(t)
	var stdout, stderr bytes.Buffer
	start := time.Now()
	err := run(context.Background(), []string{
		"-forestbus", "test#nosuchtopic@" + n.Addr(),
		"-workload", "W1,W2", "-producers", "2", "-duration", "10s", "-timeout", "5s",
	}, &stdout, &stderr)
	require.Error(t, err)
	assert.ErrorContains(t, err, "not found")
	assert.Less(t, time.Since(start), 5*time.Second)
}

// TestInterrupt checks a cancelled context ends a timed run early with a
// partial, marked result.
func TestInterrupt(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a node")
	}
	n := servertest.StartNode(t)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(500*time.Millisecond, cancel)
	var stdout, stderr bytes.Buffer
	start := time.Now()
	err := run(ctx, []string{
		"-forestbus", "test#default@" + n.Addr(),
		"-workload", "W1", "-producers", "2", "-duration", "30s",
	}, &stdout, &stderr)
	require.ErrorIs(t, err, context.Canceled)
	assert.Less(t, time.Since(start), 10*time.Second)
	var r Result
	require.NoError(t, json.Unmarshal(stdout.Bytes(), &r))
	assert.True(t, r.Interrupted)
	assert.Positive(t, r.Messages)
}

// TestW2Churn: W2 with -churn creates and removes topics while it measures,
// reports the cycles, and leaves no topic behind.
func TestW2Churn(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a node")
	}
	n := servertest.StartNode(t)
	r := runResult(context.Background(), t,
		"-forestbus", "test#default@"+n.Addr(),
		"-workload", "W2", "-warmup", "1", "-sends", "300", "-churn", "100")
	require.NotNil(t, r.Churn)
	assert.Positive(t, r.Churn.Cycles)
	assert.Zero(t, r.Churn.Errors, r.Churn.FirstError)
	assert.EqualValues(t, 100, r.Params["churn_per_s"])
	for _, tp := range n.Registry().List() {
		assert.NotContains(t, tp.Name, "bench-churn", "a churn topic left behind")
	}
}

// runResult runs fbbench with args, which must succeed and print one run
// line, and returns it.
func runResult(ctx context.Context, t *testing.T, args ...string) Result {
	t.Helper()
	var stdout, stderr bytes.Buffer
	require.NoError(t, run(ctx, args, &stdout, &stderr), stderr.String())
	var r Result
	require.NoError(t, json.Unmarshal(stdout.Bytes(), &r))
	return r
}

// TestTLS: with -tls-ca, -tls-cert and -tls-key fbbench talks TLS to a
// node that requires client certificates, for sends and reads alike.
func TestTLS(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a node")
	}
	ca := tlstest.NewCA(t)
	n := servertest.StartNode(t, servertest.WithTLS(ca, ca.Issue(t, "node"), true))
	caFile, certFile, keyFile := ca.Write(t, t.TempDir(), "client", ca.Issue(t, "client"))
	tlsArgs := []string{"-tls-ca", caFile, "-tls-cert", certFile, "-tls-key", keyFile}
	r := runResult(context.Background(), t, append([]string{"-forestbus", "test#default@" + n.Addr(),
		"-workload", "W3", "-read-messages", "500", "-quantity", "100", "-fill-batch", "100"}, tlsArgs...)...)
	assert.GreaterOrEqual(t, r.Messages, int64(500))
	r = runResult(context.Background(), t, append([]string{"-forestbus", "test#default@" + n.Addr(),
		"-workload", "W2", "-warmup", "1", "-sends", "5"}, tlsArgs...)...)
	assert.EqualValues(t, 5, r.Messages)
}
