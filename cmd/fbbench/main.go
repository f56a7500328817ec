// Command fbbench runs benchmark workloads against a Forest Bus cluster and
// prints one JSON line per workload run.
//
//	fbbench -forestbus bench#default@127.0.0.1:3000 -workload all -runs 3 -label fsync
//
// Workloads: W1 throughput with commit (many producers, batches), W2
// latency (one producer, one-message sends), W3 sequential read (from a
// follower by default), W3S the same read through Subscribe (with borrowed
// messages; W3SC without: a new buffer per response), W4 many topics,
// IDLE the CPU cost of idle topics (of the node processes named by -pids).
// Run fbbench -h for the flags. scripts/bench.sh builds a node and fbbench,
// runs every workload in both sync modes, prints tables (fbbench -report)
// and draws charts (fbbench -chart).
//
// Each producer of W1 and W4 uses its own client.Client, as the original
// forest-test-send did; the Clients share their connections unless
// -private-connections; -shared-client makes the producers share one
// Client.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"syscall"
	"time"

	"github.com/forestbus/forestbus/client"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "fbbench:", err)
		os.Exit(1)
	}
}

// Env describes where the benchmark ran.
type Env struct {
	GoVersion  string `json:"go_version"`
	GOMAXPROCS int    `json:"gomaxprocs"`
	NumCPU     int    `json:"num_cpu"`
	OS         string `json:"os"`
	Arch       string `json:"arch"`
	Hostname   string `json:"hostname,omitempty"`
}

// Cluster describes the cluster as a node reported it.
type Cluster struct {
	ID    string `json:"id"`
	Node  string `json:"node"`
	Nodes int    `json:"nodes"`
}

// Fill describes the W3 fill, which is not part of the W3 timing.
type Fill struct {
	Messages  int64   `json:"messages"`
	DurationS float64 `json:"duration_s"`
	MsgsPerS  float64 `json:"msgs_per_s"`
	Errors    int64   `json:"errors"`
}

// Result is the JSON line of one workload run.
type Result struct {
	Type      string         `json:"type"` // "run"
	Workload  string         `json:"workload"`
	Run       int            `json:"run"`
	Runs      int            `json:"runs"`
	Label     string         `json:"label,omitempty"`
	Params    map[string]any `json:"params"`
	Start     time.Time      `json:"start"`
	DurationS float64        `json:"duration_s"`
	Messages  int64          `json:"messages"`
	Bytes     int64          `json:"bytes"`
	MsgsPerS  float64        `json:"msgs_per_s"`
	MBPerS    float64        `json:"mb_per_s"`
	Calls     int64          `json:"calls"`
	Errors    int64          `json:"errors"`
	// FirstError is the text of the first error, if any.
	FirstError string `json:"first_error,omitempty"`
	// Latency is per call: per batch for W1, W4 and the W2 sends, per
	// GetMessages call for W3.
	Latency *Latency `json:"latency"`
	// PerSecond counts the messages completed in each second of a timed
	// run (W1, W4), for charts.
	PerSecond []int64 `json:"per_second,omitempty"`
	Fill      *Fill   `json:"fill,omitempty"`
	// SetupS is the time W4 took to create its topics, outside the timing.
	SetupS float64 `json:"setup_s,omitempty"`
	// Churn counts W2's topic create and remove cycles (-churn).
	Churn       *Churn   `json:"churn,omitempty"`
	Interrupted bool     `json:"interrupted,omitempty"`
	Cluster     *Cluster `json:"cluster,omitempty"`
	// ReadNode is the node W3 and W3S read from.
	ReadNode *ReadNode `json:"read_node,omitempty"`
	// CDF is the latency distribution of W2 at fixed percents, for charts.
	CDF []CDFPoint `json:"cdf,omitempty"`
	// Idle is the IDLE workload's measurement.
	Idle *Idle `json:"idle,omitempty"`
	// Procs are the node processes of -pids: RSS at the end of the run,
	// CPU used during it.
	Procs []Proc `json:"procs,omitempty"`
	Env   Env    `json:"env"`
}

// Churn is what W2's -churn did while the sends were measured: whole
// create-and-remove cycles, the failed calls, and the first failure.
type Churn struct {
	Cycles     int64  `json:"cycles"`
	Errors     int64  `json:"errors"`
	FirstError string `json:"first_error,omitempty"`
}

