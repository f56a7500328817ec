package transport

import (
	"runtime"
	"sync/atomic"
	"testing"

	"go.etcd.io/raft/v3/raftpb"
)

// counter is a Handler that only counts Step calls.
type counter struct{ n atomic.Int64 }

func (c *counter) Step(string, *raftpb.Message)        { c.n.Add(1) }
func (c *counter) ReportUnreachable(string, uint64)    {}
func (c *counter) ReportSnapshot(string, uint64, bool) {}

// BenchmarkSend measures MsgApps (100 entries of 100 B, ~12 KB) through a
// loopback pair: Send on one node to Step on the other, at most 1024 in
// flight. allocs/op covers both sides.
func BenchmarkSend(b *testing.B) {
	recv := &counter{}
	n1 := startNode(b, 1, "c", func(c *Config) { c.Handler = &counter{}; c.QueueSize = 4096 })
	n2 := startNode(b, 2, "c", func(c *Config) { c.Handler = recv })
	n1.tr.AddPeer(2, n2.addr)

	ents := make([]*raftpb.Entry, 100)
	for i := range ents {
		ents[i] = &raftpb.Entry{Index: new(uint64(i + 1)), Term: new(uint64(1)), Data: make([]byte, 100)}
	}
	m := msg(1, 2, 1)
	m.Entries = ents
	msgs := []*raftpb.Message{m}
	const window = 1024

	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		for int64(i)-recv.n.Load() >= window {
			runtime.Gosched() // the receiver is behind
		}
		n1.tr.Send("g", msgs)
	}
	for recv.n.Load() < int64(b.N) {
		runtime.Gosched()
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
	b.ReportMetric(float64(b.N)*float64(len(ents))/b.Elapsed().Seconds(), "entries/s")
	st := n1.tr.Stats()
	if st.MessagesDropped > 0 {
		b.Fatalf("%d messages dropped", st.MessagesDropped)
	}
	b.ReportMetric(float64(st.MessagesSent)/float64(st.FramesSent), "msgs/frame")
}
