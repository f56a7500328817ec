package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/forestbus/forestbus/internal/syncbuf"
	"github.com/forestbus/forestbus/internal/tlstest"
	"github.com/forestbus/forestbus/server"
	"github.com/forestbus/forestbus/server/servertest"
)

// result is the outcome of one fbctl run.
type result struct {
	code   int
	stdout string
	stderr string
}

// fbctl runs the CLI with FORESTBUS=conn.
func fbctl(t *testing.T, conn, stdin string, args ...string) result {
	t.Helper()
	return fbctlCtx(t, t.Context(), conn, stdin, args...)
}

func fbctlCtx(t *testing.T, ctx context.Context, conn, stdin string, args ...string) result {
	t.Helper()
	var out, errb bytes.Buffer
	env := func(k string) string {
		if k == envConn {
			return conn
		}
		return ""
	}
	code := run(ctx, args, strings.NewReader(stdin), &out, &errb, env)
	return result{code: code, stdout: out.String(), stderr: errb.String()}
}

// ok requires exit status 0.
func (r result) ok(t *testing.T) result {
	t.Helper()
	require.Equal(t, 0, r.code, "stdout: %s\nstderr: %s", r.stdout, r.stderr)
	return r
}

func nodeConn(n *servertest.Node) string { return "test#default@" + n.Addr() }

// closedAddr is an address nothing listens on.
func closedAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	require.NoError(t, l.Close())
	return addr
}

func TestSendGetRoundTrip(t *testing.T) {
	n := servertest.StartNode(t)
	conn := nodeConn(n)
	long := strings.Repeat("0123456789abcdef", 200<<10/16) // 200 KiB, beyond Scanner's 64 KiB
	lines := []string{"hello", "héllo wörld <&>", long, "\xff\xfe\x00bin", "", "last"}
	input := strings.Join(lines, "\n") + "\n"

	r := fbctl(t, conn, input, "send").ok(t)
	assert.Equal(t, "sent 6 messages (first ID 1, last ID 6)\n", r.stderr)
	assert.Empty(t, r.stdout)

	// raw: byte for byte what was sent.
	r = fbctl(t, conn, "", "get").ok(t)
	assert.Equal(t, input, r.stdout)
	assert.Empty(t, r.stderr)

	// json: one object per line, base64 for the non-UTF-8 message.
	r = fbctl(t, conn, "", "get", "-format", "json").ok(t)
	sc := bufio.NewScanner(strings.NewReader(r.stdout))
	sc.Buffer(nil, 1<<20)
	var got []jsonMessage
	for sc.Scan() {
		var m map[string]any
		require.NoError(t, json.Unmarshal(sc.Bytes(), &m), sc.Text())
		var jm jsonMessage
		require.NoError(t, json.Unmarshal(sc.Bytes(), &jm))
		got = append(got, jm)
	}
	require.NoError(t, sc.Err())
	require.Len(t, got, len(lines))
	for i, m := range got {
		assert.EqualValues(t, i+1, m.ID)
		if i == 3 {
			assert.Equal(t, "base64", m.Encoding)
			b, err := base64.StdEncoding.DecodeString(m.Message)
			require.NoError(t, err)
			assert.Equal(t, lines[i], string(b))
			continue
		}
		assert.Empty(t, m.Encoding)
		assert.Equal(t, lines[i], m.Message)
	}
	assert.Contains(t, r.stdout, `"héllo wörld <&>"`, "no HTML escaping")

	// -from and -count, flags after the command.
	r = fbctl(t, conn, "", "get", "-from", "5", "-count", "1", "-format", "json").ok(t)
	assert.Equal(t, `{"id":5,"message":""}`+"\n", r.stdout)
	r = fbctl(t, conn, "", "get", "-from", "6").ok(t)
	assert.Equal(t, "last\n", r.stdout)
	r = fbctl(t, conn, "", "get", "-from", "100").ok(t)
	assert.Empty(t, r.stdout)

	// A last line without a newline is a message too.
	r = fbctl(t, conn, "tail", "send").ok(t)
	assert.Equal(t, "sent 1 message (first ID 7, last ID 7)\n", r.stderr)
}

