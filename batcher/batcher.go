package batcher

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/forestbus/forestbus/client"
	"github.com/forestbus/forestbus/internal/stdlog"
)

// UnlimitedRetries passed to WithRetries retries transient errors without
// limit.
const UnlimitedRetries = -1

// DefaultBufferSize is the default queue capacity and largest batch.
const DefaultBufferSize = 200

// messageCost is what a message counts towards a batch's size, as nodes
// count it: its bytes with their framing in the request.
func messageCost(m []byte) int { return protowire.SizeTag(2) + protowire.SizeBytes(len(m)) }

// DefaultMaxBatchBytes is the default cap of a batch's message bytes: a
// node's default -max-batch-bytes.
const DefaultMaxBatchBytes = 16 << 20

const (
	// retryBackoffStep: the wait before retry n is min(n*step, limit).
	retryBackoffStep  = 500 * time.Millisecond
	retryBackoffLimit = 5 * time.Second
	// closeWait is how long Close lets queued messages drain.
	closeWait = 2 * time.Second
)

var (
	// ErrBufferFull is returned by a non-blocking send when the queue is
	// full. No message is queued.
	ErrBufferFull = errors.New("The message batcher buffer is full.") //nolint:staticcheck // original text
	// ErrClosed is returned for messages sent after Close, and for messages
	// Close could not send in time.
	ErrClosed = errors.New("The message batcher was closed before the message could be sent.") //nolint:staticcheck // original text
)

// Sender sends a batch of messages to a topic and returns their IDs, in
// order. *client.Client implements it. A Sender must return soon after ctx
// is cancelled: Close cancels a send that outlives its drain time.
type Sender interface {
	SendMessagesContext(ctx context.Context, topic string, messages [][]byte, waitForCommit bool) ([]int64, error)
}

// sequencedSender is a Sender that can send a batch again as itself: its
// retries carry the producer sequence its first send took, so a batch that
// was stored before an error is not stored twice (*client.Client). The
// sequence stays reserved through the retries and the waits between them,
// so that the sender's other sends to the topic cannot run so far ahead
// that the topic no longer recognizes the batch.
type sequencedSender interface {
	ReserveSequence(ctx context.Context, topic string) (seq uint64, release func(), err error)
	SendMessagesSequence(ctx context.Context, topic string, messages [][]byte, waitForCommit bool, sequence uint64) ([]int64, error)
}

// Batcher batches messages sent to one topic by many goroutines into few
// SendMessagesContext calls.
//
// There is no linger timer: when no send is in progress a message goes out
// at once, alone; messages queued while a send is in progress go out
// together, up to the buffer size and WithMaxBatchBytes, as soon as it
// completes. Results come back in send order. A batch the node refuses
// for the size of some of its messages is sent again in halves, so that
// only those messages fail.
//
// All methods are safe for concurrent use. A Batcher owns one goroutine,
// which Close stops.
type Batcher struct {
	// The state behind a pointer: a Batcher value is comparable (by
	// identity), as the original's MessageBatcher was, so code comparing
	// two or keying a map with one compiles.
	*state
}

// state is a Batcher's; its fields are the Batcher's by promotion.
type state struct {
	sender        Sender
	topic         string
	waitForCommit bool
	bufferSize    int
	maxBatchBytes int
	maxRetries    int
	debug         bool
	fullErrors    bool // WithFullErrors
	logger        *slog.Logger

	// Injectable for tests.
	backoffStep  time.Duration
	backoffLimit time.Duration
	closeWait    time.Duration // how long Close lets queued messages drain
	stopWait     time.Duration // then how long it waits for the cancelled send to return
	retryable    func(error) bool

	queue chan *SendResult
	msgs  [][]byte // the messages of the batch being sent (run's goroutine)

	// mu guards closed: senders hold it shared while they queue, Close
	// holds it exclusively to set closed, after which the queue receives
	// nothing more.
	mu     sync.RWMutex
	closed bool

	closing   chan struct{}      // closed when Close starts
	sealed    chan struct{}      // closed once no message can be queued
	abandon   chan struct{}      // closed when Close gives up waiting
	done      chan struct{}      // closed when the send loop returns
	cancel    context.CancelFunc // cancels the send in progress
	closeOnce sync.Once

	pool sync.Pool // *SendResult with a reply channel, for SendMessage
}

// Option configures a Batcher.
type Option func(*Batcher)

// WithoutCommitWait makes sends return once the topic's leader has the
// batch, without waiting for commit (the default waits for commit).
func WithoutCommitWait() Option {
	return func(b *Batcher) { b.waitForCommit = false }
}

