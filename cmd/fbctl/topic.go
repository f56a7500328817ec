package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/forestbus/forestbus/client"
	"github.com/forestbus/forestbus/internal/flagval"
)

const topicAbout = `
Manage topics:

  topic list                  every topic and its settings
  topic create NAME [flags]   create a topic (unset settings: node defaults)
  topic update NAME [flags]   change the settings given, keep the others
  topic remove NAME           stop serving a topic (nodes keep its files,
                              moved aside under DATA/removed/, for
                              fbnode -removed-retention: 24h by default)

Names are 1 to 200 characters from [A-Za-z0-9._-]. Sizes take a unit
(4096, 64KiB, 64MiB, 1GiB, also KB/MB/GB as powers of 1000); -retention is
a duration (90m, 24h, 7d); 0 means the cluster's default, shown as
"default": fbnode -segment-bytes, -retention and -retention-bytes (the
retention defaults keep everything unless the nodes set them).`

func (a *app) topic(args []string) error {
	verbs := map[string]func(*app, []string) error{
		"list":   (*app).topicList,
		"create": func(a *app, args []string) error { return a.topicSet("create", args) },
		"update": func(a *app, args []string) error { return a.topicSet("update", args) },
		"remove": (*app).topicRemove,
	}
	return a.group("topic", "list|create|update|remove", topicAbout, verbs, args)
}

// group dispatches a command group's verb.
func (a *app) group(name, verbList, about string, verbs map[string]func(*app, []string) error, args []string) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "-help" || args[0] == "--help" {
		if len(args) > 0 {
			fmt.Fprintf(a.stdout, "Usage: fbctl %s %s ...\n\n%s\n\nRun 'fbctl %s VERB -h' for a verb's flags.\n", name, verbList, strings.TrimSpace(about), name)
			return errHelp
		}
		return usagef("%s: missing verb: %s", name, verbList)
	}
	v, ok := verbs[args[0]]
	if !ok {
		return usagef("%s: unknown verb %q: want %s", name, args[0], verbList)
	}
	return v(a, args[1:])
}

// topicJSON is a topic in -o json.
type topicJSON struct {
	Name             string `json:"name"`
	SegmentBytes     int64  `json:"segment_bytes"`
	RetentionSeconds int64  `json:"retention_seconds"`
	RetentionBytes   int64  `json:"retention_bytes"`
}

func toTopicJSON(t client.Topic) topicJSON {
	return topicJSON{Name: t.Name, SegmentBytes: t.Settings.SegmentBytes,
		RetentionSeconds: t.Settings.RetentionSeconds, RetentionBytes: t.Settings.RetentionBytes}
}

func (a *app) topicList(args []string) error {
	f := a.flags("topic list", "[flags]", "List every topic with its settings, sorted by name.", true, true)
	if _, err := f.parse(args, 0, 0); err != nil {
		return err
	}
	c, _, err := f.connect()
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := f.deadline()
	defer cancel()
	topics, err := c.ListTopics(ctx)
	if err != nil {
		return err
	}
	if f.json() {
		out := struct {
			Topics []topicJSON `json:"topics"`
		}{Topics: []topicJSON{}}
		for _, t := range topics {
			out.Topics = append(out.Topics, toTopicJSON(t))
		}
		return writeJSONDoc(a.stdout, out)
	}
	tw := newTable(a.stdout)
	fmt.Fprintln(tw, "NAME\tSEGMENT-BYTES\tRETENTION\tRETENTION-BYTES")
	for _, t := range topics {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", t.Name,
			formatBytes(t.Settings.SegmentBytes, "default"),
			formatRetention(t.Settings.RetentionSeconds),
			formatBytes(t.Settings.RetentionBytes, "default"))
	}
	return tw.Flush()
}

// topicSet is topic create and topic update.
func (a *app) topicSet(verb string, args []string) error {
	about := "Create a topic. Settings not given are the node's defaults."
	if verb == "update" {
		about = "Change a topic's settings: those given change, the others keep their values.\n" +
			"(The API replaces settings whole; fbctl reads them first.)"
	}
	f := a.flags("topic "+verb, "NAME [flags]", about, true, true)
	var segment, retBytes byteSize
	var retention retentionFlag
	f.Var(&segment, "segment-bytes", "segment file `size` (0: the node's default, 64MiB)")
	f.Var(&retention, "retention", "keep messages at least this `duration` (0: the nodes' -retention, for ever unless set)")
	f.Var(&retBytes, "retention-bytes", "remove the oldest segments above this `size` (0: the nodes' -retention-bytes, no limit unless set); segments go whole and a batch is never split, so a size under one batch or segment can leave no message")
	pos, err := f.parse(args, 1, 1)
	if err != nil {
		return err
	}
	name := pos[0]
	set := map[string]bool{}
	f.Visit(func(fl *flag.Flag) { set[fl.Name] = true })
	if verb == "update" && !set["segment-bytes"] && !set["retention"] && !set["retention-bytes"] {
		return usagef("topic update: nothing to change: give -segment-bytes, -retention or -retention-bytes")
	}
	c, _, err := f.connect()
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := f.deadline()
	defer cancel()

	var st client.TopicSettings
	if verb == "update" {
		topics, err := c.ListTopics(ctx)
		if err != nil {
			return err
		}
		found := false
		for _, t := range topics {
			if t.Name == name {
				st, found = t.Settings, true
				break
			}
		}
		if !found {
			return aboutTopic(name, fmt.Errorf("topic %q: %w", name, client.ErrTopicNotFound))
		}
	}
	if set["segment-bytes"] {
		st.SegmentBytes = int64(segment)
	}
	if set["retention"] {
		st.RetentionSeconds = int64(time.Duration(retention) / time.Second)
	}
	if set["retention-bytes"] {
		st.RetentionBytes = int64(retBytes)
	}
	if verb == "create" {
		err = c.CreateTopic(ctx, name, st)
	} else {
		err = c.UpdateTopic(ctx, name, st)
	}
	if err != nil {
		return aboutTopic(name, err)
	}
	t := client.Topic{Name: name, Settings: st}
	if f.json() {
		return writeJSONDoc(a.stdout, struct {
			Topic topicJSON `json:"topic"`
		}{toTopicJSON(t)})
	}
	fmt.Fprintf(a.stdout, "%sd topic %s: segment-bytes %s, retention %s, retention-bytes %s\n", verb, name,
		formatBytes(st.SegmentBytes, "default"), formatRetention(st.RetentionSeconds), formatBytes(st.RetentionBytes, "default"))
	return nil
}