// ReadNode names the node a read workload used.
type ReadNode struct {
	Index   int    `json:"index"`
	Address string `json:"address"`
	Name    string `json:"name,omitempty"`
	// Leader is the topic's leader as that node named it.
	Leader string `json:"leader,omitempty"`
	// Auto is set when fbbench picked the node (no -read-node).
	Auto bool `json:"auto"`
	// IsLeader is set when the node leads the topic (a one-node cluster,
	// or -read-node naming the leader).
	IsLeader bool `json:"is_leader"`
}

// CDFPoint is the latency at or below which P percent of the samples are.
type CDFPoint struct {
	P  float64 `json:"p"`
	Ms float64 `json:"ms"`
}

// Idle is the IDLE workload's measurement of the node processes.
type Idle struct {
	// Topics is the number of bench-idle topics; TopicsTotal every topic
	// of the cluster (the other workloads' too).
	Topics      int     `json:"topics"`
	TopicsTotal int     `json:"topics_total"`
	WindowS     float64 `json:"window_s"`
	// Procs hold each process's CPU over the window (core_pct: % of one core).
	Procs []Proc `json:"procs"`
	// TotalCorePct is the sum over the processes, in % of one core.
	TotalCorePct float64 `json:"total_core_pct"`
}

// Summary is the JSON line printed after the runs of a workload when
// -runs > 1: the median of each key figure across the runs.
type Summary struct {
	Type     string               `json:"type"` // "summary"
	Workload string               `json:"workload"`
	Runs     int                  `json:"runs"`
	Label    string               `json:"label,omitempty"`
	Params   map[string]any       `json:"params"`
	Median   map[string]float64   `json:"median"`
	Values   map[string][]float64 `json:"values"`
	Env      Env                  `json:"env"`
}

// keyFigures are the figures a summary takes the median of.
var keyFigures = []string{"msgs_per_s", "mb_per_s", "p50_ms", "p99_ms", "max_ms", "errors", "rss_max_mib", "idle_core_pct"}

func (r *Result) figure(name string) float64 {
	l := r.Latency
	if l == nil {
		l = &Latency{}
	}
	switch name {
	case "msgs_per_s":
		return r.MsgsPerS
	case "mb_per_s":
		return r.MBPerS
	case "p50_ms":
		return l.P50Ms
	case "p99_ms":
		return l.P99Ms
	case "max_ms":
		return l.MaxMs
	case "errors":
		return float64(r.Errors)
	case "rss_max_mib":
		m := 0.0
		for _, p := range r.Procs {
			m = max(m, p.RSSMiB)
		}
		return m
	case "idle_core_pct":
		if r.Idle != nil {
			return r.Idle.TotalCorePct
		}
	}
	return 0
}

func summarizeRuns(rs []*Result) *Summary {
	s := &Summary{
		Type:   "summary",
		Median: map[string]float64{},
		Values: map[string][]float64{},
	}
	if len(rs) == 0 {
		return s
	}
	s.Workload, s.Runs, s.Label, s.Params, s.Env = rs[0].Workload, len(rs), rs[0].Label, rs[0].Params, rs[0].Env
	for _, k := range keyFigures {
		vs := make([]float64, len(rs))
		for i, r := range rs {
			vs[i] = r.figure(k)
		}
		s.Values[k] = vs
		s.Median[k] = median(vs)
	}
	return s
}

