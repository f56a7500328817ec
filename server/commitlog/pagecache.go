package commitlog

import "os"

// dropChunk is the least a log drops from the page cache in one call, and
// the alignment of what it drops: a busy log makes one call per few syncs,
// not one per sync, and never leaves a partly dropped page behind.
const dropChunk = 1 << 20

// dropCache drops from the page cache the records of the log's segments
// older than its newest opts.PageCacheBytes written bytes (see "Page cache"
// in the package doc). A dirty page is not dropped, so callers call it
// when what it drops is durable: after a sync, or before any write (Open).
// With NoSync nothing is durable: the writeback of records older than half
// the window is started first, so that they are clean, mostly, by the time
// they leave the window. The owner's; advisory: failures are ignored.
func (l *Log) dropCache() {
	keep := l.opts.PageCacheBytes
	if keep < 0 {
		return
	}
	if l.opts.NoSync {
		l.behind(keep/2, func(s *segment) *int64 { return &s.flushing }, startWriteback)
	}
	l.behind(keep, func(s *segment) *int64 { return &s.dropped }, dropPages)
}

// behind applies do to the records written more than keep bytes before the
// log's end that it has not been applied to yet: mark(s) is where it
// reached in segment s. In the segment the window starts in it steps at
// least dropChunk at a time; older segments it takes to their end.
func (l *Log) behind(keep int64, mark func(*segment) *int64, do func(f *os.File, off, n int64)) {
	for i := len(l.segs) - 1; i >= 0; i-- {
		s := l.segs[i]
		end := s.size - int64(len(s.held)) // written to the file
		if end <= keep {
			keep -= end
			continue
		}
		upto := end // all of it when no byte of it is kept
		if keep > 0 {
			upto = (end - keep) &^ (dropChunk - 1)
			keep = 0
		}
		if m := mark(s); upto-*m >= dropChunk || upto == end && upto > *m {
			do(s.f, *m, upto-*m)
			*m = upto
		}
		if i > 0 && *mark(l.segs[i-1]) >= l.segs[i-1].size {
			return // the older ones were done before
		}
	}
}
