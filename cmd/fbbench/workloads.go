package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/forestbus/forestbus/client"
)

// fatal reports whether err is one no retry would change: the run stops.
func fatal(err error) bool {
	return errors.Is(err, client.ErrTopicNotFound) ||
		errors.Is(err, client.ErrClusterIdMismatch) ||
		errors.Is(err, client.ErrInvalidArgument) ||
		errors.Is(err, client.ErrMessageTooLarge) ||
		errors.Is(err, client.ErrBatchTooLarge)
}

// makeBatch returns n messages of size bytes each, pseudo-random, carved
// from one buffer. The load loops send the same batch again and again.
func makeBatch(n, size int, seed uint64) [][]byte {
	buf := make([]byte, n*size)
	r := rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15))
	for i := range buf {
		buf[i] = byte(r.Uint32())
	}
	batch := make([][]byte, n)
	for i := range batch {
		batch[i] = buf[i*size : (i+1)*size : (i+1)*size]
	}
	return batch
}

// pause waits d or until ctx ends.
func pause(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// errCount counts errors and keeps the first.
type errCount struct {
	mu    sync.Mutex
	n     int64
	first error
	fatal error
}

func (e *errCount) add(err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.n++
	if e.first == nil {
		e.first = err
	}
	if fatal(err) && e.fatal == nil {
		e.fatal = err
	}
}

func (e *errCount) fill(r *Result) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	r.Errors = e.n
	if e.first != nil {
		r.FirstError = e.first.Error()
	}
	return e.fatal
}

// timedSend runs one producer per entry of topics, each sending batches of
// batchSize messages to its topic for cfg.Duration (or until the producers
// have sent cfg.MaxBatches batches), and fills r.
func (b *bench) timedSend(ctx context.Context, r *Result, topics []string, batchSize int) error {
	cfg := b.cfg
	n := len(topics)
	clients := make([]*client.Client, n)
	if cfg.SharedClient {
		c := b.newClient()
		for i := range clients {
			clients[i] = c
		}
		defer c.Close()
	} else {
		for i := range clients {
			clients[i] = b.newClient()
		}
		defer func() {
			for _, c := range clients {
				c.Close()
			}
		}()
	}

	// Everything the load loop touches is allocated here: batches, latency
	// slices, the per-second series.
	perProducer := cfg.perProducer(n)
	recs := make([]*recorder, n)
	batches := make([][][]byte, n)
	for i := range n {
		recs[i] = newRecorder(perProducer)
		batches[i] = makeBatch(batchSize, cfg.Size, uint64(i)+1)
	}
	var (
		errs     errCount
		msgs     atomic.Int64
		ready    sync.WaitGroup
		done     sync.WaitGroup
		startCh  = make(chan struct{})
		start    time.Time
		deadline time.Time
		ser      *series
	)

	// Warm up: one batch per producer opens the connections and waits for
	// topic leaders, outside the timing.
	warmCtx, warmCancel := context.WithTimeout(ctx, cfg.Timeout)
	defer warmCancel()
	// Calls in flight at the deadline get cfg.Timeout more to finish.
	runCtx, runCancel := context.WithCancel(ctx)
	defer runCancel()

	ready.Add(n)
	done.Add(n)
	for i := range n {
		go func() {
			defer done.Done()
			c, topic, batch, rec := clients[i], topics[i], batches[i], recs[i]
			_, err := c.SendMessagesContext(warmCtx, topic, batch, cfg.WaitForCommit)
			ready.Done()
			if err != nil {
				errs.add(fmt.Errorf("warm-up send to %s: %w", topic, err))
				return
			}
			<-startCh
			size := int64(len(batch))
			for !rec.full() && runCtx.Err() == nil {
				t0 := time.Now()
				if !t0.Before(deadline) {
					break
				}
				_, err := c.SendMessagesContext(runCtx, topic, batch, cfg.WaitForCommit)
				t1 := time.Now()
				if err != nil {
					if runCtx.Err() != nil {
						break
					}
					errs.add(err)
					if fatal(err) {
						runCancel()
						break
					}
					pause(runCtx, 10*time.Millisecond)
					continue
				}
				rec.record(t1.Sub(t0))
				msgs.Add(size)
				ser.add(t1, size)
			}
		}()
	}
	ready.Wait()
	warmCancel()
	start = time.Now()
	deadline = start.Add(cfg.Duration)
	ser = newSeries(start, cfg.Duration)
	stopTimer := time.AfterFunc(cfg.Duration+cfg.Timeout, runCancel)
	defer stopTimer.Stop()
	close(startCh)
	done.Wait()
	elapsed := time.Since(start)

	r.Start = start
	r.Messages = msgs.Load()
	r.Bytes = r.Messages * int64(cfg.Size)
	calls := int64(0)
	for _, rec := range recs {
		calls += int64(len(rec.samples))
	}
	r.Calls = calls
	r.Latency = summarize(mergeSorted(recs))
	r.PerSecond = ser.values()
	r.Interrupted = ctx.Err() != nil
	r.finish(elapsed)
	return errs.fill(r)
}

