package batcher

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/forestbus/forestbus/client"
)

var _ Sender = (*client.Client)(nil)

// fakeSender numbers messages from 1 and records every batch.
type fakeSender struct {
	mu      sync.Mutex
	next    int64
	batches [][]string
	errs    []error // returned, in turn, before any success
	always  error   // returned on every call when set
	gate    chan struct{}
	entered chan int // receives the batch size of each call, if set
	wrongN  bool     // answer with one ID too few
	// A node's limits, when set: a batch holding a message over maxMsg
	// bytes, or over maxBatch bytes in all, is refused whole.
	maxMsg, maxBatch int
}

func newFakeSender() *fakeSender { return &fakeSender{next: 1} }

func (f *fakeSender) SendMessagesContext(ctx context.Context, topic string, messages [][]byte, _ bool) ([]int64, error) {
	if topic != "topic" {
		return nil, fmt.Errorf("unexpected topic %q", topic)
	}
	batch := make([]string, len(messages))
	for i, m := range messages {
		batch[i] = string(m)
	}
	f.mu.Lock()
	f.batches = append(f.batches, batch)
	gate, entered := f.gate, f.entered
	f.mu.Unlock()
	if entered != nil {
		entered <- len(messages)
	}
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.always != nil {
		return nil, f.always
	}
	total := 0
	for i, m := range messages {
		if f.maxMsg > 0 && len(m) > f.maxMsg {
			return nil, fmt.Errorf("node: message %d has %d bytes: %w", i, len(m), client.ErrMessageTooLarge)
		}
		total += len(m)
	}
	if f.maxBatch > 0 && total > f.maxBatch {
		return nil, fmt.Errorf("node: the batch has %d bytes: %w", total, client.ErrBatchTooLarge)
	}
	if len(f.errs) > 0 {
		err := f.errs[0]
		f.errs = f.errs[1:]
		return nil, err
	}
	ids := make([]int64, len(messages))
	for i := range ids {
		ids[i] = f.next
		f.next++
	}
	if f.wrongN {
		ids = ids[1:]
	}
	return ids, nil
}

func (f *fakeSender) calls() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.batches)
}

func (f *fakeSender) batchSizes() []int {
	f.mu.Lock()
	defer f.mu.Unlock()
	var sizes []int
	for _, b := range f.batches {
		sizes = append(sizes, len(b))
	}
	return sizes
}

// fast makes retries and Close quick for tests.
func fast(b *Batcher) {
	b.backoffStep = time.Millisecond
	b.backoffLimit = 5 * time.Millisecond
}

// withCloseWait shortens the time Close lets queued messages drain. The
// wait that follows, for the cancelled send to return, keeps its 2 s:
// assertStopped checks right after Close that the goroutine ended, and a
// goroutine under -race on a loaded machine can take longer than a few
// milliseconds to return from a cancelled send (TestNoGoroutineLeak, with
// 1 ms for both waits, failed so).
func withCloseWait(d time.Duration) Option {
	return func(b *Batcher) { b.closeWait = d }
}

func noNodes() error {
	return fmt.Errorf("wrapped: %w", client.ErrNoNodesAvailable)
}

func TestSendMessageOrderAndIndexes(t *testing.T) {
	f := newFakeSender()
	b := New(f, "topic")
	defer b.Close()
	for i := range 10 {
		id, err := b.SendMessage(fmt.Appendf(nil, "m%d", i), true)
		require.NoError(t, err)
		assert.EqualValues(t, i+1, id)
	}
	assert.Equal(t, 10, f.calls(), "with nothing in flight each message goes out at once")
}

func TestAsyncSendMessageOrder(t *testing.T) {
	f := newFakeSender()
	b := New(f, "topic", WithBufferSize(50))
	defer b.Close()
	const n = 1000
	replies := make(chan *SendResult, 50)
	go func() {
		for i := range n {
			ref := i
			assert.NoError(t, b.AsyncSendMessage(fmt.Appendf(nil, "m%d", i), &ref, replies, true))
		}
	}()
	for i := range n {
		r := <-replies
		require.NoError(t, r.GetError())
		assert.Equal(t, i, *r.GetReference().(*int))
		assert.EqualValues(t, i+1, r.GetIndex())
		assert.Equal(t, fmt.Sprintf("m%d", i), string(r.GetMessage()))
	}
	for _, s := range f.batchSizes() {
		assert.LessOrEqual(t, s, 50)
	}
}

