package main

import (
	"bytes"
	"encoding/xml"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// The charts are plain SVG written by hand: a line chart with axes, ticks,
// grid lines, axis labels and a legend, no dependencies.

type point struct{ x, y float64 }

type chartSeries struct {
	name string
	pts  []point
}

type lineChart struct {
	title, xLabel, yLabel string
	logX                  bool
	yMin0                 bool // y axis starts at 0
	yFmt                  func(float64) string
	xFmt                  func(float64) string
	series                []chartSeries
}

const (
	chartW, chartH                     = 860, 440
	marginL, marginR, marginT, marginB = 80, 230, 44, 56
)

var palette = []string{
	"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
	"#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
}

// niceTicks returns about n round tick values covering [lo, hi].
func niceTicks(lo, hi float64, n int) []float64 {
	if hi <= lo {
		hi = lo + 1
	}
	raw := (hi - lo) / float64(n)
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	step := mag
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if m*mag >= raw {
			step = m * mag
			break
		}
	}
	var out []float64
	for v := math.Ceil(lo/step-1e-9) * step; v <= hi+step*1e-9; v += step {
		if math.Abs(v) < step*1e-9 {
			v = 0 // not -0, nor 1e-17
		}
		out = append(out, v)
	}
	return out
}

// logTicks returns 1, 2, 5 × powers of ten within [lo, hi].
func logTicks(lo, hi float64) []float64 {
	var out []float64
	for e := math.Floor(math.Log10(lo)); e <= math.Ceil(math.Log10(hi)); e++ {
		for _, m := range []float64{1, 2, 5} {
			v := m * math.Pow(10, e)
			if v >= lo*(1-1e-9) && v <= hi*(1+1e-9) {
				out = append(out, v)
			}
		}
	}
	return out
}

// siFmt formats v with a k or M suffix.
func siFmt(v float64) string {
	switch a := math.Abs(v); {
	case a >= 1e6:
		return strconv.FormatFloat(v/1e6, 'f', -1, 64) + "M"
	case a >= 1e3:
		return strconv.FormatFloat(v/1e3, 'f', -1, 64) + "k"
	}
	return strconv.FormatFloat(v, 'f', -1, 64)
}

func plainFmt(v float64) string { return strconv.FormatFloat(v, 'g', 4, 64) }

func esc(s string) string {
	var b strings.Builder
	_ = xml.EscapeText(&b, []byte(s))
	return b.String()
}

// svg renders the chart. Series without points are left out.
func (c *lineChart) svg() []byte {
	xFmt, yFmt := c.xFmt, c.yFmt
	if xFmt == nil {
		xFmt = plainFmt
	}
	if yFmt == nil {
		yFmt = plainFmt
	}
	xlo, xhi := math.Inf(1), math.Inf(-1)
	ylo, yhi := math.Inf(1), math.Inf(-1)
	for _, s := range c.series {
		for _, p := range s.pts {
			if c.logX && p.x <= 0 {
				continue
			}
			xlo, xhi = min(xlo, p.x), max(xhi, p.x)
			ylo, yhi = min(ylo, p.y), max(yhi, p.y)
		}
	}
	if math.IsInf(xlo, 1) { // no data
		xlo, xhi, ylo, yhi = 1, 10, 0, 1
	}
	if c.yMin0 {
		ylo = min(ylo, 0)
	}
	var xt, yt []float64
	if c.logX {
		xlo = math.Pow(10, math.Floor(math.Log10(xlo)))
		xhi = math.Pow(10, math.Ceil(math.Log10(xhi)))
		if xhi <= xlo {
			xhi = xlo * 10
		}
		xt = logTicks(xlo, xhi)
	} else {
		xt = niceTicks(xlo, xhi, 8)
		xlo, xhi = min(xlo, xt[0]), max(xhi, xt[len(xt)-1])
	}
	yt = niceTicks(ylo, yhi, 6)
	ylo, yhi = min(ylo, yt[0]), max(yhi, yt[len(yt)-1])
	if yhi <= ylo {
		yhi = ylo + 1
	}
	pw, ph := float64(chartW-marginL-marginR), float64(chartH-marginT-marginB)
	px := func(x float64) float64 {
		if c.logX {
			return marginL + pw*(math.Log10(x)-math.Log10(xlo))/(math.Log10(xhi)-math.Log10(xlo))
		}
		return marginL + pw*(x-xlo)/(xhi-xlo)
	}
	py := func(y float64) float64 { return marginT + ph - ph*(y-ylo)/(yhi-ylo) }

	var b bytes.Buffer
	fmt.Fprintf(&b, `<?xml version="1.0" encoding="UTF-8"?>`+"\n")
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", chartW, chartH, chartW, chartH)
	fmt.Fprintf(&b, `<rect width="%d" height="%d" fill="white"/>`+"\n", chartW, chartH)
	fmt.Fprintf(&b, `<text x="%d" y="24" font-size="15" font-weight="bold">%s</text>`+"\n", marginL, esc(c.title))
	// Grid and ticks.
	b.WriteString(`<g class="grid" stroke="#e0e0e0" stroke-width="1">` + "\n")
	for _, v := range xt {
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%.1f"/>`+"\n", px(v), marginT, px(v), marginT+ph)
	}
	for _, v := range yt {
		fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%.1f" y2="%.1f"/>`+"\n", marginL, py(v), marginL+pw, py(v))
	}
	b.WriteString("</g>\n")
	b.WriteString(`<g class="axes" stroke="black" stroke-width="1">` + "\n")
	fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%.1f" y2="%.1f"/>`+"\n", marginL, marginT+ph, marginL+pw, marginT+ph)
	fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%.1f"/>`+"\n", marginL, marginT, marginL, marginT+ph)
	b.WriteString("</g>\n")
	b.WriteString(`<g class="ticks">` + "\n")
	for _, v := range xt {
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`+"\n", px(v), marginT+ph+16, esc(xFmt(v)))
	}
	for _, v := range yt {
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end">%s</text>`+"\n", marginL-6, py(v)+4, esc(yFmt(v)))
	}
	b.WriteString("</g>\n")
	fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle">%s</text>`+"\n", marginL+pw/2, chartH-14, esc(c.xLabel))
	fmt.Fprintf(&b, `<text x="16" y="%.1f" text-anchor="middle" transform="rotate(-90 16 %.1f)">%s</text>`+"\n", marginT+ph/2, marginT+ph/2, esc(c.yLabel))
	// Series and legend.
	i := 0
	for _, s := range c.series {
		var pts []string
		for _, p := range s.pts {
			if c.logX && p.x <= 0 {
				continue
			}
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", px(p.x), py(p.y)))
		}
		if len(pts) == 0 {
			continue
		}
		color := palette[i%len(palette)]
		dash := ""
		if i >= len(palette) {
			dash = ` stroke-dasharray="5,3"`
		}
		fmt.Fprintf(&b, `<polyline class="series" fill="none" stroke="%s" stroke-width="1.8"%s points="%s"><title>%s</title></polyline>`+"\n",
			color, dash, strings.Join(pts, " "), esc(s.name))
		ly := float64(marginT + 8 + 18*i)
		lx := float64(chartW - marginR + 16)
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="2.5"%s/>`+"\n", lx, ly, lx+22, ly, color, dash)
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f">%s</text>`+"\n", lx+28, ly+4, esc(s.name))
		i++
	}
	if i == 0 {
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle" fill="#888">no data</text>`+"\n", marginL+pw/2, marginT+ph/2)
	}
	b.WriteString("</svg>\n")
	return b.Bytes()
}

