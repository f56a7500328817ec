package httpapi

import (
	"context"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/forestbus/forestbus/server/replica"
)

// collector reports the registry's topics when scraped.
type collector struct {
	h *handler

	nodeInfo, members, topics                     *prometheus.Desc
	firstID, lastID, commitID, committed          *prometheus.Desc
	leaderID, term, isLeader, segments, diskBytes *prometheus.Desc
	lagEntries, lagMessages                       *prometheus.Desc
	appendedMsgs, appendedBytes, committedBytes   *prometheus.Desc
	commitLatency, waiters, subscribers           *prometheus.Desc
	syncSeconds, syncedWrites                     *prometheus.Desc
	serving, failed, buildInfo, certExpiry        *prometheus.Desc
	metaLeaderID, metaTerm, metaIsLeader          *prometheus.Desc
	metaApplied, metaLag, metaFailed              *prometheus.Desc
}

func newCollector(h *handler) *collector {
	topicDesc := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc("forestbus_topic_"+name, help, []string{"topic"}, nil)
	}
	followerDesc := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc("forestbus_topic_"+name, help, []string{"topic", "follower"}, nil)
	}
	return &collector{
		h:          h,
		nodeInfo:   prometheus.NewDesc("forestbus_node_info", "This node's name and raft ID (value 1).", []string{"node", "id"}, nil),
		certExpiry: prometheus.NewDesc("forestbus_tls_certificate_expiration_timestamp_seconds", "When the certificate this node serves TLS with now expires (Unix time); absent without TLS.", nil, nil),
		buildInfo:  prometheus.NewDesc("forestbus_build_info", "This node's build (value 1): module version, VCS revision (\"\" when not recorded; \"+\" after it when the tree was modified) and Go version.", []string{"version", "revision", "goversion"}, nil),

		metaLeaderID: prometheus.NewDesc("forestbus_metadata_leader_id", "Raft ID of the metadata group's leader, 0 when unknown (no topic or member changes without one).", nil, nil),
		metaTerm:     prometheus.NewDesc("forestbus_metadata_term", "Raft term of the metadata group.", nil, nil),
		metaIsLeader: prometheus.NewDesc("forestbus_metadata_is_leader", "1 when this node leads the metadata group, else 0.", nil, nil),
		metaApplied:  prometheus.NewDesc("forestbus_metadata_applied_index", "Last metadata log index applied on this node.", nil, nil),
		metaFailed:   prometheus.NewDesc("forestbus_metadata_failed", "1 when this node's metadata log stopped after a storage error (it then knows no metadata leader), else 0.", nil, nil),
		metaLag:      prometheus.NewDesc("forestbus_metadata_follower_lag_entries", "On the metadata leader: metadata log entries the follower's log lacks; absent while the leader has not heard the follower's position.", []string{"follower"}, nil),

		members:     prometheus.NewDesc("forestbus_cluster_members", "Members of the cluster, as this node knows them.", nil, nil),
		serving:     prometheus.NewDesc("forestbus_node_serving", "1 while this node serves clients; 0 once the cluster removed it, or while a peer refuses it (its data directory is not the one the peer knew).", nil, nil),
		failed:      topicDesc("failed", "1 when this node's copy of the topic stopped after a storage error or a lost log (it answers STORAGE_FAILED until the operator acts), else 0."),
		topics:      prometheus.NewDesc("forestbus_topics", "Topics on this node.", nil, nil),
		firstID:     topicDesc("first_id", "First retained message ID."),
		lastID:      topicDesc("last_id", "ID of the last message in this node's log, committed or not."),
		commitID:    topicDesc("commit_id", "ID of the last committed message on this node (0 when none)."),
		committed:   topicDesc("committed_messages_total", "Messages committed on this node since the topic opened here (the node's start, or the topic's creation): the commit ID's growth."),
		leaderID:    topicDesc("leader_id", "Raft ID of the topic's leader, 0 when unknown."),
		term:        topicDesc("term", "Raft term of the topic's group."),
		isLeader:    topicDesc("is_leader", "1 when this node leads the topic, else 0."),
		segments:    topicDesc("segments", "Segment files of the topic's log on this node."),
		diskBytes:   topicDesc("disk_bytes", "Bytes of the topic's segments on this node: their records (the space preallocated past them, up to a segment's size per topic, and the small state files are not counted)."),
		lagEntries:  followerDesc("follower_lag_entries", "On the leader: raft entries the follower's log lacks (leader's last index - follower's match index); absent while the leader has not heard the follower's position."),
		lagMessages: followerDesc("follower_lag_messages", "On the leader: messages the follower's log lacks; absent when its match point is below the leader's retained log."),

		appendedMsgs:   topicDesc("appended_messages_total", "Messages written to this node's log since the node started."),
		appendedBytes:  topicDesc("appended_bytes_total", "Bytes of message batches written to this node's log since the node started."),
		committedBytes: topicDesc("committed_bytes_total", "Bytes of message batches applied as committed on this node since it started."),
		commitLatency:  topicDesc("commit_latency_seconds", "Time from proposal to commit of the wait_for_commit batches proposed on this node."),
		waiters:        prometheus.NewDesc("forestbus_long_poll_waiters", "GetMessages calls waiting for a commit on this node.", nil, nil),
		subscribers:    prometheus.NewDesc("forestbus_subscribe_streams", "Subscribe streams served by this node.", nil, nil),
		syncSeconds:    prometheus.NewDesc("forestbus_node_sync_seconds", "Duration of the node's syncs: each makes durable every topic log write since the previous one (an fdatasync in fsync mode; bookkeeping only in os mode).", nil, nil),
		syncedWrites:   prometheus.NewDesc("forestbus_node_synced_writes_total", "Raft groups' writes (topics' and the metadata group's) made durable by the node's syncs; divided by forestbus_node_sync_seconds_count, how many groups share a sync.", nil, nil),
	}
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.nodeInfo, c.members, c.topics, c.firstID, c.lastID, c.commitID, c.committed,
		c.leaderID, c.term, c.isLeader, c.segments, c.diskBytes, c.lagEntries, c.lagMessages,
		c.appendedMsgs, c.appendedBytes, c.committedBytes, c.commitLatency, c.waiters, c.subscribers,
		c.syncSeconds, c.syncedWrites, c.serving, c.failed, c.buildInfo, c.certExpiry,
		c.metaLeaderID, c.metaTerm, c.metaIsLeader, c.metaApplied, c.metaLag, c.metaFailed} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	st := c.h.collect(context.Background(), false)
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	if st.NodeID != 0 {
		gauge(c.nodeInfo, 1, st.Node, strconv.FormatUint(st.NodeID, 10))
	}
	rev := st.Build.Revision
	if rev != "" && st.Build.Modified {
		rev += "+"
	}
	gauge(c.buildInfo, 1, st.Build.Version, rev, st.Build.GoVersion)
	if st.TLS != nil {
		gauge(c.certExpiry, float64(st.TLS.NotAfter.Unix()))
	}
	gauge(c.metaLeaderID, float64(st.Metadata.LeaderID))
	gauge(c.metaTerm, float64(st.Metadata.Term))
	gauge(c.metaIsLeader, flag(st.Metadata.IsLeader))
	gauge(c.metaApplied, float64(st.Metadata.Applied))
	gauge(c.metaFailed, flag(st.Metadata.Failed))
	for _, f := range st.Metadata.Followers {
		if f.LagEntries != nil {
			gauge(c.metaLag, float64(*f.LagEntries), f.Name)
		}
	}
	gauge(c.members, float64(len(st.Nodes)))
	gauge(c.serving, flag(!st.Removed && len(st.RefusedBy) == 0))
	gauge(c.topics, float64(len(st.Topics)))
	gauge(c.waiters, float64(c.h.srv.LongPolls()))
	gauge(c.subscribers, float64(c.h.srv.Subscriptions()))
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	em := c.h.srv.EngineMetrics()
	syncBuckets := make(map[float64]uint64, len(replica.SyncBuckets))
	for i, b := range replica.SyncBuckets {
		syncBuckets[b] = em.SyncSeconds[i]
	}
	ch <- prometheus.MustNewConstHistogram(c.syncSeconds, em.Syncs, em.SyncSecondsSum, syncBuckets)
	counter(c.syncedWrites, em.SyncedWrites)
	for _, t := range c.h.srv.Registry().List() {
		if t.Group == nil {
			continue
		}
		m := t.Group.Metrics()
		counter(c.appendedMsgs, m.AppendedMessages, t.Name)
		counter(c.appendedBytes, m.AppendedBytes, t.Name)
		counter(c.committedBytes, m.CommittedBytes, t.Name)
		counter(c.committed, m.CommittedMessages, t.Name)
		if m.CommitLatencyCount == 0 {
			// Nothing proposed here with wait_for_commit (on most
			// topics of a follower): fifteen series of zeros per topic
			// were half of a scrape at 1,000 topics.
			continue
		}
		buckets := make(map[float64]uint64, len(replica.LatencyBuckets))
		for i, b := range replica.LatencyBuckets {
			buckets[b] = m.CommitLatency[i]
		}
		ch <- prometheus.MustNewConstHistogram(c.commitLatency, m.CommitLatencyCount, m.CommitLatencySum, buckets, t.Name)
	}
	for _, t := range st.Topics {
		gauge(c.firstID, float64(t.FirstID), t.Name)
		gauge(c.lastID, float64(t.LastID), t.Name)
		gauge(c.commitID, float64(t.CommitID), t.Name)
		gauge(c.leaderID, float64(t.LeaderID), t.Name)
		gauge(c.term, float64(t.Term), t.Name)
		gauge(c.isLeader, flag(t.IsLeader), t.Name)
		gauge(c.failed, flag(t.Failed), t.Name)
		gauge(c.segments, float64(t.Segments), t.Name)
		gauge(c.diskBytes, float64(t.Bytes), t.Name)
		for _, f := range t.Followers {
			if f.LagEntries != nil {
				gauge(c.lagEntries, float64(*f.LagEntries), t.Name, f.Name)
			}
			if f.LagMessages != nil {
				gauge(c.lagMessages, float64(*f.LagMessages), t.Name, f.Name)
			}
		}
	}
}

// flag is 1 for true, 0 for false.
func flag(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
