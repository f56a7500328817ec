package grpcflow_test

import (
	"context"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/forestbus/forestbus/internal/grpcflow"
)

// sinkDesc is a one-method service that takes a BytesValue and answers
// Empty: a large request and a small answer, as SendMessages is.
var sinkDesc = grpc.ServiceDesc{
	ServiceName: "grpcflow.test.Sink",
	HandlerType: (*any)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "Put",
		Handler: func(_ any, _ context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
			if err := dec(new(wrapperspb.BytesValue)); err != nil {
				return nil, err
			}
			return new(emptypb.Empty), nil
		},
	}},
}

// frameCounter counts the HTTP/2 frames a server writes to its clients, by
// parsing a copy of the bytes each client connection reads. Once the
// connections are closed, wait returns when every byte read has been parsed,
// so the count is exact, not a sample of a parser that may lag behind.
type frameCounter struct {
	parsers sync.WaitGroup
	mu      sync.Mutex
	pings   int // PING frames that are not acks: the server asking
}

func (f *frameCounter) wait() int {
	f.parsers.Wait()
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.pings
}

type teeConn struct {
	net.Conn
	w *io.PipeWriter
}

func (c teeConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		_, _ = c.w.Write(p[:n])
	}
	return n, err
}

func (c teeConn) Close() error {
	_ = c.w.Close()
	return c.Conn.Close()
}

// dialCounting dials addr and counts the frames the server sends on it.
func dialCounting(f *frameCounter) func(context.Context, string) (net.Conn, error) {
	return func(ctx context.Context, addr string) (net.Conn, error) {
		conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, err
		}
		r, w := io.Pipe()
		f.parsers.Add(1)
		go func() {
			defer f.parsers.Done()
			fr := http2.NewFramer(io.Discard, r)
			fr.SetMaxReadFrameSize(1 << 24)
			for {
				h, err := fr.ReadFrameHeader()
				if err != nil {
					_ = r.CloseWithError(err)
					return
				}
				if _, err := io.CopyN(io.Discard, r, int64(h.Length)); err != nil {
					_ = r.CloseWithError(err)
					return
				}
				if h.Type == http2.FramePing && !h.Flags.Has(http2.FlagPingAck) {
					f.mu.Lock()
					f.pings++
					f.mu.Unlock()
				}
			}
		}()
		return teeConn{Conn: conn, w: w}, nil
	}
}

// pingsFor sends rounds requests of size bytes to a server started with
// sopts from a client dialled with dopts, and returns how many PINGs the
// server sent meanwhile.
func pingsFor(t *testing.T, sopts []grpc.ServerOption, dopts []grpc.DialOption, rounds, size int) int {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := grpc.NewServer(sopts...)
	srv.RegisterService(&sinkDesc, nil)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)

	var f frameCounter
	dopts = append(dopts,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(dialCounting(&f)))
	cc, err := grpc.NewClient("passthrough:///"+lis.Addr().String(), dopts...)
	require.NoError(t, err)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req := &wrapperspb.BytesValue{Value: make([]byte, size)}
	for range rounds {
		if err := cc.Invoke(ctx, "/grpcflow.test.Sink/Put", req, new(emptypb.Empty)); err != nil {
			_ = cc.Close()
			require.NoError(t, err)
		}
	}
	require.NoError(t, cc.Close()) // closes the connection: its parser drains and ends
	return f.wait()
}

// With grpc-go's defaults the receiver of data pings the sender to
// estimate the bandwidth-delay product, round after round; with our
// windows it never does. (The first case shows the counter sees pings.)
func TestWindowsStopBandwidthPings(t *testing.T) {
	const rounds, size = 50, 256 << 10
	require.Greater(t, pingsFor(t, nil, nil, rounds, size), 0, "default windows: the server should ping")
	require.Zero(t, pingsFor(t, grpcflow.ServerOptions(), grpcflow.DialOptions(), rounds, size))
}

// A request larger than the stream window goes through: the receiver
// opens the window as it reads, and still never pings.
func TestRequestLargerThanWindow(t *testing.T) {
	sopts := append(grpcflow.ServerOptions(), grpc.MaxRecvMsgSize(64<<20))
	require.Zero(t, pingsFor(t, sopts, grpcflow.DialOptions(), 3, 3*grpcflow.StreamWindow))
}
