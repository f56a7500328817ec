package server_test

import (
	"errors"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/net/http2"
	"google.golang.org/grpc/metadata"

	forestbusv1 "github.com/forestbus/forestbus/gen/forestbus/v1"
	"github.com/forestbus/forestbus/server"
	"github.com/forestbus/forestbus/server/servertest"
)

// A client connection that goes silent (its host vanished: it answers no
// ping) is closed once a ping goes unanswered, instead of holding its
// calls, memory and descriptor for ever.
func TestSilentConnectionIsClosed(t *testing.T) {
	n := servertest.StartNode(t, servertest.WithConfig(func(c *server.Config) {
		c.KeepaliveTime, c.KeepaliveTimeout = time.Second, time.Second
	}))
	conn, err := net.Dial("tcp", n.Addr())
	require.NoError(t, err)
	defer conn.Close()
	// An HTTP/2 client's opening, then nothing: no answer to the node's
	// settings or pings.
	_, err = conn.Write([]byte(http2.ClientPreface))
	require.NoError(t, err)
	fr := http2.NewFramer(conn, conn)
	require.NoError(t, fr.WriteSettings())

	require.NoError(t, conn.SetReadDeadline(time.Now().Add(30*time.Second)))
	pinged := false
	for {
		f, err := fr.ReadFrame()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatal("the node kept the silent connection open")
		}
		if err != nil {
			break // closed by the node
		}
		if p, ok := f.(*http2.PingFrame); ok && !p.IsAck() {
			pinged = true
		}
	}
	require.True(t, pinged, "the node pinged before closing")
}

// A call's headers are capped (MaxHeaderListBytes): the node announces
// the cap in its HTTP/2 settings, so a grpc-go client refuses a call with
// 256 KiB of metadata itself (this test does not send one past a client
// that ignores the setting); 1 KiB passes.
func TestCallHeadersAreCapped(t *testing.T) {
	n := servertest.StartNode(t)
	c := dial(t, n)
	ctx := metadata.AppendToOutgoingContext(ctxT(t), "x-big", strings.Repeat("a", 256<<10))
	_, err := c.bus.GetClusterDetails(ctx, &forestbusv1.GetClusterDetailsRequest{})
	require.Error(t, err)
	small := metadata.AppendToOutgoingContext(ctxT(t), "x-small", strings.Repeat("a", 1<<10))
	_, err = c.bus.GetClusterDetails(small, &forestbusv1.GetClusterDetailsRequest{})
	require.NoError(t, err)
}
