package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/forestbus/forestbus/client"
)

// nodeView is what one node says about itself and the topic.
type nodeView struct {
	name, leader string
	commitID     int64
	err          error
}

// viewNode asks the node at addr, alone, for its name and the topic's
// leader and commit point.
func (b *bench) viewNode(ctx context.Context, addr string) nodeView {
	c := client.New(b.cfg.ClusterID, []string{addr}, b.cfg.clientOptions()...)
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, b.cfg.Timeout)
	defer cancel()
	var v nodeView
	cd, err := c.ClusterDetails(ctx)
	if err != nil {
		v.err = fmt.Errorf("cluster details from %s: %w", addr, err)
		return v
	}
	v.name = cd.NodeName
	td, err := c.TopicDetails(ctx, b.cfg.Topic)
	if err != nil {
		v.err = fmt.Errorf("topic details from %s: %w", addr, err)
		return v
	}
	v.leader, v.commitID = td.Leader, td.CommitID
	return v
}

// pickReadNode chooses the node W3 and W3S read from: -read-node, or the
// first node that knows the topic's leader and is not it. A cluster whose
// nodes all name themselves leader (one node) gives node 0. Nodes that do
// not know a leader yet are asked again for up to -timeout.
func (b *bench) pickReadNode(ctx context.Context) (*ReadNode, error) {
	nodes := b.cfg.Nodes
	if i := b.cfg.ReadNode; i >= 0 {
		v := b.viewNode(ctx, nodes[i])
		if v.err != nil {
			return nil, v.err
		}
		return &ReadNode{Index: i, Address: nodes[i], Name: v.name, Leader: v.leader, IsLeader: v.leader != "" && v.leader == v.name}, nil
	}
	deadline := time.Now().Add(b.cfg.Timeout)
	for {
		var errs error
		var leaderAt *ReadNode
		for i, addr := range nodes {
			v := b.viewNode(ctx, addr)
			if v.err != nil {
				errs = errors.Join(errs, v.err)
				continue
			}
			if v.leader == "" {
				continue
			}
			rn := &ReadNode{Index: i, Address: addr, Name: v.name, Leader: v.leader, Auto: true}
			if v.leader != v.name {
				return rn, nil
			}
			rn.IsLeader = true
			if leaderAt == nil {
				leaderAt = rn
			}
		}
		if leaderAt != nil && len(nodes) == 1 {
			return leaderAt, nil
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			if leaderAt != nil {
				fmt.Fprintf(b.log, "fbbench: no follower of %s answered; reading from its leader %s\n", b.cfg.Topic, leaderAt.Address)
				return leaderAt, nil
			}
			if errs == nil {
				errs = errors.New("no node knows the topic's leader")
			}
			return nil, fmt.Errorf("pick a read node: %w", errs)
		}
		pause(ctx, 100*time.Millisecond)
	}
}

// prepareRead picks the read node, fills the topic when that node holds
// too few committed messages from -read-from on, waits until it has them
// all, and returns a Client that talks to that node only.
func (b *bench) prepareRead(ctx context.Context, r *Result) (*client.Client, error) {
	cfg := b.cfg
	rn, err := b.pickReadNode(ctx)
	if err != nil {
		return nil, err
	}
	r.ReadNode = rn
	fmt.Fprintf(b.log, "fbbench: %s: reading from node %d %s (%s; leader %s)\n", r.Workload, rn.Index, rn.Address, rn.Name, rn.Leader)
	want := int64(cfg.ReadMessages)
	last := cfg.ReadFrom + want - 1
	v := b.viewNode(ctx, rn.Address)
	if v.err != nil {
		return nil, v.err
	}
	if have := v.commitID - cfg.ReadFrom + 1; have < want {
		f, err := b.fill(ctx, want-max(have, 0))
		r.Fill = f
		if err != nil {
			r.Interrupted = ctx.Err() != nil
			return nil, fmt.Errorf("fill: %w", err)
		}
	}
	// A follower learns the commit point with the leader's next message.
	deadline := time.Now().Add(cfg.Timeout)
	for v.commitID < last {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("node %s committed up to ID %d, not %d, after %s", rn.Address, v.commitID, last, cfg.Timeout)
		}
		pause(ctx, 50*time.Millisecond)
		if v = b.viewNode(ctx, rn.Address); v.err != nil {
			return nil, v.err
		}
	}
	return client.New(cfg.ClusterID, []string{rn.Address}, cfg.clientOptions()...), nil
}

// errEnough ends W3S's Subscribe once it has the messages it wants.
var errEnough = errors.New("fbbench: read enough messages")

// w3s is the read workload through Subscribe: one stream from the read
// node. Its latency samples are the time each -subscribe-batch worth of
// messages (1000 when 0; a response holds up to the node's 4096) took to
// reach fn: messages of one response arrive together, so a finer sample
// would mostly measure the loop calling fn.
//
// W3S subscribes WithBorrowedMessages (fn keeps nothing); W3SC does not:
// every response comes in a new buffer fn's messages could keep.
func (b *bench) w3s(ctx context.Context, name string) (*Result, error) {
	borrow := name == "W3S"
	cfg := b.cfg
	r := b.newResult(name, map[string]any{
		"topic": cfg.Topic, "read_messages": cfg.ReadMessages, "read_from": cfg.ReadFrom,
		"sample_every": cfg.subscribeEvery(), "subscribe_batch": cfg.SubscribeBatch, "borrowed": borrow, "size": cfg.Size,
		"max_time_s": cfg.MaxTime.Seconds(),
	})
	c, err := b.prepareRead(ctx, r)
	if err != nil {
		return r, err
	}
	defer c.Close()

	want := int64(cfg.ReadMessages)
	q := int64(cfg.subscribeEvery())
	rec := newRecorder(int(want/q) + 2)
	var opts []client.SubscribeOption
	if cfg.SubscribeBatch > 0 {
		opts = append(opts, client.WithSubscribeBatch(cfg.SubscribeBatch))
	}
	if borrow {
		opts = append(opts, client.WithBorrowedMessages())
	}
	runCtx, cancel := context.WithTimeout(ctx, cfg.MaxTime)
	defer cancel()
	var read, bytes int64
	start := time.Now()
	mark := start
	err = c.Subscribe(runCtx, cfg.Topic, cfg.ReadFrom, func(_ int64, msg []byte) error {
		read++
		bytes += int64(len(msg))
		if read%q == 0 || read == want {
			now := time.Now()
			rec.record(now.Sub(mark))
			mark = now
		}
		if read >= want {
			return errEnough
		}
		return nil
	}, opts...)
	elapsed := time.Since(start)
	var errs errCount
	switch {
	case errors.Is(err, errEnough):
	case ctx.Err() != nil:
	case runCtx.Err() != nil:
		errs.add(fmt.Errorf("read %d of %d messages within -max-time %s", read, want, cfg.MaxTime))
	case err != nil:
		errs.add(err)
	}
	r.Start = start
	r.Messages = read
	r.Bytes = bytes
	r.Calls = 1
	r.Latency = summarize(mergeSorted([]*recorder{rec}))
	r.Interrupted = ctx.Err() != nil
	r.finish(elapsed)
	ferr := errs.fill(r)
	if ferr == nil && err != nil && !errors.Is(err, errEnough) && !r.Interrupted {
		ferr = err
	}
	return r, ferr
}

// subscribeEvery is the number of messages per W3S latency sample.
func (c *config) subscribeEvery() int {
	if c.SubscribeBatch > 0 {
		return c.SubscribeBatch
	}
	return 1000
}