func TestConcurrentSendsAreBatched(t *testing.T) {
	f := newFakeSender()
	f.gate = make(chan struct{})
	f.entered = make(chan int, 10)
	b := New(f, "topic")
	defer b.Close()

	const n = 20
	var wg sync.WaitGroup
	ids := make([]int64, n)
	wg.Go(func() {
		id, err := b.SendMessage([]byte("first"), true)
		assert.NoError(t, err)
		ids[0] = id
	})
	require.Equal(t, 1, <-f.entered, "the first message goes out alone")
	for i := 1; i < n; i++ {
		wg.Go(func() {
			id, err := b.SendMessage([]byte("next"), true)
			assert.NoError(t, err)
			ids[i] = id
		})
	}
	require.Eventually(t, func() bool { return len(b.queue) == n-1 }, 5*time.Second, time.Millisecond)
	close(f.gate)
	assert.Equal(t, n-1, <-f.entered, "messages queued during a send go out together")
	wg.Wait()

	assert.Equal(t, []int{1, n - 1}, f.batchSizes())
	assert.EqualValues(t, 1, ids[0])
	assert.ElementsMatch(t, seq(1, n), ids)
}

func TestBatchesAreCappedAtBufferSize(t *testing.T) {
	f := newFakeSender()
	f.gate = make(chan struct{})
	f.entered = make(chan int, 10)
	b := New(f, "topic", WithBufferSize(3))
	defer b.Close()
	replies := make(chan *SendResult, 10)
	require.NoError(t, b.AsyncSendMessage([]byte("a"), nil, replies, false))
	<-f.entered
	for range 3 {
		require.NoError(t, b.AsyncSendMessage([]byte("b"), nil, replies, false))
	}
	t.Run("full buffer without blocking", func(t *testing.T) {
		err := b.AsyncSendMessage([]byte("c"), nil, replies, false)
		require.ErrorIs(t, err, ErrBufferFull)
		id, err := b.SendMessage([]byte("c"), false)
		require.ErrorIs(t, err, ErrBufferFull)
		assert.Zero(t, id)
	})
	blocked := make(chan error, 1)
	go func() { blocked <- b.AsyncSendMessage([]byte("d"), nil, replies, true) }()
	close(f.gate)
	require.NoError(t, <-blocked, "a blocking send waits for room")
	for i := range 5 {
		r := <-replies
		require.NoError(t, r.GetError())
		assert.EqualValues(t, i+1, r.GetIndex())
	}
	assert.Empty(t, replies, "the rejected messages produced no result")
	for _, s := range f.batchSizes() {
		assert.LessOrEqual(t, s, 3)
	}
}

// queueBehind holds the Batcher in a send of one message while msgs
// queue, then lets the sends go, and returns the results in order (the
// held message's first).
func queueBehind(t *testing.T, f *fakeSender, b *Batcher, msgs ...string) []*SendResult {
	t.Helper()
	f.gate = make(chan struct{})
	f.entered = make(chan int, 4*len(msgs)+4)
	replies := make(chan *SendResult, len(msgs)+1)
	require.NoError(t, b.AsyncSendMessage([]byte("a"), nil, replies, false))
	<-f.entered
	for _, m := range msgs {
		require.NoError(t, b.AsyncSendMessage([]byte(m), m, replies, false))
	}
	close(f.gate)
	out := make([]*SendResult, 0, len(msgs)+1)
	for range len(msgs) + 1 {
		out = append(out, <-replies)
	}
	return out
}

// TestBatchesAreCappedAtBytes: a batch stops short of WithMaxBatchBytes,
// each message counted with its framing as nodes count it (a 4-byte
// message, 6); the message that would cross it heads the next batch, and
// one larger than the cap goes alone.
func TestBatchesAreCappedAtBytes(t *testing.T) {
	f := newFakeSender()
	b := New(f, "topic", WithMaxBatchBytes(12))
	defer b.Close()
	rs := queueBehind(t, f, b, "1111", "2222", "3333", "4444", "large-55555", "6")
	for i, r := range rs {
		require.NoError(t, r.GetError())
		assert.EqualValues(t, i+1, r.GetIndex())
	}
	assert.Equal(t, [][]string{{"a"}, {"1111", "2222"}, {"3333", "4444"}, {"large-55555"}, {"6"}}, f.batches)
}

