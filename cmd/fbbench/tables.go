package main

// The -report-kind scaling, idle and rss tables, and "all".

import (
	"bufio"
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
)

// reportKind prints the table kind names ("all": every table that has
// rows, with headings).
func reportKind(w io.Writer, files []string, kind string) error {
	switch kind {
	case "medians":
		return report(w, files)
	case "scaling", "idle", "rss":
		runs, err := readRuns(files)
		if err != nil {
			return err
		}
		switch kind {
		case "scaling":
			return scalingTable(w, runs)
		case "idle":
			return idleTable(w, runs)
		}
		return rssTable(w, runs)
	}
	runs, err := readRuns(files)
	if err != nil {
		return err
	}
	fmt.Fprintln(w, "### Medians")
	fmt.Fprintln(w)
	if err := report(w, files); err != nil {
		fmt.Fprintln(w, "(none)")
	}
	for _, t := range []struct {
		title string
		f     func(io.Writer, []*Result) error
	}{{"Scaling", scalingTable}, {"Idle cost", idleTable}, {"Node RSS", rssTable}} {
		fmt.Fprintf(w, "\n### %s\n\n", t.title)
		if err := t.f(w, runs); err != nil {
			fmt.Fprintln(w, "(none)")
		}
	}
	return nil
}

// readRuns returns the run lines of files that were not interrupted.
func readRuns(files []string) ([]*Result, error) {
	var out []*Result
	for _, name := range files {
		f, err := os.Open(name)
		if err != nil {
			return nil, err
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 1<<20), 16<<20)
		n := 0
		for sc.Scan() {
			n++
			b := sc.Bytes()
			if len(b) == 0 || b[0] != '{' {
				continue
			}
			var r Result
			if err := json.Unmarshal(b, &r); err != nil {
				f.Close()
				return nil, fmt.Errorf("%s:%d: %w", name, n, err)
			}
			if r.Type == "run" && !r.Interrupted {
				out = append(out, &r)
			}
		}
		f.Close()
		if err := sc.Err(); err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
	}
	return out, nil
}

// scale is the size parameter a scaling sweep varies: W1's producers,
// W4's topics, IDLE's topics; 0 for the others.
func (r *Result) scale() int {
	var k string
	switch r.Workload {
	case "W1":
		k = "producers"
	case "W4":
		k = "topics"
	case "IDLE":
		k = "idle_topics"
	default:
		return 0
	}
	switch v := r.Params[k].(type) {
	case float64:
		return int(v)
	case int:
		return v
	}
	return 0
}

type groupKey struct {
	w, label string
	scale    int
}

// groupRuns groups runs by workload, label and scale, sorted so.
func groupRuns(runs []*Result, keep func(*Result) bool) ([]groupKey, map[groupKey][]*Result) {
	groups := map[groupKey][]*Result{}
	var keys []groupKey
	for _, r := range runs {
		if !keep(r) {
			continue
		}
		k := groupKey{r.Workload, r.Label, r.scale()}
		if _, ok := groups[k]; !ok {
			keys = append(keys, k)
		}
		groups[k] = append(groups[k], r)
	}
	slices.SortStableFunc(keys, func(a, b groupKey) int {
		return cmp.Or(cmp.Compare(a.w, b.w), cmp.Compare(a.label, b.label), cmp.Compare(a.scale, b.scale))
	})
	return keys, groups
}

func med(rs []*Result, fig string) float64 {
	vs := make([]float64, len(rs))
	for i, r := range rs {
		vs[i] = r.figure(fig)
	}
	return median(vs)
}

