//go:build linux

package replica

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.etcd.io/raft/v3"

	"github.com/forestbus/forestbus/internal/powerloss"
	"github.com/forestbus/forestbus/server/commitlog"
)

// plNode is a one-node cluster on root: an engine, its journal, and
// single-voter groups g0..g(n-1) whose logs use the journal.
type plNode struct {
	e      *Engine
	j      *commitlog.Journal
	groups []*Group
}

func openPLNode(t *testing.T, root string, n int) *plNode {
	t.Helper()
	j, err := commitlog.OpenJournal(filepath.Join(root, "journal"), root, commitlog.JournalOptions{Bytes: 64 << 10})
	require.NoError(t, err)
	e, err := NewEngine(Config{NodeID: 1, TickInterval: 10 * time.Millisecond, Journal: j, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	require.NoError(t, err)
	e.Start()
	nd := &plNode{e: e, j: j}
	t.Cleanup(func() {
		e.Stop()
		require.NoError(t, j.Close())
	})
	for i := range n {
		l, err := commitlog.Open(filepath.Join(root, fmt.Sprintf("g%d", i)), commitlog.Options{Journal: j, SegmentBytes: 16 << 10})
		require.NoError(t, err)
		g, err := e.AddGroup(GroupConfig{Name: fmt.Sprintf("g%d", i), Log: l, Peers: []raft.Peer{{ID: 1}}})
		require.NoError(t, err)
		require.NoError(t, g.WaitLeader(ctx10(t)))
		nd.groups = append(nd.groups, g)
	}
	return nd
}

type plAck struct {
	group int
	first uint64
	msgs  [][]byte
}

// TestPowerLossKeepsAcknowledgedMessages: producers send batches with
// wait-for-commit to the topics of one node (so that its syncs go through
// the journal, with write-behind, commit points every few ticks and the
// early apply); at three moments, each right as a batch is acknowledged,
// the disk is frozen (powerloss.Disk.Snapshot) and a new node recovers a
// tree that power loss could leave. Every batch acknowledged before the
// freeze must be there, at the IDs it was acknowledged with.
func TestPowerLossKeepsAcknowledgedMessages(t *testing.T) {
	const topics, perTopic = 4, 2
	root := t.TempDir()
	d := powerloss.Watch(t, root)
	nd := openPLNode(t, root, topics)

	// The third ack after each threshold freezes the disk (the instant it
	// is acknowledged: a sync still running then is not on it).
	thresholds := []int{1500, 3000, 4500}
	var (
		mu     sync.Mutex
		acks   []plAck
		images []*powerloss.Image
		sets   [][]plAck // the acks each image must hold
	)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for p := range topics * perTopic {
		wg.Go(func() {
			gi := p % topics
			for b := 0; b < 100000 && ctx.Err() == nil; b++ {
				msgs := make([][]byte, 1+b%8)
				for k := range msgs {
					msgs[k] = fmt.Appendf(nil, "g%d-p%d-b%d-m%d", gi, p, b, k)
				}
				r, err := nd.groups[gi].Propose(ctx, msgs, true)
				if err != nil {
					continue // only the test's cancel fails a proposal here
				}
				mu.Lock()
				acks = append(acks, plAck{group: gi, first: r.FirstID, msgs: msgs})
				if k := len(images); k < len(thresholds) && len(acks) >= thresholds[k] {
					images = append(images, d.Snapshot())
					sets = append(sets, slices.Clone(acks))
				}
				mu.Unlock()
			}
		})
	}
	defer func() {
		cancel()
		wg.Wait()
	}()

	for k := range thresholds {
		require.Eventually(t, func() bool {
			mu.Lock()
			defer mu.Unlock()
			return len(images) > k
		}, 30*time.Second, time.Millisecond, "acknowledged batches")
		mu.Lock()
		im, acked := images[k], sets[k]
		mu.Unlock()
		dst := t.TempDir()
		im.Write(t, dst, nil) // flushed bytes only: the node runs on after the snapshot
		checkRecovered(t, dst, topics, acked)
	}
}

// checkRecovered starts a node on the tree dst and checks that every batch
// in acked is readable at its IDs.
func checkRecovered(t *testing.T, dst string, topics int, acked []plAck) {
	t.Helper()
	nd := openPLNode(t, dst, topics)
	want := make([]map[uint64][]byte, topics) // group -> ID -> message
	top := make([]uint64, topics)
	for i := range want {
		want[i] = map[uint64][]byte{}
	}
	for _, a := range acked {
		for k, m := range a.msgs {
			want[a.group][a.first+uint64(k)] = m
		}
		top[a.group] = max(top[a.group], a.first+uint64(len(a.msgs))-1)
	}
	for i, g := range nd.groups {
		// A restarted node may know an older commit point; leading again,
		// it commits its whole log.
		require.Eventually(t, func() bool { return g.CommitID() >= top[i] }, 10*time.Second, time.Millisecond,
			"g%d commits up to the last acknowledged ID %d (has %d)", i, top[i], g.CommitID())
		for id := uint64(1); id <= top[i]; {
			r, err := g.Read(ctx10(t), id, 1000, 1<<20, 0)
			require.NoError(t, err)
			require.NotEmpty(t, r.Messages, "g%d: ID %d", i, id)
			for _, m := range r.Messages {
				if w, ok := want[i][id]; ok {
					require.Equal(t, string(w), string(m), "g%d: ID %d", i, id)
				}
				id++
			}
		}
	}
	nd.e.Stop()
}
