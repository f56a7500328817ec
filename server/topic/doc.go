// Package topic keeps the node's topic registry.
//
// The registry is the state machine of the metadata raft group: creating,
// updating and removing a topic are commands proposed to that group, and
// every node applies them in log order, opening or stopping the topic's own
// raft group (package replica) as it goes. The registry is therefore a pure
// function of the metadata log, and is rebuilt from it on start. A topic
// created while the node runs is started off the engine goroutine (its
// directory and files take several fsyncs, which every group of the node
// would otherwise wait for); lookups of it wait for its start.
//
// On disk, under the node's data directory:
//
//	meta/                 the metadata group's log (package commitlog)
//	topics/NAME.INDEX/    a topic's log; INDEX is the metadata log index of
//	                      the command that created it, so a topic removed and
//	                      created again never reuses a directory
//	removed/NAME.INDEX/   a removed topic's log, kept for the operator until
//	                      PurgeRemoved deletes it (fbnode -removed-retention)
package topic
