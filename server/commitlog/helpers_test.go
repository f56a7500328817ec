package commitlog

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"
	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

func openT(t testing.TB, dir string, opts Options) *Log {
	t.Helper()
	l, err := Open(dir, opts)
	require.NoError(t, err)
	return l
}

func ent(index, term uint64, typ pb.EntryType, data []byte) *pb.Entry {
	return &pb.Entry{Index: proto.Uint64(index), Term: proto.Uint64(term), Type: typ.Enum(), Data: data}
}

// msgsFor returns n deterministic messages whose ids start at firstID.
func msgsFor(firstID uint64, n int) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		out[i] = []byte(fmt.Sprintf("message-%d-%s", firstID+uint64(i), string(make([]byte, int(firstID+uint64(i))%37))))
	}
	return out
}

// model tracks what the log should contain.
type model struct {
	ents  map[uint64]*pb.Entry
	ids   map[uint64]EntryIDs
	msgs  map[uint64][]byte
	fid   uint64 // first id at first
	next  uint64
	last  uint64
	first uint64
}

func newModel() *model {
	return &model{ents: map[uint64]*pb.Entry{}, ids: map[uint64]EntryIDs{}, msgs: map[uint64][]byte{}, next: 1, first: 1, fid: 1}
}

// kind selects the entry shape by i: batch, empty, conf change, other-kind data.
func (m *model) make(index, term uint64, i int) *pb.Entry {
	switch i % 5 {
	case 1:
		return ent(index, term, pb.EntryType_EntryNormal, nil)
	case 2:
		return ent(index, term, pb.EntryType_EntryConfChange, []byte{1, 2, 3})
	case 3:
		return ent(index, term, pb.EntryType_EntryNormal, []byte{7, 1, 2})
	default:
		return nil
	}
}

// appendN appends n entries starting at index start with term, mixing types.
// Message batches have 1..7 messages. Truncates the model as needed.
func (m *model) appendN(t testing.TB, l *Log, start uint64, n int, term uint64) {
	t.Helper()
	// roll the model back
	for i := m.last; i >= start && i > 0; i-- {
		for id := m.ids[i].FirstID; id < m.ids[i].FirstID+uint64(m.ids[i].Count); id++ {
			delete(m.msgs, id)
		}
		delete(m.ents, i)
		delete(m.ids, i)
	}
	if start <= m.last {
		m.last = start - 1
		if m.last >= m.first {
			m.next = m.ids[m.last].FirstID + uint64(m.ids[m.last].Count)
		} else {
			m.next = m.fid
		}
	}
	var ents []*pb.Entry
	next := m.next
	for i := 0; i < n; i++ {
		idx := start + uint64(i)
		e := m.make(idx, term, int(idx))
		cnt := 0
		if e == nil {
			cnt = int(idx%7) + 1
			msgs := msgsFor(next, cnt)
			e = ent(idx, term, pb.EntryType_EntryNormal, EncodeBatch(nil, idx, 0, 0, msgs))
			for k, msg := range msgs {
				m.msgs[next+uint64(k)] = msg
			}
		}
		m.ents[idx] = e
		m.ids[idx] = EntryIDs{Index: idx, FirstID: next, Count: uint32(cnt), Next: next + uint64(cnt)}
		next += uint64(cnt)
		ents = append(ents, e)
	}
	ids, err := l.Append(ents, nil)
	require.NoError(t, err)
	for i, id := range ids {
		require.Equal(t, m.ids[start+uint64(i)], id)
	}
	m.next = next
	m.last = start + uint64(n) - 1
}

// check verifies the whole log against the model.
func (m *model) check(t testing.TB, l *Log) {
	t.Helper()
	fi, err := l.FirstIndex()
	require.NoError(t, err)
	li, err := l.LastIndex()
	require.NoError(t, err)
	require.Equal(t, m.first, fi)
	require.Equal(t, m.last, li)
	require.Equal(t, m.next, l.NextID())
	if li >= fi {
		got, err := l.Entries(fi, li+1, 1<<62)
		require.NoError(t, err)
		require.Len(t, got, int(li-fi+1))
		for i, e := range got {
			want := m.ents[fi+uint64(i)]
			require.True(t, proto.Equal(want, e), "entry %d: want %v got %v", fi+uint64(i), want, e)
		}
	}
	for i := fi; i <= li; i++ {
		ids, err := l.IDs(i)
		require.NoError(t, err)
		require.Equal(t, m.ids[i], ids, "ids of %d", i)
		term, err := l.Term(i)
		require.NoError(t, err)
		require.Equal(t, m.ents[i].GetTerm(), term)
	}
	if l.FirstID() < m.next {
		msgs, next, err := l.ReadMessages(nil, l.FirstID(), m.next, 0, 0)
		require.NoError(t, err)
		require.Equal(t, m.next, next)
		for k, msg := range msgs {
			require.Equal(t, m.msgs[l.FirstID()+uint64(k)], msg, "message %d", l.FirstID()+uint64(k))
		}
	}
}

// payload is the number of payload bytes in msgs.
func payload(msgs [][]byte) int {
	n := 0
	for _, m := range msgs {
		n += len(m)
	}
	return n
}

// cost is msgs' MessageCost, what the read limits count.
func cost(msgs [][]byte) int {
	n := 0
	for _, m := range msgs {
		n += MessageCost(len(m))
	}
	return n
}

// appendUniform appends entry index (term 1): one batch of n messages of
// size bytes, each filled with byte(index). It returns the messages.
func appendUniform(t testing.TB, l *Log, index uint64, n, size int) [][]byte {
	t.Helper()
	msgs := make([][]byte, n)
	for k := range msgs {
		msgs[k] = bytes.Repeat([]byte{byte(index)}, size)
	}
	_, err := l.Append([]*pb.Entry{ent(index, 1, pb.EntryType_EntryNormal, EncodeBatch(nil, index, 0, 0, msgs))}, nil)
	require.NoError(t, err)
	return msgs
}

// newProcess forgets which filesystems this process synced at start
// (startSync), as a new process would: for tests that play a process that
// died and the one that follows it.
func newProcess() {
	startSynced.mu.Lock()
	clear(startSynced.devs)
	startSynced.mu.Unlock()
}
