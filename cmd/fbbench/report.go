package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
)

// reportRow is one (workload, label) row of the report table.
type reportRow struct {
	workload, label string
	runs            int
	median          map[string]float64
}

// line is the part of a JSON line the report reads.
type line struct {
	Type     string             `json:"type"`
	Workload string             `json:"workload"`
	Label    string             `json:"label"`
	Runs     int                `json:"runs"`
	Median   map[string]float64 `json:"median"`
	Result
}

// collect reads the JSON lines of files into rows: the summary line of a
// (workload, label) when there is one, else the median of its run lines.
func collect(files []string) ([]reportRow, error) {
	type key struct{ w, l string }
	var order []key
	summaries := map[key]*reportRow{}
	runs := map[key][]*Result{}
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
			if len(sc.Bytes()) == 0 || sc.Bytes()[0] != '{' {
				continue
			}
			var l line
			if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
				f.Close()
				return nil, fmt.Errorf("%s:%d: %w", name, n, err)
			}
			k := key{l.Workload, l.Label}
			if _, ok := summaries[k]; !ok && len(runs[k]) == 0 {
				order = append(order, k)
			}
			switch l.Type {
			case "summary":
				summaries[k] = &reportRow{workload: k.w, label: k.l, runs: l.Runs, median: l.Median}
			case "run":
				r := l.Result
				r.Workload, r.Label, r.Type = l.Workload, l.Label, l.Type
				if !r.Interrupted {
					runs[k] = append(runs[k], &r)
				}
			}
		}
		f.Close()
		if err := sc.Err(); err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
	}
	var rows []reportRow
	for _, k := range order {
		if k.w == "IDLE" { // no rate: see the idle table
			continue
		}
		if s, ok := summaries[k]; ok {
			rows = append(rows, *s)
			continue
		}
		if rs := runs[k]; len(rs) > 0 {
			s := summarizeRuns(rs)
			rows = append(rows, reportRow{workload: k.w, label: k.l, runs: s.Runs, median: s.Median})
		}
	}
	slices.SortStableFunc(rows, func(a, b reportRow) int {
		if a.workload < b.workload {
			return -1
		}
		if a.workload > b.workload {
			return 1
		}
		return 0
	})
	return rows, nil
}

var workloadNames = map[string]string{
	"W1":   "W1 throughput (batch latency)",
	"W2":   "W2 latency (1-message send)",
	"W3":   "W3 read (per GetMessages call)",
	"W3S":  "W3S subscribe (per 1000 msgs)",
	"W3SC": "W3SC subscribe, copied (per 1000 msgs)",
	"W4":   "W4 many topics (batch latency)",
	"IDLE": "IDLE topics (first-send latency)",
}

// report prints a markdown table of the medians found in files.
func report(w io.Writer, files []string) error {
	rows, err := collect(files)
	if err != nil {
		return err
	}
	if len(rows) == 0 {
		return fmt.Errorf("no fbbench JSON lines in %v", files)
	}
	fmt.Fprintln(w, "| workload | label | runs | msgs/s | MB/s | p50 ms | p99 ms | max ms | errors |")
	fmt.Fprintln(w, "|---|---|---:|---:|---:|---:|---:|---:|---:|")
	for _, r := range rows {
		name := workloadNames[r.workload]
		if name == "" {
			name = r.workload
		}
		m := r.median
		fmt.Fprintf(w, "| %s | %s | %d | %.0f | %.2f | %.2f | %.2f | %.2f | %.0f |\n",
			name, r.label, r.runs, m["msgs_per_s"], m["mb_per_s"], m["p50_ms"], m["p99_ms"], m["max_ms"], m["errors"])
	}
	return nil
}