func TestSendFilesAndTopicFlag(t *testing.T) {
	n := servertest.StartNode(t)
	conn := nodeConn(n)
	fbctl(t, conn, "", "topic", "create", "orders").ok(t)
	dir := t.TempDir()
	f1, f2 := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	require.NoError(t, os.WriteFile(f1, []byte("a1\na2\n"), 0o600))
	require.NoError(t, os.WriteFile(f2, []byte("b1\n"), 0o600))

	// Many messages: several batches, ordered IDs.
	var many strings.Builder
	for i := range 1000 {
		many.WriteString(strings.Repeat("m", i%50) + "\n")
	}
	r := fbctl(t, conn, many.String(), "send", f1, "-", f2, "-topic", "orders", "-no-wait").ok(t)
	assert.Equal(t, "sent 1003 messages (first ID 1, last ID 1003)\n", r.stderr)
	// -no-wait: the last batch may not be committed yet when send returns
	// (a clean-clone CI run read 1,002 messages once).
	want := "a1\na2\n" + many.String() + "b1\n"
	require.Eventually(t, func() bool {
		r = fbctl(t, conn, "", "get", "-topic", "orders")
		return r.code == 0 && r.stdout == want
	}, 10*time.Second, 10*time.Millisecond)
	assert.Equal(t, want, r.stdout)

	// The default topic is untouched.
	r = fbctl(t, conn, "", "get").ok(t)
	assert.Empty(t, r.stdout)

	// A missing file fails before anything is sent.
	r = fbctl(t, conn, "", "send", filepath.Join(dir, "nope"))
	assert.Equal(t, 1, r.code)
	assert.Contains(t, r.stderr, "no such file")
}

func TestTopicRoundTrip(t *testing.T) {
	n := servertest.StartNode(t)
	conn := nodeConn(n)

	r := fbctl(t, conn, "", "topic", "create", "orders", "-retention", "7d", "-segment-bytes", "1MiB").ok(t)
	assert.Equal(t, "created topic orders: segment-bytes 1MiB, retention 7d, retention-bytes default\n", r.stdout)

	r = fbctl(t, conn, "", "topic", "list").ok(t)
	assert.Equal(t, "NAME     SEGMENT-BYTES  RETENTION  RETENTION-BYTES\n"+
		"default  default        default    default\n"+
		"orders   1MiB           7d         default\n", r.stdout)

	// update changes only what is given; -o json before the command.
	r = fbctl(t, conn, "", "-o", "json", "topic", "update", "orders", "-retention-bytes", "1GiB").ok(t)
	var upd struct {
		Topic topicJSON `json:"topic"`
	}
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &upd))
	assert.Equal(t, topicJSON{Name: "orders", SegmentBytes: 1 << 20, RetentionSeconds: 7 * 86400, RetentionBytes: 1 << 30}, upd.Topic)

	listJSON := func() []topicJSON {
		r := fbctl(t, conn, "", "topic", "list", "--output", "json").ok(t)
		var doc struct {
			Topics []topicJSON `json:"topics"`
		}
		require.NoError(t, json.Unmarshal([]byte(r.stdout), &doc))
		return doc.Topics
	}
	assert.Equal(t, []topicJSON{
		{Name: "default"},
		{Name: "orders", SegmentBytes: 1 << 20, RetentionSeconds: 7 * 86400, RetentionBytes: 1 << 30},
	}, listJSON())

	r = fbctl(t, conn, "", "topic", "update", "orders", "-retention", "0", "-o", "json").ok(t)
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &upd))
	assert.Equal(t, topicJSON{Name: "orders", SegmentBytes: 1 << 20, RetentionBytes: 1 << 30}, upd.Topic)

	r = fbctl(t, conn, "", "topic", "create", "orders")
	assert.Equal(t, result{code: 1, stderr: "fbctl: topic \"orders\" already exists\n"}, r)

	r = fbctl(t, conn, "", "topic", "remove", "orders", "-o", "json").ok(t)
	assert.JSONEq(t, `{"topic":"orders","removed":true}`, r.stdout)
	assert.Equal(t, []topicJSON{{Name: "default"}}, listJSON())

	r = fbctl(t, conn, "", "topic", "remove", "orders")
	assert.Equal(t, result{code: 1, stderr: "fbctl: topic \"orders\" not found\n"}, r)
	r = fbctl(t, conn, "", "topic", "update", "orders", "-retention", "1h")
	assert.Equal(t, result{code: 1, stderr: "fbctl: topic \"orders\" not found\n"}, r)

	// Bad input.
	r = fbctl(t, conn, "", "topic", "create", "bad/name")
	assert.Equal(t, 1, r.code)
	assert.True(t, strings.HasPrefix(r.stderr, "fbctl: invalid argument: "), r.stderr)
	assert.Equal(t, 1, strings.Count(r.stderr, "\n"))
	r = fbctl(t, conn, "", "topic", "update", "default")
	assert.Equal(t, 2, r.code, r.stderr)
	r = fbctl(t, conn, "", "topic", "create", "x", "-retention", "1.5s")
	assert.Equal(t, 2, r.code, r.stderr)
	r = fbctl(t, conn, "", "topic", "create")
	assert.Equal(t, 2, r.code, r.stderr)
	r = fbctl(t, conn, "", "topic", "frob")
	assert.Equal(t, 2, r.code, r.stderr)
}

