package transport

import (
	"runtime"
	"sync/atomic"
	"testing"
	"time"

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

// echo is a Handler that answers every message with one back to its sender.
type echo struct{ tr *GRPC }

func (e *echo) Step(group string, m *raftpb.Message) {
	e.tr.Send(group, []*raftpb.Message{msg(m.GetTo(), m.GetFrom(), m.GetIndex())})
}
func (e *echo) ReportUnreachable(string, uint64)    {}
func (e *echo) ReportSnapshot(string, uint64, bool) {}

// signal is a Handler that passes each message's index to a channel.
type signal chan uint64

func (s signal) Step(_ string, m *raftpb.Message)    { s <- m.GetIndex() }
func (s signal) ReportUnreachable(string, uint64)    {}
func (s signal) ReportSnapshot(string, uint64, bool) {}

// BenchmarkRoundTrip measures one small message to a peer and its answer
// back, one at a time: the latency a replication round trip adds (W2), on
// one machine with both nodes in this process.
func BenchmarkRoundTrip(b *testing.B) {
	back := make(signal, 1)
	e := &echo{}
	n1 := startNode(b, 1, "c", func(c *Config) { c.Handler = back })
	n2 := startNode(b, 2, "c", func(c *Config) { c.Handler = e })
	e.tr = n2.tr
	n1.tr.AddPeer(2, n2.addr)
	n2.tr.AddPeer(1, n1.addr)
	timeout := time.NewTimer(waitFor)
	defer timeout.Stop()
	roundTrip := func(i uint64) {
		n1.tr.Send("g", []*raftpb.Message{msg(1, 2, i)})
		timeout.Reset(waitFor)
		select {
		case got := <-back:
			if got != i {
				b.Fatalf("answer %d to message %d", got, i)
			}
		case <-timeout.C:
			b.Fatalf("no answer to message %d", i)
		}
	}
	roundTrip(0) // streams open both ways
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		roundTrip(uint64(i + 1))
	}
}
