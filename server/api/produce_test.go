package api

import (
	"context"
	"io"
	"log/slog"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"

	forestbusv1 "github.com/forestbus/forestbus/gen/forestbus/v1"
	"github.com/forestbus/forestbus/internal/fastcodec"
)

// produceBomb is the node's codec, except that decoding a ProduceRequest
// panics: a decoder bug met by a client's request.
type produceBomb struct{ fastcodec.Codec }

func (c produceBomb) Unmarshal(data mem.BufferSlice, v any) error {
	if _, ok := v.(*forestbusv1.ProduceRequest); ok {
		panic("boom")
	}
	return c.Codec.Unmarshal(data, v)
}

// A panic decoding a Produce request fails that stream with Internal; the
// node lives on (the stream is read off the handler's goroutine, where the
// recovery interceptor cannot catch it).
func TestProducePanicFailsTheStream(t *testing.T) {
	svc := New(Config{ClusterID: "c1", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, nil)
	bus := serveBus(t, svc, append(svc.ServerOptions(), grpc.ForceServerCodecV2(produceBomb{}))...)

	stream, err := bus.Produce(context.Background())
	require.NoError(t, err)
	require.NoError(t, stream.Send(&forestbusv1.ProduceRequest{RequestId: 1}))
	_, err = stream.Recv()
	require.Equal(t, codes.Internal, status.Code(err), "%v", err)
}