// w1 is the throughput workload.
func (b *bench) w1(ctx context.Context) (*Result, error) {
	cfg := b.cfg
	r := b.newResult("W1", map[string]any{
		"topic": cfg.Topic, "producers": cfg.Producers, "batch": cfg.Batch, "size": cfg.Size,
		"duration_s": cfg.Duration.Seconds(), "wait_for_commit": cfg.WaitForCommit,
		"shared_client": cfg.SharedClient, "private_connections": cfg.PrivateConns, "max_batches": cfg.MaxBatches,
	})
	topics := make([]string, cfg.Producers)
	for i := range topics {
		topics[i] = cfg.Topic
	}
	err := b.timedSend(ctx, r, topics, cfg.Batch)
	return r, err
}

// w2 is the latency workload: sequential one-message sends.
func (b *bench) w2(ctx context.Context) (*Result, error) {
	cfg := b.cfg
	r := b.newResult("W2", map[string]any{
		"topic": cfg.Topic, "warmup": cfg.Warmup, "sends": cfg.Sends, "size": cfg.Size,
		"wait_for_commit": true, "max_time_s": cfg.MaxTime.Seconds(), "churn_per_s": cfg.Churn,
	})
	c := b.newClient()
	defer c.Close()
	batch := makeBatch(1, cfg.Size, 42)
	rec := newRecorder(cfg.Sends)
	var errs errCount

	runCtx, cancel := context.WithTimeout(ctx, cfg.MaxTime+cfg.Timeout)
	defer cancel()
	for range cfg.Warmup {
		if _, err := c.SendMessagesContext(runCtx, cfg.Topic, batch, true); err != nil {
			if fatal(err) || runCtx.Err() != nil {
				errs.add(err)
				r.Interrupted = ctx.Err() != nil
				return r, errs.fill(r)
			}
		}
	}
	var churned <-chan *Churn
	if cfg.Churn > 0 {
		churnCtx, stopChurn := context.WithCancel(runCtx)
		churned = b.churn(churnCtx)
		defer func() {
			stopChurn()
			r.Churn = <-churned
		}()
	}
	start := time.Now()
	deadline := start.Add(cfg.MaxTime)
	for !rec.full() && runCtx.Err() == nil {
		t0 := time.Now()
		if !t0.Before(deadline) {
			break
		}
		_, err := c.SendMessagesContext(runCtx, cfg.Topic, batch, true)
		t1 := time.Now()
		if err != nil {
			if runCtx.Err() != nil {
				break
			}
			errs.add(err)
			if fatal(err) {
				break
			}
			pause(runCtx, 10*time.Millisecond)
			continue
		}
		rec.record(t1.Sub(t0))
	}
	elapsed := time.Since(start)
	r.Start = start
	r.Messages = int64(len(rec.samples))
	r.Bytes = r.Messages * int64(cfg.Size)
	r.Calls = r.Messages
	sorted := mergeSorted([]*recorder{rec})
	r.Latency = summarize(sorted)
	r.CDF = cdf(sorted)
	r.Interrupted = ctx.Err() != nil
	r.finish(elapsed)
	return r, errs.fill(r)
}

