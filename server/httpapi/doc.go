// Package httpapi serves a node's observability endpoints over HTTP:
// Prometheus metrics, a status page for people and the same status as JSON.
//
//	/metrics        Prometheus text format (see below)
//	/status         HTML page; an inline script refreshes it from status.json every 2 s
//	/status.json    Status, as JSON
//	/debug/pprof/   net/http/pprof, only with WithPprof
//
// New builds the handler from a running *server.Server; package server does
// not import this package.
//
// # Metrics
//
// Collected when scraped, from the node's topic registry (every value is as
// this node sees it):
//
//	forestbus_node_info{node,id}                          1; this node's name and raft ID
//	forestbus_build_info{version,revision,goversion}      1; this node's build (revision "+" when modified)
//	forestbus_tls_certificate_expiration_timestamp_seconds when the certificate served now expires (absent without TLS)
//	forestbus_cluster_members                             members of the cluster
//	forestbus_node_serving                                1 while the node serves clients; 0 once removed,
//	                                                      or while a peer refuses it
//	forestbus_metadata_leader_id                          raft ID of the metadata group's leader, 0 when unknown
//	forestbus_metadata_term                               its raft term
//	forestbus_metadata_is_leader                          1 when this node leads it
//	forestbus_metadata_applied_index                      last metadata log index applied here
//	forestbus_metadata_failed                             1 when this node's metadata log stopped after a storage error
//	forestbus_metadata_follower_lag_entries{follower}     metadata leader only: entries the follower lacks
//	forestbus_topics                                      topics on this node
//	forestbus_topic_first_id{topic}                       first retained message ID
//	forestbus_topic_last_id{topic}                        last message ID in the log, committed or not
//	forestbus_topic_commit_id{topic}                      last committed message ID (0 when none)
//	forestbus_topic_committed_messages_total{topic}       counter: messages committed here since the topic opened here
//	forestbus_topic_leader_id{topic}                      raft ID of the leader, 0 when unknown
//	forestbus_topic_term{topic}                           raft term
//	forestbus_topic_is_leader{topic}                      1 when this node leads the topic
//	forestbus_topic_failed{topic}                         1 when this node's copy stopped after a storage error
//	forestbus_topic_segments{topic}                       segment files on disk
//	forestbus_topic_disk_bytes{topic}                     bytes of the segments' records (not their preallocated space)
//	forestbus_topic_follower_lag_entries{topic,follower}  leader only: raft entries the follower lacks
//	                                                      (absent while the leader has not heard its position)
//	forestbus_topic_follower_lag_messages{topic,follower} leader only: messages the follower lacks
//	                                                      (absent as lag_entries, or when its match point was compacted away)
//	forestbus_topic_appended_messages_total{topic}        counter: messages written to this node's log since it started
//	forestbus_topic_appended_bytes_total{topic}           counter: bytes of batches written to this node's log since it started
//	forestbus_topic_committed_bytes_total{topic}          counter: bytes of batches applied as committed since it started
//	forestbus_topic_commit_latency_seconds{topic}         histogram: proposal to commit of the wait_for_commit batches proposed here
//	                                                      (absent until one is)
//	forestbus_long_poll_waiters                           GetMessages calls waiting for a commit
//	forestbus_subscribe_streams                           Subscribe streams served
//	forestbus_node_sync_seconds                           histogram: the node's syncs
//	forestbus_node_synced_writes_total                    counter: groups' writes made durable by those syncs
//
// forestbus_topic_committed_messages_total is the commit ID's growth since
// the topic opened on this node (the node's start, or the topic's
// creation): rate() gives the message rate. It was the commit ID itself,
// which a restart may show lower than before it (the stored commit point
// trails by up to a second of commits), and Prometheus read the drop as a
// counter reset: rate() and increase() counted the whole value again. The
// commit ID, the number of messages ever committed to the topic (IDs start
// at 1 and are contiguous), is forestbus_topic_commit_id. Every counter
// counts from the node's start.
//
// The registry also holds the Go runtime and process collectors and, unless
// WithGRPCMetrics(nil) is given, the gRPC server metrics of GRPCMetrics
// (grpc_server_started_total, grpc_server_handled_total,
// grpc_server_handling_seconds, grpc_server_msg_received_total,
// grpc_server_msg_sent_total). Those stay empty until the interceptors are
// in the gRPC server's chain (fbnode puts them there); see GRPCMetrics.
package httpapi
