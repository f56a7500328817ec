package server_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/net/http2"
	"google.golang.org/grpc/metadata"

	"github.com/forestbus/forestbus/client"
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

// TestLargeStoredMessageStaysReadable: a message stored while the node
// took larger messages stays readable after its limits are lowered
// (Kafka's fetch returns a record batch over the fetch cap rather than
// stall the reader, and so does a node: an answer holds at least one
// message), through the Client's GetMessages and Subscribe, even over the
// 64 MiB a Client used to accept.
func TestLargeStoredMessageStaysReadable(t *testing.T) {
	n := servertest.StartNode(t, servertest.WithConfig(func(c *server.Config) {
		c.MaxMessageBytes, c.MaxBatchBytes = 80<<20, 80<<20
	}))
	big := bytes.Repeat([]byte("0123456789abcdef"), (65<<20)/16)
	big = append(big, "end"...)
	cl := client.New("test", []string{n.Addr()})
	defer cl.Close()
	_, err := cl.SendMessages("default", [][]byte{big, []byte("after")}, true)
	require.NoError(t, err)

	n.Stop()
	n.Cfg.MaxMessageBytes, n.Cfg.MaxBatchBytes = 0, 0 // the defaults: 1 MiB and 16 MiB
	n.Start()

	cl2 := client.New("test", []string{n.Addr()})
	defer cl2.Close()
	// 60 s, not ctxT's 20: reading the 65 MiB message twice (a read, a
	// subscription) took 9-11 s under -race with other packages' tests
	// running beside it, and ran out of 20 s once.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	msgs, next, err := cl2.GetMessagesContext(ctx, "default", 1, 1, false)
	require.NoError(t, err)
	require.NotEmpty(t, msgs)
	require.True(t, bytes.Equal(big, msgs[0]), "message 1 read back as sent")
	if next == 2 { // the answer ended after the large message
		msgs, _, err = cl2.GetMessagesContext(ctx, "default", 2, 1, false)
		require.NoError(t, err)
		require.NotEmpty(t, msgs)
	} else {
		msgs = msgs[1:]
	}
	require.Equal(t, []byte("after"), msgs[0])

	errStop := errors.New("stop")
	var got [][]byte
	err = cl2.Subscribe(ctx, "default", 1, func(id int64, msg []byte) error {
		got = append(got, msg)
		if id == 2 {
			return errStop
		}
		return nil
	}, client.WithSubscribeHeartbeat(20*time.Second)) // stale after 60 s, not 15: the 65 MiB response is one
	require.ErrorIs(t, err, errStop)
	require.Len(t, got, 2)
	require.True(t, bytes.Equal(big, got[0]), "message 1 subscribed as sent")
	require.Equal(t, []byte("after"), got[1])
}
