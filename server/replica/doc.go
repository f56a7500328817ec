// Package replica runs one Raft group per topic on go.etcd.io/raft/v3.
//
// An Engine drives every group of a node from one goroutine, the way
// multi-raft systems do (CockroachDB, TiKV): each pass of its loop
//
//  1. feeds queued proposals and peer messages into the groups that have
//     work, and ticks every group when the tick timer fired;
//  2. collects a Ready from each group and writes its entries and HardState
//     to the group's commitlog.Log (one write per group), then applies the
//     Ready's committed entries that are already durable on a majority;
//  3. hands the logs written in step 2 to the syncer goroutine — one
//     fdatasync, or one syncfs when many topics are dirty — and goes on
//     with the other groups while it runs. One sync is in flight at a time;
//     the Readies persisted meanwhile share the next (group commit). A group
//     whose Ready waits for a sync is left alone until the sync completes
//     (its inbox queues and its tick is owed), except that a leader steps
//     its followers' append acknowledgements and applies what they commit:
//     two followers' durable copies are a majority without its own;
//  4. when the sync completes, finishes each of its Readies: sends the
//     messages that had to wait for durability, answers proposers whose
//     batch is now in the log (wait_for_commit=false), applies what is left
//     to apply (advances the topic's visible commit ID, answers
//     wait_for_commit proposers, wakes long-polling readers) and calls
//     Advance.
//
// Per group this is the synchronous Ready contract: persist, then send,
// then apply, then Advance; only the node's other groups, and a leader's
// acknowledgements, run on while one group's Ready is on disk. A storage error fences the group: it stops
// processing and fails its callers with ErrStorageFailed, and the log is
// left as it was.
//
// A leader holds back the appends that carry no entries, only a new commit
// index (raft sends one to each follower whenever the commit advances; a
// group with an Apply hook, the metadata group, sends them at once):
// under load the next append with entries follows within a moment and
// carries the commit index too, so the held one is dropped, which halves
// the messages and follower Readies per commit. One nothing replaces goes
// out once it has waited Config.CommitNoticeDelay (20 ms), so an idle
// follower learns of a commit, and serves it to readers, that much later
// at most (or at the next heartbeat, a tick, if the append that replaced
// the notice was lost; see Group.holdNotice).
//
// Group.ReadIndex is raft's read barrier (ReadOnlySafe): it returns once
// this node has applied what the group had committed when it was called.
// The registry uses it on the metadata group before it calls a topic
// missing (readindex.go).
//
// The Raft log is the message store (package commitlog): an entry carries a
// batch of messages, and message IDs are derived from the log.
package replica