// TestOversizedMessageFailsAlone: a node refusing a batch for one message
// too large fails that message only; the others of its batch are stored,
// in order.
func TestOversizedMessageFailsAlone(t *testing.T) {
	f := newFakeSender()
	f.maxMsg = 5
	b := New(f, "topic")
	defer b.Close()
	rs := queueBehind(t, f, b, "m1", "m2", "m3", "too-large", "m4", "m5", "m6", "m7")
	next := int64(1)
	for _, r := range rs {
		if r.GetReference() == "too-large" {
			require.ErrorIs(t, r.GetError(), client.ErrMessageTooLarge)
			assert.Zero(t, r.GetIndex())
			continue
		}
		require.NoError(t, r.GetError(), "message %v", r.GetReference())
		assert.Equal(t, next, r.GetIndex(), "message %v", r.GetReference())
		next++
	}
	assert.EqualValues(t, 8, next-1, "every other message stored")
}

// TestBatchTooLargeIsSplit: a node whose batch limit is below the
// Batcher's gets the batch in halves small enough, in order.
func TestBatchTooLargeIsSplit(t *testing.T) {
	f := newFakeSender()
	f.maxBatch = 6
	b := New(f, "topic")
	defer b.Close()
	rs := queueBehind(t, f, b, "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8")
	for i, r := range rs {
		require.NoError(t, r.GetError())
		assert.EqualValues(t, i+1, r.GetIndex())
	}
}

// seqSender is a fakeSender that takes producer sequences, as a
// *client.Client does, and records the sequence of every call, whether it
// was reserved then, and the releases. Its first reservations fail with
// reserveErrs, one each.
type seqSender struct {
	*fakeSender
	reserveErrs []error
	next        uint64
	seqs        []uint64
	held        map[uint64]bool
	unheld      []uint64 // sends of a sequence not reserved at the time
	released    []uint64
}

func (s *seqSender) ReserveSequence(context.Context, string) (uint64, func(), error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.reserveErrs) > 0 {
		err := s.reserveErrs[0]
		s.reserveErrs = s.reserveErrs[1:]
		return 0, nil, err
	}
	s.next++
	seq := s.next
	if s.held == nil {
		s.held = map[uint64]bool{}
	}
	s.held[seq] = true
	return seq, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		delete(s.held, seq)
		s.released = append(s.released, seq)
	}, nil
}

func (s *seqSender) SendMessagesSequence(ctx context.Context, topic string, messages [][]byte, wait bool, seq uint64) ([]int64, error) {
	s.mu.Lock()
	s.seqs = append(s.seqs, seq)
	if !s.held[seq] {
		s.unheld = append(s.unheld, seq)
	}
	s.mu.Unlock()
	return s.SendMessagesContext(ctx, topic, messages, wait)
}

var _ sequencedSender = (*client.Client)(nil)

// TestReservationErrorIsRetried: a Client's ReserveSequence fails with
// ErrNoNodesAvailable when its other sends to the topic stay stuck through
// an outage, and WithRetries retries that error like a send's (it failed
// the message at once, retries or not). The batch goes out once, with the
// one sequence it reserved, released once; without retries the error is
// the caller's.
func TestReservationErrorIsRetried(t *testing.T) {
	f := &seqSender{fakeSender: newFakeSender(), reserveErrs: []error{noNodes(), noNodes(), noNodes()}}
	b := New(f, "topic", fast, WithRetries(UnlimitedRetries))
	id, err := b.SendMessage([]byte("m"), true)
	require.NoError(t, err)
	assert.EqualValues(t, 1, id)
	b.Close()
	f.mu.Lock()
	assert.Equal(t, []uint64{1}, f.seqs, "sends and their sequences")
	assert.Empty(t, f.unheld)
	assert.Equal(t, []uint64{1}, f.released)
	f.mu.Unlock()

	f = &seqSender{fakeSender: newFakeSender(), reserveErrs: []error{noNodes()}}
	b = New(f, "topic", fast)
	defer b.Close()
	_, err = b.SendMessage([]byte("m"), true)
	assert.Equal(t, client.ErrNoNodesAvailable, err, "the original's bare sentinel")
	assert.Empty(t, f.seqs)
}

