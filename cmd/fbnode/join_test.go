package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/forestbus/forestbus/internal/syncbuf"
	"github.com/forestbus/forestbus/server/servertest"
)

// TestJoinAnOtherClusterEndsAtOnce: -join through a member of another
// cluster fails at its first answer (it was retried for a minute, in
// silence, as if the cluster were electing a leader).
func TestJoinAnOtherClusterEndsAtOnce(t *testing.T) {
	n := servertest.StartNode(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err := askToJoin(ctx, slog.New(slog.DiscardHandler), n.Addr(), "prod", "n2", "127.0.0.1:4002", insecure.NewCredentials())
	require.Error(t, err)
	assert.Equal(t, "CLUSTER_ID_MISMATCH", errorReason(err), "%v", err)
	assert.NoError(t, ctx.Err(), "it retried until the deadline")
}

// TestJoinSaysWhyItWaits: while the member cannot be reached, the join
// logs its retries and the error.
func TestJoinSaysWhyItWaits(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	dead := lis.Addr().String()
	require.NoError(t, lis.Close())
	var buf syncbuf.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, err = askToJoin(ctx, slog.New(slog.NewTextHandler(&buf, nil)), dead, "test", "n2", "127.0.0.1:4002", insecure.NewCredentials())
	require.Error(t, err)
	assert.Contains(t, buf.String(), "joining: the member did not add this node yet; retrying")
	assert.Contains(t, buf.String(), "connection refused")
}

// TestFailedJoinAddsNoMember: a start that fails on what the node checks
// (a -sync typo, sizes the server refuses, a -listen port in use) fails
// before -join asks the cluster to add the node: the cluster kept a
// member that never ran, refused the retry under the same name with
// another address, and called itself unhealthy until "node remove".
func TestFailedJoinAddsNoMember(t *testing.T) {
	n := servertest.StartNode(t)
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer busy.Close()
	for i, bad := range [][]string{
		{"-sync", "fsynk"},
		{"-max-message-bytes", "2000000", "-max-batch-bytes", "1000000"},
		{"-max-batch-bytes", "300000000"},
		{"-listen", busy.Addr().String()},
	} {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		free := lis.Addr().String()
		require.NoError(t, lis.Close())
		name := fmt.Sprintf("ghost%d", i)
		args := append([]string{"-join", n.Addr(), "-cluster", "test", "-name", name, "-listen", free,
			"-data", filepath.Join(t.TempDir(), "d"), "-log-level", "error"}, bad...)
		require.Error(t, run(args, io.Discard), "%v", bad)
		for _, m := range n.Registry().Members() {
			assert.NotEqual(t, name, m.Name, "%v: the start failed, but the cluster added the node", bad)
		}
	}
}
