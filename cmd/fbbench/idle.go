package main

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// idleTopic names the i-th IDLE topic.
func idleTopic(i int) string { return fmt.Sprintf("bench-idle-%d", i) }

// idle is the idle-cost workload: -idle-topics topics, one message each,
// then the CPU the node processes (-pids) use over -idle-window while
// nothing happens.
func (b *bench) idle(ctx context.Context) (*Result, error) {
	cfg := b.cfg
	r := b.newResult("IDLE", map[string]any{
		"idle_topics": cfg.IdleTopics, "window_s": cfg.IdleWindow.Seconds(),
		"settle_s": cfg.IdleSettle.Seconds(), "pids": cfg.PIDs, "clock_ticks_per_s": clockTicks,
	})
	topics := make([]string, cfg.IdleTopics)
	for i := range topics {
		topics[i] = idleTopic(i)
	}
	t0 := time.Now()
	if err := b.createTopics(ctx, topics); err != nil {
		return r, err
	}

	// One committed message per topic, 16 sends at a time; the latencies
	// are those of a topic's first send.
	c := b.newClient()
	defer c.Close()
	msg := makeBatch(1, cfg.Size, 7)
	rec := newRecorder(len(topics))
	var (
		mu   sync.Mutex
		errs errCount
		wg   sync.WaitGroup
		sem  = make(chan struct{}, 16)
	)
	for _, topic := range topics {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			sctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
			defer cancel()
			s := time.Now()
			if _, err := c.SendMessagesContext(sctx, topic, msg, true); err != nil {
				errs.add(fmt.Errorf("send to %s: %w", topic, err))
				return
			}
			mu.Lock()
			rec.record(time.Since(s))
			mu.Unlock()
		})
	}
	wg.Wait()
	r.SetupS = time.Since(t0).Seconds()
	r.Messages = int64(len(rec.samples))
	r.Bytes = r.Messages * int64(cfg.Size)
	r.Calls = int64(len(topics))
	r.Latency = summarize(mergeSorted([]*recorder{rec}))
	if err := errs.fill(r); err != nil {
		return r, err
	}
	fmt.Fprintf(b.log, "fbbench: IDLE: %d topics created and written in %.2fs; settling %s, measuring %s\n",
		len(topics), r.SetupS, cfg.IdleSettle, cfg.IdleWindow)

	total := 0
	lctx, lcancel := context.WithTimeout(ctx, cfg.Timeout)
	if ts, err := c.ListTopics(lctx); err == nil {
		total = len(ts)
	} else {
		fmt.Fprintf(b.log, "fbbench: IDLE: list topics: %v\n", err)
	}
	lcancel()

	pause(ctx, cfg.IdleSettle)
	r.Start = time.Now()
	before, berrs := sampleProcs(cfg.PIDs)
	pause(ctx, cfg.IdleWindow)
	after, aerrs := sampleProcs(cfg.PIDs)
	r.DurationS = after[0].at.Sub(before[0].at).Seconds()
	r.Interrupted = ctx.Err() != nil
	id := &Idle{Topics: len(topics), TopicsTotal: total, WindowS: r.DurationS}
	id.Procs = procDelta(cfg.PIDs, before, after, joinErrs(berrs, aerrs))
	for _, p := range id.Procs {
		id.TotalCorePct += p.CorePct
	}
	r.Idle = id
	return r, nil
}