// seriesName names a run's line: its label (and its scale when the runs
// have several) and run number.
func seriesName(r *Result, scales bool) string {
	name := r.Label
	if name == "" {
		name = "(no label)"
	}
	if scales {
		name += fmt.Sprintf(" ×%d", r.scale())
	}
	if r.Runs > 1 {
		name += fmt.Sprintf(" run %d", r.Run)
	}
	return name
}

func multipleScales(rs []*Result) bool {
	for _, r := range rs[1:] {
		if r.scale() != rs[0].scale() {
			return true
		}
	}
	return false
}

// w1Chart plots W1's messages per second over the run's full seconds.
func w1Chart(runs []*Result) *lineChart {
	c := &lineChart{
		title:  "W1 throughput over time (committed msgs/s, per second)",
		xLabel: "seconds into the run", yLabel: "msgs/s", yMin0: true, yFmt: siFmt,
	}
	var w1 []*Result
	for _, r := range runs {
		if r.Workload == "W1" && len(r.PerSecond) > 0 {
			w1 = append(w1, r)
		}
	}
	if len(w1) == 0 {
		return c
	}
	scales := multipleScales(w1)
	for _, r := range w1 {
		full := len(r.PerSecond)
		if d, ok := r.Params["duration_s"].(float64); ok && int(d) < full {
			full = int(d) // the partial last second and the in-flight tail
		}
		s := chartSeries{name: seriesName(r, scales)}
		for i, n := range r.PerSecond[:full] {
			s.pts = append(s.pts, point{float64(i + 1), float64(n)})
		}
		c.series = append(c.series, s)
	}
	return c
}

// w2Chart plots the CDF of W2's send latency, log-scale x. Runs without
// the "cdf" field use their histogram buckets' upper bounds.
func w2Chart(runs []*Result) *lineChart {
	c := &lineChart{
		title:  "W2 latency distribution (1-message send, wait for commit)",
		xLabel: "latency, ms (log scale)", yLabel: "% of sends at or below",
		logX: true, yMin0: true,
		yFmt: func(v float64) string { return strconv.FormatFloat(v, 'f', -1, 64) },
	}
	for _, r := range runs {
		if r.Workload != "W2" {
			continue
		}
		s := chartSeries{name: seriesName(r, false)}
		if len(r.CDF) > 0 {
			for _, p := range r.CDF {
				s.pts = append(s.pts, point{p.Ms, p.P})
			}
		} else if r.Latency != nil && r.Latency.Count > 0 {
			cum := 0
			for _, bk := range r.Latency.Histogram {
				cum += bk.Count
				x := bk.LeMs
				if bk.Inf {
					x = r.Latency.MaxMs
				}
				s.pts = append(s.pts, point{x, 100 * float64(cum) / float64(r.Latency.Count)})
			}
		}
		if len(s.pts) > 0 {
			c.series = append(c.series, s)
		}
	}
	return c
}

// charts writes the W1 and W2 charts of the run lines in files to dir and
// returns the paths written.
func charts(dir string, files []string) ([]string, error) {
	runs, err := readRuns(files)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	var paths []string
	var missing []string
	for _, ch := range []struct {
		file string
		c    *lineChart
		w    string
	}{{"w1-throughput.svg", w1Chart(runs), "W1"}, {"w2-latency.svg", w2Chart(runs), "W2"}} {
		if len(ch.c.series) == 0 {
			missing = append(missing, ch.w)
			continue
		}
		p := filepath.Join(dir, ch.file)
		if err := os.WriteFile(p, ch.c.svg(), 0o644); err != nil {
			return paths, err
		}
		paths = append(paths, p)
	}
	if len(paths) == 0 {
		return nil, errors.New("-chart: no W1 or W2 runs in the files")
	}
	if len(missing) > 0 {
		fmt.Fprintf(os.Stderr, "fbbench: -chart: no %s runs, chart left out\n", strings.Join(missing, ", "))
	}
	return paths, nil
}