func TestGetFollow(t *testing.T) {
	n := servertest.StartNode(t)
	conn := nodeConn(n)
	fbctl(t, conn, "one\n", "send").ok(t)

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var out, errb syncbuf.Buffer
	env := func(string) string { return conn }
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"get", "-follow", "-format", "json"}, strings.NewReader(""), &out, &errb, env)
	}()
	waitFor := func(want string) {
		t.Helper()
		require.Eventually(t, func() bool { return out.String() == want }, 10*time.Second, 5*time.Millisecond,
			"want %q", want)
	}
	waitFor(`{"id":1,"message":"one"}` + "\n")
	fbctl(t, conn, "two\nthree\n", "send").ok(t)
	waitFor(`{"id":1,"message":"one"}` + "\n" + `{"id":2,"message":"two"}` + "\n" + `{"id":3,"message":"three"}` + "\n")
	fbctl(t, conn, "four\n", "send").ok(t)
	waitFor(`{"id":1,"message":"one"}` + "\n" + `{"id":2,"message":"two"}` + "\n" + `{"id":3,"message":"three"}` + "\n" + `{"id":4,"message":"four"}` + "\n")

	cancel()
	select {
	case code := <-done:
		assert.Equal(t, 0, code)
		assert.Empty(t, errb.String())
	case <-time.After(10 * time.Second):
		t.Fatal("get -follow did not end on cancel")
	}

	// -follow with -count ends by itself.
	r := fbctl(t, conn, "", "get", "-follow", "-from", "2", "-count", "2").ok(t)
	assert.Equal(t, "two\nthree\n", r.stdout)
}

// TestGetNotesRetention: get says on standard error which messages
// retention deleted from -from on, and nothing when it deleted none.
func TestGetNotesRetention(t *testing.T) {
	n := servertest.StartNode(t, servertest.WithSegmentBytes(4096),
		servertest.WithConfig(func(c *server.Config) { c.RetentionInterval = 20 * time.Millisecond }))
	conn := nodeConn(n)
	fbctl(t, conn, "", "topic", "create", "logs", "-segment-bytes", "4096", "-retention-bytes", "8KiB").ok(t)
	// 24 sends of 4 messages of 300 bytes: about 29 KiB, 8 segments.
	line := strings.Repeat("x", 300) + "\n"
	for range 24 {
		fbctl(t, conn, strings.Repeat(line, 4), "send", "-topic", "logs").ok(t)
	}
	const last = 96
	// Wait until retention has cut and then stays put for 10 rounds.
	tp, err := n.Registry().Get("logs")
	require.NoError(t, err)
	var first int64
	stable := 0
	require.Eventually(t, func() bool {
		f := int64(tp.Group.Log().FirstID())
		if f > 2 && f == first {
			stable++
		} else {
			first, stable = f, 0
		}
		return stable >= 10
	}, 20*time.Second, 20*time.Millisecond, "retention did not cut the topic, or kept cutting")

	r := fbctl(t, conn, "", "get", "-topic", "logs").ok(t)
	assert.Equal(t, fmt.Sprintf("fbctl: messages 1-%d are no longer retained; reading from %d\n", first-1, first), r.stderr)
	assert.Equal(t, strings.Repeat(line, int(last-first+1)), r.stdout)

	r = fbctl(t, conn, "", "get", "-topic", "logs", "-from", fmt.Sprint(first-1), "-count", "1", "-format", "json").ok(t)
	assert.Equal(t, fmt.Sprintf("fbctl: message %d is no longer retained; reading from %d\n", first-1, first), r.stderr)
	assert.Equal(t, fmt.Sprintf(`{"id":%d,"message":%q}`+"\n", first, strings.TrimSuffix(line, "\n")), r.stdout)

	// Nothing skipped: no note.
	r = fbctl(t, conn, "", "get", "-topic", "logs", "-from", fmt.Sprint(first), "-count", "1").ok(t)
	assert.Empty(t, r.stderr)
	assert.Equal(t, line, r.stdout)
}

