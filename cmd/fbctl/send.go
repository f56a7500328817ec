package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/forestbus/forestbus/batcher"
)

const (
	// defaultSendRetries is how many times a batch is retried when no node
	// answers (each attempt itself fails over across the nodes for the
	// client's 10 s retry window): with the backoff between them, a send
	// to a cluster that is down fails in about 30 s (it took over two
	// minutes with 10).
	defaultSendRetries = 2
	// maxInflightBytes bounds the payload queued in the batcher and not yet
	// acknowledged, and so the size of a batch: the batcher's batches are
	// bounded by count only, and a node refuses batches over its maximum
	// batch size (16 MiB by default). A batch holds at most this much plus
	// one message.
	maxInflightBytes = 4 << 20
	// maxInflight bounds the messages not yet acknowledged: the queue plus
	// the batch being sent. The reply channel holds that many, so the
	// batcher never waits for room on it.
	maxInflight = 2 * batcher.DefaultBufferSize
	// progressEvery is how often progress is redrawn on a terminal.
	progressEvery = 250 * time.Millisecond
)

const sendAbout = `
Send each line of the FILEs ("-" or none: standard input) as one message,
without its newline. Lines may be of any length (the node's maximum message
size applies, 1 MiB by default). Messages are batched through a
MessageBatcher and sent in order; they get consecutive IDs unless other
producers send to the topic at the same time.

Progress is shown on standard error when it is a terminal. At the end
"sent N messages (first ID a, last ID b)" is printed on standard error,
with the number of messages that failed and which message of the input
failed first, and the exit status is then 1.

A message fails when the node refuses it (too large, say) or when no node
answers (after -retries retries, each attempt trying every node for up to
10 s). Reading stops at the first failure, but messages read before it
was known are sent on: those after the failed one may be stored too (a
batch the node refuses for one message's size is sent again without it).
With -no-wait, the IDs are those the leader gave before the batch was
committed: tentative, should the leader change.`

// line is one line read, or the error that ended the input.
type line struct {
	msg []byte
	err error
}

func (a *app) send(args []string) error {
	f := a.flags("send", "[flags] [FILE...]", sendAbout, false, false)
	topicName := f.String("topic", "", "topic to send to (default: the connection string's)")
	noWait := f.Bool("no-wait", false, "return once the leader has each batch, without waiting for commit")
	retries := f.Int("retries", defaultSendRetries, "retries of a batch when no node answers; -1: no limit")
	files, err := f.parse(args, 0, -1)
	if err != nil {
		return err
	}
	if *retries < -1 {
		return usagef("send: -retries %d: want -1 or more", *retries)
	}
	c, ci, err := f.connect()
	if err != nil {
		return err
	}
	defer c.Close()
	topic := *topicName
	if topic == "" {
		topic = ci.topic
	}
	if topic == "" {
		return usagef("send: no topic: use -topic or a connection string cluster#topic@...")
	}
	// Open every file first, so that a missing one fails before anything
	// is sent.
	var inputs []io.Reader
	for _, name := range files {
		if name == "-" {
			inputs = append(inputs, a.stdin)
			continue
		}
		fh, err := os.Open(name)
		if err != nil {
			return err
		}
		defer fh.Close()
		inputs = append(inputs, fh)
	}
	if len(inputs) == 0 {
		inputs = []io.Reader{a.stdin}
	}

	opts := []batcher.Option{batcher.WithRetries(*retries), batcher.WithFullErrors()}
	if *noWait {
		opts = append(opts, batcher.WithoutCommitWait())
	}
	b := batcher.New(c, topic, opts...)
	defer b.Close()

	// The input is read by its own goroutine so that Ctrl-C is noticed
	// while a read blocks (a terminal or pipe).
	lines := make(chan line)
	stop := make(chan struct{})
	defer close(stop)
	go readLines(inputs, lines, stop)

	st := sendState{start: time.Now()}
	replies := make(chan *batcher.SendResult, maxInflight)
	var progress <-chan time.Time
	tty := isTerminal(a.stderr)
	if tty {
		t := time.NewTicker(progressEvery)
		defer t.Stop()
		progress = t.C
	}
	inputDone, interrupted := false, false
	ctxDone := a.ctx.Done()
	var inflight, inflightBytes int
	var read int64 // messages read: the reference of each is its number
	for {
		var in <-chan line
		if !inputDone && !interrupted && st.err == nil &&
			inflight < maxInflight && inflightBytes < maxInflightBytes {
			in = lines
		}
		if in == nil && inflight == 0 {
			break
		}
		select {
		case l, ok := <-in:
			switch {
			case !ok:
				inputDone = true
			case l.err != nil:
				st.err = fmt.Errorf("reading input: %w", l.err)
			default:
				read++
				if err := b.AsyncSendMessage(l.msg, read, replies, true); err != nil {
					st.err = err
					break
				}
				inflight++
				inflightBytes += len(l.msg)
			}
		case r := <-replies:
			inflight--
			inflightBytes -= len(r.GetMessage())
			st.add(r)
		case <-ctxDone:
			interrupted, ctxDone = true, nil
			// Let the batcher send what it has (for up to 2 s; the rest
			// fails with batcher.ErrClosed). Close returns once its
			// goroutine has delivered every result it will deliver.
			b.Close()
			for inflight > 0 {
				select {
				case r := <-replies:
					inflight--
					st.add(r)
				default:
					// Never delivered: the batcher gave up on them.
					st.failed += int64(inflight)
					inflight = 0
				}
			}
		case <-progress:
			st.progress(a.stderr)
		}
	}
	if tty {
		fmt.Fprint(a.stderr, "\r\033[K")
	}
	fmt.Fprintln(a.stderr, st.summary())
	switch {
	case interrupted:
		return errInterrupted
	case st.err != nil:
		return aboutTopic(topic, st.err)
	}
	return nil
}

