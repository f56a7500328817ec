// Command fbctl is the operator CLI of Forest Bus: it sends and reads
// messages, manages topics and nodes, and reports a cluster's health.
//
// Run `fbctl help` for the commands, `fbctl COMMAND -h` for a command's
// flags.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/forestbus/forestbus/client"
	"github.com/forestbus/forestbus/internal/tlsfiles"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		// After the first Ctrl-C has been delivered as a cancellation, a
		// second one kills the process the usual way.
		<-ctx.Done()
		stop()
	}()
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr, os.Getenv)
	stop()
	os.Exit(code)
}

// Exit statuses.
const (
	exitOK          = 0
	exitError       = 1
	exitUsage       = 2
	exitUnhealthy   = 3 // cluster status -check
	exitInterrupted = 130
)

// errUnhealthy: cluster status -check found a member down or a topic
// without a leader (the status is printed): exit status 3.
var errUnhealthy = errors.New("the cluster is not healthy")

// envConn is the environment variable holding the connection string.
const envConn = "FORESTBUS"

const defaultTimeout = 15 * time.Second

// usageText is what `fbctl help` prints.
const usageText = `fbctl is the operator CLI of Forest Bus.

Usage:
  fbctl [-forestbus CONN] [-o text|json] [-timeout D] [-tls-ca F] COMMAND [ARGS] [FLAGS]

CONN is a connection string, cluster#topic@host:port[,host:port...], taken
from -forestbus or else from the FORESTBUS environment variable. Its topic is
the default topic of send and get. Flags may come before or after a
command's arguments.

Commands:
  send [-topic T] [-no-wait] [-retries N] [FILE...]
        Send each line of the FILEs (default: standard input) as one message.
  get [-topic T] [-from ID] [-count N] [-follow] [-format raw|json]
        Print messages from ID on; -follow waits for new ones until Ctrl-C.
  topic list
  topic create NAME [-segment-bytes N] [-retention D] [-retention-bytes N]
  topic update NAME [-segment-bytes N] [-retention D] [-retention-bytes N]
  topic remove NAME
        List, create, change or remove topics.
  cluster status [-node-timeout D]
        Each node's health and latency; per topic, each node's first, last
        and commit IDs and its lag behind the leader.
  node add NAME ADDRESS
  node remove NAME
        Add a member to or remove one from the cluster.
  help [COMMAND]
        Print this text, or a command's flags.

Common flags:
  -forestbus CONN   connection string (default $FORESTBUS)
  -o, -output FMT   text (default) or json: one JSON document, for topic,
                    cluster and node commands
  -timeout D        deadline of topic, cluster and node commands (default 15s)
  -tls              talk TLS to the nodes, verifying them against the
                    system's roots (for publicly signed certificates)
  -tls-ca FILE      talk TLS to the nodes, verifying them against these
                    authorities (PEM; fbnode -tls-ca)
  -tls-cert FILE, -tls-key FILE
                    talk TLS with this client certificate (nodes with
                    -tls-client-auth require one)

Exit status: 0 success, 1 error, 2 usage error, 3 unhealthy (cluster
status -check), 130 interrupted (Ctrl-C ends get -follow with 0).
Run 'fbctl COMMAND -h' for a command's flags.
`

// app is one invocation of fbctl.
type app struct {
	ctx    context.Context
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
	getenv func(string) string

	// Global flags, the defaults of every command's flags of the same name.
	conn    string
	output  string
	timeout time.Duration
	tls     tlsfiles.Files
	tlsOn   bool // -tls: TLS without files (the system's roots)
}

// usageError is a mistake in the command line: exit status 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

// errHelp: help was asked for and printed; exit status 0.
var errHelp = errors.New("help shown")

// errInterrupted: the context was cancelled (Ctrl-C).
var errInterrupted = errors.New("interrupted")