// WithBufferSize sets the queue capacity, which is also the largest batch
// (default DefaultBufferSize). Sizes below 1 are ignored.
func WithBufferSize(n int) Option {
	return func(b *Batcher) {
		if n > 0 {
			b.bufferSize = n
		}
	}
}

// WithMaxBatchBytes caps the message bytes of one batch (default
// DefaultMaxBatchBytes, a node's default limit): a message that would take
// a batch over it waits for the next one. A message larger than the cap
// goes alone. Sizes below 1 are ignored.
func WithMaxBatchBytes(n int) Option {
	return func(b *Batcher) {
		if n > 0 {
			b.maxBatchBytes = n
		}
	}
}

// WithDebug logs every batch sent at debug level, through the standard log
// package (as the original did; standard error unless log.SetOutput moved
// it) or to the logger of WithLogger.
func WithDebug() Option {
	return func(b *Batcher) { b.debug = true }
}

// WithFullErrors makes results carry a failed send's error as the client
// returned it, with the node's answer and the last node's error (the
// sentinels still match with errors.Is), instead of the original
// package's bare sentinels. For tools that show the cause.
func WithFullErrors() Option {
	return func(b *Batcher) { b.fullErrors = true }
}

// WithLogger sets the logger used for debug logging.
func WithLogger(l *slog.Logger) Option {
	return func(b *Batcher) { b.logger = l }
}

// WithRetries sets how many times a batch is retried after an error that
// matches client.ErrNoNodesAvailable (default 0: no retries;
// UnlimitedRetries: no limit). Other errors are not retried. The wait
// before retry n is min(n × 500 ms, 5 s). Close ends the retries: the
// batch then fails with ErrClosed. With a *client.Client, a retry resends
// the batch as itself (client.Client.SendMessagesSequence): a batch the
// cluster stored before the error is not stored again, and its messages
// get the IDs of that copy.
func WithRetries(n int) Option {
	return func(b *Batcher) { b.maxRetries = n }
}

// New returns a Batcher sending to topic through s. It starts the
// Batcher's goroutine; call Close to stop it.
func New(s Sender, topic string, opts ...Option) *Batcher {
	b := &Batcher{&state{
		sender:        s,
		topic:         topic,
		waitForCommit: true,
		bufferSize:    DefaultBufferSize,
		maxBatchBytes: DefaultMaxBatchBytes,
		backoffStep:   retryBackoffStep,
		backoffLimit:  retryBackoffLimit,
		closeWait:     closeWait,
		stopWait:      closeWait,
		retryable:     isNoNodesAvailable,
		closing:       make(chan struct{}),
		sealed:        make(chan struct{}),
		abandon:       make(chan struct{}),
		done:          make(chan struct{}),
	}}
	for _, o := range opts {
		o(b)
	}
	if b.logger == nil {
		b.logger = stdlog.Debug() // through the log package, as the original's debug output
	}
	b.queue = make(chan *SendResult, b.bufferSize)
	b.msgs = make([][]byte, 0, b.bufferSize)
	b.pool.New = func() any { return &SendResult{own: make(chan *SendResult, 1)} }
	ctx, cancel := context.WithCancel(context.Background())
	b.cancel = cancel
	go b.run(ctx)
	return b
}

// isNoNodesAvailable is the retry predicate: only the transient "no node
// answered" error is retried, as in the original.
func isNoNodesAvailable(err error) bool {
	return errors.Is(err, client.ErrNoNodesAvailable)
}

// SendResult is the outcome of sending one message.
type SendResult struct {
	index     int64
	err       error
	reference interface{}
	message   []byte
	reply     chan *SendResult // where the result goes; nil: nowhere
	own       chan *SendResult // pooled results: SendMessage's reply channel
}

// GetIndex returns the message's ID, or 0 if sending failed.
func (r *SendResult) GetIndex() int64 { return r.index }

// GetError returns the error sending the message met, or nil.
func (r *SendResult) GetError() error { return r.err }

// GetReference returns the reference given to AsyncSendMessage.
func (r *SendResult) GetReference() interface{} { return r.reference }

// GetMessage returns the message given to AsyncSendMessage.
func (r *SendResult) GetMessage() []byte { return r.message }

