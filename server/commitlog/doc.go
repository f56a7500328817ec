// Package commitlog is the per-topic raft log, which is also the topic's only
// message store.
//
// A Log lives in its own directory. It implements raft.Storage
// (go.etcd.io/raft/v3) and, on top of it, a message view: each raft entry that
// carries a batch of messages (see EncodeBatch) is given a contiguous range of
// message ids when it is appended locally:
//
//	first_id(e) = first_id(prev) + count(prev)     first id of a fresh log = 1
//
// count is 0 for entries with empty data (the leader's no-op), conf changes,
// payloads whose first byte is not KindMessages and duplicate batches (see
// Idempotent appends). Ids are a pure function of the log prefix, so every
// replica derives the same ones. On suffix truncation the next id is
// recomputed from the last surviving entry; after ApplySnapshot numbering
// continues from the id carried in the snapshot data.
//
// # Idempotent appends
//
// A batch whose producer id is non-zero is checked against a dedup table
// when its ids are derived, in the same pure function: the verdict is part
// of the log prefix too, so every replica reaches the same one. Per producer
// the table keeps
//
//   - the highest stored sequence H and a 64-bit map of which of the
//     sequences H-63 .. H are stored (DedupSeqWindow), and
//   - the sequence, first id and count of its last 64 stored batches
//     (DedupIDWindow), for answering retries with the original ids (a
//     producer keeps as many as it has stored, up to 64).
//
// A batch with messages, producer p and sequence s is a duplicate if p is in
// the table and s is within the window and marked stored. A sequence at or
// below H-64 is too old to tell and is stored: an overtaken batch is never
// lost, at the price of a possible second copy of a very late retry. Otherwise it is stored and recorded (H = max(H, s)).
// Sequences need not be contiguous or in order: a skipped sequence that
// arrives later, within 64 of H, is stored. Producer id 0 and batches
// without messages are never checked nor recorded.
//
// A duplicate gets count 0: it consumes no ids and leaves no hole. Its
// EntryIDs has Dup set and FirstID/Count of the original batch when that is
// among the producer's last 64 stored batches, else FirstID 0 and Count 0;
// Next is its position (the next id). Its record still holds the whole
// payload (raft needs the entry; Entries returns it) but its stored count is
// 0, so ReadMessages never yields its messages.
//
// The table is kept in memory as of the last entry. Suffix truncation rolls
// it back with undo records: one per stored producer batch above the commit
// index (what the batch changed in its producer's state: the fields, the
// slot it overwrote), and one per producer forgotten by such an entry (its
// state), dropped once the commit index passes the entry (truncation at or
// below it is refused). The table as of the log start is kept encoded
// (meta, snapshot data). Retention (DeleteBefore) finds the table at the
// new start kept by the first segment it keeps, else by replaying the
// headers of the segments it deletes onto it (one sequential read of
// them), and records it in meta before deleting them. ApplySnapshot takes the table
// carried by the snapshot. Open decodes the table in meta and derives the
// verdict of every record again during its scan. The verdicts of the
// duplicates in the retained log are kept in memory (a few bytes each) so
// that IDs can answer them later.
//
// The table is bounded (dedupMaxProducers, 8,192): when a producer not in
// the table stores its first batch while the table holds 8,192 + 1,024
// producers, the table first forgets all but the 8,192 whose newest
// stored batch has the highest first id. A producer is so remembered at
// least until 8,192 other producers have stored a batch after its newest,
// as Kafka forgets idle producer ids after a time; one forgotten that
// sends again is new, and a very late retry of its is stored again (at
// least once, like a sequence older than the window). Forgetting is part
// of the pure function (undo records bring forgotten producers back on
// truncation), so every replica of a topic must run with the same bound:
// it is part of the replicated format. It carries no version of its own:
// the development builds before it (none released) kept every producer,
// so a cluster must not mix them with later ones, and a log they wrote
// with more than 9,216 producers and a late retry of a forgotten one fails
// Open's verdict check (ErrCorrupt); nor can they read tables that
// remember more than 8 batches per producer. The table holds 45 to 1,305
// bytes per producer encoded (in meta and in snapshot data). Each
// segment keeps in memory the table as it was at its first record, when
// that is at most 1 MiB, so that DeleteBefore finds the table at the new
// start without reading the segments it deletes.
//
// # Concurrency
//
// One goroutine owns a Log: it calls the raft.Storage methods and every write
// (Append, SetHardState, SetConfState, Sync, ApplySnapshot, DeleteBefore,
// Close). Any goroutine may call IDs, FirstID, NextID, ReadMessages and Stats
// concurrently. A sync.RWMutex guards the in-memory index; the owner updates it
// under the write lock after its write syscall. A message reader holds the
// read lock only to plan a read (which segments, which offsets, a copy of
// records still held in memory), not while it preads: the owner's next
// append would wait for a disk read (readChunk). That is safe because the
// reader's limit is the commit point, and committed records never change
// in an open segment file; a segment closed or cut meanwhile shows as a
// short read, and the read is made again under the lock.
//
// # Directory layout
//
//	<dir>/00000000000000000001.log   segment files, named %020d.log by the raft
//	<dir>/00000000000000004242.log   index of their first record
//	<dir>/hardstate                  two HardState slots
//	<dir>/meta                       log start + ConfState (atomic replace)
//	<dir>/meta.tmp                   transient, removed by Open
//
// Open creates <dir> (and any missing parent) with MkdirAll, which fsyncs
// the parent of each directory it creates: a file synced in a new directory
// is reachable after a power loss. A directory it finds is made durable by
// the filesystem sync of the process's first MkdirAll there (below,
// Recovery). TestPowerLossKeepsSyncedEntries checks
// every sync against a model of what a power loss leaves (files as of their
// last flush, directories as of theirs).
//
// All integers are little endian. CRCs are CRC-32C (Castagnoli).
//
// # Segment files
//
// A segment is a sequence of records with consecutive raft indexes, the first
// equal to the number in its name. Segments are consecutive too: the first
// index of one is the last index of the previous one plus one. A record is
//
//	offset size field
//	0      4    length: bytes after this 8-byte prefix (29 + len(data))
//	4      4    crc32c of bytes [8, 8+length)
//	8      8    raft index
//	16     8    raft term
//	24     1    entry type (raftpb.EntryType: 0 normal, 1 conf change, 2 conf change v2)
//	25     8    first_id: message id of the first message in data
//	33     4    count: number of messages in data (0 for a duplicate)
//	37     ..   data (raft Entry.Data, verbatim)
//
// The writer rolls to a new segment, at an entry boundary, once the active one
// has reached Options.SegmentBytes; the full segment is fsynced first (unless
// NoSync), so only the last segment can ever end in a torn record.
//
// # Entry data
//
// A payload starting with KindMessages (1) is a batch:
//
//	[0]      u8  kind = 1
//	[1:9]    u64 proposal tag (opaque)
//	[9:17]   u64 producer id (0 = none: no dedup check)
//	[17:25]  u64 producer sequence
//	[25:29]  u32 number of messages
//	then per message: uvarint length, bytes
//
// Append validates the whole batch structure (it rejects a malformed batch
// with ErrBadBatch); Open validates it again and checks count against the
// message count and the dedup verdict (a mismatching verdict is ErrCorrupt).
//
// # hardstate
//
// Two slots of 36 bytes at offsets 0 and 4096:
//
//	u64 seq | u64 term | u64 vote | u64 commit | u32 crc32c of the 32 bytes before
//
// Open uses the valid slot with the highest seq (seq 0 = never written).
// A write pwrites the next seq into the slot that does not hold the last
// durably synced term/vote (the "anchor"); Sync fsyncs the file only when term
// or vote changed and then makes the written slot the anchor, so no crash can
// bring back a term/vote older than the last Sync. SetHardState writes at once
// when term or vote changed; a commit-only change (raft does not need it
// durable) is kept in memory until FlushHardState (the replica engine calls it
// every 10 ticks), the next term/vote write or Close, which writes and fsyncs
// the latest state. A busy topic so costs a pwrite per second for its commit
// point, not one per Ready, and a killed node restarts at most that far
// behind (raft brings it forward).
//
// # meta
//
//	[0:4]    "FBCL"
//	[4]      format version (2; 1 is read as having an empty dedup table)
//	[5:13]   first index: raft index of the first retained entry
//	[13:21]  term of first index - 1
//	[21:29]  first id: message id at first index
//	[29:33]  n: length of the ConfState
//	[33:33+n] ConfState, protobuf (raftpb.ConfState)
//	then     u32 m, then m bytes: the dedup table as of the first index
//	         (version 2 only; encoding in dedup.go)
//	then     u32 crc32c of everything before
//
// It is replaced atomically (write meta.tmp, fsync, rename, fsync dir), also
// with NoSync. A missing meta means first index 1, term 0, first id 1 and an
// empty ConfState.
//
// Retention (DeleteBefore) records the new start in meta before deleting any
// segment; Open deletes segment files named below the recorded first index.
// ApplySnapshot first deletes (durably) the segments starting above the
// snapshot index, then records the new start, then deletes the rest, so every
// crash point leaves a state Open recovers.
//
// # Snapshot data
//
// Snapshot returns a metadata-only snapshot at FirstIndex-1 whose Data is
//
//	[0]    u8  version (2; later versions append fields)
//	[1:9]  u64 next message id at the snapshot index
//	[9:]   the dedup table at the snapshot index (version 2; encoding in
//	       dedup.go). Version 1 data (no table) restores an empty table.
//
// # Recovery
//
// Open scans every record of every segment, verifying length, CRC, index and
// id contiguity and the message count, and rebuilds the in-memory index. This
// full scan is a known cost: opening reads the whole log once (a per-segment
// index file would avoid it). In the last segment the first bad or torn
// record and everything after it are cut off (the file is truncated; in a
// journal's replay only where a crash may have torn it: see Journal). The
// active segment is allocated ahead of its records (fallocate, up to 1 MiB
// at a time), so a crash leaves an all-zero tail after the last record:
// Open trims it, in any segment, and logs it at Info. A bad record in any
// other segment, an empty segment that is not the last, or a gap between
// segments is reported as ErrCorrupt. A process that died (the machine did
// not) leaves records and names it never synced in the page cache, which
// the scan reads as part of the log, and raft takes what the log holds for
// stored: so before the first log of a process opens on a filesystem, the
// filesystem is synced whole, once (MkdirAll, startsync.go).
//
// # In-memory index
//
// Per segment, one index point (raft index, first id, file offset) for the
// first record and then for the first record starting at least 4 KiB after
// the previous point. A lookup by index or by message id binary-searches the
// segments and the points, then scans headers with one pread of at most
// 4 KiB + 37 bytes. Terms are kept as runs [(first index, term)...] starting at
// FirstIndex-1. The ids of the last entry are kept in memory, and so are the
// dedup table, its undo records and the verdicts of retained duplicates.
//
// # Durability
//
// Append does not fsync (except when it rolls a segment or truncates a
// conflicting suffix). Sync fdatasyncs every segment written since the last
// Sync, the hardstate file when term or vote changed, and the directory after
// files were created or deleted. With Options.NoSync ("os" durability) Sync
// does nothing but bookkeeping. On Linux a file's fdatasync goes through
// io_uring where the kernel allows it (internal/uring): the same flush,
// without a runtime thread blocked in the system call.
//
// A truncation changes the files from the end of the log back (the later
// segments newest first, the directory synced, the cut segment last), and
// ApplySnapshot removes the segments above the snapshot newest first (the
// directory synced) before it records the new start and removes the rest,
// so that a crash part way leaves contiguous segments.
//
// # Page cache
//
// A log is written once, at its end, and mostly read near its end. Left to
// itself the kernel keeps every byte written in the page cache until memory
// runs short, so the cache grows with the log, and every page it grows by
// is memory touched for the first time: on a virtual machine that can cost
// ~15 µs a page, more than the write (measured on this project's
// benchmark host: a synced 256 KiB write stream ran at 5 GB/s of write
// syscalls while it reused memory and 330 MB/s once it had to grow into
// fresh memory). So once records are durable a log drops those older than
// its newest Options.PageCacheBytes (32 MiB by default) from the page
// cache (posix_fadvise DONTNEED, in steps of at least 1 MiB), and Open,
// whose scan reads every segment, drops the older segments again. The
// kernel then reuses the same pages for what the log writes next. Readers
// near the end (tailing consumers, raft catching up a follower) read from
// the cache; a reader further back reads from disk, and the kernel caches
// what it read as usual. A dirty page cannot be dropped: with NoSync ("os"
// mode) a log starts the writeback of records older than half the window
// (sync_file_range, which promises nothing about durability) so that they
// are clean when they leave it; a page still being written back then stays
// cached. Journaled writes (below) are dropped at the log's next ordinary
// sync.
//
// # Journal
//
// A node with many topics would pay an fdatasync per log (or a syncfs of the
// whole filesystem) for every pass of its replica loop. A Journal is one
// write-ahead file for all of them: SyncMany writes the records that each
// journaled log appended since its last sync (the same bytes as in its
// segment) into the journal as one entry per log, and fdatasyncs the
// journal once. A log's sync goes to the
// journal only when records are all it owes: a new segment (the directory),
// a term or vote change, or a lone log in the pass take the ordinary path,
// which also flushes its earlier journaled segments (a truncation
// fdatasyncs what it keeps itself).
//
//	<journal dir>/journal-<epoch, 20 digits>.wal   entries, then zeros
//	<journal dir>/spare.wal                        a retired file, reused
//
// Entry: u32 body length, u32 CRC32C of [8, 16+length), u64 epoch, then the
// body: u8 kind, u16 path length, the log's directory relative to the
// journal's base, payload. A file's first entry is kind 3 (salt: no path,
// 8 random bytes drawn when the file was made current, plain CRC); every
// later entry's CRC is seeded with the CRC of the salt. Epochs are
// predictable and a recycled file still holds producers' bytes, so without
// the salt a message could carry an entry of the epoch its file will be
// reused at, read on replay where the new valid prefix ends. A file whose
// first entry is kind 1 or 2 was written by a build before the salt and is
// read with plain CRCs. Kind 1 (records) carries segment records as
// Append wrote them; kind 2 (barrier) says that the log's earlier records
// in the journal are void: before a truncation or ApplySnapshot changes the
// log, the log syncs its own files and the barrier is written and synced,
// so that replay can neither bring dropped entries back nor find records
// past the shortened log's end (a crash in between leaves the log whole).
// An entry whose epoch is not its file's, or whose CRC fails, ends the
// file: a recycled file's old entries are never read.
//
// Files are grown a MiB of zeros at a time, so most fdatasyncs flush data
// and no metadata. When the current file reaches its size (JournalOptions),
// the journal moves to the next epoch and checkpoints the full one in the
// background: one syncfs makes every segment write that preceded its entries
// durable, and the file becomes the spare. Only a log on the journal's
// filesystem, with syncfs available (Linux 5.8 on, where it reports
// writeback errors, and not refused at start, as a seccomp filter can),
// uses the journal.
//
// Write-behind: a log whose last sync went through the journal holds what
// it appends next in memory (its last segment's held bytes; readers read
// them from there) instead of writing every Append to the segment file,
// and writes them in one go when they reach 32 KiB (or when the process's
// held buffers reach 8 MiB, which bounds the memory of many busy
// topics), before its segment is
// synced, rolled, truncated, replaced or closed, and when the replica
// engine sees it go idle (FlushHeld). A file's checkpoint must find every
// record of the file in its segment: a log holding records that a file has
// counts as its holder, and the checkpoint waits until no log holds records
// of that file or an older one (the engine writes them when Waiting; a
// commit writes its logs' records of older files first). A log that cannot
// write such records pins the journal: no file is recycled from then on,
// the next move to a new file fails the journal, and the files stay for
// replay. A barrier never waits for a checkpoint (the loop that writes it
// owns the logs the checkpoint waits for): a file may exceed its size by
// barriers.
//
// OpenJournal recovers before any log is opened: it reads every journal
// file in epoch order, keeps per log the records after its last barrier,
// opens each log, appends the records it lacks (an index it already holds
// with the same term is skipped; one below its first index too),
// fdatasyncs every segment from the first journaled index on, and closes
// it. Then the files are redundant: the newest is renamed to the next
// epoch and becomes the current file, the others are removed. Epochs only
// grow, and a journal file of the highest epoch so far always exists, so a
// recycled file's stale entries never carry its epoch. Close voids the
// current file (zeroes its first header) when every log that used the
// journal closed cleanly, which synced them: a clean restart replays
// nothing.
//
// # Torn or damaged
//
// A crash can tear only what was not yet durable, and a bad record there
// may be torn at any byte (a page written back while a record was being
// copied into it), zeros or not: Open cuts the last segment at it. A bad
// record that was durable is damage: cutting it would drop it and every
// durable record after it, the node would forget entries it acknowledged,
// and raft's safety rests on that never happening. What was durable is
// known from two things:
//
//   - the durable watermark in the hardstate slot: every record up to it
//     was synced (in its segment or the journal) when the slot was
//     written. A sync moves it to the log's end in memory, and the next
//     slot write (FlushHardState, about once a second) carries it, without
//     an fsync of its own, so it trails the syncs by that much; Close
//     writes it after its final sync, so a cleanly closed log has it at
//     its end. A truncation or snapshot lowers it, with an fsync, before
//     it changes records below it. NoSync never moves it.
//   - during a journal replay, the journal's spans of the log's records:
//     a record below the start of its last span was synced before a later
//     record or before that span (a sync covers everything the log
//     appended before it).
//
// Open reports a bad record, or a log that ends early, below either as
// ErrCorrupt and leaves the file as it is, except where the journal's
// last span holds every durable record from it on (replay writes them
// again). Above both, it cuts as a crash's torn tail (journalSpans.mayCut).
package commitlog