// sendState counts the results of a send.
type sendState struct {
	start       time.Time
	sent        int64
	failed      int64
	first, last int64
	err         error // the first error
	errAt       int64 // the number in the input of the first message that failed
}

func (s *sendState) add(r *batcher.SendResult) {
	if err := r.GetError(); err != nil {
		s.failed++
		if n, ok := r.GetReference().(int64); ok && (s.errAt == 0 || n < s.errAt) {
			s.errAt, s.err = n, err
		}
		if s.err == nil {
			s.err = err
		}
		return
	}
	id := r.GetIndex()
	if s.sent == 0 || id < s.first {
		s.first = id
	}
	if id > s.last {
		s.last = id
	}
	s.sent++
}

func (s *sendState) summary() string {
	msg := fmt.Sprintf("sent %d message%s", s.sent, plural(s.sent))
	if s.sent > 0 {
		msg += fmt.Sprintf(" (first ID %d, last ID %d)", s.first, s.last)
	}
	if s.failed > 0 {
		msg += fmt.Sprintf("; %d failed", s.failed)
		if s.errAt > 0 {
			msg += fmt.Sprintf(", the first at message %d of the input", s.errAt)
		}
	}
	return msg
}

func (s *sendState) progress(w io.Writer) {
	el := time.Since(s.start).Seconds()
	rate := 0.0
	if el > 0 {
		rate = float64(s.sent) / el
	}
	fmt.Fprintf(w, "\r\033[Ksent %d messages, %.0f msg/s", s.sent, rate)
}

func plural(n int64) string {
	if n == 1 {
		return ""
	}
	return "s"
}

// readLines sends the lines of inputs, without their newline, on out, and
// closes it at the end. It gives up when stop is closed.
func readLines(inputs []io.Reader, out chan<- line, stop <-chan struct{}) {
	defer close(out)
	emit := func(l line) bool {
		select {
		case out <- l:
			return true
		case <-stop:
			return false
		}
	}
	for _, in := range inputs {
		r := bufio.NewReaderSize(in, 64<<10)
		for {
			// ReadBytes has no line length limit (unlike bufio.Scanner)
			// and returns a fresh slice, which the batcher keeps.
			msg, err := r.ReadBytes('\n')
			if len(msg) > 0 {
				msg = bytes.TrimSuffix(msg, []byte{'\n'})
				if !emit(line{msg: msg}) {
					return
				}
			}
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				emit(line{err: err})
				return
			}
		}
	}
}

// isTerminal reports whether w is a terminal (a character device).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