// SendMessage queues message, waits until the batch holding it has been
// sent, and returns the message's ID.
//
// If blockIfFull is true and the queue is full, SendMessage waits for room;
// if false it returns (0, ErrBufferFull) at once. After Close it returns
// (0, ErrClosed). Other errors are those of the Sender (with a
// *client.Client: client.ErrTopicNotFound, client.ErrNoNodesAvailable,
// ...).
func (b *Batcher) SendMessage(message []byte, blockIfFull bool) (index int64, err error) {
	r := b.pool.Get().(*SendResult)
	r.message, r.reply = message, r.own
	if err := b.enqueue(r, blockIfFull); err != nil {
		b.release(r)
		return 0, err
	}
	<-r.own
	index, err = r.index, r.err
	b.release(r)
	return index, err
}

// AsyncSendMessage queues message and returns. The result, carrying
// reference, arrives later on replyChannel; pass a nil replyChannel to
// ignore results ("fire and forget").
//
// The caller MUST give replyChannel room for at least the buffer size
// (DefaultBufferSize or WithBufferSize) results, or read it promptly: the
// Batcher's goroutine waits for room on it, delaying every later message.
//
// If blockIfFull is true and the queue is full, AsyncSendMessage waits for
// room; if false it returns ErrBufferFull at once and nothing is sent on
// replyChannel. After Close it returns ErrClosed.
func (b *Batcher) AsyncSendMessage(message []byte, reference interface{}, replyChannel chan *SendResult, blockIfFull bool) (err error) {
	var r *SendResult
	if replyChannel == nil {
		r = b.pool.Get().(*SendResult)
	} else {
		r = &SendResult{reply: replyChannel}
	}
	r.message, r.reference = message, reference
	if err := b.enqueue(r, blockIfFull); err != nil {
		if replyChannel == nil {
			b.release(r)
		}
		return err
	}
	return nil
}

// enqueue puts r on the queue.
func (b *Batcher) enqueue(r *SendResult, blockIfFull bool) error {
	b.mu.RLock()
	defer b.mu.RUnlock()
	if b.closed {
		return ErrClosed
	}
	if blockIfFull {
		select {
		case b.queue <- r:
			return nil
		case <-b.closing:
			return ErrClosed
		}
	}
	select {
	case b.queue <- r:
		return nil
	default:
		return ErrBufferFull
	}
}

// release returns a pooled result to the pool.
func (b *Batcher) release(r *SendResult) {
	own := r.own
	if own == nil {
		return
	}
	*r = SendResult{own: own}
	b.pool.Put(r)
}

// deliver hands r its outcome.
func (b *Batcher) deliver(r *SendResult, index int64, err error) {
	r.index, r.err = index, err
	switch {
	case r.reply != nil:
		r.reply <- r
	case r.own != nil:
		// Fire and forget.
		b.release(r)
	}
}

// Close stops the Batcher. Messages already queued are still sent if that
// completes within 2 s; the rest fail with ErrClosed. A send in progress
// at that point is cancelled, and its messages fail with an error matching
// ErrClosed (they may still have been stored). Messages sent after Close
// fail with ErrClosed.
//
// Close waits for the Batcher's goroutine to end (allowing it another 2 s
// to return from a cancelled send or to deliver to a full reply channel).
// It is safe to call more than once and from several goroutines; a closed
// Batcher cannot be reused.
func (b *Batcher) Close() {
	b.closeOnce.Do(func() {
		close(b.closing) // wakes blocked senders and retry waits
		b.mu.Lock()
		b.closed = true
		b.mu.Unlock()
		close(b.sealed) // the queue receives nothing more

		t := time.NewTimer(b.closeWait)
		defer t.Stop()
		select {
		case <-b.done:
			return
		case <-t.C:
		}
		close(b.abandon)
		b.cancel()
		t.Reset(b.stopWait)
		select {
		case <-b.done:
		case <-t.C:
			b.logger.Warn("forestbus: message batcher goroutine did not stop", "topic", b.topic)
		}
	})
}

// run is the Batcher's goroutine: it sends queued messages in batches until
// Close.
func (b *Batcher) run(ctx context.Context) {
	defer close(b.done)
	defer b.cancel()
	batch := make([]*SendResult, 0, b.bufferSize)
	retries := b.maxRetries
	// carry is a message taken from the queue that did not fit the last
	// batch's bytes: it heads the next one.
	var carry *SendResult
	for {
		size := 0
		if carry != nil {
			batch, size, carry = append(batch, carry), messageCost(carry.message), nil
		} else {
			select {
			case r := <-b.queue:
				batch, size = append(batch, r), messageCost(r.message)
			case <-b.sealed:
				// Nothing can be queued any more: send what is left.
				select {
				case r := <-b.queue:
					batch, size = append(batch, r), messageCost(r.message)
				default:
					return
				}
			}
		}
	fill:
		for len(batch) < b.bufferSize {
			select {
			case r := <-b.queue:
				if size+messageCost(r.message) > b.maxBatchBytes {
					carry = r
					break fill
				}
				batch, size = append(batch, r), size+messageCost(r.message)
			default:
				break fill
			}
		}
		select {
		case <-b.abandon:
			b.fail(batch, ErrClosed)
			if carry != nil {
				b.deliver(carry, 0, ErrClosed)
			}
			b.failQueued()
			return
		default:
		}
		b.sendBatch(ctx, batch, &retries)
		clear(batch)
		batch = batch[:0]
	}
}

