package server_test

import (
	"context"
	"testing"

	"github.com/forestbus/forestbus/client"
	forestbusv1 "github.com/forestbus/forestbus/gen/forestbus/v1"
	"github.com/forestbus/forestbus/server"
	"github.com/forestbus/forestbus/server/servertest"
)

// BenchmarkSendMessages measures committed sends through gRPC to one
// in-process node: batches of 100 × 100 B, wait_for_commit, from parallel
// producers (b.SetParallelism scales them).
func BenchmarkSendMessages(b *testing.B) {
	for _, mode := range []server.SyncMode{server.SyncFsync, server.SyncOS} {
		b.Run(string(mode), func(b *testing.B) {
			n := servertest.StartNode(b, servertest.WithSync(mode))
			cc := dialB(b, n)
			msgs := payloads(100)
			b.SetParallelism(8)
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				req := &forestbusv1.SendMessagesRequest{Topic: "default", Messages: msgs, WaitForCommit: true}
				for pb.Next() {
					if _, err := cc.SendMessages(context.Background(), req); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N*len(msgs))/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}

// BenchmarkGetMessages measures sequential reads of 500 committed messages
// per call.
func BenchmarkGetMessages(b *testing.B) {
	n := servertest.StartNode(b, servertest.WithSync(server.SyncOS))
	cc := dialB(b, n)
	msgs := payloads(1000)
	const total = 100_000
	for i := 0; i < total/len(msgs); i++ {
		if _, err := cc.SendMessages(context.Background(), &forestbusv1.SendMessagesRequest{Topic: "default", Messages: msgs, WaitForCommit: true}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	id := int64(1)
	read := 0
	for i := 0; i < b.N; i++ {
		resp, err := cc.GetMessages(context.Background(), &forestbusv1.GetMessagesRequest{Topic: "default", Id: id, Quantity: 500})
		if err != nil {
			b.Fatal(err)
		}
		read += len(resp.Messages)
		id = resp.NextId
		if id > total {
			id = 1
		}
	}
	b.ReportMetric(float64(read)/b.Elapsed().Seconds(), "msgs/s")
}

// BenchmarkClientSend compares the Go client's two ways of sending a batch
// to one in-process node: over the node's Produce stream (the default) and
// as a SendMessages call each (client.WithUnarySends). Small batches (10 ×
// 100 B, wait_for_commit, os mode) so that the per-batch cost shows.
func BenchmarkClientSend(b *testing.B) {
	for _, path := range []string{"produce", "unary"} {
		b.Run(path, func(b *testing.B) {
			n := servertest.StartNode(b, servertest.WithSync(server.SyncOS))
			var opts []client.Option
			if path == "unary" {
				opts = append(opts, client.WithUnarySends())
			}
			c := client.New("test", []string{n.Addr()}, opts...)
			b.Cleanup(c.Close)
			msgs := payloads(10)
			b.SetParallelism(8)
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := c.SendMessagesContext(context.Background(), "default", msgs, true); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N*len(msgs))/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}

// payloads returns n messages of 100 zero bytes.
func payloads(n int) [][]byte {
	msgs := make([][]byte, n)
	for i := range msgs {
		msgs[i] = make([]byte, 100)
	}
	return msgs
}