// TestRetriesKeepTheBatchSequence: a retried batch carries the sequence of
// its first send, so the topic stores it once; every other batch, the
// halves of a split one included, takes its own.
func TestRetriesKeepTheBatchSequence(t *testing.T) {
	f := &seqSender{fakeSender: newFakeSender()}
	f.errs = []error{noNodes(), noNodes()}
	b := New(f, "topic", fast, WithRetries(3))
	defer b.Close()
	id, err := b.SendMessage([]byte("m"), true)
	require.NoError(t, err)
	assert.EqualValues(t, 1, id)
	id, err = b.SendMessage([]byte("n"), true)
	require.NoError(t, err)
	assert.EqualValues(t, 2, id)
	assert.Equal(t, []uint64{1, 1, 1, 2}, f.seqs, "three sends of the first batch, then the second")
	// The first batch's sequence stayed reserved through its retries and
	// the waits between them: a Client's other sends to the topic could
	// not run so far ahead that the topic forgot it.
	f.mu.Lock()
	assert.Empty(t, f.unheld, "sequences sent while not reserved")
	assert.Equal(t, []uint64{1, 2}, f.released, "each batch's sequence released once, after its last send")
	f.mu.Unlock()

	f.maxMsg = 5
	queueBehind(t, f.fakeSender, b, "m1", "m2", "too-large", "m3")
	bySeq := map[uint64]string{}
	f.mu.Lock()
	defer f.mu.Unlock()
	require.Len(t, f.seqs, len(f.batches))
	for i, seq := range f.seqs {
		content := strings.Join(f.batches[i], ",")
		if prev, ok := bySeq[seq]; ok {
			assert.Equal(t, prev, content, "sequence %d sent with two batches", seq)
		}
		bySeq[seq] = content
	}
}

func TestRetries(t *testing.T) {
	tests := []struct {
		name      string
		retries   int
		errs      []error
		wantErr   error
		wantCalls int
	}{
		{"no retries by default", 0, []error{noNodes()}, client.ErrNoNodesAvailable, 1},
		{"retries then success", 3, []error{noNodes(), noNodes()}, nil, 3},
		{"retries exhausted", 2, []error{noNodes(), noNodes(), noNodes(), noNodes()}, client.ErrNoNodesAvailable, 3},
		{"unlimited", UnlimitedRetries, []error{noNodes(), noNodes(), noNodes(), noNodes(), noNodes()}, nil, 6},
		{"other errors are not retried", 5, []error{fmt.Errorf("x: %w", client.ErrTopicNotFound)}, client.ErrTopicNotFound, 1},
		{"no leader alone is not retried", 5, []error{client.ErrNoLeader}, client.ErrNoLeader, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeSender()
			f.errs = tt.errs
			b := New(f, "topic", fast, WithRetries(tt.retries))
			defer b.Close()
			id, err := b.SendMessage([]byte("m"), true)
			if tt.wantErr != nil {
				require.ErrorIs(t, err, tt.wantErr)
				assert.Zero(t, id)
			} else {
				require.NoError(t, err)
				assert.EqualValues(t, 1, id)
			}
			assert.Equal(t, tt.wantCalls, f.calls())
		})
	}
}

func TestBackoffSchedule(t *testing.T) {
	// min(n × 500 ms, 5 s), as the original.
	want := []time.Duration{500 * time.Millisecond, time.Second, 1500 * time.Millisecond}
	for n, w := range want {
		assert.Equal(t, w, min(time.Duration(n+1)*retryBackoffStep, retryBackoffLimit))
	}
	assert.Equal(t, 5*time.Second, min(time.Duration(10)*retryBackoffStep, retryBackoffLimit))
	assert.Equal(t, 5*time.Second, min(time.Duration(30)*retryBackoffStep, retryBackoffLimit))
}

func TestCloseInterruptsBackoff(t *testing.T) {
	f := newFakeSender()
	f.always = noNodes()
	f.entered = make(chan int, 10)
	b := New(f, "topic", WithRetries(UnlimitedRetries), func(b *Batcher) { b.backoffStep = time.Hour })
	res := make(chan error, 1)
	go func() {
		_, err := b.SendMessage([]byte("m"), true)
		res <- err
	}()
	<-f.entered
	b.Close()
	var err error
	select {
	case err = <-res: // the backoff is an hour: only Close ends it
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not interrupt the backoff")
	}
	assert.True(t, err == ErrClosed, "the bare sentinel, as the original returned: %v", err)
	assert.Equal(t, 1, f.calls())
}

