package server

import "github.com/forestbus/forestbus/server/topic"

// filesPerTopic is what one topic holds open on every node, whatever it
// stores: its active segment and its raft hardstate. Each older segment
// it retains holds one more.
const filesPerTopic = 2

// fileReserve is what a node holds open besides its topics' files:
// connections, the journal, the metadata log, the listeners.
const fileReserve = 1024

// checkFileLimit warns when the process may open too few files for the
// topics -max-topics allows. At the limit a node can start no new segment,
// and after a restart it cannot reopen its topics, so the gap shows only
// when the cluster has grown; the warning names it at start instead.
func (s *Server) checkFileLimit() {
	limit, ok := openFileLimit()
	maxTopics := s.cfg.MaxTopics
	if maxTopics == 0 {
		maxTopics = topic.DefaultMaxTopics
	}
	if !ok || maxTopics < 0 {
		return
	}
	// At most: each older segment a topic retains takes one more.
	holds := (limit - min(limit, fileReserve)) / filesPerTopic
	if uint64(maxTopics) > holds {
		s.log.Warn("server: the open-file limit is below what -max-topics needs (two files per topic, one per older segment): a node at the limit can start no segment, nor reopen its topics after a restart; raise it (ulimit -Hn, systemd LimitNOFILE) or lower -max-topics",
			"open_file_limit", limit, "max_topics", maxTopics, "topics_it_holds_at_most", holds)
	}
}
