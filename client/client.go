package client

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"

	"github.com/forestbus/forestbus/internal/fastcodec"
	"github.com/forestbus/forestbus/internal/grpcflow"
	"github.com/forestbus/forestbus/internal/stdlog"
)

// Metadata keys of the Forest Bus gRPC API.
const (
	// ClusterIDMetadataKey is the request metadata key naming the cluster
	// the client expects.
	ClusterIDMetadataKey = "forestbus-cluster-id"
	// LeaderMetadataKey is the response header key a node sets when it
	// forwarded a SendMessages call to the topic's leader.
	LeaderMetadataKey = "forestbus-leader"
)

// DefaultRetryWindow is how long calls without a context deadline keep
// retrying passes over the node list before giving up with
// ErrNoNodesAvailable.
const DefaultRetryWindow = 10 * time.Second

// Backoff between two passes over the node list.
const (
	minPassBackoff = 50 * time.Millisecond
	maxPassBackoff = time.Second
)

// Keepalive of a connection with calls in progress: after keepaliveTime
// without a frame from the node, a ping, and the connection closes if no
// answer comes within keepaliveTimeout. (gRPC raises a Time under 10 s to
// 10 s.) Variables for tests.
var (
	keepaliveTime    = 10 * time.Second
	keepaliveTimeout = 5 * time.Second
)

// maxRecvMsgSize bounds the size of an answer. A node's default cap keeps
// answers under gRPC's default of 4 MiB; this accepts any answer a node
// sends: one under its largest -max-read-bytes (256 MiB), or a single
// message over it, at most the largest message a node accepts (256 MiB),
// with their framing. gRPC allocates by the size a message has, not by
// this bound.
const maxRecvMsgSize = 257 << 20

// Client is a multi-goroutine safe object for communicating with the nodes
// of a Forest Bus cluster.
//
// The Client holds one gRPC connection per node, opened when first needed
// and shared by all goroutines. It remembers the leader of each topic it
// sends to and the last node that answered a read, and fails over to the
// other nodes when one does not answer.
//
// All methods are safe for concurrent use, including Close.
type Client struct {
	clusterID   string
	nodes       []string
	shuffle     bool
	debug       bool
	logger      *slog.Logger
	retryWindow time.Duration
	dialOpts    []grpc.DialOption

	// producerID identifies this Client's sends for idempotent appends:
	// random and non-zero, fixed for the Client's lifetime.
	producerID uint64

	unarySends bool        // WithUnarySends: no Produce streams
	private    bool        // WithPrivateConnections: no connection shared (pool.go)
	tls        *tls.Config // WithTLS; shared connections are by target and config

	mu sync.Mutex
	// life ends at Close (endLife), and a new one begins: every call is
	// bound to the life it started in (bind), since closing a connection
	// shared with other Clients (pool.go) does not end it.
	life      context.Context
	endLife   context.CancelFunc
	conns     map[string]*grpc.ClientConn // node address -> connection
	streams   map[*grpc.ClientConn]*produceStream
	noProduce map[*grpc.ClientConn]time.Time // nodes to send calls to, not a stream, until then (produce.go)
	leaders   map[string]string              // topic -> leader address
	seqs      map[string]*topicSeqs          // topic -> its producer sequences (beginSend)
	lastGet   string                         // node of the last good read
	admin     string                         // node of the last good admin call
}

// Option configures a Client. Options are applied in order by New.
type Option func(*Client)

// WithDebug logs every call (operation, topic, node, duration, outcome) at
// debug level to the logger (see WithLogger; by default through the
// standard log package, as the original's debug output: standard error
// unless log.SetOutput moved it).
func WithDebug() Option {
	return func(c *Client) { c.debug = true }
}

// WithShuffledNodes randomises, once at creation, the order in which nodes
// are tried. It spreads the read load of many clients across the cluster.
func WithShuffledNodes() Option {
	return func(c *Client) { c.shuffle = true }
}

// WithLogger sets the logger used for debug logging. A nil logger restores
// the default, a text logger writing through the standard log package.
func WithLogger(l *slog.Logger) Option {
	return func(c *Client) { c.logger = l }
}

// WithRetryWindow sets how long a call without a context deadline keeps
// retrying passes over the node list, counted from its first failure
// (default DefaultRetryWindow); for a waiting GetMessages, also from the
// failure of an attempt a node held for a while (its wait), so that a long
// poll cut by a node's restart is retried. Zero makes a single pass. Calls whose context has a deadline retry until the
// deadline instead.
func WithRetryWindow(d time.Duration) Option {
	return func(c *Client) {
		if d < 0 {
			d = 0
		}
		c.retryWindow = d
	}
}

