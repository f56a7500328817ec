// Command fbnode runs a Forest Bus node.
//
// With no flags it starts a one-node cluster "local" on 127.0.0.1:3000 with
// its data in ./fbdata and a topic named "default", and prints the
// connection string clients use.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	_ "net/http/pprof"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	forestbusv1 "github.com/forestbus/forestbus/gen/forestbus/v1"
	"github.com/forestbus/forestbus/internal/flagval"
	"github.com/forestbus/forestbus/internal/tlsfiles"
	"github.com/forestbus/forestbus/internal/uring"
	"github.com/forestbus/forestbus/server"
	"github.com/forestbus/forestbus/server/api"
	"github.com/forestbus/forestbus/server/commitlog"
	"github.com/forestbus/forestbus/server/httpapi"
	"github.com/forestbus/forestbus/server/topic"
)

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "fbnode:", err)
		os.Exit(1)
	}
}

// askToJoin calls AdminService.AddNode on a member, retrying for up to a
// minute while the member is unreachable or the cluster elects a leader
// (saying so on log, every few seconds), and returns what the node needs
// to join. An answer no retry changes (another cluster, a name or address
// refused) ends it at once.
func askToJoin(ctx context.Context, log *slog.Logger, member, clusterID, name, addr string, creds credentials.TransportCredentials) (*server.Join, error) {
	conn, err := grpc.NewClient("passthrough:///"+member, grpc.WithTransportCredentials(creds))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	admin := forestbusv1.NewAdminServiceClient(conn)
	ctx = metadata.AppendToOutgoingContext(ctx, "forestbus-cluster-id", clusterID)
	start := time.Now()
	deadline := start.Add(60 * time.Second)
	var logged time.Time
	for {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		resp, err := admin.AddNode(cctx, &forestbusv1.AddNodeRequest{Name: name, Address: addr})
		cancel()
		if err == nil {
			j := &server.Join{ID: resp.GetNode().GetId()}
			for _, n := range resp.GetNodes() {
				j.Members = append(j.Members, server.JoinMember{ID: n.GetId(), Name: n.GetName(), Address: n.GetAddress()})
			}
			return j, nil
		}
		switch status.Code(err) {
		case codes.Unavailable, codes.DeadlineExceeded, codes.ResourceExhausted:
		case codes.FailedPrecondition:
			if errorReason(err) != "NOT_LEADER" { // e.g. CLUSTER_ID_MISMATCH
				return nil, err
			}
		default:
			return nil, err
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return nil, err
		}
		if time.Since(logged) >= 5*time.Second {
			logged = time.Now()
			log.Warn("joining: the member did not add this node yet; retrying", "member", member, "for", time.Since(start).Round(time.Second).String(), "gives up after", "60s", "err", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// durationFlag defines a duration flag that also takes days ("7d"), as
// fbctl's retention flags do (flagval.ParseDuration).
func durationFlag(fs *flag.FlagSet, name string, value time.Duration, usage string) *time.Duration {
	d := flagval.Duration(value)
	fs.Var(&d, name, usage)
	return (*time.Duration)(&d)
}

// errorReason is the ErrorInfo reason of a gRPC error ("" without one).
func errorReason(err error) string {
	for _, d := range status.Convert(err).Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			return info.GetReason()
		}
	}
	return ""
}

// defaultGCPercent is -gc-percent's default. Go's own (100) spends a fifth
// of a W1 leader's CPU on collections of a small live heap that a busy node
// refills in milliseconds. On the final build of the session that added it,
// W1 (alternating fresh clusters, 6 rounds, medians) measured 760 K msg/s
// at 200 against 695 K at 100, and the leader's RSS after 15 s of W1 was
// 57-60 MiB against 44-46 MiB.
const defaultGCPercent = 200

// newHTTPServer is -http's server: header reads and idle keep-alive
// connections are bounded in time.
func newHTTPServer(h http.Handler, tlsConfig *tls.Config) *http.Server {
	return &http.Server{Handler: h, TLSConfig: tlsConfig, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: httpIdleTimeout}
}

// httpIdleTimeout closes -http's idle keep-alive connections (each holds a
// goroutine and a descriptor): longer than a minute, Prometheus's default
// scrape interval, so that scrapes reuse their connection. A var for tests.
var httpIdleTimeout = 2 * time.Minute

// minJournalBytes is the smallest -journal-bytes: a journal file holds
// many passes' records between checkpoints (each a syncfs).
const minJournalBytes = 1 << 20

// unspecifiedHost reports whether addr (host:port) listens on every
// interface: an empty host, 0.0.0.0 or ::.
func unspecifiedHost(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false // the listen fails with its own error
	}
	ip := net.ParseIP(host)
	return host == "" || ip != nil && ip.IsUnspecified()
}

func run(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("fbnode", flag.ContinueOnError)
	var (
		listen     = fs.String("listen", "127.0.0.1:3000", "gRPC listen address (host:port; port 0 picks a free one)")
		advertise  = fs.String("advertise", "", "address clients and other nodes dial, recorded as this node's member address (default: the listen address; required on a first start when -listen binds every interface)")
		dataDir    = fs.String("data", "./fbdata", "data directory")
		clusterID  = fs.String("cluster", "local", "cluster ID; the data directory remembers it")
		nodeName   = fs.String("name", "node1", "this node's stable name")
		join       = fs.String("join", "", "address of a member of a running cluster to join (first start only; the node asks it to add this node)")
		initial    = fs.String("initial-cluster", "", "members of a new cluster: name=host:port,... in the same order on every member (default: a one-node cluster)")
		syncMode   = fs.String("sync", "fsync", `durability: "fsync" (acknowledged means on disk) or "os" (the OS flushes)`)
		maxMsg     = fs.Int("max-message-bytes", 1<<20, "largest message accepted; messages stored while it was larger stay readable")
		maxBatch   = fs.Int("max-batch-bytes", 16<<20, "largest SendMessages batch of several messages accepted (their bytes, each counted with its framing: 2 or more bytes; at most 256 MiB)")
		maxRead    = fs.Int("max-read-bytes", api.DefaultMaxReadBytes, "cap of one GetMessages answer or Subscribe response: its messages, each counted with its framing (payload + 2 or more bytes); the default fits gRPC clients' default 4 MiB receive limit")
		readAhead  = fs.Int("read-ahead-bytes", api.DefaultReadAheadBytes, "what a GetMessages answer holds (counted as -max-read-bytes counts) when that much is committed, even beyond the quantity asked (negative: off)")
		maxWait    = fs.Duration("max-wait", 30*time.Second, "longest a GetMessages long poll waits")
		maxSubs    = fs.Int("max-subscribers", api.DefaultMaxSubscribers, "Subscribe streams served at once; more get RESOURCE_EXHAUSTED")
		maxWaiters = fs.Int("max-waiters", api.DefaultMaxWaiters, "GetMessages long polls waiting at the tail at once (0 or less: the default); more get RESOURCE_EXHAUSTED")
		maxTopics  = fs.Int("max-topics", server.DefaultMaxTopics, "topics the cluster may hold, counted by this node when it creates one as metadata leader (negative: no cap)")
		maxForward = fs.Int("max-forwarding", api.DefaultMaxForwarding, "calls a follower forwards to topic leaders at once; over it they are answered NOT_LEADER with the leader's address (negative: never forward)")
		maxProduce = fs.Int("max-produce-streams", api.DefaultMaxProduceStreams, "Produce streams served at once (a Go client opens one per node); more get RESOURCE_EXHAUSTED and the client sends as calls")
		maxStreams = fs.Uint("max-streams-per-conn", server.DefaultMaxStreamsPerConn, "calls one client connection carries at once (the Clients of a process share one connection, up to 32 Clients each)")
		segment    = fs.Int64("segment-bytes", 64<<20, "default segment file size of a topic")
		minSegment = fs.Int64("min-topic-segment-bytes", server.DefaultMinTopicSegmentBytes, "smallest segment_bytes a client may give a topic (each retained segment holds a file open on every node; give every node the same)")
		metaEvery  = fs.Uint64("meta-checkpoint-every", topic.DefaultMetaCheckpointEvery, "metadata commands (topic creates, updates, removals) between checkpoints of the topic registry, below which the metadata log is deleted")
		metaSeg    = fs.Int64("meta-segment-bytes", topic.DefaultMetaSegmentBytes, "segment file size of the metadata log (its compaction deletes whole segments)")
		pageCache  = fs.Int64("page-cache-bytes", 32<<20, "page cache each topic keeps of its newest durable records; older records are dropped from it so it does not grow with the logs (negative: leave it to the kernel)")
		journalB   = fs.Int64("journal-bytes", 64<<20, "size of a journal file (fsync mode), checkpointed and recycled when full")
		notice     = fs.Duration("commit-notice-delay", 20*time.Millisecond, "longest a topic's leader holds back telling its followers of a new commit point when no append carries it; followers' reads trail by up to that much (0 or negative: at once)")
		retention  = durationFlag(fs, "retention", 0, "retention age of the topics whose own is 0, such as 90m, 24h or 7d (0: keep for ever); give every node the same: a topic's leader applies its own")
		retBytes   = fs.Int64("retention-bytes", 0, "retention size of the topics whose own is 0 (0: no limit); give every node the same: a topic's leader applies its own")
		retEvery   = fs.Duration("retention-interval", 30*time.Second, "how often a topic's leader checks its retention (and every node its removed topics' files)")
		balance    = fs.Duration("leader-balance-interval", server.DefaultLeaderBalanceInterval, "how often a node hands the topics it leads back to their preferred leaders (which spreads leaders over the nodes) once those have been up this long; after a restart a node gets its leaderships back (0 or negative: never)")
		removedRet = durationFlag(fs, "removed-retention", 24*time.Hour, "how long a removed topic's files stay in the data directory's removed/ before they are deleted, such as 24h or 7d (0: keep for ever)")
		topic      = fs.String("topic", "default", `topic created at start when absent ("" for none)`)
		logLevel   = fs.String("log-level", "info", "log level: debug, info, warn, error")
		logFormat  = fs.String("log-format", "text", "log format: text or json")
		pprofAddr  = fs.String("pprof", "", "serve net/http/pprof on this address (e.g. 127.0.0.1:6060); off by default")
		httpAddr   = fs.String("http", "", "serve /metrics, /status and /status.json on this address (e.g. 127.0.0.1:8080); off by default")
		httpTLS    = fs.Bool("http-tls", false, "serve -http over TLS (HTTPS) with the node's -tls-cert, requiring client certificates as gRPC does with -tls-client-auth")
		addrFile   = fs.String("addr-file", "", "write the address listened on to this file once ready (for scripts and tests)")
		ioURing    = fs.Bool("io-uring", true, "make fdatasync through io_uring where the kernel allows it, so that a sync holds no runtime thread (false: plain system calls)")
		gcPercent  = fs.Int("gc-percent", defaultGCPercent, "Go GC target (as GOGC): the heap grows to (1+N/100) x the live heap between collections; higher trades memory for CPU; negative turns the collector off. A GOGC environment variable wins")
		version    = fs.Bool("version", false, "print the build (version, commit, Go version) and exit")
		tlsCert    = fs.String("tls-cert", "", "serve TLS with this PEM certificate (chain) `file`, also presented to peers that require client certificates; every node of a cluster alike. Replaced files are read again at the next handshake, a second later at most, and checked first")
		tlsKey     = fs.String("tls-key", "", "the private key `file` (PEM) of -tls-cert")
		tlsCA      = fs.String("tls-ca", "", "PEM `file` of the authorities that sign the nodes' certificates, to verify peers (default: the system's roots); with -tls-client-auth, clients' too. Read again when it changes, as -tls-cert")
		tlsClients = fs.Bool("tls-client-auth", false, "require every client and peer to present a certificate signed by -tls-ca")
	)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if *version {
		fmt.Fprintln(stdout, "fbnode", server.Build())
		return nil
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	// Values the node would otherwise replace quietly with a default or a
	// floor are refused, naming the flag.
	for _, c := range []struct {
		flag string
		bad  bool
		want string
	}{
		{"max-message-bytes", *maxMsg < 1, "at least 1"},
		{"max-batch-bytes", *maxBatch < 1, "at least 1"},
		{"max-read-bytes", *maxRead < 1, "at least 1"},
		{"max-wait", *maxWait <= 0, "above 0"},
		// 0 would be the server's default for these, not what it says.
		{"read-ahead-bytes", *readAhead == 0, "above 0, or negative (off)"},
		{"max-forwarding", *maxForward == 0, "above 0, or negative (never forward)"},
		{"max-topics", *maxTopics == 0, "above 0, or negative (no cap)"},
		{"page-cache-bytes", *pageCache == 0, "above 0, or negative (left to the kernel)"},
		{"max-streams-per-conn", *maxStreams == 0, "at least 1"},
		{"segment-bytes", *segment < commitlog.MinSegmentBytes, fmt.Sprintf("at least %d", commitlog.MinSegmentBytes)},
		{"min-topic-segment-bytes", *minSegment < commitlog.MinSegmentBytes, fmt.Sprintf("at least %d", commitlog.MinSegmentBytes)},
		{"meta-checkpoint-every", *metaEvery < 1, "at least 1"},
		{"meta-segment-bytes", *metaSeg < commitlog.MinSegmentBytes, fmt.Sprintf("at least %d", commitlog.MinSegmentBytes)},
		{"journal-bytes", *journalB < minJournalBytes, fmt.Sprintf("at least %d", minJournalBytes)},
		{"retention", *retention < 0, "0 (keep for ever) or more"},
		{"retention-bytes", *retBytes < 0, "0 (no limit) or more"},
		{"removed-retention", *removedRet < 0, "0 (keep for ever) or more"},
		{"retention-interval", *retEvery <= 0, "above 0"},
	} {
		if c.bad {
			return fmt.Errorf("-%s %s: want %s", c.flag, fs.Lookup(c.flag).Value, c.want)
		}
	}
	if *advertise != "" {
		// Recorded for good as the member address (as AddNode, which
		// refuses such addresses, records a joining node's).
		host, port, err := net.SplitHostPort(*advertise)
		if err != nil || host == "" || port == "0" || unspecifiedHost(*advertise) {
			return fmt.Errorf("-advertise %s: want the host:port clients and other nodes dial (not a wildcard address or port 0)", *advertise)
		}
	}
	if *join != "" && *initial != "" && !server.HasIdentity(*dataDir) {
		return errors.New("-join and -initial-cluster: a first start either joins a running cluster or starts a new one; give one of them")
	}
	if *advertise == "" && !server.HasIdentity(*dataDir) && unspecifiedHost(*listen) {
		// The node records the address it advertises as its member
		// address, for peers and clients, and no call changes it later.
		return fmt.Errorf("-listen %s listens on every interface: give -advertise, the host:port clients and other nodes dial", *listen)
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return fmt.Errorf("-log-level: %w", err)
	}
	hopts := &slog.HandlerOptions{Level: level}
	var h slog.Handler
	switch *logFormat {
	case "text":
		h = slog.NewTextHandler(os.Stderr, hopts)
	case "json":
		h = slog.NewJSONHandler(os.Stderr, hopts)
	default:
		return fmt.Errorf("-log-format %q: want text or json", *logFormat)
	}
	logger := slog.New(h)
	var serverTLS, httpsConfig *tls.Config
	var peerTLS credentials.TransportCredentials // nil: plaintext
	peerCreds := insecure.NewCredentials()
	if files := (tlsfiles.Files{CA: *tlsCA, Cert: *tlsCert, Key: *tlsKey}); files.Set() || *tlsClients {
		hostAddr := *listen
		if *advertise != "" {
			hostAddr = *advertise
		}
		host := ""
		if !unspecifiedHost(hostAddr) {
			host, _, _ = net.SplitHostPort(hostAddr)
		}
		// The files are read again when they change (a second after, at
		// the next handshake), and checked as here before they are used.
		node, err := files.Node(host, *tlsClients, func(err error) {
			if err != nil {
				logger.Error("tls files changed: refused, the node goes on with the ones it had", "err", err)
				return
			}
			logger.Info("tls files changed: in use from now on", "cert", *tlsCert, "ca", *tlsCA)
		})
		if err != nil {
			return err
		}
		serverTLS, peerTLS = node.Server(), node.PeerCredentials()
		peerCreds = peerTLS
		if *httpTLS {
			httpsConfig = node.Server()
		}
	}
	if *httpTLS && (httpsConfig == nil || *httpAddr == "") {
		return errors.New("-http-tls serves -http over TLS: it needs -http and the node's -tls-cert and -tls-key")
	}
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(*gcPercent)
	}
	uring.SetEnabled(*ioURing)
	if *ioURing && *syncMode == string(server.SyncFsync) {
		if ok, err := uring.Available(); !ok {
			logger.Info("io_uring not available: syncs are system calls", "err", err)
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *pprofAddr != "" {
		lis, err := net.Listen("tcp", *pprofAddr)
		if err != nil {
			return fmt.Errorf("-pprof: %w", err)
		}
		go func() { _ = http.Serve(lis, nil) }() // net/http/pprof registers on the default mux
		logger.Info("pprof listening", "addr", lis.Addr().String())
	}
	// The HTTP port is taken before the node starts (or joins): one in
	// use fails here, not after the node has bootstrapped.
	var httpLis net.Listener
	if *httpAddr != "" {
		var err error
		if httpLis, err = net.Listen("tcp", *httpAddr); err != nil {
			return fmt.Errorf("-http: %w", err)
		}
		defer httpLis.Close() // Serve closes it too; this covers a failed start
	}
	var grpcOpts []grpc.ServerOption
	if *httpAddr != "" {
		grpcOpts = httpapi.GRPCMetrics().ServerOptions() // gRPC metrics for /metrics
	}
	if *notice <= 0 {
		*notice = -1 // at once; 0 would be server.Config's default
	}
	balanceEvery := *balance
	if balanceEvery <= 0 {
		balanceEvery = -1 // the server's 0 is its default
	}
	cfg := server.Config{
		GRPCOptions:           grpcOpts,
		ListenAddr:            *listen,
		AdvertiseAddr:         *advertise,
		DataDir:               *dataDir,
		ClusterID:             *clusterID,
		NodeName:              *nodeName,
		InitialCluster:        *initial,
		Sync:                  server.SyncMode(*syncMode),
		MaxMessageBytes:       *maxMsg,
		MaxBatchBytes:         *maxBatch,
		MaxReadBytes:          *maxRead,
		ReadAheadBytes:        *readAhead,
		MaxWait:               *maxWait,
		MaxSubscribers:        *maxSubs,
		MaxWaiters:            *maxWaiters,
		MaxProduceStreams:     *maxProduce,
		MaxTopics:             *maxTopics,
		MaxForwarding:         *maxForward,
		MaxStreamsPerConn:     uint32(min(*maxStreams, math.MaxUint32)),
		SegmentBytes:          *segment,
		MinTopicSegmentBytes:  *minSegment,
		MetaCheckpointEvery:   *metaEvery,
		MetaSegmentBytes:      *metaSeg,
		PageCacheBytes:        *pageCache,
		JournalBytes:          *journalB,
		CommitNoticeDelay:     *notice,
		Retention:             *retention,
		RetentionBytes:        *retBytes,
		RemovedRetention:      *removedRet,
		RetentionInterval:     *retEvery,
		LeaderBalanceInterval: balanceEvery,
		TLS:                   serverTLS,
		PeerCredentials:       peerTLS,
		DefaultTopic:          *topic,
		Logger:                logger,
	}
	// What the node would refuse when it starts, it refuses before -join
	// has the cluster add it: a failed start must not leave the cluster a
	// member that never runs. The gRPC port likewise.
	if err := cfg.Validate(); err != nil {
		return err
	}
	grpcLis, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("-listen: %w", err)
	}
	defer grpcLis.Close() // the server closes it; this covers a failed start
	cfg.Listener = grpcLis
	if *join != "" && !server.HasIdentity(*dataDir) {
		if *advertise == "" && strings.HasSuffix(*listen, ":0") {
			return errors.New("-join needs a fixed -listen port or an -advertise address")
		}
		addr := *advertise
		if addr == "" {
			addr = *listen
		}
		if cfg.Join, err = askToJoin(ctx, logger, *join, *clusterID, *nodeName, addr, peerCreds); err != nil {
			return fmt.Errorf("joining through %s: %w", *join, err)
		}
		logger.Info("added to the cluster", "id", cfg.Join.ID, "members", len(cfg.Join.Members))
	}
	srv, err := server.Start(ctx, cfg)
	if err != nil {
		return err
	}
	if *addrFile != "" {
		// Written whole, then renamed, so a reader never sees half of it.
		tmp := *addrFile + ".tmp"
		if err := os.WriteFile(tmp, []byte(srv.Addr()+"\n"), 0o644); err != nil {
			srv.Stop()
			return err
		}
		if err := os.Rename(tmp, *addrFile); err != nil {
			srv.Stop()
			return err
		}
	}
	if httpLis != nil {
		hs := newHTTPServer(httpapi.New(srv, httpapi.WithGRPCMetrics(httpapi.GRPCMetrics())), httpsConfig)
		if httpsConfig != nil {
			go func() { _ = hs.ServeTLS(httpLis, "", "") }()
		} else {
			go func() { _ = hs.Serve(httpLis) }()
		}
		defer hs.Close() // after srv.Stop: /status shows the node stopping meanwhile
		logger.Info("http listening", "addr", httpLis.Addr().String(), "tls", httpsConfig != nil)
	}
	if *topic != "" {
		fmt.Fprintf(stdout, "Forest Bus node %q ready. Connection string: %s\n", *nodeName, srv.ConnectionString())
	} else {
		fmt.Fprintf(stdout, "Forest Bus node %q ready on %s (cluster %q)\n", *nodeName, srv.Addr(), *clusterID)
	}
	select {
	case <-ctx.Done():
		logger.Info("signal received, shutting down")
	case <-srv.Done():
	}
	stop()
	return srv.Stop()
}