func (a *app) topicRemove(args []string) error {
	f := a.flags("topic remove", "NAME [flags]",
		"Stop serving a topic. The nodes keep its files, moved aside under DATA/removed/, for fbnode -removed-retention (24h by default).", true, true)
	pos, err := f.parse(args, 1, 1)
	if err != nil {
		return err
	}
	name := pos[0]
	c, _, err := f.connect()
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := f.deadline()
	defer cancel()
	if err := c.RemoveTopic(ctx, name); err != nil {
		return aboutTopic(name, err)
	}
	if f.json() {
		return writeJSONDoc(a.stdout, struct {
			Topic   string `json:"topic"`
			Removed bool   `json:"removed"`
		}{name, true})
	}
	fmt.Fprintf(a.stdout, "removed topic %s\n", name)
	return nil
}

// writeJSONDoc writes v as one indented JSON document.
func writeJSONDoc(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// byteSize is a flag holding a size in bytes: a number with an optional
// unit.
type byteSize int64

var byteUnits = []struct {
	suffix string
	mult   int64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
	{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12},
	{"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}, {"T", 1 << 40},
	{"B", 1},
}

func (b *byteSize) String() string { return strconv.FormatInt(int64(*b), 10) }

func (b *byteSize) Set(s string) error {
	s = strings.TrimSpace(s)
	mult := int64(1)
	for _, u := range byteUnits {
		if len(s) > len(u.suffix) && strings.EqualFold(s[len(s)-len(u.suffix):], u.suffix) {
			mult, s = u.mult, strings.TrimSpace(s[:len(s)-len(u.suffix)])
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 || (n > 0 && mult > (1<<63-1)/n) {
		return fmt.Errorf("want a size such as 4096, 64KiB or 64MiB")
	}
	*b = byteSize(n * mult)
	return nil
}

// retentionFlag is a flag holding a duration in whole seconds, in
// flagval.ParseDuration's forms (a "d" unit besides time.ParseDuration's).
type retentionFlag time.Duration

func (r *retentionFlag) String() string { return time.Duration(*r).String() }

func (r *retentionFlag) Set(s string) error {
	d, err := flagval.ParseDuration(s)
	if err != nil {
		return err
	}
	if d%time.Second != 0 {
		return fmt.Errorf("want whole seconds")
	}
	*r = retentionFlag(d)
	return nil
}

// formatBytes formats a size with the largest binary unit dividing it.
func formatBytes(n int64, zero string) string {
	if n == 0 {
		return zero
	}
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n%u.mult == 0 {
			return fmt.Sprintf("%d%s", n/u.mult, u.suffix)
		}
	}
	return strconv.FormatInt(n, 10)
}

// formatRetention formats a retention in seconds: 7d, 24h, 90m, 1h0m30s.
func formatRetention(secs int64) string {
	switch {
	case secs == 0:
		return "default" // the nodes' -retention
	case secs%86400 == 0:
		return fmt.Sprintf("%dd", secs/86400)
	case secs%3600 == 0:
		return fmt.Sprintf("%dh", secs/3600)
	case secs%60 == 0:
		return fmt.Sprintf("%dm", secs/60)
	}
	return (time.Duration(secs) * time.Second).String()
}

// table is a text/tabwriter table whose lines lose their trailing padding
// (an empty last column would leave it).
type table struct {
	*tabwriter.Writer
	buf bytes.Buffer
	out io.Writer
}

func newTable(out io.Writer) *table {
	t := &table{out: out}
	t.Writer = tabwriter.NewWriter(&t.buf, 0, 4, 2, ' ', 0)
	return t
}

// Flush writes the table to its output.
func (t *table) Flush() error {
	if err := t.Writer.Flush(); err != nil {
		return err
	}
	for l := range strings.Lines(t.buf.String()) {
		if _, err := io.WriteString(t.out, strings.TrimRight(l, " \n")+"\n"); err != nil {
			return err
		}
	}
	t.buf.Reset()
	return nil
}