// WithDialOptions adds gRPC dial options to every connection the Client
// opens, after its own (transport credentials: plaintext, or WithTLS's;
// connection backoff and message size limits), so they take precedence:
// e.g. other transport credentials, a context dialer (bufconn) or
// interceptors.
//
// One exception: Subscribe sets its codec per call, since it reads each
// stream response in place rather than as a decoded
// forestbusv1.SubscribeResponse, so a codec given here does not apply to
// its streams, and a stream interceptor or stats handler sees its
// responses as a type of this module's (not a proto.Message), which, with
// WithBorrowedMessages, it must not keep past the next response.
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(c *Client) { c.dialOpts = append(c.dialOpts, opts...) }
}

// WithTLS makes the Client talk TLS to the nodes (fbnode -tls-cert):
// config's RootCAs verify them (the system's roots when nil), and its
// Certificates are presented to nodes that require client certificates
// (-tls-client-auth). The server name is each node's host unless config
// sets one. Clients given the same *tls.Config share their connections
// (see Close); config must not change once given.
func WithTLS(config *tls.Config) Option {
	return func(c *Client) { c.tls = config }
}

// WithPrivateConnections gives the Client connections of its own instead
// of the ones it would share with the other Clients of the process (see
// Close). A Client with WithDialOptions has its own connections anyway.
func WithPrivateConnections() Option {
	return func(c *Client) { c.private = true }
}

// New returns a Client for the cluster clusterID made of nodes.
//
// Each nodes entry is an address "host:port", or several separated by
// commas ("localhost:3000,localhost:3001"). The list should hold every node
// of the cluster for full failover. A target with a gRPC scheme
// ("dns:///host:port") is used as given; a plain address is dialled as is.
//
// A non-empty clusterID is sent with every call, and a node of another
// cluster answers with ErrClusterIdMismatch. An empty clusterID is not
// checked. (The original client checked it always, so an empty ID only
// matched nodes started with an empty ID.)
func New(clusterID string, nodes []string, opts ...Option) *Client {
	c := &Client{
		clusterID:   clusterID,
		retryWindow: DefaultRetryWindow,
		conns:       make(map[string]*grpc.ClientConn),
		streams:     make(map[*grpc.ClientConn]*produceStream),
		noProduce:   make(map[*grpc.ClientConn]time.Time),
		leaders:     make(map[string]string),
		seqs:        make(map[string]*topicSeqs),
	}
	c.life, c.endLife = context.WithCancel(context.Background())
	for c.producerID == 0 {
		c.producerID = rand.Uint64() // ChaCha8, seeded from the OS
	}
	for _, n := range nodes {
		for _, addr := range strings.Split(n, ",") {
			addr = strings.TrimSpace(addr)
			if addr != "" && !slices.Contains(c.nodes, addr) {
				c.nodes = append(c.nodes, addr)
			}
		}
	}
	for _, o := range opts {
		o(c)
	}
	if c.logger == nil {
		c.logger = stdlog.Debug() // through the log package, as the original's debug output
	}
	if c.shuffle {
		rand.Shuffle(len(c.nodes), func(i, j int) { c.nodes[i], c.nodes[j] = c.nodes[j], c.nodes[i] })
	}
	return c
}

// ProducerID returns the random, non-zero producer id the Client sends
// with every batch (see SendMessagesContext).
func (c *Client) ProducerID() uint64 { return c.producerID }

// maxSeqSpan bounds how far a Client's sends to one topic run ahead of
// its oldest send still in flight: a send takes sequence q only once every
// send in flight has a sequence above q-32, and waits (for a send to end,
// or for its ctx) until then. So while a call with sequence s retries, no
// sequence above s+31 is taken, and at most 62 batches are stored after
// s: inside the windows a topic keeps per producer (64 sequences, the IDs
// of the last 64 batches: see SendMessagesRequest.producer_id), and every
// retry within a call is recognized and answered. It also caps the sends
// in flight to a topic at 32. (Counting sends in flight is not enough: a
// call backing off between attempts would see later calls finish and new
// sequences run past the window.)
const maxSeqSpan = 32

