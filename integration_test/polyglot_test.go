package integration_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/forestbus/forestbus/client"
)

// nodeExampleDir is the Node.js client example, relative to this package.
var nodeExampleDir = filepath.Join("..", "examples", "node")

// npmCI installs the Node.js example's dependencies from its
// package-lock.json, once per test binary.
var npmCI struct {
	once sync.Once
	out  string
	err  error
}

func installNodeExample(t *testing.T) {
	t.Helper()
	npmCI.once.Do(func() {
		npm, err := exec.LookPath("npm")
		if err != nil {
			npmCI.err = fmt.Errorf("node is on PATH but npm is not: %w", err)
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, npm, "ci", "--no-audit", "--no-fund")
		cmd.Dir = nodeExampleDir
		cmd.WaitDelay = 5 * time.Second
		out, err := cmd.CombinedOutput()
		npmCI.out = string(out)
		if ctx.Err() != nil {
			err = fmt.Errorf("npm ci: no answer in time: %w", ctx.Err())
		}
		npmCI.err = err
	})
	if npmCI.err != nil {
		t.Fatalf("npm ci in %s: %v\n%s", nodeExampleDir, npmCI.err, tail(npmCI.out, 30))
	}
}

// runNodeClient runs examples/node/client.js with args and returns its exit
// code, standard output and standard error.
func runNodeClient(t *testing.T, nodeBin string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, nodeBin, append([]string{"client.js"}, args...)...)
	cmd.Dir = nodeExampleDir
	cmd.WaitDelay = 5 * time.Second
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("node client.js %s: not done in time\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), o.String(), e.String())
	}
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatalf("node client.js: %v", err)
	}
	return cmd.ProcessState.ExitCode(), o.String(), e.String()
}

// nodePayload is the i-th message client.js sends in the run tagged tag
// (its payload function): UTF-8 text, then bytes that are not.
func nodePayload(tag string, i int) []byte {
	return append([]byte(fmt.Sprintf("node:%s:%d:héllo", tag, i)), 0x00, 0xff, 0x80, 0x0a, byte(i))
}

// TestPolyglotNodeClient runs the Node.js example (examples/node/client.js,
// @grpc/grpc-js with the .proto files loaded at run time) against a real
// fbnode, then reads what it sent through the Go client.
func TestPolyglotNodeClient(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test")
	}
	nodeBin, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node (Node.js) is not on PATH: the Node.js client example is not tested")
	}
	installNodeExample(t)
	n := startProc(t, "n1")

	code, stdout, stderr := runNodeClient(t, nodeBin, n.addr, "it")
	checkProcs(t)
	require.Equal(t, 0, code, "node client.js failed\nstdout:\n%s\nstderr:\n%s", stdout, stderr)
	t.Logf("node client.js:\n%s", stdout)
	for _, line := range []string{
		"cluster: it (answered by node n1, 1 node(s))",
		"sent: ids 1 2 3",
		"read: ids 1 2 3 match the bytes sent",
		"long poll: waiting at id 4",
		"sent: id 4",
		"error: NOT_FOUND TOPIC_NOT_FOUND domain=forestbus: ",
		"all checks passed",
	} {
		require.Contains(t, stdout, line)
	}
	require.Regexp(t, `(?m)^long poll: returned id 4 \d+ ms after the send$`, stdout)
	m := regexp.MustCompile(`(?m)^run tag: ([0-9a-f]+)$`).FindStringSubmatch(stdout)
	require.NotNil(t, m, "no run tag in the output")
	tag := m[1]

	// The Go side sees the 4 messages, byte for byte, at IDs 1..4.
	c := client.New("it", []string{n.addr})
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var got [][]byte
	for next := int64(1); len(got) < 4; {
		msgs, nextID, err := c.GetMessagesContext(ctx, "default", next, 10, false)
		require.NoError(t, err)
		require.NotEmpty(t, msgs, "GetMessages at %d", next)
		got = append(got, msgs...)
		next = nextID
	}
	require.Len(t, got, 4, "the topic holds messages the Node.js client did not send")
	for i, msg := range got {
		require.Equal(t, nodePayload(tag, i+1), msg, "message %d", i+1)
	}

	// The program's exit status reports a failed check: a cluster ID that
	// is not the node's.
	code, stdout, stderr = runNodeClient(t, nodeBin, n.addr, "not-it")
	require.Equal(t, 1, code, "stdout:\n%s\nstderr:\n%s", stdout, stderr)
	require.Contains(t, stderr, "FAILED: unexpected gRPC error: FAILED_PRECONDITION CLUSTER_ID_MISMATCH")
	checkProcs(t)
}

// TestPolyglotNodeClientOnEveryNode: the Node.js example passes against
// every node of a 3-node cluster, followers included, whose reads trail
// the leader's commit by up to the commit notice delay (a review found
// its read-back failing on every follower).
func TestPolyglotNodeClientOnEveryNode(t *testing.T) {
	nodeBin, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node (Node.js) is not on PATH: the Node.js client example is not tested")
	}
	c := startCluster(t, 3)
	installNodeExample(t)
	for _, p := range c.procs {
		code, stdout, stderr := runNodeClient(t, nodeBin, p.addr, "it")
		require.Equal(t, 0, code, "node client.js against %s failed\nstdout:\n%s\nstderr:\n%s", p.name, stdout, stderr)
		require.Contains(t, stdout, "all checks passed", p.name)
	}
	checkProcs(t)
}