func TestClusterStatusAndNodeRemove(t *testing.T) {
	c := servertest.NewCluster(t, 3)
	c.WaitTopic("default")
	addrs := c.Addrs()
	conn := "test#default@" + strings.Join(addrs, ",")
	fbctl(t, conn, "a\nb\nc\n", "send").ok(t)

	fbctl(t, conn, "", "cluster", "status", "-check").ok(t) // all up, every topic led
	r := fbctl(t, conn, "", "cluster", "status", "-o", "json").ok(t)
	var st clusterStatusJSON
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &st), r.stdout)
	assert.Equal(t, "test", st.ClusterID)
	require.Len(t, st.Nodes, 3)
	for i, nd := range st.Nodes {
		assert.Equal(t, addrs[i], nd.Address)
		assert.True(t, nd.Up, "node %s: %s", nd.Name, nd.Error)
		require.NotNil(t, nd.LatencyMS)
	}
	require.Len(t, st.Topics, 1)
	top := st.Topics[0]
	assert.Equal(t, "default", top.Name)
	assert.Contains(t, []string{"n1", "n2", "n3"}, top.Leader)
	require.Len(t, top.Replicas, 3)
	for _, rep := range top.Replicas {
		assert.Empty(t, rep.Error)
		require.NotNil(t, rep.CommitID)
		require.NotNil(t, rep.Lag)
		assert.GreaterOrEqual(t, *rep.Lag, int64(0))
		if rep.Node == top.Leader {
			assert.EqualValues(t, 3, *rep.CommitID)
			assert.EqualValues(t, 0, *rep.Lag)
		}
	}

	for _, nd := range st.Nodes {
		assert.Equal(t, nd.Name == top.Leader, nd.Leads == 1, "%s leads %d topics", nd.Name, nd.Leads)
	}

	r = fbctl(t, conn, "", "cluster", "status").ok(t)
	assert.Contains(t, r.stdout, "cluster test: 3 of 3 nodes up")
	assert.Regexp(t, `(?m)^default\s+`+top.Leader+`\s+n1\s+1\s+\d+\s+\d+\s+\d+$`, r.stdout)
	assert.Regexp(t, `(?m)^`+top.Leader+`\s+\S+\s+up\s+\S+ms\s+voter\s+1$`, r.stdout, "LEADS")

	// Remove a node that does not lead the topic (see the report: a
	// removed topic leader keeps leading), then talk to the other two only.
	victim, keep := 2, []int{0, 1}
	if top.Leader == "n3" {
		victim, keep = 1, []int{0, 2}
	}
	victimName := st.Nodes[victim].Name
	r = fbctl(t, conn, "", "node", "remove", victimName).ok(t)
	assert.Equal(t, "removed node "+victimName+"\n", r.stdout)
	conn2 := "test#default@" + addrs[keep[0]] + "," + addrs[keep[1]]
	require.Eventually(t, func() bool {
		r := fbctl(t, conn2, "", "cluster", "status", "-o", "json")
		var st2 clusterStatusJSON
		if r.code != 0 || json.Unmarshal([]byte(r.stdout), &st2) != nil || len(st2.Nodes) != 2 {
			return false
		}
		return st2.Nodes[0].Up && st2.Nodes[1].Up &&
			st2.Nodes[0].Name == st.Nodes[keep[0]].Name && st2.Nodes[1].Name == st.Nodes[keep[1]].Name
	}, 20*time.Second, 20*time.Millisecond)

	r = fbctl(t, conn2, "", "node", "remove", victimName)
	assert.Equal(t, result{code: 1, stderr: "fbctl: node \"" + victimName + "\" is not a member of the cluster\n"}, r)
	// The cluster still takes messages.
	fbctl(t, conn2, "d\n", "send").ok(t)
}