// topicSeqs is a topic's producer sequences: the last one taken, and those
// of the sends in flight. Guarded by Client.mu.
type topicSeqs struct {
	last     uint64
	inFlight []uint64
	waiting  int           // sends waiting to start
	ended    chan struct{} // closed and replaced when a send ends while some wait
}

// fits reports whether a send with sequence q may start: every send in
// flight has a sequence above q-maxSeqSpan.
func (ts *topicSeqs) fits(q uint64) bool {
	for _, f := range ts.inFlight {
		if q >= f+maxSeqSpan {
			return false
		}
	}
	return true
}

// topicSeqsLocked returns topic's sequences, created on first use. The
// caller holds c.mu.
func (c *Client) topicSeqsLocked(topic string) *topicSeqs {
	ts := c.seqs[topic]
	if ts == nil {
		ts = &topicSeqs{ended: make(chan struct{})}
		if c.seqs == nil { // a zero Client
			c.seqs = make(map[string]*topicSeqs)
		}
		c.seqs[topic] = ts
	}
	return ts
}

// beginSend waits until a send to topic may start (maxSeqSpan) and
// registers it: with sequence seq, or with the next one when seq is 0. The
// caller calls c.endSend(ts, q) once the send has returned (a method, not
// a closure, which every send would allocate). The wait ends, with an
// error, when ctx ends, when Close ends the Client's calls in progress
// (ErrNoNodesAvailable, as for a call Close ends), and, for a ctx without
// a deadline (the original API's calls), after the retry window
// (ErrNoNodesAvailable: the earlier sends it waits for are as stuck).
func (c *Client) beginSend(ctx context.Context, topic string, seq uint64) (ts *topicSeqs, q uint64, err error) {
	var w *seqWait // made at the first wait: the send that does not wait allocates nothing
	for {
		c.mu.Lock()
		ts = c.topicSeqsLocked(topic)
		q = seq
		if q == 0 {
			q = ts.last + 1
		}
		if ts.fits(q) {
			ts.last = max(ts.last, q)
			ts.inFlight = append(ts.inFlight, q)
			c.mu.Unlock()
			w.end()
			return ts, q, nil
		}
		ended := ts.ended
		ts.waiting++
		c.mu.Unlock()
		if w == nil {
			w = c.newSeqWait(ctx)
		}
		err = w.wait(ctx, ended, topic)
		c.mu.Lock()
		ts.waiting--
		c.mu.Unlock()
		if err != nil {
			w.end()
			return nil, 0, err
		}
	}
}

// seqWait is a send's wait for its sequence (beginSend): ctx bound to the
// Client's life, and the retry window for a ctx without a deadline.
type seqWait struct {
	c      *Client
	bound  context.Context
	unbind func()
	window *time.Timer // nil: ctx has a deadline
}

func (c *Client) newSeqWait(ctx context.Context) *seqWait {
	w := &seqWait{c: c}
	w.bound, w.unbind = c.bind(ctx)
	if _, ok := ctx.Deadline(); !ok {
		w.window = time.NewTimer(c.retryWindow)
	}
	return w
}

// wait waits for ended (an earlier send ended), the end of ctx, Close, or
// the retry window.
func (w *seqWait) wait(ctx context.Context, ended <-chan struct{}, topic string) error {
	var window <-chan time.Time
	if w.window != nil {
		window = w.window.C
	}
	select {
	case <-ended:
		return nil
	case <-w.bound.Done():
		if err := ctx.Err(); err != nil {
			return err
		}
		return &noNodesError{op: "SendMessages", last: fmt.Errorf("the Client was closed while the send to %q waited for earlier sends", topic)}
	case <-window:
		return &noNodesError{op: "SendMessages", last: fmt.Errorf("sends to %q more than %d sequences earlier still in flight after the retry window (%v)", topic, maxSeqSpan, w.c.retryWindow)}
	}
}

// end releases the wait's bindings (nil: none made).
func (w *seqWait) end() {
	if w == nil {
		return
	}
	w.unbind()
	if w.window != nil {
		w.window.Stop()
	}
}

// endSend removes sequence q from ts's sends in flight and wakes the
// sends waiting to start.
func (c *Client) endSend(ts *topicSeqs, q uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if k := slices.Index(ts.inFlight, q); k >= 0 {
		ts.inFlight = slices.Delete(ts.inFlight, k, k+1)
	}
	if ts.waiting > 0 { // else no channel to replace: a send allocates none
		close(ts.ended)
		ts.ended = make(chan struct{})
	}
}

