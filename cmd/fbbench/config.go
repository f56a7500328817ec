package main

import (
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/forestbus/forestbus/client"
	"github.com/forestbus/forestbus/internal/tlsfiles"
)

// allWorkloads lists the workloads in the order "all" runs them.
// IDLE is not part of "all": it measures the node processes (-pids) and
// adds topics that stay.
var allWorkloads = []string{"W1", "W2", "W3", "W3S", "W3SC", "W4"}

// config is everything the flags set.
type config struct {
	ConnString string
	CPUProfile string
	RunNumber  int
	ClusterID  string
	Topic      string
	Nodes      []string
	Workloads  []string

	Producers     int
	Batch         int
	Size          int
	Duration      time.Duration
	WaitForCommit bool
	SharedClient  bool
	PrivateConns  bool
	UnarySends    bool
	Warmup        int
	Sends         int
	Churn         int
	ReadMessages  int
	ReadFrom      int64
	Quantity      int
	FillProducers int
	FillBatch     int
	Topics        int
	W4Batch       int
	Runs          int
	Timeout       time.Duration
	MaxTime       time.Duration
	MaxBatches    int
	Label         string
	Report        bool
	ReportKind    string

	// ReadNode is the index into Nodes W3, W3S and W3SC read from; -1 picks a
	// node that does not lead the topic.
	ReadNode       int
	SubscribeBatch int
	PIDs           []int
	IdleTopics     int
	IdleWindow     time.Duration
	IdleSettle     time.Duration

	Chart    bool
	ChartOut string

	// TLS names the PEM files to talk TLS to the nodes with (-tls-ca,
	// -tls-cert, -tls-key, as fbctl's); tlsConfig is made from them.
	TLS       tlsfiles.Files
	tlsConfig *tls.Config
}

// clientOptions are the options of every client fbbench makes: TLS when
// its files are given.
func (c *config) clientOptions() []client.Option {
	if c.tlsConfig == nil {
		return nil
	}
	return []client.Option{client.WithTLS(c.tlsConfig)}
}

const usageText = `fbbench drives a Forest Bus cluster with benchmark workloads and prints one
JSON line per workload run to standard output (progress goes to standard
error). With -runs R > 1 it also prints, after the R runs of a workload, a
summary line holding the median of the key figures.

Workloads:
  W1  throughput: -producers goroutines each send batches of -batch messages
      of -size bytes (with -wait-for-commit) for -duration
  W2  latency: 1 producer, -warmup sends, then -sends sequential sends of one
      message with wait-for-commit; with -churn N, another client meanwhile
      creates and removes a topic bench-churn-<pid>-<i> N times a second
      (what topic operations cost other topics' sends; the JSON's "churn"
      counts the cycles)
  W3  read: one reader gets -read-messages committed messages from -read-from,
      -quantity per call; the topic is filled first if it holds too few (the
      fill is reported in the "fill" field, outside the timing)
  W3S subscribe read: the same -read-messages messages from -read-from
      through client.Subscribe (one stream), from the same node as W3; fn
      keeps no message, so it subscribes WithBorrowedMessages
  W3SC the same, without WithBorrowedMessages: a new buffer per response,
      which fn's messages could keep
  W4  many topics: -topics topics bench-w4-<i> (created if absent), one
      producer each sending batches of -w4-batch for -duration
  IDLE idle cost (not in "all"): creates -idle-topics topics bench-idle-<i>,
      sends one message to each, waits -idle-settle, then measures the CPU
      time of the node processes named by -pids over -idle-window

W3, W3S and W3SC read from one node: -read-node N (index into the connection
string's nodes), or by default the first node that does not lead the topic
(asked with TopicDetails on each node), so a cluster's reads hit a follower.
The JSON names the node ("read_node").

-pids 1,2,3 names the node processes (on this machine): every run line then
carries each process's RSS (VmRSS of /proc/PID/status) and CPU seconds
(utime+stime of /proc/PID/stat, in clock ticks taken as 100 per second, the
Linux USER_HZ on every common architecture) used during the run.

Clients: each producer goroutine of W1 and W4 has its own client.Client, as
the original forest-test-send did. The Clients of one process share their
connection to each node (a Produce stream each on it); -private-connections
gives each Client its own, as forest-test-send's producers had;
-shared-client makes all producers of a run share one Client (one Produce
stream per node).
Clients send batches over each node's Produce stream; -unary-sends makes
each batch a SendMessages call, as before the stream existed.

Every load loop stops by itself: timed loops (W1, W4) at -duration or when
the producers have sent -max-batches batches; counted loops (W2, W3, the W3
fill) at their count or after -max-time. Ctrl-C stops the run in progress,
prints its partial result and exits.

  fbbench -report FILE...   prints a markdown table of the summary lines
                            (or of the run lines) found in the files;
                            -report-kind scaling|idle|rss|medians|all picks
                            the table (medians by default).
  fbbench -chart -o DIR FILE...
                            writes DIR/w1-throughput.svg (W1 msgs/s per
                            second, a line per label and run) and
                            DIR/w2-latency.svg (CDF of the W2 send latency,
                            log-scale x) from the JSON lines in the files.

Flags:
`