func TestNodeAddShowsDownNode(t *testing.T) {
	n := servertest.StartNode(t)
	conn := nodeConn(n)
	dead := closedAddr(t)
	r := fbctl(t, conn, "", "node", "add", "n9", dead, "-o", "json").ok(t)
	var added struct {
		Node  nodeJSON   `json:"node"`
		Nodes []nodeJSON `json:"nodes"`
	}
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &added))
	assert.Equal(t, "n9", added.Node.Name)
	assert.Equal(t, dead, added.Node.Address)
	assert.NotZero(t, added.Node.ID)
	assert.Len(t, added.Nodes, 2)

	r = fbctl(t, conn, "", "cluster", "status", "-node-timeout", "300ms").ok(t)
	assert.Contains(t, r.stdout, "cluster test: 1 of 2 nodes up")
	// -check: the same report, and exit status 3 for a member down.
	checked := fbctl(t, conn, "", "cluster", "status", "-node-timeout", "300ms", "-check")
	assert.Equal(t, exitUnhealthy, checked.code, "stderr: %s", checked.stderr)
	assert.Contains(t, checked.stdout, "cluster test: 1 of 2 nodes up")
	assert.Equal(t, "fbctl: the cluster is not healthy\n", checked.stderr)
	assert.Regexp(t, `(?m)^n9\s+`+dead+`\s+down\s+-\s+learner\s+0\s+\S`, r.stdout) // never started: not caught up
	assert.Regexp(t, `(?m)^n1\s+\S+\s+up\s+\S+ms\s+voter\s+1\s*$`, r.stdout)
	assert.Regexp(t, `(?m)^default\s+n1\s+n9\s+-\s+-\s+-\s+-\s+node down$`, r.stdout)

	r = fbctl(t, conn, "", "node", "add", "n9", closedAddr(t))
	assert.Equal(t, result{code: 1, stderr: "fbctl: node \"n9\" already exists with another address\n"}, r)

	fbctl(t, conn, "", "node", "remove", "n9").ok(t)
}

// TestStatusShowsAnotherNodeAtAMembersAddress: a member whose address
// another node answers at (here a node of another cluster with the same
// ID) is down, not up: status compares the answering node's name.
func TestStatusShowsAnotherNodeAtAMembersAddress(t *testing.T) {
	n := servertest.StartNode(t)
	other := servertest.StartNode(t)
	conn := nodeConn(n)
	fbctl(t, conn, "", "node", "add", "n9", other.Addr()).ok(t)
	r := fbctl(t, conn, "", "cluster", "status", "-node-timeout", "2s").ok(t)
	assert.Contains(t, r.stdout, "cluster test: 1 of 2 nodes up")
	assert.Contains(t, r.stdout, fmt.Sprintf("node %q answers at this address", other.Cfg.NodeName))
	fbctl(t, conn, "", "node", "remove", "n9").ok(t)
}

func TestErrors(t *testing.T) {
	n := servertest.StartNode(t)
	conn := nodeConn(n)

	// Unknown topic: one line, status 1.
	r := fbctl(t, conn, "", "get", "-topic", "nope")
	assert.Equal(t, result{code: 1, stderr: "fbctl: topic \"nope\" not found\n"}, r)
	r = fbctl(t, conn, "x\n", "send", "-topic", "nope")
	assert.Equal(t, result{code: 1, stderr: "sent 0 messages; 1 failed, the first at message 1 of the input\nfbctl: topic \"nope\" not found\n"}, r)

	// No connection string: usage error.
	r = fbctl(t, "", "", "get")
	assert.Equal(t, 2, r.code)
	assert.Equal(t, "fbctl: no connection string: use -forestbus or set FORESTBUS (cluster#topic@host:port,...)\n", r.stderr)
	r = fbctl(t, "nonsense", "", "topic", "list")
	assert.Equal(t, 2, r.code)
	// -forestbus wins over the environment.
	r = fbctl(t, "nonsense", "", "-forestbus", conn, "topic", "list").ok(t)
	assert.Contains(t, r.stdout, "default")

	// Wrong cluster ID.
	wrong := "other#default@" + n.Addr()
	for _, args := range [][]string{{"get"}, {"topic", "list"}, {"cluster", "status"}, {"node", "remove", "n1"}} {
		r = fbctl(t, wrong, "", args...)
		assert.Equal(t, 1, r.code, args)
		assert.Equal(t, "fbctl: cluster ID mismatch: this node belongs to cluster \"test\", the request names \"other\" (node "+
			n.Addr()+"); check the connection string\n", r.stderr, args)
	}

	// No node answers.
	r = fbctl(t, "test#default@"+closedAddr(t), "", "topic", "list", "-timeout", "300ms")
	assert.Equal(t, 1, r.code)
	assert.True(t, strings.HasPrefix(r.stderr, "fbctl: no node of the cluster answered in time"), r.stderr)
	assert.Equal(t, 1, strings.Count(r.stderr, "\n"), r.stderr)

	// Usage errors.
	for _, args := range [][]string{
		{}, {"frob"}, {"get", "-bogus"}, {"get", "extra"}, {"get", "-format", "xml"},
		{"topic", "list", "-o", "yaml"}, {"node", "add", "n5"}, {"cluster"}, {"send", "-retries", "-5"},
	} {
		r = fbctl(t, conn, "", args...)
		assert.Equal(t, 2, r.code, "%v: %s", args, r.stderr)
		assert.True(t, strings.HasPrefix(r.stderr, "fbctl: "), r.stderr)
		assert.Equal(t, 1, strings.Count(r.stderr, "\n"), r.stderr)
	}
	r = fbctl(t, "test@"+n.Addr(), "", "get")
	assert.Equal(t, 2, r.code, "no topic anywhere")

	// Help.
	for _, args := range [][]string{{"help"}, {"-h"}, {"help", "send"}, {"get", "-h"}, {"topic", "-h"}, {"topic", "create", "-h"}, {"cluster", "status", "-h"}} {
		r = fbctl(t, "", "", args...)
		assert.Equal(t, 0, r.code, args)
		assert.Contains(t, r.stdout, "Usage", args)
		assert.Empty(t, r.stderr, args)
	}
}