// sendBatch sends batch and delivers each message's outcome. When the
// node refuses the whole batch for the size of some of its messages
// (ErrMessageTooLarge), or for its own (ErrBatchTooLarge: the node's limit
// is below WithMaxBatchBytes), it sends the two halves apart, and so on,
// so that only the messages at fault fail and the others are stored, in
// order. A node refuses such a batch before storing any of it, so no
// message is stored twice.
func (b *Batcher) sendBatch(ctx context.Context, batch []*SendResult, retries *int) {
	msgs := b.msgs[:0]
	for _, r := range batch {
		msgs = append(msgs, r.message)
	}
	ids, err := b.send(ctx, msgs, retries)
	clear(msgs)
	if len(batch) > 1 && (errors.Is(err, client.ErrMessageTooLarge) || errors.Is(err, client.ErrBatchTooLarge)) {
		half := len(batch) / 2
		b.sendBatch(ctx, batch[:half], retries)
		b.sendBatch(ctx, batch[half:], retries)
		return
	}
	for i, r := range batch {
		if err != nil {
			b.deliver(r, 0, err)
		} else {
			b.deliver(r, ids[i], nil)
		}
	}
}

// resultError is err as results carry it: the original package's bare
// sentinel, unless WithFullErrors.
func (b *Batcher) resultError(err error) error {
	if b.fullErrors {
		return err
	}
	return client.LegacyError(err)
}

// send sends one batch, retrying as configured. Once Close has started,
// retries stop for this and every later batch.
func (b *Batcher) send(ctx context.Context, msgs [][]byte, retries *int) ([]int64, error) {
	seqSender, _ := b.sender.(sequencedSender)
	var seq uint64
	for attempt := 1; ; attempt++ {
		start := time.Now()
		var ids []int64
		var err error
		if seqSender != nil && seq == 0 {
			// Reserved inside the retry loop: the wait for a sequence
			// can end with ErrNoNodesAvailable, retried as a send's.
			s, release, rerr := seqSender.ReserveSequence(ctx, b.topic)
			if rerr == nil {
				defer release() // runs once: seq is set once
				seq = s
			}
			err = rerr
		}
		switch {
		case err != nil:
		case seqSender != nil:
			ids, err = seqSender.SendMessagesSequence(ctx, b.topic, msgs, b.waitForCommit, seq)
		default:
			ids, err = b.sender.SendMessagesContext(ctx, b.topic, msgs, b.waitForCommit)
		}
		if err == nil && len(ids) != len(msgs) {
			err = fmt.Errorf("forestbus: message batcher: %d IDs for %d messages", len(ids), len(msgs))
		}
		if b.debug {
			b.logger.Debug("forestbus: message batcher sent batch", "topic", b.topic, "messages", len(msgs), "attempt", attempt, "elapsed", time.Since(start), "error", err)
		}
		if err == nil {
			return ids, nil
		}
		// Results carry the original package's bare sentinels, so that
		// programs comparing with == keep working (the cause is logged
		// with WithDebug; WithFullErrors keeps it).
		if ctx.Err() != nil {
			// Close gave up waiting and cancelled the send.
			return nil, ErrClosed
		}
		if !b.retryable(err) || (*retries != UnlimitedRetries && attempt > *retries) {
			return nil, b.resultError(err)
		}
		select {
		case <-b.closing:
			*retries = 0
			return nil, ErrClosed
		default:
		}
		wait := min(time.Duration(attempt)*b.backoffStep, b.backoffLimit)
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-b.closing:
			t.Stop()
			*retries = 0
			return nil, ErrClosed
		}
	}
}

// fail fails every message of batch with err.
func (b *Batcher) fail(batch []*SendResult, err error) {
	for _, r := range batch {
		b.deliver(r, 0, err)
	}
}

// failQueued fails every message still queued with ErrClosed. Close has
// sealed the queue, so it drains for good.
func (b *Batcher) failQueued() {
	for {
		select {
		case r := <-b.queue:
			b.deliver(r, 0, ErrClosed)
		default:
			return
		}
	}
}
