package commitlog

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

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

// BenchmarkAppendBesideColdReader appends and syncs one entry of 10 × 100 B
// per op, as the engine does for a topic a producer sends to, and reports
// the latency of each op (p50, p99, max): alone, and with a consumer far
// behind reading the same log from the start in 3 MiB answers, its records
// dropped from the page cache before every pass (a consumer past the
// newest PageCacheBytes reads from disk). The appender takes the log's lock
// to publish each append; a reader holding it while it reads the disk
// holds up the append, and in a node the engine with it.
func BenchmarkAppendBesideColdReader(b *testing.B) {
	for _, withReader := range []bool{false, true} {
		name := "alone"
		if withReader {
			name = "reader"
		}
		b.Run(name, func(b *testing.B) {
			l := openT(b, b.TempDir(), Options{PageCacheBytes: -1})
			defer l.Close()
			fill := benchBatch(100, 100)
			var ents []*pb.Entry
			idx := uint64(1)
			for ; idx <= 6400; idx++ { // 64 MB of records
				ents = append(ents, ent(idx, 1, pb.EntryType_EntryNormal, fill))
				if len(ents) == 100 {
					if _, err := l.Append(ents, nil); err != nil {
						b.Fatal(err)
					}
					ents = ents[:0]
				}
			}
			if err := l.Sync(); err != nil {
				b.Fatal(err)
			}
			last := l.NextID() - 1
			files := make([]*os.File, 0, len(l.segs))
			for _, s := range l.segs {
				files = append(files, s.f)
			}

			stop := make(chan struct{})
			var reads atomic.Int64
			var wg sync.WaitGroup
			if withReader {
				wg.Add(1)
				go func() {
					defer wg.Done()
					var sc Scratch
					for {
						for _, f := range files {
							dropPages(f, 0, 0)
						}
						for id := uint64(1); id <= last; {
							select {
							case <-stop:
								return
							default:
							}
							msgs, next, err := l.ReadBatchesInto(&sc, id, last, 500, 3<<20, 4<<20)
							if err != nil || len(msgs) == 0 {
								b.Error(err, len(msgs))
								return
							}
							reads.Add(1)
							id = next
						}
					}
				}()
			}

			data := benchBatch(10, 100)
			e := ent(idx, 1, pb.EntryType_EntryNormal, data)
			one := []*pb.Entry{e}
			var ids []EntryIDs
			lat := make([]time.Duration, 0, b.N)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				t0 := time.Now()
				*e.Index = idx
				idx++
				var err error
				if ids, err = l.Append(one, ids[:0]); err != nil {
					b.Fatal(err)
				}
				if err := l.Sync(); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(t0))
			}
			b.StopTimer()
			close(stop)
			wg.Wait()
			slices.Sort(lat)
			ms := func(d time.Duration) float64 { return float64(d) / 1e6 }
			b.ReportMetric(ms(lat[len(lat)/2]), "p50-ms")
			b.ReportMetric(ms(lat[len(lat)*99/100]), "p99-ms")
			b.ReportMetric(ms(lat[len(lat)-1]), "max-ms")
			b.ReportMetric(float64(reads.Load())/b.Elapsed().Seconds(), "reads/s")
		})
	}
}

// BenchmarkDeleteBefore times one retention cut of a 16 MiB segment whose
// pages are dropped (as a node's are long before retention reaches them):
// with the table the kept segment started with ("table"), and without it
// ("replay": the deleted segment's records read again, as before 97bfbe7).
func BenchmarkDeleteBefore(b *testing.B) {
	for _, keep := range []bool{true, false} {
		name := "table"
		if !keep {
			name = "replay"
		}
		b.Run(name, func(b *testing.B) {
			if !keep {
				defer func(v int64) { tableBudget = v }(tableBudget)
				tableBudget = 0
			}
			data := benchBatch(100, 100)
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				l := openT(b, b.TempDir(), Options{SegmentBytes: 16 << 20, PageCacheBytes: -1})
				var ents []*pb.Entry
				for idx := uint64(1); idx <= 1700; idx++ { // ~17 MB: a full segment and the next
					ents = append(ents, ent(idx, 1, pb.EntryType_EntryNormal, data))
				}
				if _, err := l.Append(ents, nil); err != nil {
					b.Fatal(err)
				}
				if err := l.Sync(); err != nil {
					b.Fatal(err)
				}
				if err := l.SetHardStateParts(1, 0, 1700); err != nil {
					b.Fatal(err)
				}
				dropPages(l.segs[0].f, 0, 0)
				cut := l.segs[1].first
				b.StartTimer()
				if err := l.DeleteBefore(cut); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				l.Close()
			}
			b.ReportMetric(float64(b.Elapsed().Microseconds())/1000/float64(b.N), "ms/cut")
		})
	}
}