func TestSendInterrupted(t *testing.T) {
	n := servertest.StartNode(t)
	conn := nodeConn(n)
	// Standard input that never ends: Ctrl-C must still end send.
	pr, pw := io.Pipe()
	defer pw.Close()
	ctx, cancel := context.WithCancel(t.Context())
	var errb syncbuf.Buffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"send"}, pr, io.Discard, &errb, func(string) string { return conn })
	}()
	_, err := pw.Write([]byte("one\ntwo\n"))
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		r := fbctl(t, conn, "", "get")
		return r.stdout == "one\ntwo\n"
	}, 10*time.Second, 5*time.Millisecond)
	cancel()
	select {
	case code := <-done:
		assert.Equal(t, exitInterrupted, code)
		assert.Equal(t, "sent 2 messages (first ID 1, last ID 2)\nfbctl: interrupted\n", errb.String())
	case <-time.After(10 * time.Second):
		t.Fatal("send did not end on cancel")
	}
}

func TestFlagValues(t *testing.T) {
	var b byteSize
	for in, want := range map[string]int64{"4096": 4096, "64KiB": 64 << 10, "64mib": 64 << 20, "1G": 1 << 30, "2MB": 2e6, "0": 0, "10B": 10} {
		require.NoError(t, b.Set(in), in)
		assert.EqualValues(t, want, b, in)
	}
	for _, in := range []string{"", "-1", "x", "1.5MiB", "99999999999TiB"} {
		assert.Error(t, b.Set(in), in)
	}
	var r retentionFlag
	for in, want := range map[string]time.Duration{"24h": 24 * time.Hour, "7d": 7 * 24 * time.Hour, "0": 0, "90m": 90 * time.Minute, "0.5d": 12 * time.Hour} {
		require.NoError(t, r.Set(in), in)
		assert.Equal(t, want, time.Duration(r), in)
	}
	for _, in := range []string{"x", "-1h", "1500ms", "d"} {
		assert.Error(t, r.Set(in), in)
	}
	assert.Equal(t, "default", formatRetention(0))
	assert.Equal(t, "1h0m30s", formatRetention(3630))
	assert.Equal(t, "unlimited", formatBytes(0, "unlimited"))
	assert.Equal(t, "4097", formatBytes(4097, ""))
}

// TestSendLargeLines: the batcher batches by count only; fbctl bounds the
// bytes in flight so that 24 messages of 900 KiB (21 MiB) never make one
// batch over the node's 16 MiB limit.
func TestSendLargeLines(t *testing.T) {
	n := servertest.StartNode(t)
	conn := nodeConn(n)
	var in strings.Builder
	for i := range 24 {
		in.WriteString(strings.Repeat(string(rune('a'+i)), 900<<10))
		in.WriteByte('\n')
	}
	r := fbctl(t, conn, in.String(), "send").ok(t)
	assert.Equal(t, "sent 24 messages (first ID 1, last ID 24)\n", r.stderr)
	r = fbctl(t, conn, "", "get").ok(t)
	assert.Equal(t, in.String(), r.stdout)

	// A message over the node's 1 MiB limit fails with one clear line.
	r = fbctl(t, conn, strings.Repeat("x", 2<<20)+"\n", "send")
	assert.Equal(t, 1, r.code)
	assert.Equal(t, "sent 0 messages; 1 failed, the first at message 1 of the input\nfbctl: message too large: message 0 has 2097152 bytes, the limit is 1048576\n", r.stderr)

	// Between others, the summary says which message of the input failed
	// (the node's index is within the batch it got), and the messages
	// after it are stored too, as the help says.
	r = fbctl(t, conn, "a\nb\nc\n"+strings.Repeat("x", 2<<20)+"\nd\n", "send")
	assert.Equal(t, 1, r.code)
	assert.Contains(t, r.stderr, "sent 4 messages (first ID 25, last ID 28); 1 failed, the first at message 4 of the input\n")
	r = fbctl(t, conn, "", "get", "-from", "25").ok(t)
	assert.Equal(t, "a\nb\nc\nd\n", r.stdout)
}

