package main

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// clockTicks is the unit of utime and stime in /proc/PID/stat: USER_HZ,
// which Linux fixes at 100 on every common architecture (x86, arm, arm64,
// riscv, ...) whatever the kernel's internal HZ. Reading it with
// sysconf(_SC_CLK_TCK) would need cgo or the auxiliary vector (AT_CLKTCK);
// fbbench assumes 100.
const clockTicks = 100

// procSample is what fbbench reads about one node process at one time.
type procSample struct {
	at       time.Time
	cpuTicks int64 // utime + stime
	rssBytes int64
}

// parseStatCPU returns utime+stime, in clock ticks, from the text of
// /proc/PID/stat. The command name (field 2) is in parentheses and may hold
// spaces and parentheses itself, so the fields are counted from the last ')'.
func parseStatCPU(stat string) (int64, error) {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, errors.New("stat: no ')' after the command name")
	}
	// After ')': field 3 (state) is fields[0], so field N is fields[N-3];
	// utime is field 14, stime field 15.
	fields := strings.Fields(stat[i+1:])
	if len(fields) < 13 {
		return 0, fmt.Errorf("stat: %d fields after the command name, want >= 13", len(fields))
	}
	utime, err := strconv.ParseInt(fields[11], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("stat: utime: %w", err)
	}
	stime, err := strconv.ParseInt(fields[12], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("stat: stime: %w", err)
	}
	return utime + stime, nil
}

// parseStatusRSS returns VmRSS, in bytes, from the text of
// /proc/PID/status ("VmRSS:\t  12345 kB").
func parseStatusRSS(status string) (int64, error) {
	sc := bufio.NewScanner(strings.NewReader(status))
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			return 0, fmt.Errorf("status: VmRSS line %q", sc.Text())
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("status: VmRSS: %w", err)
		}
		return kb * 1024, nil
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, errors.New("status: no VmRSS line (a kernel thread or a zombie?)")
}

// readProc samples process pid from /proc.
func readProc(pid int) (procSample, error) {
	s := procSample{at: time.Now()}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return s, err
	}
	if s.cpuTicks, err = parseStatCPU(string(stat)); err != nil {
		return s, fmt.Errorf("pid %d: %w", pid, err)
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return s, err
	}
	if s.rssBytes, err = parseStatusRSS(string(status)); err != nil {
		return s, fmt.Errorf("pid %d: %w", pid, err)
	}
	return s, nil
}

// Proc is one node process as a run line reports it.
type Proc struct {
	PID int `json:"pid"`
	// RSSMiB is VmRSS at the end of the run.
	RSSMiB float64 `json:"rss_mib"`
	// CPUS is the CPU time (user + system) the process used during the run.
	CPUS float64 `json:"cpu_s"`
	// CorePct is CPUS over the run's wall time, in % of one core.
	CorePct float64 `json:"core_pct"`
	Error   string  `json:"error,omitempty"`
}

// sampleProcs samples every pid; a failed read leaves a zero sample and
// its error.
func sampleProcs(pids []int) ([]procSample, []error) {
	out := make([]procSample, len(pids))
	errs := make([]error, len(pids))
	for i, pid := range pids {
		out[i], errs[i] = readProc(pid)
	}
	return out, errs
}

// procDelta reports the processes between two samplings.
func procDelta(pids []int, before, after []procSample, errs []error) []Proc {
	out := make([]Proc, len(pids))
	for i, pid := range pids {
		p := Proc{PID: pid}
		if errs[i] != nil {
			p.Error = errs[i].Error()
		} else {
			p.RSSMiB = float64(after[i].rssBytes) / (1 << 20)
			p.CPUS = float64(after[i].cpuTicks-before[i].cpuTicks) / clockTicks
			if wall := after[i].at.Sub(before[i].at).Seconds(); wall > 0 {
				p.CorePct = 100 * p.CPUS / wall
			}
		}
		out[i] = p
	}
	return out
}
