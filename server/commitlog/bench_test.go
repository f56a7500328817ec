package commitlog

import (
	"fmt"
	"path/filepath"
	"testing"

	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

func benchBatch(n, size int) []byte {
	msgs := make([][]byte, n)
	for i := range msgs {
		msgs[i] = make([]byte, size)
		msgs[i][0] = byte(i)
	}
	return EncodeBatch(nil, 1, 0, 0, msgs)
}

// BenchmarkAppend appends one entry of 100 × 100 B messages per call.
func BenchmarkAppend(b *testing.B) {
	for _, sync := range []bool{false, true} {
		name := "nosync"
		if sync {
			name = "sync"
		}
		b.Run(name, func(b *testing.B) {
			l := openT(b, b.TempDir(), Options{})
			defer l.Close()
			data := benchBatch(100, 100)
			e := &pb.Entry{Term: proto.Uint64(1), Index: proto.Uint64(0), Type: pb.EntryType_EntryNormal.Enum(), Data: data}
			ents := []*pb.Entry{e}
			var ids []EntryIDs
			idx := uint64(1)
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				*e.Index = idx
				idx++
				var err error
				if ids, err = l.Append(ents, ids[:0]); err != nil {
					b.Fatal(err)
				}
				if sync {
					if err := l.Sync(); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.ReportMetric(float64(b.N)*100/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}

// BenchmarkAppendBig appends 10 entries of 1000 × 100 B per call, then syncs:
// the group-commit shape of a busy topic.
func BenchmarkAppendBig(b *testing.B) {
	l := openT(b, b.TempDir(), Options{})
	defer l.Close()
	data := benchBatch(1000, 100)
	ents := make([]*pb.Entry, 10)
	for i := range ents {
		ents[i] = &pb.Entry{Term: proto.Uint64(1), Index: proto.Uint64(0), Type: pb.EntryType_EntryNormal.Enum(), Data: data}
	}
	var ids []EntryIDs
	idx := uint64(1)
	b.SetBytes(int64(len(data) * len(ents)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for _, e := range ents {
			*e.Index = idx
			idx++
		}
		var err error
		if ids, err = l.Append(ents, ids[:0]); err != nil {
			b.Fatal(err)
		}
		if err := l.Sync(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)*10000/b.Elapsed().Seconds(), "msgs/s")
}

// BenchmarkReadMessages reads 500 messages of 100 B per call.
func BenchmarkReadMessages(b *testing.B) {
	l := openT(b, b.TempDir(), Options{NoSync: true})
	defer l.Close()
	data := benchBatch(100, 100)
	var ents []*pb.Entry
	for i := uint64(1); i <= 2000; i++ {
		ents = append(ents, ent(i, 1, pb.EntryType_EntryNormal, data))
	}
	if _, err := l.Append(ents, nil); err != nil {
		b.Fatal(err)
	}
	last := l.NextID() - 1
	dst := make([][]byte, 0, 500)
	id := uint64(1)
	b.SetBytes(500 * 100)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		var err error
		dst, id, err = l.ReadMessages(dst[:0], id, last, 500, 1<<20)
		if err != nil || len(dst) != 500 {
			b.Fatal(err, len(dst))
		}
		if id+500 > last {
			id = 1
		}
	}
	b.ReportMetric(float64(b.N)*500/b.Elapsed().Seconds(), "msgs/s")
}

// BenchmarkSyncMany is one pass of a node with many busy topics: each of
// 100 logs appends an entry of 10 × 100 B, then SyncMany makes them all
// durable, through the journal or (without one) with a syncfs.
func BenchmarkSyncMany(b *testing.B) {
	for _, journal := range []bool{true, false} {
		name := "syncfs"
		if journal {
			name = "journal"
		}
		b.Run(name, func(b *testing.B) {
			root := b.TempDir()
			var opts Options
			if journal {
				j, err := OpenJournal(filepath.Join(root, "journal"), root, JournalOptions{})
				if err != nil {
					b.Fatal(err)
				}
				defer j.Close()
				opts.Journal = j
			}
			const n = 100
			data := benchBatch(10, 100)
			logs := make([]*Log, n)
			ents := make([][]*pb.Entry, n)
			for i := range logs {
				logs[i] = openT(b, filepath.Join(root, "topics", fmt.Sprint(i)), opts)
				defer logs[i].Close()
				ents[i] = []*pb.Entry{{Term: proto.Uint64(1), Index: proto.Uint64(1), Type: pb.EntryType_EntryNormal.Enum(), Data: data}}
				// The first append creates the segment (a directory change,
				// synced the ordinary way).
				if _, err := logs[i].Append(ents[i], nil); err != nil {
					b.Fatal(err)
				}
			}
			var errs []error
			errs = SyncMany(logs, errs)
			var ids []EntryIDs
			b.SetBytes(int64(n * len(data)))
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				for k, l := range logs {
					*ents[k][0].Index++
					var err error
					if ids, err = l.Append(ents[k], ids[:0]); err != nil {
						b.Fatal(err)
					}
				}
				errs = SyncMany(logs, errs)
				for _, err := range errs {
					if err != nil {
						b.Fatal(err)
					}
				}
			}
			b.ReportMetric(float64(b.N)*n*10/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}