// churn creates and removes a topic cfg.Churn times a second, on a client
// of its own, until ctx ends; then it sends what it did.
func (b *bench) churn(ctx context.Context) <-chan *Churn {
	out := make(chan *Churn, 1)
	c := b.newClient()
	go func() {
		defer c.Close()
		ch := &Churn{}
		fail := func(err error) {
			if ctx.Err() != nil {
				return // the run ended
			}
			ch.Errors++
			if ch.FirstError == "" {
				ch.FirstError = err.Error()
			}
		}
		tick := time.NewTicker(time.Second / time.Duration(b.cfg.Churn))
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-ctx.Done():
				out <- ch
				return
			case <-tick.C:
			}
			name := fmt.Sprintf("bench-churn-%d-%d", os.Getpid(), i)
			cctx, cancel := context.WithTimeout(ctx, b.cfg.Timeout)
			err := c.CreateTopic(cctx, name, client.TopicSettings{})
			cancel()
			if err != nil && ctx.Err() == nil {
				fail(err)
				continue
			}
			// Removed also when the run ended meanwhile, even during the
			// create (which may have been applied): no topic is left.
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), b.cfg.Timeout)
			rerr := c.RemoveTopic(rctx, name)
			cancel()
			switch {
			case err != nil: // the run ended during the create
			case rerr != nil:
				fail(rerr)
			default:
				ch.Cycles++
			}
		}
	}()
	return out
}

// w3 is the read workload.
func (b *bench) w3(ctx context.Context) (*Result, error) {
	cfg := b.cfg
	r := b.newResult("W3", map[string]any{
		"topic": cfg.Topic, "read_messages": cfg.ReadMessages, "read_from": cfg.ReadFrom,
		"quantity": cfg.Quantity, "size": cfg.Size, "fill_producers": cfg.FillProducers,
		"fill_batch": cfg.fillBatch(), "max_time_s": cfg.MaxTime.Seconds(),
	})
	c, err := b.prepareRead(ctx, r)
	if err != nil {
		return r, err
	}
	defer c.Close()
	want := int64(cfg.ReadMessages)

	// Answers may hold fewer messages than asked; samples beyond the slice
	// are not recorded (latency.count then is below calls).
	rec := newRecorder(int(want/int64(cfg.Quantity))*4 + 1024)
	var errs errCount
	runCtx, cancel := context.WithTimeout(ctx, cfg.MaxTime+cfg.Timeout)
	defer cancel()
	var read, bytes, calls int64
	next := cfg.ReadFrom
	start := time.Now()
	deadline := start.Add(cfg.MaxTime)
	for read < want && runCtx.Err() == nil {
		t0 := time.Now()
		if !t0.Before(deadline) {
			break
		}
		msgs, nextID, err := c.GetMessagesContext(runCtx, cfg.Topic, next, cfg.Quantity, false)
		t1 := time.Now()
		calls++
		if err != nil {
			if runCtx.Err() != nil {
				break
			}
			errs.add(err)
			if fatal(err) {
				break
			}
			pause(runCtx, 10*time.Millisecond)
			continue
		}
		rec.record(t1.Sub(t0))
		if len(msgs) == 0 {
			if nextID > next { // below the first retained ID
				next = nextID
				continue
			}
			errs.add(fmt.Errorf("topic %s ended at ID %d after %d messages", cfg.Topic, next, read))
			break
		}
		read += int64(len(msgs))
		for _, m := range msgs {
			bytes += int64(len(m))
		}
		next = nextID
	}
	elapsed := time.Since(start)
	r.Start = start
	r.Messages = read
	r.Bytes = bytes
	r.Calls = calls
	r.Latency = summarize(mergeSorted([]*recorder{rec}))
	r.Interrupted = ctx.Err() != nil
	r.finish(elapsed)
	return r, errs.fill(r)
}