// run is fbctl without the process around it: args exclude the program
// name, env looks up environment variables. It returns the exit status.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, env func(string) string) (code int) {
	defer func() {
		if p := recover(); p != nil {
			fmt.Fprintf(stderr, "fbctl: internal error: %v\n", p)
			code = exitError
		}
	}()
	if env == nil {
		env = func(string) string { return "" }
	}
	a := &app{ctx: ctx, stdin: stdin, stdout: stdout, stderr: stderr, getenv: env}
	err := a.main(args)
	var ue *usageError
	switch {
	case err == nil, errors.Is(err, errHelp):
		return exitOK
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "fbctl: %s\n", oneLine(ue.msg))
		return exitUsage
	case errors.Is(err, errUnhealthy):
		fmt.Fprintf(stderr, "fbctl: %s\n", err)
		return exitUnhealthy
	case errors.Is(err, errInterrupted), ctx.Err() != nil && errors.Is(err, context.Canceled):
		fmt.Fprintln(stderr, "fbctl: interrupted")
		return exitInterrupted
	default:
		fmt.Fprintf(stderr, "fbctl: %s%s\n", explain(err), tlsHint(err))
		return exitError
	}
}

// commands maps a command (or command group) name to its implementation.
var commands = map[string]func(a *app, args []string) error{
	"send":    (*app).send,
	"get":     (*app).get,
	"topic":   (*app).topic,
	"cluster": (*app).cluster,
	"node":    (*app).node,
}

func (a *app) main(args []string) error {
	fs := flag.NewFlagSet("fbctl", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&a.conn, "forestbus", "", "connection string")
	fs.StringVar(&a.output, "o", "text", "output format")
	fs.StringVar(&a.output, "output", "text", "output format")
	fs.DurationVar(&a.timeout, "timeout", defaultTimeout, "deadline")
	fs.BoolVar(&a.tlsOn, "tls", false, "TLS with the system's roots")
	fs.StringVar(&a.tls.CA, "tls-ca", "", "TLS authorities")
	fs.StringVar(&a.tls.Cert, "tls-cert", "", "TLS client certificate")
	fs.StringVar(&a.tls.Key, "tls-key", "", "TLS client key")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(a.stdout, usageText)
			return errHelp
		}
		return usagef("%v (run 'fbctl help')", err)
	}
	args = fs.Args()
	if len(args) == 0 {
		return usagef("no command (run 'fbctl help')")
	}
	name, rest := args[0], args[1:]
	if name == "help" {
		if len(rest) == 0 {
			fmt.Fprint(a.stdout, usageText)
			return errHelp
		}
		name, rest = rest[0], append(rest[1:], "-h")
	}
	cmd, ok := commands[name]
	if !ok {
		return usagef("unknown command %q (run 'fbctl help')", name)
	}
	return cmd(a, rest)
}

// cmdFlags describes one command's flag set.
type cmdFlags struct {
	*flag.FlagSet
	a        *app
	name     string // "send", "topic create"
	synopsis string // arguments after the name
	about    string

	conn    string
	output  string
	timeout time.Duration
	tls     tlsfiles.Files
	tlsOn   bool // -tls: TLS without files (the system's roots)
}

// flags returns the flag set of a command, with the common flags.
// withOutput adds -o/-output, withTimeout -timeout.
func (a *app) flags(name, synopsis, about string, withOutput, withTimeout bool) *cmdFlags {
	f := &cmdFlags{FlagSet: flag.NewFlagSet("fbctl "+name, flag.ContinueOnError), a: a, name: name, synopsis: synopsis, about: about}
	f.SetOutput(io.Discard)
	f.StringVar(&f.conn, "forestbus", a.conn, "connection string `CONN`: cluster#topic@host:port,... (default $FORESTBUS)")
	f.BoolVar(&f.tlsOn, "tls", a.tlsOn, "talk TLS to the nodes, verifying them against the system's roots (for publicly signed certificates; -tls-ca names others)")
	f.StringVar(&f.tls.CA, "tls-ca", a.tls.CA, "talk TLS to the nodes, verifying them against the authorities in this PEM `file` (fbnode -tls-ca)")
	f.StringVar(&f.tls.Cert, "tls-cert", a.tls.Cert, "talk TLS, presenting this PEM client certificate `file` (for nodes with -tls-client-auth; with -tls-key)")
	f.StringVar(&f.tls.Key, "tls-key", a.tls.Key, "the private key `file` (PEM) of -tls-cert")
	f.output = a.output
	if withOutput {
		f.StringVar(&f.output, "o", a.output, "output `format`: text or json")
		f.StringVar(&f.output, "output", a.output, "output `format`: text or json")
	}
	f.timeout = a.timeout
	if withTimeout {
		f.DurationVar(&f.timeout, "timeout", a.timeout, "deadline of the command")
	}
	return f
}