// nextSequence takes the producer sequence of a new batch for topic (1, 2,
// 3, ... per topic) without a send (NextSequence).
func (c *Client) nextSequence(topic string) uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	ts := c.topicSeqsLocked(topic)
	ts.last++
	return ts.last
}

// Nodes returns the node addresses the Client tries, in order.
func (c *Client) Nodes() []string {
	return append([]string(nil), c.nodes...)
}

// Close closes all connections that are open. Calls in progress on them
// fail. Later calls reopen connections as needed.
//
// Clients of one process share their connection to each node, unless
// they have WithDialOptions or WithPrivateConnections: a connection is
// closed once every Client that used it has closed, and Close fails this
// Client's calls in progress either way.
func (c *Client) Close() {
	// One step: every stream in c.streams then belongs to the current life.
	c.mu.Lock()
	streams := c.takeStreams()
	conns := c.conns
	c.conns = make(map[string]*grpc.ClientConn)
	if c.endLife != nil { // nil in a zero Client that never made a call
		c.endLife()
	}
	c.life, c.endLife = context.WithCancel(context.Background())
	c.mu.Unlock()
	for _, ps := range streams {
		ps.cancel()
	}
	for node, cc := range conns {
		pooled, err := release(c.poolKey(node), cc)
		if !pooled {
			err = cc.Close()
		}
		if err != nil && c.debug {
			c.logger.Debug("forestbus: closing connection", "node", node, "error", err)
		}
	}
}

// conn returns the connection to node, creating it if needed. Creating a
// connection does no I/O: gRPC connects on first use.
func (c *Client) conn(node string) (*grpc.ClientConn, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if cc, ok := c.conns[node]; ok {
		return cc, nil
	}
	target := dialTarget(node)
	creds := insecure.NewCredentials()
	if c.tls != nil {
		creds = credentials.NewTLS(c.tls)
	}
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff: backoff.Config{
				BaseDelay:  100 * time.Millisecond,
				Multiplier: 1.6,
				Jitter:     0.2,
				MaxDelay:   2 * time.Second,
			},
			MinConnectTimeout: 5 * time.Second,
		}),
		// A node that stops answering (a frozen host, a black-holed
		// network) fails the calls in progress on it, and they go to the
		// next node: without pings they would wait on TCP (~15 min).
		// Nodes accept a ping every 5 s (transport.ServerOptions).
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: keepaliveTime, Timeout: keepaliveTimeout}),
		// fastcodec: read answers without an allocation per message.
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxRecvMsgSize), grpc.ForceCodecV2(fastcodec.Codec{})),
	}
	opts = append(opts, grpcflow.DialOptions()...)
	dial := func() (*grpc.ClientConn, error) { return grpc.NewClient(target, append(opts, c.dialOpts...)...) }
	var (
		cc  *grpc.ClientConn
		err error
	)
	if len(c.dialOpts) == 0 && !c.private {
		cc, err = acquire(c.poolKey(node), dial)
	} else {
		cc, err = dial()
	}
	if err != nil {
		return nil, err
	}
	c.conns[node] = cc
	return cc, nil
}

// bind returns a context that ends with ctx or at the Client's next Close.
// The caller must call the returned function when the call is over.
func (c *Client) bind(ctx context.Context) (context.Context, func()) {
	c.mu.Lock()
	if c.life == nil { // a zero Client: its first life starts here
		c.life, c.endLife = context.WithCancel(context.Background())
	}
	life := c.life
	c.mu.Unlock()
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(life, cancel)
	return ctx, func() {
		stop()
		cancel()
	}
}

// dialTarget is the gRPC target for a node address.
func dialTarget(node string) string {
	if strings.Contains(node, "://") {
		return node
	}
	// Dial the address as given, as the original client's net.Dial did;
	// this also lets custom dialers (bufconn) see the name.
	return "passthrough:///" + node
}

// poolKey is the shared connections' key of node (pool.go): its target,
// and the TLS configuration it is dialed with.
func (c *Client) poolKey(node string) poolKey {
	return poolKey{target: dialTarget(node), tls: c.tls}
}

// outgoing adds the cluster ID to ctx's outgoing metadata.
func (c *Client) outgoing(ctx context.Context) context.Context {
	if c.clusterID == "" {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, ClusterIDMetadataKey, c.clusterID)
}
