package integration_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/forestbus/forestbus/internal/syncbuf"
)

var fbnodeBin string

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "fbnode-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	fbnodeBin = filepath.Join(dir, "fbnode")
	args := []string{"build", "-o", fbnodeBin}
	if os.Getenv("FBNODE_RACE") != "" {
		args = append(args, "-race")
	}
	cmd := exec.Command("go", append(args, "../cmd/fbnode")...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building fbnode:", err)
		return 1
	}
	return m.Run()
}

// proc is one fbnode process. Its data dir, address and log survive restarts.
type proc struct {
	t      *testing.T
	name   string
	args   []string
	data   string
	addr   string
	cmd    *exec.Cmd
	stderr *syncbuf.Buffer // every run's standard error, appended
	runs   int
	exited chan struct{}
	// expectExit is set when the test kills or stops the process: any
	// other exit is unexpected (see checkProcs).
	expectExit bool
}

// procs lists each running test's processes, for checkProcs.
var procs = struct {
	sync.Mutex
	m map[*testing.T][]*proc
}{m: map[*testing.T][]*proc{}}

// checkProcs fails t at once if one of its processes exited without the
// test killing or stopping it (it crashed, or something outside the test
// signalled it), instead of letting the test wait for a node that is gone.
// Only the test's goroutine may call it.
func checkProcs(t *testing.T) {
	t.Helper()
	procs.Lock()
	ps := procs.m[t]
	procs.Unlock()
	for _, p := range ps {
		if p.exited == nil || p.expectExit {
			continue
		}
		select {
		case <-p.exited:
			how := p.cmd.ProcessState.String()
			if strings.Contains(p.stderr.String(), "signal received") {
				how += "; the node logged a SIGTERM/SIGINT that the test did not send: something outside the test signalled it"
			}
			t.Fatalf("%s exited unexpectedly (%s):\n%s", p.name, how, tail(p.stderr.String(), 20))
		default:
		}
	}
}

// newProc returns a process that is not started yet; its data dir is new.
// When the test fails, the cleanup logs the tail of the process's standard
// error; with FBNODE_LOGDIR set, the whole of it is written to
// FBNODE_LOGDIR/<test>/<name>.log in any case.
func newProc(t *testing.T, name string, args ...string) *proc {
	t.Helper()
	p := &proc{t: t, name: name, args: args, data: filepath.Join(t.TempDir(), name), stderr: &syncbuf.Buffer{}}
	procs.Lock()
	procs.m[t] = append(procs.m[t], p)
	procs.Unlock()
	t.Cleanup(func() {
		procs.Lock()
		delete(procs.m, t)
		procs.Unlock()
		p.kill()
		out := p.stderr.String()
		if dir := os.Getenv("FBNODE_LOGDIR"); dir != "" && out != "" {
			d := filepath.Join(dir, strings.ReplaceAll(t.Name(), "/", "_"))
			if err := os.MkdirAll(d, 0o755); err == nil {
				_ = os.WriteFile(filepath.Join(d, name+".log"), []byte(out), 0o644)
			}
		}
		if i := strings.Index(out, "WARNING: DATA RACE"); i >= 0 {
			// An fbnode built with FBNODE_RACE=1 reports a race on its
			// standard error and goes on; killed, it exits with no sign.
			t.Errorf("%s: the race detector reported a data race:\n%s", name, out[i:min(len(out), i+6000)])
		}
		if t.Failed() {
			t.Logf("%s stderr (tail):\n%s", name, tail(out, 40))
		}
	})
	return p
}

func startProc(t *testing.T, name string, args ...string) *proc {
	t.Helper()
	p := newProc(t, name, args...)
	p.start("127.0.0.1:0")
	return p
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.SplitAfter(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "")
}

func (p *proc) start(listen string) {
	p.t.Helper()
	if err := p.startErr(listen); err != nil {
		p.t.Fatal(err)
	}
}

// startErr starts the process listening on listen and waits until it
// serves. An error means it exited or did not get ready in time.
func (p *proc) startErr(listen string) error {
	addrFile := filepath.Join(p.t.TempDir(), "addr")
	args := append([]string{"-listen", listen, "-data", p.data, "-addr-file", addrFile, "-cluster", "it", "-name", p.name}, p.args...)
	p.cmd = exec.Command(fbnodeBin, args...)
	p.expectExit = false
	p.runs++
	fmt.Fprintf(p.stderr, "=== run %d: fbnode %s\n", p.runs, strings.Join(args, " "))
	p.cmd.Stderr = p.stderr
	if err := p.cmd.Start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	p.exited = exited
	cmd := p.cmd
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, err := os.ReadFile(addrFile)
		if err == nil && strings.HasSuffix(string(b), "\n") {
			p.addr = strings.TrimSpace(string(b))
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("%s exited during start: %s", p.name, tail(p.stderr.String(), 20))
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not start in time: %s", p.name, tail(p.stderr.String(), 20))
		}
	}
}

// running reports whether the process was started and has not exited.
func (p *proc) running() bool {
	if p.exited == nil {
		return false
	}
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// kill sends SIGKILL and waits for the process to be gone.
func (p *proc) kill() {
	if p.cmd == nil || p.cmd.Process == nil {
		return
	}
	p.expectExit = true
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.exited
}

// stop sends SIGTERM and waits for a clean exit.
func (p *proc) stop() {
	p.t.Helper()
	t0 := time.Now()
	p.expectExit = true
	require.NoError(p.t, p.cmd.Process.Signal(syscall.SIGTERM))
	select {
	case <-p.exited:
	case <-time.After(30 * time.Second):
		p.t.Fatalf("%s did not stop on SIGTERM", p.name)
	}
	if d := time.Since(t0); d > time.Second {
		p.t.Logf("%s took %v to stop on SIGTERM", p.name, d.Round(time.Millisecond))
	}
	require.Equal(p.t, 0, p.cmd.ProcessState.ExitCode(), "%s: %s", p.name, tail(p.stderr.String(), 20))
}

// pause stops the process with SIGSTOP; resume continues it with SIGCONT.
func (p *proc) pause() {
	p.t.Helper()
	require.NoError(p.t, p.cmd.Process.Signal(syscall.SIGSTOP))
}

func (p *proc) resume() {
	p.t.Helper()
	require.NoError(p.t, p.cmd.Process.Signal(syscall.SIGCONT))
}

// restart starts the process again on the same address and data.
func (p *proc) restart() {
	p.t.Helper()
	p.start(p.addr)
}