// parse parses args, allowing flags before, between and after the
// positional arguments, and checks their number (max < 0: no limit).
func (f *cmdFlags) parse(args []string, minArgs, maxArgs int) ([]string, error) {
	var pos []string
	for {
		if err := f.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				f.printHelp()
				return nil, errHelp
			}
			return nil, usagef("%s: %v (run 'fbctl %s -h')", f.name, err, f.name)
		}
		rest := f.Args()
		consumed := len(args) - len(rest)
		if consumed > 0 && args[consumed-1] == "--" {
			pos = append(pos, rest...)
			break
		}
		if len(rest) == 0 {
			break
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
	if f.output != "text" && f.output != "json" {
		return nil, usagef("%s: output format %q: want text or json", f.name, f.output)
	}
	if len(pos) < minArgs || (maxArgs >= 0 && len(pos) > maxArgs) {
		return nil, usagef("%s: wrong number of arguments: usage: fbctl %s %s", f.name, f.name, f.synopsis)
	}
	return pos, nil
}

func (f *cmdFlags) printHelp() {
	w := f.a.stdout
	fmt.Fprintf(w, "Usage: fbctl %s %s\n\n%s\n\nFlags:\n", f.name, f.synopsis, strings.TrimSpace(f.about))
	f.SetOutput(w)
	f.PrintDefaults()
	f.SetOutput(io.Discard)
}

func (f *cmdFlags) json() bool { return f.output == "json" }

// connInfo is a parsed connection string, and how to talk to its nodes.
type connInfo struct {
	cluster string
	topic   string
	nodes   []string
	opts    []client.Option                  // the clients' (TLS)
	creds   credentials.TransportCredentials // direct connections'
}

// connect parses the connection string of the flags (or $FORESTBUS) and
// returns a Client for it.
func (f *cmdFlags) connect() (*client.Client, connInfo, error) {
	s := f.conn
	if s == "" {
		s = f.a.getenv(envConn)
	}
	if s == "" {
		return nil, connInfo{}, usagef("no connection string: use -forestbus or set %s (cluster#topic@host:port,...)", envConn)
	}
	cluster, topic, nodes := client.ParseConnectionString(s)
	var clean []string
	for _, n := range nodes {
		if n = strings.TrimSpace(n); n != "" {
			clean = append(clean, n)
		}
	}
	if len(clean) == 0 {
		return nil, connInfo{}, usagef("connection string %q names no node: want cluster#topic@host:port,...", s)
	}
	ci := connInfo{cluster: cluster, topic: topic, nodes: clean, creds: insecure.NewCredentials()}
	if f.tls.Set() || f.tlsOn {
		cfg, err := f.tls.Client()
		if err != nil {
			return nil, connInfo{}, usagef("%v", err)
		}
		ci.opts, ci.creds = []client.Option{client.WithTLS(cfg)}, credentials.NewTLS(cfg)
	}
	return client.New(cluster, clean, ci.opts...), ci, nil
}

// deadline returns the context of a command bounded by -timeout.
func (f *cmdFlags) deadline() (context.Context, context.CancelFunc) {
	if f.timeout <= 0 {
		return context.WithCancel(f.a.ctx)
	}
	return context.WithTimeout(f.a.ctx, f.timeout)
}

// tlsHint says what a connection error means when the two sides disagree
// on TLS; "" otherwise. The errors themselves name only the symptom.
func tlsHint(err error) string {
	msg := err.Error()
	switch {
	case strings.Contains(msg, "server preface"):
		return " (does the node serve TLS? give -tls-ca (or -tls for publicly signed certificates), and -tls-cert and -tls-key if it requires client certificates)"
	case strings.Contains(msg, "first record does not look like a TLS handshake"):
		return " (the node serves plaintext: drop -tls and the -tls-* flags)"
	case strings.Contains(msg, "tls: certificate required"), strings.Contains(msg, "broken pipe") && strings.Contains(msg, "tls"):
		return " (the node requires a client certificate its -tls-ca signed: -tls-cert and -tls-key)"
	}
	return ""
}
