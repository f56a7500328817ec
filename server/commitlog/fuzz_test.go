package commitlog

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	pb "go.etcd.io/raft/v3/raftpb"
)

func FuzzBatchCount(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{1})
	f.Add(EncodeBatch(nil, 1, 2, 3, [][]byte{[]byte("a"), nil, []byte("hello")}))
	f.Add(EncodeBatch(nil, 0, 0, 0, nil))
	f.Fuzz(func(t *testing.T, data []byte) {
		n, err := BatchCount(data)
		msgs, derr := DecodeBatch(nil, data)
		vn, verr := validateBatch(data)
		if derr == nil {
			if err != nil || uint32(len(msgs)) != n || verr != nil || vn != n {
				t.Fatalf("decode ok with %d msgs but count %d (%v), validate %d (%v)", len(msgs), n, err, vn, verr)
			}
			if len(data) > 0 && data[0] == KindMessages {
				tag, _ := BatchTag(data)
				pid, seq, _ := BatchProducer(data)
				// Non-minimal varints decode fine, so compare messages, not bytes.
				re := EncodeBatch(nil, tag, pid, seq, msgs)
				if BatchSize(msgs) != len(re) || len(re) > len(data) {
					t.Fatalf("bad re-encoding size")
				}
				back, err := DecodeBatch(nil, re)
				if err != nil || len(back) != len(msgs) {
					t.Fatalf("re-encoding does not decode: %v", err)
				}
				for i := range msgs {
					if string(back[i]) != string(msgs[i]) {
						t.Fatalf("message %d differs after re-encoding", i)
					}
				}
			}
		} else if verr == nil {
			t.Fatalf("validate accepted what decode rejected: %v", derr)
		}
	})
}

// FuzzOpen writes arbitrary bytes as (the tail of) the last segment; Open must
// never panic, and whatever it opens must be usable.
func FuzzOpen(f *testing.F) {
	seedDir := f.TempDir()
	l, err := Open(seedDir, Options{})
	require.NoError(f, err)
	var ents []*pb.Entry
	for i := uint64(1); i <= 5; i++ {
		ents = append(ents, ent(i, 1, pb.EntryType_EntryNormal, EncodeBatch(nil, i, 0, 0, msgsFor(i, int(i)))))
	}
	_, err = l.Append(ents, nil)
	require.NoError(f, err)
	require.NoError(f, l.Close())
	seg, err := os.ReadFile(filepath.Join(seedDir, segmentName(1)))
	require.NoError(f, err)
	f.Add(seg, false)
	f.Add(seg[:len(seg)-3], false)
	f.Add([]byte("garbage"), true)
	f.Add(seg[40:], true)
	f.Fuzz(func(t *testing.T, data []byte, appendToValid bool) {
		dir := t.TempDir()
		b := data
		if appendToValid {
			b = append(append([]byte{}, seg...), data...)
		}
		require.NoError(t, os.WriteFile(filepath.Join(dir, segmentName(1)), b, 0o644))
		l, err := Open(dir, Options{NoSync: true})
		if err != nil {
			return
		}
		defer l.Close()
		li, err := l.LastIndex()
		require.NoError(t, err)
		if li > 0 {
			_, err = l.Entries(1, li+1, 1<<30)
			require.NoError(t, err)
		}
		_, _, err = l.ReadMessages(nil, 1, l.NextID(), 0, 0)
		require.NoError(t, err)
		_, err = l.Append([]*pb.Entry{ent(li+1, 1, pb.EntryType_EntryNormal, nil)}, nil)
		require.NoError(t, err)
	})
}