// TestSendToNoNodeSaysWhy: a send that no node answers ends with the last
// node's error (it printed "no node of the cluster answered in time"
// alone, the batcher's bare sentinel dropping the cause).
func TestSendToNoNodeSaysWhy(t *testing.T) {
	r := fbctl(t, "test#default@"+closedAddr(t), "a\n", "send", "-retries", "0")
	assert.Equal(t, 1, r.code)
	assert.Contains(t, r.stderr, "sent 0 messages; 1 failed, the first at message 1 of the input\n")
	assert.Contains(t, r.stderr, "fbctl: no node of the cluster answered in time; last error: ")
	assert.Contains(t, r.stderr, "connection refused")
}

// TestStatusCheckCountsFencedCopies: -check fails when a node's copy of a
// topic is fenced: every node up and the topic led elsewhere passed, and a
// node that had lost its log showed as healthy to cron jobs (review). A
// passing error (an election, a topic not yet applied) does not fail it.
func TestStatusCheckCountsFencedCopies(t *testing.T) {
	ok := clusterStatusJSON{
		Nodes:  []nodeStatusJSON{{Name: "n1", Up: true}, {Name: "n2", Up: true}},
		Topics: []topicStatusJSON{{Name: "t", Leader: "n1", Replicas: []replicaStatusJSON{{Node: "n1"}, {Node: "n2"}}}},
	}
	assert.True(t, ok.healthy())
	ok.Topics[0].Replicas[1].Error = "topic not on this node"
	assert.True(t, ok.healthy(), "passing")
	ok.Topics[0].Replicas[1].Error, ok.Topics[0].Replicas[1].Failed = "STORAGE_FAILED: storage failed, group fenced", true
	assert.False(t, ok.healthy())
}

// TestRefusedRemovalSaysRefused: a removal the cluster's state refuses
// (here of the last voter: FAILED_PRECONDITION with reason
// INVALID_ARGUMENT) reads "refused", not "invalid argument" (the request
// is valid; review).
func TestRefusedRemovalSaysRefused(t *testing.T) {
	n := servertest.StartNode(t)
	r := fbctl(t, nodeConn(n), "", "node", "remove", n.Cfg.NodeName)
	assert.Equal(t, 1, r.code)
	assert.True(t, strings.HasPrefix(r.stderr, "fbctl: refused: "), r.stderr)
}

// TestStatusWithoutQuorum: with the majority down, status printed nothing
// and exited 1 after its whole -timeout ("no node of the cluster answered
// in time", though one had: ListTopics needs the metadata quorum; review).
// It prints the nodes' table, says the topics are unknown, and -check
// exits 3.
func TestStatusWithoutQuorum(t *testing.T) {
	c := servertest.NewCluster(t, 3)
	c.WaitTopic("default")
	conn := "test#default@" + strings.Join(c.Addrs(), ",")
	c.Nodes[1].Stop()
	c.Nodes[2].Stop()
	r := fbctl(t, conn, "", "cluster", "status", "-check", "-node-timeout", "500ms")
	assert.Equal(t, exitUnhealthy, r.code, "stderr: %s", r.stderr)
	assert.Contains(t, r.stdout, "cluster test: 1 of 3 nodes up")
	assert.Contains(t, r.stdout, "topics unknown: ")
	r = fbctl(t, conn, "", "cluster", "status", "-o", "json", "-node-timeout", "500ms").ok(t)
	var st clusterStatusJSON
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &st), r.stdout)
	assert.NotEmpty(t, st.TopicsError)
	assert.Len(t, st.Nodes, 3)
}

// TestStatusPastAHungNode: a node of the connection string that takes
// connections but never answers (a paused process) held status for the
// failover client's connect timeout, 5 s, before the next node was asked:
// with -timeout 3s status failed (review). Every node is asked at once.
func TestStatusPastAHungNode(t *testing.T) {
	hung, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { hung.Close() }) // accepted by the kernel, never answered
	n := servertest.StartNode(t)
	conn := "test#default@" + hung.Addr().String() + "," + n.Addr()
	r := fbctl(t, conn, "", "cluster", "status", "-check", "-timeout", "3s").ok(t)
	assert.Contains(t, r.stdout, "cluster test: 1 of 1 nodes up")
}

