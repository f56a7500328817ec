// Package topic keeps the node's topic registry.
//
// The registry is the state machine of the metadata raft group: creating,
// updating and removing a topic are commands proposed to that group, and
// every node applies them in log order, opening or stopping the topic's own
// raft group (package replica) as it goes. The registry is therefore a pure
// function of the metadata log, and is rebuilt from it on start: from the
// latest checkpoint, then the commands after it (checkpoint.go: every
// 10,000 commands each node checkpoints the registry and deletes the
// metadata log below it; a node that needs what its peers deleted is sent
// a checkpoint as raft's snapshot). A topic
// created while the node runs is started off the engine goroutine (its
// directory and files take several fsyncs, which every group of the node
// would otherwise wait for); lookups of it wait for its start.
//
// On disk, under the node's data directory:
//
//	meta/                 the metadata group's log (package commitlog)
//	meta-checkpoint       the registry as of a metadata log index, below
//	                      which the log is deleted
//	topics/NAME.INDEX/    a topic's log; INDEX is the metadata log index of
//	                      the command that created it, so a topic removed and
//	                      created again never reuses a directory
//	removed/NAME.INDEX/   a removed topic's log, kept for the operator until
//	                      PurgeRemoved deletes it (fbnode -removed-retention)
package topic