func TestCloseSendsPendingMessages(t *testing.T) {
	f := newFakeSender()
	f.gate = make(chan struct{})
	f.entered = make(chan int, 10)
	b := New(f, "topic")
	replies := make(chan *SendResult, 10)
	require.NoError(t, b.AsyncSendMessage([]byte("a"), nil, replies, true))
	<-f.entered
	for range 4 {
		require.NoError(t, b.AsyncSendMessage([]byte("b"), nil, replies, true))
	}
	closed := make(chan struct{})
	go func() { b.Close(); close(closed) }()
	<-b.sealed // Close has started and refuses new messages
	_, err := b.SendMessage([]byte("late"), false)
	require.Equal(t, ErrClosed, err)
	close(f.gate)
	<-closed
	for i := range 5 {
		r := <-replies
		require.NoError(t, r.GetError())
		assert.EqualValues(t, i+1, r.GetIndex())
	}
	assertStopped(t, b)
}

func TestCloseTimeoutFailsTheRest(t *testing.T) {
	f := newFakeSender()
	f.gate = make(chan struct{}) // never opened: the send hangs until cancelled
	f.entered = make(chan int, 10)
	b := New(f, "topic", withCloseWait(50*time.Millisecond))
	replies := make(chan *SendResult, 10)
	require.NoError(t, b.AsyncSendMessage([]byte("in flight"), "a", replies, true))
	<-f.entered
	for range 3 {
		require.NoError(t, b.AsyncSendMessage([]byte("queued"), "b", replies, true))
	}
	b.Close()
	assertStopped(t, b)

	r := <-replies
	assert.Equal(t, "a", r.GetReference())
	assert.True(t, r.GetError() == ErrClosed, "the bare sentinel: %v", r.GetError())
	for range 3 {
		r := <-replies
		assert.Equal(t, "b", r.GetReference())
		assert.Equal(t, ErrClosed, r.GetError())
		assert.Zero(t, r.GetIndex())
	}
	assert.Equal(t, 1, f.calls(), "queued messages were not sent after the timeout")
}

func TestSendAfterClose(t *testing.T) {
	f := newFakeSender()
	b := New(f, "topic")
	var wg sync.WaitGroup
	for range 5 {
		wg.Go(b.Close) // idempotent and concurrent
	}
	wg.Wait()
	b.Close()

	_, err := b.SendMessage([]byte("m"), true)
	assert.Equal(t, ErrClosed, err)
	_, err = b.SendMessage([]byte("m"), false)
	assert.Equal(t, ErrClosed, err)
	replies := make(chan *SendResult, 1)
	assert.Equal(t, ErrClosed, b.AsyncSendMessage([]byte("m"), nil, replies, true))
	assert.Equal(t, ErrClosed, b.AsyncSendMessage([]byte("m"), nil, nil, false))
	assert.Empty(t, replies)
	assert.Zero(t, f.calls())
	assertStopped(t, b)
}

func TestCloseWakesBlockedSenders(t *testing.T) {
	f := newFakeSender()
	f.gate = make(chan struct{})
	f.entered = make(chan int, 10)
	b := New(f, "topic", WithBufferSize(1), withCloseWait(50*time.Millisecond))
	replies := make(chan *SendResult, 10)
	require.NoError(t, b.AsyncSendMessage([]byte("in flight"), nil, replies, true))
	<-f.entered
	require.NoError(t, b.AsyncSendMessage([]byte("queued"), nil, replies, true))
	blocked := make(chan error, 1)
	go func() {
		_, err := b.SendMessage([]byte("blocked"), true)
		blocked <- err
	}()
	b.Close()
	assert.Equal(t, ErrClosed, <-blocked)
	assertStopped(t, b)
}

