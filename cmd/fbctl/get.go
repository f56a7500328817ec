package main

import (
	"bufio"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"
	"unicode/utf8"

	"github.com/forestbus/forestbus/client"
)

// getBatch is how many messages one GetMessages call asks for (nodes also
// keep an answer under 4 MiB by default).
const getBatch = 1000

// followRetryPause is the pause before get -follow asks again after no
// node answered within the client's retry window.
const followRetryPause = time.Second

const getAbout = `
Print the messages of a topic from ID -from on, oldest first, until the end
of the topic (or -count messages). Messages below the first retained ID are
skipped, with a note on standard error. With -follow, wait at the end for
new messages, like tail -f (long polls: no busy loop), until Ctrl-C, which
ends it with status 0; when no node answers, it warns on standard error
and keeps trying.

Formats: raw prints each message followed by a newline; json prints one
object per line, {"id":N,"message":"text"}, or, for a message that is not
valid UTF-8, {"id":N,"message":"<base64>","encoding":"base64"}. Use json
for messages that may hold newlines.`

// jsonMessage is one message in -format json.
type jsonMessage struct {
	ID       int64  `json:"id"`
	Message  string `json:"message"`
	Encoding string `json:"encoding,omitempty"`
}

func (a *app) get(args []string) error {
	f := a.flags("get", "[flags]", getAbout, false, false)
	topicName := f.String("topic", "", "topic to read (default: the connection string's)")
	from := f.Int64("from", 1, "`ID` of the first message")
	count := f.Int64("count", 0, "stop after `N` messages (0: no limit)")
	follow := f.Bool("follow", false, "wait for new messages at the end, until Ctrl-C")
	format := f.String("format", "raw", "output `format`: raw or json")
	if _, err := f.parse(args, 0, 0); err != nil {
		return err
	}
	if *from < 0 {
		return usagef("get: -from %d: want 1 or more", *from)
	}
	if *count < 0 {
		return usagef("get: -count %d: want 0 or more", *count)
	}
	if *format != "raw" && *format != "json" {
		return usagef("get: -format %q: want raw or json", *format)
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
		return usagef("get: no topic: use -topic or a connection string cluster#topic@...")
	}

	w := bufio.NewWriterSize(a.stdout, 64<<10)
	defer w.Flush()
	write := writeRaw
	if *format == "json" {
		enc := json.NewEncoder(w)
		enc.SetEscapeHTML(false)
		write = func(_ io.Writer, id int64, msg []byte) error { return writeJSON(enc, id, msg) }
	}
	next := max(*from, 1)
	var written int64
	warned := false
	for *count == 0 || written < *count {
		want := int64(getBatch)
		if *count > 0 {
			want = min(want, *count-written)
		}
		msgs, nextID, err := c.GetMessagesContext(a.ctx, topic, next, int(want), *follow)
		if err != nil {
			if a.ctx.Err() != nil {
				if *follow {
					return nil
				}
				return errInterrupted
			}
			if *follow && errors.Is(err, client.ErrNoNodesAvailable) && !errors.Is(err, client.ErrClusterIdMismatch) {
				// tail -F: keep trying, and say so once.
				if !warned {
					fmt.Fprintf(a.stderr, "fbctl: warning: %s; still trying\n", explain(err))
					warned = true
				}
				if !sleepCtx(a.ctx, followRetryPause) {
					return nil
				}
				continue
			}
			return aboutTopic(topic, err)
		}
		if warned {
			fmt.Fprintln(a.stderr, "fbctl: reading again")
			warned = false
		}
		if len(msgs) == 0 {
			if nextID > next {
				// Below the first retained ID: retention deleted the
				// messages from next on. Say so, and skip ahead.
				fmt.Fprintf(a.stderr, "fbctl: %s no longer retained; reading from %d\n", notRetained(next, nextID-1), nextID)
				next = nextID
				continue
			}
			if !*follow {
				break // the end of the topic
			}
			// A waiting read does not come back empty at the end; should
			// it, do not spin.
			if !sleepCtx(a.ctx, followRetryPause) {
				return nil
			}
			continue
		}
		for i, m := range msgs {
			if *count > 0 && written >= *count {
				break
			}
			if err := write(w, next+int64(i), m); err != nil {
				return err
			}
			written++
		}
		next = nextID
		// Flush per answer, so that a follower sees messages as they come.
		if err := w.Flush(); err != nil {
			return err
		}
	}
	return w.Flush()
}

// notRetained names the IDs from to last for get's note on skipped
// messages.
func notRetained(from, last int64) string {
	if from == last {
		return fmt.Sprintf("message %d is", from)
	}
	return fmt.Sprintf("messages %d-%d are", from, last)
}

func writeRaw(w io.Writer, _ int64, msg []byte) error {
	if _, err := w.Write(msg); err != nil {
		return err
	}
	_, err := w.Write([]byte{'\n'})
	return err
}

func writeJSON(enc *json.Encoder, id int64, msg []byte) error {
	m := jsonMessage{ID: id}
	if utf8.Valid(msg) {
		m.Message = string(msg)
	} else {
		m.Message = base64.StdEncoding.EncodeToString(msg)
		m.Encoding = "base64"
	}
	return enc.Encode(m)
}

// sleepCtx waits for d; false if ctx ended first.
func sleepCtx(ctx interface{ Done() <-chan struct{} }, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