// scalingTable prints W1 and W4 medians by producers or topics.
func scalingTable(w io.Writer, runs []*Result) error {
	keys, groups := groupRuns(runs, func(r *Result) bool { return r.Workload == "W1" || r.Workload == "W4" })
	if len(keys) == 0 {
		return fmt.Errorf("no W1 or W4 runs")
	}
	fmt.Fprintln(w, "| workload | label | producers (W1) / topics (W4) | runs | msgs/s | MB/s | p50 ms | p99 ms | max ms | errors | max node RSS MiB |")
	fmt.Fprintln(w, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	for _, k := range keys {
		rs := groups[k]
		fmt.Fprintf(w, "| %s | %s | %d | %d | %.0f | %.2f | %.2f | %.2f | %.2f | %.0f | %s |\n",
			k.w, k.label, k.scale, len(rs), med(rs, "msgs_per_s"), med(rs, "mb_per_s"), med(rs, "p50_ms"),
			med(rs, "p99_ms"), med(rs, "max_ms"), med(rs, "errors"), rssCell(med(rs, "rss_max_mib")))
	}
	return nil
}

func rssCell(v float64) string {
	if v <= 0 {
		return "–"
	}
	return fmt.Sprintf("%.0f", v)
}

// idleTable prints the IDLE runs per label and topic count, in % of one
// core: each run's total over the nodes, their median, and the nodes' shares
// in the median run.
func idleTable(w io.Writer, runs []*Result) error {
	keys, groups := groupRuns(runs, func(r *Result) bool { return r.Workload == "IDLE" && r.Idle != nil })
	if len(keys) == 0 {
		return fmt.Errorf("no IDLE runs")
	}
	fmt.Fprintln(w, "| label | idle topics | topics in cluster | runs × window s | total % of a core, each run | total, median | CPU per node, median run | RSS per node MiB (max) |")
	fmt.Fprintln(w, "|---|---:|---:|---:|---|---:|---|---|")
	for _, k := range keys {
		rs := groups[k]
		totals := make([]string, len(rs))
		for i, r := range rs {
			totals[i] = fmt.Sprintf("%.2f", r.Idle.TotalCorePct)
		}
		// The median run: the middle one by total (the lower middle of an
		// even count), whose nodes' shares are shown.
		byTotal := slices.Clone(rs)
		slices.SortStableFunc(byTotal, func(a, b *Result) int { return cmp.Compare(a.Idle.TotalCorePct, b.Idle.TotalCorePct) })
		mid := byTotal[(len(byTotal)-1)/2].Idle
		cpu := make([]string, len(mid.Procs))
		for i, p := range mid.Procs {
			cpu[i] = fmt.Sprintf("%.2f", p.CorePct)
			if p.Error != "" {
				cpu[i] = "?"
			}
		}
		var rss []string
		for i := range mid.Procs {
			m, bad := 0.0, false
			for _, r := range rs {
				if i < len(r.Idle.Procs) {
					m = max(m, r.Idle.Procs[i].RSSMiB)
					bad = bad || r.Idle.Procs[i].Error != ""
				}
			}
			rss = append(rss, fmt.Sprintf("%.0f", m))
			if bad {
				rss[i] = "?"
			}
		}
		fmt.Fprintf(w, "| %s | %d | %d | %d × %.1f | %s | %.2f | %s | %s |\n", k.label, mid.Topics, mid.TopicsTotal, len(rs), mid.WindowS,
			strings.Join(totals, " / "), med(rs, "idle_core_pct"), strings.Join(cpu, " / "), strings.Join(rss, " / "))
	}
	return nil
}

// rssTable prints, per label and workload, each node's largest RSS at
// the end of a run and its CPU seconds per run (medians).
func rssTable(w io.Writer, runs []*Result) error {
	keys, groups := groupRuns(runs, func(r *Result) bool { return len(r.Procs) > 0 })
	if len(keys) == 0 {
		return fmt.Errorf("no runs with -pids")
	}
	fmt.Fprintln(w, "| workload | label | scale | runs | RSS per node at run end, MiB (max over runs) | CPU per node, % of a core (median) | ≤ 256 MiB |")
	fmt.Fprintln(w, "|---|---|---:|---:|---|---|---|")
	for _, k := range keys {
		rs := groups[k]
		n := len(rs[0].Procs)
		rss := make([]string, n)
		cpu := make([]string, n)
		ok := "yes"
		for i := range n {
			m := 0.0
			var pcts []float64
			for _, r := range rs {
				if i < len(r.Procs) {
					m = max(m, r.Procs[i].RSSMiB)
					pcts = append(pcts, r.Procs[i].CorePct)
				}
			}
			if m > 256 {
				ok = "**no**"
			}
			rss[i] = fmt.Sprintf("%.0f", m)
			cpu[i] = fmt.Sprintf("%.0f", median(pcts))
		}
		scale := "–"
		if k.scale > 0 {
			scale = fmt.Sprint(k.scale)
		}
		fmt.Fprintf(w, "| %s | %s | %s | %d | %s | %s | %s |\n", k.w, k.label, scale, len(rs),
			strings.Join(rss, " / "), strings.Join(cpu, " / "), ok)
	}
	return nil
}
