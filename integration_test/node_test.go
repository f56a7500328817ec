package integration_test

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
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

// proc is one fbnode process. Its data dir and address survive restarts.
type proc struct {
	t      *testing.T
	name   string
	args   []string
	data   string
	addr   string
	cmd    *exec.Cmd
	stderr *bytes.Buffer
	exited chan struct{}
}

func startProc(t *testing.T, name string, args ...string) *proc {
	t.Helper()
	p := &proc{t: t, name: name, args: args, data: filepath.Join(t.TempDir(), name)}
	p.start("127.0.0.1:0")
	t.Cleanup(func() { p.kill() })
	return p
}

func (p *proc) start(listen string) {
	p.t.Helper()
	addrFile := filepath.Join(p.t.TempDir(), "addr")
	args := append([]string{"-listen", listen, "-data", p.data, "-addr-file", addrFile, "-cluster", "it", "-name", p.name}, p.args...)
	p.cmd = exec.Command(fbnodeBin, args...)
	p.stderr = &bytes.Buffer{}
	p.cmd.Stderr = p.stderr
	require.NoError(p.t, p.cmd.Start())
	p.exited = make(chan struct{})
	go func() {
		_ = p.cmd.Wait()
		close(p.exited)
	}()
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, err := os.ReadFile(addrFile)
		if err == nil && strings.HasSuffix(string(b), "\n") {
			p.addr = strings.TrimSpace(string(b))
			return
		}
		select {
		case <-p.exited:
			p.t.Fatalf("%s exited during start: %s", p.name, p.stderr.String())
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("%s did not start in time: %s", p.name, p.stderr.String())
		}
	}
}

// kill sends SIGKILL and waits for the process to be gone.
func (p *proc) kill() {
	if p.cmd == nil || p.cmd.Process == nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.exited
}

// stop sends SIGTERM and waits for a clean exit.
func (p *proc) stop() {
	p.t.Helper()
	require.NoError(p.t, p.cmd.Process.Signal(syscall.SIGTERM))
	select {
	case <-p.exited:
	case <-time.After(30 * time.Second):
		p.t.Fatalf("%s did not stop on SIGTERM", p.name)
	}
	require.Equal(p.t, 0, p.cmd.ProcessState.ExitCode(), "%s: %s", p.name, p.stderr.String())
}

// restart starts the process again on the same address and data.
func (p *proc) restart() {
	p.t.Helper()
	p.start(p.addr)
}
