package commitlog

// dropChunk is the least a log drops from the page cache in one call, and
// the alignment of what it drops: a busy log makes one call per few syncs,
// not one per sync, and never leaves a partly dropped page behind.
const dropChunk = 1 << 20

// dropCache drops from the page cache the records of the log's segments
// older than its newest opts.PageCacheBytes written bytes (see "Page cache"
// in the package doc). Only what is durable may be dropped (a dirty page is
// not dropped but queued for writeback), so callers call it after a sync,
// or before any write (Open). The owner's; advisory: failures are ignored.
func (l *Log) dropCache() {
	keep := l.opts.PageCacheBytes
	if keep < 0 {
		return
	}
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
		if d := s.dropped; upto-d >= dropChunk || upto == end && upto > d {
			dropPages(s.f, d, upto-d)
			s.dropped = upto
		}
		if upto == end && i > 0 && l.segs[i-1].dropped >= l.segs[i-1].size {
			return // the older ones were dropped before
		}
	}
}
