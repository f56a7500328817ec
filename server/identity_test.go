package server

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/forestbus/forestbus/server/commitlog"
	"github.com/forestbus/forestbus/server/topic"
	"github.com/forestbus/forestbus/server/transport"
)

// A first start of a one-node cluster that died after writing its identity
// and before the metadata log held its first entries: the next start finds
// the identity, so the node is not fresh, and the metadata log empty. It
// must bootstrap the log with the members the identity recorded, or no
// leader ever tells it who the members are and it never serves.
func TestRestartAfterFirstStartDiedBeforeMetadataLog(t *testing.T) {
	dir := t.TempDir()
	_, err := loadIdentity(dir, identity{ClusterID: "test", NodeName: "node1", RaftID: 1,
		Initial: []topic.Member{{ID: 1, Name: "node1", Address: "127.0.0.1:1"}}})
	require.NoError(t, err)

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := Start(ctx, Config{ListenAddr: "127.0.0.1:0", DataDir: dir, ClusterID: "test", NodeName: "node1", DefaultTopic: "default"})
	require.NoError(t, err)
	defer s.Stop()
	_, err = s.Registry().Get("default")
	require.NoError(t, err, "the default topic exists")
	require.Len(t, s.Registry().Members(), 1)
}

// TestJoinedNodeRestartsWithInitialCluster: a node that joined a running
// cluster restarts with the -initial-cluster its fellow members share,
// which does not name it (the flag only matters on a first start, as the
// README says); it was refused with "the initial cluster does not name
// this node".
func TestJoinedNodeRestartsWithInitialCluster(t *testing.T) {
	dir := t.TempDir()
	_, err := loadIdentity(dir, identity{ClusterID: "test", NodeName: "n4", RaftID: 4})
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := Start(ctx, Config{
		ListenAddr: "127.0.0.1:0", DataDir: dir, ClusterID: "test", NodeName: "n4",
		InitialCluster: "n1=127.0.0.1:1,n2=127.0.0.1:2,n3=127.0.0.1:3",
		Logger:         slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	require.NoError(t, err)
	require.NoError(t, s.Stop())

	_, err = Start(ctx, Config{
		ListenAddr: "127.0.0.1:0", DataDir: t.TempDir(), ClusterID: "test", NodeName: "n4",
		InitialCluster: "n1=127.0.0.1:1",
		Logger:         slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	require.ErrorContains(t, err, "does not name this node", "a first start still needs its place")
}

// TestRecvLimitHoldsPeerFrames: the receive limit never falls below a
// peer frame or the largest snapshot a peer may send (a topic's, the
// metadata group's at the topic cap), however small the batch limit.
func TestRecvLimitHoldsPeerFrames(t *testing.T) {
	for _, b := range []int{1, 64 << 10, 740 << 10, 16 << 20} {
		for _, topics := range []int{0, 10, 100_000, -1} {
			limit := recvMsgLimit(b, topics)
			require.GreaterOrEqual(t, limit, transport.MinRecvMsgSize, "batch limit %d", b)
			require.GreaterOrEqual(t, limit, 4*b+(1<<20), "batch limit %d", b)
			require.Greater(t, limit, commitlog.MaxSnapshotDataBytes()+(64<<10), "batch limit %d, topics %d", b, topics)
			capped := topics
			if capped == 0 {
				capped = DefaultMaxTopics
			}
			if capped > 0 {
				require.Greater(t, limit, capped*topic.MaxCheckpointTopicBytes+(64<<10), "batch limit %d, topics %d", b, topics)
			}
		}
	}
}

// TestInitialClusterRefusesSharedAddress: two members of -initial-cluster
// at one address are refused (the node started, in a group of two voters
// that could never reach a quorum).
func TestInitialClusterRefusesSharedAddress(t *testing.T) {
	_, err := parseCluster("a=127.0.0.1:3021,b=127.0.0.1:3021")
	require.ErrorContains(t, err, `gives "a" and "b" the same address 127.0.0.1:3021`)
	ms, err := parseCluster("a=127.0.0.1:3021,b=127.0.0.1:3022")
	require.NoError(t, err)
	require.Len(t, ms, 2)
}

// TestIdentityIncarnation: a new data directory gets a random incarnation,
// kept across starts; one written without it (an earlier version) gets
// one derived from its identity at its next start, kept from then on, and
// the same for a backup of it from before the upgrade (a random one made
// peers refuse a restored backup whose log was intact; review). It is
// stored as a hexadecimal string; a number is read too.
func TestIdentityIncarnation(t *testing.T) {
	dir := t.TempDir()
	want := identity{ClusterID: "c", NodeName: "n1", RaftID: 1}
	a, err := loadIdentity(dir, want)
	require.NoError(t, err)
	require.NotZero(t, a.Incarnation)
	b, err := loadIdentity(dir, want)
	require.NoError(t, err)
	assert.Equal(t, a.Incarnation, b.Incarnation)

	old := t.TempDir()
	require.NoError(t, writeFileAtomic(filepath.Join(old, identityFile), want))
	c, err := loadIdentity(old, want)
	require.NoError(t, err)
	require.NotZero(t, c.Incarnation)
	d, err := loadIdentity(old, want)
	require.NoError(t, err)
	assert.Equal(t, c.Incarnation, d.Incarnation)
	assert.NotEqual(t, a.Incarnation, c.Incarnation)

	backup := t.TempDir() // the same directory, as backed up before the upgrade
	require.NoError(t, writeFileAtomic(filepath.Join(backup, identityFile), want))
	e, err := loadIdentity(backup, want)
	require.NoError(t, err)
	assert.Equal(t, c.Incarnation, e.Incarnation, "a restored pre-upgrade backup")

	raw, err := os.ReadFile(filepath.Join(dir, identityFile))
	require.NoError(t, err)
	assert.Contains(t, string(raw), fmt.Sprintf(`"incarnation": "%x"`, uint64(a.Incarnation)))
	require.NoError(t, os.WriteFile(filepath.Join(dir, identityFile), []byte(`{"cluster_id":"c","node_name":"n1","raft_id":1,"incarnation":16749388693029225661}`), 0o644))
	f, err := loadIdentity(dir, want)
	require.NoError(t, err)
	assert.Equal(t, incarnation(16749388693029225661), f.Incarnation, "a number, as the first builds wrote it")
}