// TestNodeCommandsPastAHungNode: node add and node remove ask the nodes
// one by one, and a first node that takes connections but never answers
// held the call for all of -timeout: the live node after it was never
// asked (review). Its connect now fails after a node's timeout.
func TestNodeCommandsPastAHungNode(t *testing.T) {
	hung, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { hung.Close() }) // accepted by the kernel, never answered
	n := servertest.StartNode(t)
	conn := "test#default@" + hung.Addr().String() + "," + n.Addr()
	r := fbctl(t, conn, "", "node", "add", "n9", closedAddr(t), "-timeout", "5s").ok(t)
	assert.True(t, strings.HasPrefix(r.stdout, "added node n9"), r.stdout)
	r = fbctl(t, conn, "", "node", "remove", "n9", "-timeout", "5s").ok(t)
	assert.Contains(t, r.stdout, "n9")
}

// TestNodeTimeoutMustBePositive: -node-timeout 0 gave every node no time:
// status reported a healthy cluster down (-check exited 3, unhealthy).
func TestNodeTimeoutMustBePositive(t *testing.T) {
	n := servertest.StartNode(t)
	for _, d := range []string{"0s", "-1s"} {
		r := fbctl(t, nodeConn(n), "", "cluster", "status", "-check", "-node-timeout", d)
		assert.Equal(t, exitUsage, r.code, "-node-timeout %s: stdout %s stderr %s", d, r.stdout, r.stderr)
	}
}

// TestTLS: against nodes that serve TLS and require client certificates,
// fbctl with -tls-ca, -tls-cert and -tls-key sends, reads, and reports
// the cluster healthy (its direct probes and admin calls go over TLS
// too); without them, or with half a certificate, it fails.
func TestTLS(t *testing.T) {
	ca := tlstest.NewCA(t)
	c := servertest.NewCluster(t, 3, servertest.WithTLS(ca, ca.Issue(t, "node"), true))
	c.WaitTopic("default")
	conn := "test#default@" + strings.Join(c.Addrs(), ",")
	caFile, certFile, keyFile := ca.Write(t, t.TempDir(), "client", ca.Issue(t, "client"))
	tlsFlags := []string{"-tls-ca", caFile, "-tls-cert", certFile, "-tls-key", keyFile}

	fbctl(t, conn, "a\nb\n", append([]string{"send"}, tlsFlags...)...).ok(t)
	require.Eventually(t, func() bool { // a follower's commit point may trail
		return fbctl(t, conn, "", append([]string{"get", "-count", "2"}, tlsFlags...)...).stdout == "a\nb\n"
	}, 10*time.Second, 10*time.Millisecond)
	fbctl(t, conn, "", append(tlsFlags, "topic", "create", "tls-topic")...).ok(t) // global flags too
	fbctl(t, conn, "", append([]string{"cluster", "status", "-check"}, tlsFlags...)...).ok(t)

	// An admin call fbctl makes on its own connections (not a Client's):
	// the node's answer, not a handshake failure.
	r := fbctl(t, conn, "", append([]string{"node", "remove", "ghost", "-timeout", "5s"}, tlsFlags...)...)
	assert.Equal(t, exitError, r.code)
	assert.Contains(t, r.stderr, "ghost")
	assert.NotContains(t, r.stderr, "TLS")

	r = fbctl(t, conn, "", "topic", "list", "-timeout", "2s")
	assert.NotZero(t, r.code, "plaintext: %s", r.stdout)
	assert.Contains(t, r.stderr, "does the node serve TLS? give -tls-ca")
	r = fbctl(t, conn, "", "cluster", "status", "-check", "-timeout", "3s", "-node-timeout", "500ms")
	assert.NotZero(t, r.code, "plaintext: %s", r.stdout)
	r = fbctl(t, conn, "", "topic", "list", "-tls-ca", caFile, "-tls-cert", certFile)
	assert.Equal(t, exitUsage, r.code)
	assert.Contains(t, r.stderr, "-tls-key")
	// -tls: TLS against the system's roots, which do not know the test
	// authority.
	r = fbctl(t, conn, "", "topic", "list", "-tls", "-timeout", "2s")
	assert.NotZero(t, r.code, "%s", r.stdout)
	assert.Contains(t, r.stderr, "unknown authority")
	r = fbctl(t, conn, "", "-tls", "topic", "list", "-timeout", "2s") // global too
	assert.Contains(t, r.stderr, "unknown authority")
}