func TestFireAndForget(t *testing.T) {
	f := newFakeSender()
	b := New(f, "topic", WithoutCommitWait(), WithDebug(), WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	for range 100 {
		require.NoError(t, b.AsyncSendMessage([]byte("m"), nil, nil, true))
	}
	b.Close()
	total := 0
	for _, s := range f.batchSizes() {
		total += s
	}
	assert.Equal(t, 100, total, "Close sent everything queued")
}

func TestWrongIDCountIsAnError(t *testing.T) {
	f := newFakeSender()
	f.wrongN = true
	b := New(f, "topic")
	defer b.Close()
	_, err := b.SendMessage([]byte("m"), true)
	require.Error(t, err)
}

func TestMixedSyncAndAsyncUnderRace(t *testing.T) {
	f := newFakeSender()
	b := New(f, "topic", WithBufferSize(8))
	replies := make(chan *SendResult, 8)
	var wg sync.WaitGroup
	got := make(chan int64, 400)
	for range 4 {
		wg.Go(func() {
			for range 50 {
				id, err := b.SendMessage([]byte("s"), true)
				assert.NoError(t, err)
				got <- id
			}
		})
		wg.Go(func() {
			for range 50 {
				assert.NoError(t, b.AsyncSendMessage([]byte("a"), nil, replies, true))
			}
		})
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		var last int64
		for range 200 {
			r := <-replies
			assert.NoError(t, r.GetError())
			assert.Greater(t, r.GetIndex(), last, "async results arrive in send order")
			last = r.GetIndex()
			got <- r.GetIndex()
		}
	}()
	wg.Wait()
	<-done
	b.Close()
	close(got)
	var ids []int64
	for id := range got {
		ids = append(ids, id)
	}
	assert.ElementsMatch(t, seq(1, 400), ids)
}

func TestNoGoroutineLeak(t *testing.T) {
	before := runtime.NumGoroutine()
	for range 20 {
		f := newFakeSender()
		f.gate = make(chan struct{})
		f.entered = make(chan int, 1)
		b := New(f, "topic", withCloseWait(time.Millisecond))
		require.NoError(t, b.AsyncSendMessage([]byte("m"), nil, nil, true))
		<-f.entered
		b.Close()
		assertStopped(t, b)
	}
	// Poll by hand: require.Eventually runs its condition on a goroutine of
	// its own.
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		runtime.Gosched()
	}
	assert.LessOrEqual(t, runtime.NumGoroutine(), before)
}

// assertStopped checks that the Batcher's goroutine has returned.
func assertStopped(t *testing.T, b *Batcher) {
	t.Helper()
	select {
	case <-b.done:
	default:
		t.Fatal("send goroutine still running after Close")
	}
}

func seq(from, n int) []int64 {
	s := make([]int64, n)
	for i := range s {
		s[i] = int64(from + i)
	}
	return s
}

// TestResultsCarryBareSentinels: a batch that fails after its retries
// reports the original package's sentinel itself, for == comparisons.
func TestResultsCarryBareSentinels(t *testing.T) {
	wrapped := fmt.Errorf("forestbus: send: %w (last: %w)", client.ErrNoNodesAvailable, errors.New("connection refused"))
	s := &errSender{err: wrapped}
	b := New(s, "t")
	defer b.Close()
	_, err := b.SendMessage([]byte("m"), true)
	assert.True(t, err == client.ErrNoNodesAvailable, "got %v", err)
}

type errSender struct{ err error }

func (e *errSender) SendMessagesContext(context.Context, string, [][]byte, bool) ([]int64, error) {
	return nil, e.err
}

// TestBatchHeadCountsItsFraming: the message heading a batch counts with
// its framing too, so no batch goes over WithMaxBatchBytes (it counted
// its bytes alone: two 10-byte messages, 24 with framing, went together
// under a cap of 23).
func TestBatchHeadCountsItsFraming(t *testing.T) {
	m := "0123456789" // 12 with its framing
	f := newFakeSender()
	b := New(f, "topic", WithMaxBatchBytes(2*12-1))
	defer b.Close()
	rs := queueBehind(t, f, b, m, m, m)
	for _, r := range rs {
		require.NoError(t, r.GetError())
	}
	assert.Equal(t, [][]string{{"a"}, {m}, {m}, {m}}, f.batches)
}

// TestBatcherIsComparable: as the original's MessageBatcher, a Batcher
// value compares (by identity) and keys a map.
func TestBatcherIsComparable(t *testing.T) {
	b1, b2 := New(newFakeSender(), "topic"), New(newFakeSender(), "topic")
	defer b1.Close()
	defer b2.Close()
	seen := map[Batcher]bool{*b1: true}
	assert.True(t, seen[*b1])
	assert.False(t, seen[*b2])
	assert.True(t, *b1 != *b2)
}

// TestFullErrors: results carry the bare sentinel by default (the
// original's), the client's whole error with WithFullErrors.
func TestFullErrors(t *testing.T) {
	cause := fmt.Errorf("%w; last error: node x: connection refused", client.ErrNoNodesAvailable)
	for _, full := range []bool{false, true} {
		opts := []Option{}
		if full {
			opts = append(opts, WithFullErrors())
		}
		b := New(&errSender{err: cause}, "topic", opts...)
		_, err := b.SendMessage([]byte("m"), true)
		b.Close()
		require.ErrorIs(t, err, client.ErrNoNodesAvailable)
		if full {
			assert.Equal(t, cause, err)
		} else {
			assert.Equal(t, client.ErrNoNodesAvailable, err)
		}
	}
}
