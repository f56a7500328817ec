package main

import (
	"context"
	"log/slog"
	"net"
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