// parseFlags parses args into a config and checks it.
func parseFlags(args []string, stderr io.Writer) (*config, []string, error) {
	fs := flag.NewFlagSet("fbbench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, usageText)
		fs.PrintDefaults()
	}
	c := &config{}
	var workloads string
	fs.StringVar(&c.ConnString, "forestbus", "test#default@127.0.0.1:3000", "connection string cluster#topic@host:port,host:port (no topic: \"default\")")
	fs.StringVar(&workloads, "workload", "all", "workloads to run, comma separated: W1,W2,W3,W3S,W3SC,W4,IDLE or all (W1,W2,W3,W3S,W3SC,W4)")
	fs.IntVar(&c.Producers, "producers", 50, "W1: producer goroutines")
	fs.IntVar(&c.Batch, "batch", 100, "W1: messages per batch")
	fs.IntVar(&c.Size, "size", 100, "message payload size in bytes (all workloads)")
	fs.DurationVar(&c.Duration, "duration", 15*time.Second, "W1, W4: how long producers send")
	fs.BoolVar(&c.WaitForCommit, "wait-for-commit", true, "W1, W4: send with wait-for-commit (W2 and the W3 fill always wait)")
	fs.BoolVar(&c.SharedClient, "shared-client", false, "W1, W4: all producers share one client.Client instead of one each")
	fs.BoolVar(&c.PrivateConns, "private-connections", false, "every client.Client has connections of its own (client.WithPrivateConnections), as every forest-test-send producer had")
	fs.BoolVar(&c.UnarySends, "unary-sends", false, "send each batch as a SendMessages call (client.WithUnarySends), not over the Produce stream")
	fs.IntVar(&c.Warmup, "warmup", 20, "W2: sends before measuring")
	fs.IntVar(&c.Sends, "sends", 2000, "W2: measured sequential one-message sends")
	fs.IntVar(&c.Churn, "churn", 0, "W2: create and remove this many topics a second while measuring (0: none)")
	fs.IntVar(&c.ReadMessages, "read-messages", 1_000_000, "W3: messages to read")
	fs.Int64Var(&c.ReadFrom, "read-from", 1, "W3: first message ID to read")
	fs.IntVar(&c.Quantity, "quantity", 500, "W3: quantity asked per GetMessages call")
	fs.IntVar(&c.FillProducers, "fill-producers", 4, "W3: producers filling the topic when it holds too few messages")
	fs.IntVar(&c.FillBatch, "fill-batch", 1000, "W3: messages per fill batch (capped at 8 MiB of payload)")
	fs.IntVar(&c.Topics, "topics", 100, "W4: number of topics, one producer each")
	fs.IntVar(&c.W4Batch, "w4-batch", 10, "W4: messages per batch")
	fs.IntVar(&c.Runs, "runs", 1, "times each workload runs; > 1 adds a summary line with medians")
	fs.IntVar(&c.RunNumber, "run-number", 0, "with -runs 1: the run's number in a series of separate fbbench calls (bench.sh alternates builds run by run); -report takes the median of the series")
	fs.DurationVar(&c.Timeout, "timeout", 30*time.Second, "deadline of one client call (the client retries within it)")
	fs.DurationVar(&c.MaxTime, "max-time", 2*time.Minute, "W2, W3: time bound of the counted loops (and of the W3 fill)")
	fs.IntVar(&c.MaxBatches, "max-batches", 2_000_000, "W1, W4: count bound of a run, batches in all, split evenly between the producers (sizes the preallocated latency slices, 8 bytes a batch)")
	fs.StringVar(&c.CPUProfile, "cpuprofile", "", "write a CPU profile of fbbench itself (the load generator) to this file")
	fs.StringVar(&c.Label, "label", "", "free text copied into every JSON line, e.g. the node's sync mode \"fsync\" or \"os\"")
	fs.BoolVar(&c.Report, "report", false, "print a markdown table of the JSON lines in the files named as arguments, and exit")
	fs.StringVar(&c.ReportKind, "report-kind", "medians", "-report: table to print: medians, scaling, idle, rss or all")
	fs.IntVar(&c.ReadNode, "read-node", -1, "W3, W3S, W3SC: index (from 0) into the connection string's nodes to read from; -1: the first node that does not lead the topic")
	fs.IntVar(&c.SubscribeBatch, "subscribe-batch", 0, "W3S, W3SC: most messages per stream response (0: the node's default)")
	var pids string
	fs.StringVar(&pids, "pids", "", "comma-separated PIDs of the node processes (same machine): RSS and CPU per run, and the IDLE workload")
	fs.IntVar(&c.IdleTopics, "idle-topics", 100, "IDLE: topics bench-idle-<i> to create and leave idle")
	fs.DurationVar(&c.IdleWindow, "idle-window", 20*time.Second, "IDLE: CPU measuring window")
	fs.DurationVar(&c.IdleSettle, "idle-settle", 3*time.Second, "IDLE: wait after the last send before measuring")
	fs.BoolVar(&c.Chart, "chart", false, "write SVG charts of the JSON lines in the files named as arguments to -o, and exit")
	fs.StringVar(&c.ChartOut, "o", ".", "-chart: output directory")
	fs.StringVar(&c.TLS.CA, "tls-ca", "", "talk TLS to the nodes, verifying them against the authorities in this PEM `file` (fbnode -tls-ca)")
	fs.StringVar(&c.TLS.Cert, "tls-cert", "", "talk TLS, presenting this PEM client certificate `file` (for nodes with -tls-client-auth; with -tls-key)")
	fs.StringVar(&c.TLS.Key, "tls-key", "", "the private key `file` (PEM) of -tls-cert")
	if err := fs.Parse(args); err != nil {
		return nil, nil, err
	}
	if c.Report || c.Chart {
		if fs.NArg() == 0 {
			return nil, nil, errors.New("-report, -chart: name at least one JSON lines file")
		}
		switch c.ReportKind {
		case "medians", "scaling", "idle", "rss", "all":
		default:
			return nil, nil, fmt.Errorf("-report-kind %q: want medians, scaling, idle, rss or all", c.ReportKind)
		}
		return c, fs.Args(), nil
	}
	ps, err := parsePIDs(pids)
	if err != nil {
		return nil, nil, err
	}
	if c.TLS.Set() {
		if c.tlsConfig, err = c.TLS.Client(); err != nil {
			return nil, nil, err
		}
	}
	c.PIDs = ps
	if fs.NArg() > 0 {
		return nil, nil, fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	ws, err := parseWorkloads(workloads)
	if err != nil {
		return nil, nil, err
	}
	c.Workloads = ws
	if err := c.parseConn(); err != nil {
		return nil, nil, err
	}
	if err := c.validate(); err != nil {
		return nil, nil, err
	}
	return c, nil, nil
}

func parseWorkloads(s string) ([]string, error) {
	var out []string
	seen := map[string]bool{}
	for _, w := range strings.Split(s, ",") {
		w = strings.ToUpper(strings.TrimSpace(w))
		switch w {
		case "":
			continue
		case "ALL":
			for _, a := range allWorkloads {
				if !seen[a] {
					seen[a] = true
					out = append(out, a)
				}
			}
		case "W1", "W2", "W3", "W3S", "W3SC", "W4", "IDLE":
			if !seen[w] {
				seen[w] = true
				out = append(out, w)
			}
		default:
			return nil, fmt.Errorf("-workload: unknown workload %q (want W1, W2, W3, W3S, W3SC, W4, IDLE or all)", w)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("-workload: no workload named")
	}
	return out, nil
}

func (c *config) parseConn() error {
	cluster, topic, nodes := client.ParseConnectionString(c.ConnString)
	if len(nodes) == 0 {
		return fmt.Errorf("-forestbus %q: want cluster#topic@host:port[,host:port...]", c.ConnString)
	}
	for _, n := range nodes {
		if strings.TrimSpace(n) == "" {
			return fmt.Errorf("-forestbus %q: empty node address", c.ConnString)
		}
	}
	if topic == "" {
		topic = "default"
	}
	c.ClusterID, c.Topic, c.Nodes = cluster, topic, nodes
	return nil
}

// maxPayload is the batch payload fbbench refuses to exceed: the node's
// default max batch size. A node started with a larger one needs no more
// for a benchmark.
const maxPayload = 16 << 20

func (c *config) validate() error {
	positive := []struct {
		name string
		v    int
	}{
		{"-producers", c.Producers}, {"-batch", c.Batch}, {"-size", c.Size},
		{"-sends", c.Sends}, {"-read-messages", c.ReadMessages}, {"-quantity", c.Quantity},
		{"-fill-producers", c.FillProducers}, {"-fill-batch", c.FillBatch},
		{"-topics", c.Topics}, {"-w4-batch", c.W4Batch}, {"-runs", c.Runs},
		{"-max-batches", c.MaxBatches}, {"-idle-topics", c.IdleTopics},
	}
	for _, p := range positive {
		if p.v <= 0 {
			return fmt.Errorf("%s must be > 0, got %d", p.name, p.v)
		}
	}
	if c.ReadNode < -1 || c.ReadNode >= len(c.Nodes) {
		return fmt.Errorf("-read-node %d: want -1 or 0..%d (the connection string names %d nodes)", c.ReadNode, len(c.Nodes)-1, len(c.Nodes))
	}
	if c.RunNumber < 0 || c.RunNumber > 0 && c.Runs != 1 {
		return fmt.Errorf("-run-number %d: want 0, or a number with -runs 1", c.RunNumber)
	}
	if c.SubscribeBatch < 0 || c.SubscribeBatch > 4096 {
		return fmt.Errorf("-subscribe-batch must be 0..4096, got %d", c.SubscribeBatch)
	}
	if slices.Contains(c.Workloads, "IDLE") && len(c.PIDs) == 0 {
		return errors.New("workload IDLE needs -pids (the node processes to measure)")
	}
	if c.Warmup < 0 {
		return fmt.Errorf("-warmup must be >= 0, got %d", c.Warmup)
	}
	if c.Churn < 0 || c.Churn > 1000 {
		return fmt.Errorf("-churn must be 0..1000 cycles a second, got %d", c.Churn)
	}
	if c.ReadFrom < 1 {
		return fmt.Errorf("-read-from must be >= 1, got %d", c.ReadFrom)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"-duration", c.Duration}, {"-timeout", c.Timeout}, {"-max-time", c.MaxTime}, {"-idle-window", c.IdleWindow}} {
		if d.v <= 0 {
			return fmt.Errorf("%s must be > 0, got %s", d.name, d.v)
		}
	}
	if c.Size > 1<<20 {
		return fmt.Errorf("-size %d exceeds the node's default max message size (1 MiB)", c.Size)
	}
	if int64(c.Batch)*int64(c.Size) > maxPayload {
		return fmt.Errorf("-batch × -size = %d bytes exceeds the node's default max batch size (16 MiB)", int64(c.Batch)*int64(c.Size))
	}
	if int64(c.W4Batch)*int64(c.Size) > maxPayload {
		return fmt.Errorf("-w4-batch × -size = %d bytes exceeds the node's default max batch size (16 MiB)", int64(c.W4Batch)*int64(c.Size))
	}
	if c.MaxBatches > 50_000_000 {
		return fmt.Errorf("-max-batches %d would preallocate more than 400 MB of latency samples", c.MaxBatches)
	}
	return nil
}

// fillBatch is the W3 fill batch size, capped at 8 MiB of payload.
func (c *config) fillBatch() int {
	b := c.FillBatch
	if limit := (8 << 20) / c.Size; b > limit {
		b = max(limit, 1)
	}
	return b
}

// perProducer splits the -max-batches count bound between n producers.
func (c *config) perProducer(n int) int {
	return max((c.MaxBatches+n-1)/n, 1)
}

// parsePIDs parses -pids: comma-separated positive process IDs.
func parsePIDs(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("-pids: %q is not a process ID", f)
		}
		out = append(out, n)
	}
	return out, nil
}