func environment() Env {
	h, _ := os.Hostname()
	return Env{
		GoVersion:  runtime.Version(),
		GOMAXPROCS: runtime.GOMAXPROCS(0),
		NumCPU:     runtime.NumCPU(),
		OS:         runtime.GOOS,
		Arch:       runtime.GOARCH,
		Hostname:   h,
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, files, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	if cfg.Report {
		return reportKind(stdout, files, cfg.ReportKind)
	}
	if cfg.Chart {
		paths, err := charts(cfg.ChartOut, files)
		for _, p := range paths {
			fmt.Fprintln(stdout, p)
		}
		return err
	}
	if cfg.CPUProfile != "" {
		f, err := os.Create(cfg.CPUProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	b := &bench{cfg: cfg, log: stderr, env: environment()}
	b.cluster = b.clusterDetails(ctx)
	enc := json.NewEncoder(stdout)
	var failed error
	for _, w := range cfg.Workloads {
		var results []*Result
		for i := 1; i <= cfg.Runs; i++ {
			fmt.Fprintf(stderr, "fbbench: %s run %d/%d ...\n", w, i, cfg.Runs)
			r, err := b.runWorkload(ctx, w)
			if r != nil {
				r.Run, r.Runs = i, cfg.Runs
				if cfg.RunNumber > 0 {
					// One run of a series driven from outside (bench.sh
					// alternating builds): number it within the series.
					r.Run, r.Runs = cfg.RunNumber, max(cfg.RunNumber, cfg.Runs)
				}
				if err := enc.Encode(r); err != nil {
					return err
				}
				fmt.Fprintf(stderr, "fbbench: %s run %d: %.0f msgs/s, %.2f MB/s, p50 %.2f ms, p99 %.2f ms, %d errors\n",
					w, i, r.MsgsPerS, r.MBPerS, r.figure("p50_ms"), r.figure("p99_ms"), r.Errors)
				if !r.Interrupted {
					results = append(results, r)
				}
			}
			if ctx.Err() != nil {
				return fmt.Errorf("interrupted: %w", ctx.Err())
			}
			if err != nil {
				failed = errors.Join(failed, fmt.Errorf("%s run %d: %w", w, i, err))
				fmt.Fprintf(stderr, "fbbench: %s run %d failed: %v\n", w, i, err)
				break
			}
		}
		if cfg.Runs > 1 && len(results) > 0 {
			if err := enc.Encode(summarizeRuns(results)); err != nil {
				return err
			}
		}
	}
	return failed
}

// bench runs workloads with one config.
type bench struct {
	cfg     *config
	log     io.Writer
	env     Env
	cluster *Cluster
}

func (b *bench) newClient() *client.Client {
	opts := b.cfg.clientOptions()
	if b.cfg.UnarySends {
		opts = append(opts, client.WithUnarySends())
	}
	if b.cfg.PrivateConns {
		opts = append(opts, client.WithPrivateConnections())
	}
	return client.New(b.cfg.ClusterID, b.cfg.Nodes, opts...)
}

func (b *bench) clusterDetails(ctx context.Context) *Cluster {
	c := b.newClient()
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, b.cfg.Timeout)
	defer cancel()
	d, err := c.ClusterDetails(ctx)
	if err != nil {
		fmt.Fprintf(b.log, "fbbench: cluster details: %v\n", err)
		return nil
	}
	return &Cluster{ID: d.ClusterID, Node: d.NodeName, Nodes: len(d.Nodes)}
}

// runWorkload runs workload w once and, with -pids, adds the node
// processes' RSS and CPU to its result.
func (b *bench) runWorkload(ctx context.Context, w string) (*Result, error) {
	if len(b.cfg.PIDs) == 0 {
		return b.runOne(ctx, w)
	}
	before, berrs := sampleProcs(b.cfg.PIDs)
	r, err := b.runOne(ctx, w)
	after, aerrs := sampleProcs(b.cfg.PIDs)
	if r != nil {
		r.Procs = procDelta(b.cfg.PIDs, before, after, joinErrs(berrs, aerrs))
	}
	return r, err
}

func joinErrs(a, b []error) []error {
	out := make([]error, len(a))
	for i := range a {
		out[i] = errors.Join(a[i], b[i])
	}
	return out
}

func (b *bench) runOne(ctx context.Context, w string) (*Result, error) {
	switch w {
	case "W1":
		return b.w1(ctx)
	case "W2":
		return b.w2(ctx)
	case "W3":
		return b.w3(ctx)
	case "W3S":
		return b.w3s(ctx, "W3S")
	case "W3SC":
		return b.w3s(ctx, "W3SC")
	case "W4":
		return b.w4(ctx)
	case "IDLE":
		return b.idle(ctx)
	}
	return nil, fmt.Errorf("unknown workload %q", w)
}

func (b *bench) newResult(w string, params map[string]any) *Result {
	params["nodes"] = b.cfg.Nodes
	params["cluster_id"] = b.cfg.ClusterID
	return &Result{
		Type:     "run",
		Workload: w,
		Label:    b.cfg.Label,
		Params:   params,
		Cluster:  b.cluster,
		Env:      b.env,
	}
}

// finish fills the rates of r from its counts and elapsed time.
func (r *Result) finish(elapsed time.Duration) {
	r.DurationS = elapsed.Seconds()
	if r.DurationS > 0 {
		r.MsgsPerS = float64(r.Messages) / r.DurationS
		r.MBPerS = float64(r.Bytes) / r.DurationS / 1e6
	}
}