// fill sends at least need messages to the topic, committed, with several
// producers and big batches.
func (b *bench) fill(ctx context.Context, need int64) (*Fill, error) {
	cfg := b.cfg
	fb := int64(cfg.fillBatch())
	fmt.Fprintf(b.log, "fbbench: W3: filling %s with %d messages (%d producers, batches of %d)\n", cfg.Topic, need, cfg.FillProducers, fb)
	runCtx, cancel := context.WithTimeout(ctx, cfg.MaxTime)
	defer cancel()
	var (
		claimed, sent atomic.Int64
		errs          errCount
		wg            sync.WaitGroup
	)
	start := time.Now()
	for i := range cfg.FillProducers {
		wg.Go(func() {
			c := b.newClient()
			defer c.Close()
			batch := makeBatch(int(fb), cfg.Size, uint64(1000+i))
			for runCtx.Err() == nil {
				if claimed.Add(fb)-fb >= need {
					return
				}
				if _, err := c.SendMessagesContext(runCtx, cfg.Topic, batch, true); err != nil {
					claimed.Add(-fb)
					if runCtx.Err() != nil {
						return
					}
					errs.add(err)
					if fatal(err) {
						cancel()
						return
					}
					pause(runCtx, 10*time.Millisecond)
					continue
				}
				sent.Add(fb)
			}
		})
	}
	wg.Wait()
	el := time.Since(start)
	f := &Fill{Messages: sent.Load(), DurationS: el.Seconds()}
	if el > 0 {
		f.MsgsPerS = float64(f.Messages) / el.Seconds()
	}
	var r Result
	ferr := errs.fill(&r)
	f.Errors = r.Errors
	if ferr != nil {
		return f, ferr
	}
	if f.Messages < need {
		if err := ctx.Err(); err != nil {
			return f, err
		}
		return f, fmt.Errorf("sent %d of %d messages within -max-time %s (first error: %s)", f.Messages, need, cfg.MaxTime, r.FirstError)
	}
	fmt.Fprintf(b.log, "fbbench: W3: filled %d messages in %.1fs (%.0f msgs/s)\n", f.Messages, f.DurationS, f.MsgsPerS)
	return f, nil
}

// w4Topic names the i-th W4 topic.
func w4Topic(i int) string { return fmt.Sprintf("bench-w4-%d", i) }

// w4 is the many-topics workload.
func (b *bench) w4(ctx context.Context) (*Result, error) {
	cfg := b.cfg
	r := b.newResult("W4", map[string]any{
		"topics": cfg.Topics, "batch": cfg.W4Batch, "size": cfg.Size,
		"duration_s": cfg.Duration.Seconds(), "wait_for_commit": cfg.WaitForCommit,
		"shared_client": cfg.SharedClient, "private_connections": cfg.PrivateConns, "max_batches": cfg.MaxBatches,
	})
	topics := make([]string, cfg.Topics)
	for i := range topics {
		topics[i] = w4Topic(i)
	}
	t0 := time.Now()
	if err := b.createTopics(ctx, topics); err != nil {
		return nil, err
	}
	r.SetupS = time.Since(t0).Seconds()
	fmt.Fprintf(b.log, "fbbench: W4: %d topics ready in %.2fs\n", len(topics), r.SetupS)
	err := b.timedSend(ctx, r, topics, cfg.W4Batch)
	return r, err
}

// createTopics creates the topics that do not exist yet, several at a time:
// a node may take an election timeout to answer each.
func (b *bench) createTopics(ctx context.Context, topics []string) error {
	admin := b.newClient()
	defer admin.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
		sem   = make(chan struct{}, 16)
	)
	for _, name := range topics {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			cctx, ccancel := context.WithTimeout(ctx, b.cfg.Timeout)
			err := admin.CreateTopic(cctx, name, client.TopicSettings{})
			ccancel()
			if err != nil && !errors.Is(err, client.ErrTopicExists) {
				mu.Lock()
				if first == nil {
					first = fmt.Errorf("create topic %s: %w", name, err)
				}
				mu.Unlock()
				cancel()
			}
		})
	}
	wg.Wait()
	return first
}
