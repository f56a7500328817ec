// Package replica runs one Raft group per topic on go.etcd.io/raft/v3.
//
// An Engine drives every group of a node from one goroutine, the way
// multi-raft systems do (CockroachDB, TiKV): each pass of its loop
//
//  1. feeds queued proposals and peer messages into the groups that have
//     work, and ticks every group when the tick timer fired;
//  2. collects a Ready from each group and writes its entries and HardState
//     to the group's commitlog.Log (one write per group);
//  3. syncs every log written in step 2 — one fsync per dirty topic per
//     pass, so all proposals that queued while the previous pass was on
//     disk share one fsync (group commit);
//  4. sends the Ready's messages, answers proposers whose batch is now in
//     the log (wait_for_commit=false), applies committed entries (advances
//     the topic's visible commit ID, answers wait_for_commit proposers,
//     wakes long-polling readers) and calls Advance.
//
// This is the synchronous Ready contract: persist, then send, then apply,
// then Advance. A storage error fences the group: it stops processing and
// fails its callers with ErrStorageFailed, and the log is left as it was.
//
// The Raft log is the message store (package commitlog): an entry carries a
// batch of messages, and message IDs are derived from the log.
package replica
