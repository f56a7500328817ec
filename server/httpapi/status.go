package httpapi

import (
	"context"
	"errors"
	"sort"
	"strconv"
	"sync"
	"time"

	"go.etcd.io/raft/v3/tracker"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/forestbus/forestbus/client"
	"github.com/forestbus/forestbus/server"
	"github.com/forestbus/forestbus/server/replica"
	"github.com/forestbus/forestbus/server/topic"
)

// Status is the body of /status.json: the cluster as this node sees it.
type Status struct {
	// Cluster is the cluster ID.
	Cluster string `json:"cluster"`
	// Node and NodeID name the node that answered.
	Node   string `json:"node"`
	NodeID uint64 `json:"node_id"`
	// Removed: the cluster removed this node. It serves no client, and
	// what follows is as of its last applied metadata: up to its removal,
	// or, when a peer told it, up to when it stopped before that.
	Removed bool `json:"removed,omitempty"`
	// RefusedBy names the peers (also former members) that refuse this node's streams:
	// its data directory is not the one they knew under its raft ID
	// (wiped, or another node's). It serves no client meanwhile, and what
	// follows is its own logs' view, not the cluster's.
	RefusedBy []string `json:"refused_by,omitempty"`
	// Build is the answering node's build (compare nodes during a rolling
	// upgrade).
	Build server.BuildInfo `json:"build"`
	// TLS is the certificate the node serves with now, absent without
	// TLS: to see a rotation taken, and when it expires.
	TLS *TLSStatus `json:"tls,omitempty"`
	// Time is when the status was taken.
	Time time.Time `json:"time"`
	// Nodes are the cluster's members, by raft ID.
	Nodes []NodeStatus `json:"nodes"`
	// Metadata is the metadata group, which holds the members and the
	// topics: without its leader no topic is created, updated or removed
	// and no member is added or removed.
	Metadata MetadataStatus `json:"metadata"`
	// Topics are the topics, by name.
	Topics []TopicStatus `json:"topics"`
}

// TLSStatus is the certificate a node serves TLS with.
type TLSStatus struct {
	Subject  string    `json:"subject"`
	Issuer   string    `json:"issuer"`
	Serial   string    `json:"serial"`
	NotAfter time.Time `json:"not_after"`
}

// MetadataStatus is the metadata group as this node sees it. Its log holds
// commands, not messages: its positions are raft indexes.
type MetadataStatus struct {
	// Leader is the leader's node name ("" when unknown), LeaderID its raft
	// ID (0 when unknown), IsLeader true when the answering node leads.
	Leader   string `json:"leader"`
	LeaderID uint64 `json:"leader_id"`
	IsLeader bool   `json:"is_leader"`
	Term     uint64 `json:"term"`
	// Applied is the last index applied on this node, LastIndex the last
	// in its log.
	Applied   uint64 `json:"applied"`
	LastIndex uint64 `json:"last_index"`
	// Failed: this node's metadata log stopped after a storage error.
	Failed bool `json:"failed,omitempty"`
	// Followers is the replication progress of the other members, only
	// when the answering node leads (LagMessages is always null).
	Followers []FollowerStatus `json:"followers,omitempty"`
}

// NodeStatus is one member of the cluster.
type NodeStatus struct {
	ID      uint64 `json:"id"`
	Name    string `json:"name"`
	Address string `json:"address"`
	// Self is true for the node that answered.
	Self bool `json:"self"`
	// Up: the node that answered is up while it serves gRPC; another node
	// is up when it answered a gRPC health check (grpc.health.v1, service
	// "") with SERVING within HealthTimeout. Results are cached for
	// HealthCacheFor.
	Up bool `json:"up"`
	// Error tells why a node is down.
	Error string `json:"error,omitempty"`
	// CheckedAt is when the health check answered or failed.
	CheckedAt time.Time `json:"checked_at"`
}

// TopicStatus is one topic as this node sees it.
type TopicStatus struct {
	Name string `json:"name"`
	// Leader is the leader's node name ("" when unknown), LeaderID its raft
	// ID (0 when unknown), IsLeader true when the answering node leads.
	Leader   string `json:"leader"`
	LeaderID uint64 `json:"leader_id"`
	IsLeader bool   `json:"is_leader"`
	Term     uint64 `json:"term"`
	// FirstID is the first retained message, LastID the last one in the log
	// (committed or not), CommitID the last committed one (0 when none).
	FirstID  uint64 `json:"first_id"`
	LastID   uint64 `json:"last_id"`
	CommitID uint64 `json:"commit_id"`
	// MessagesPerSecond is the commit rate: the commit ID's growth per
	// second between two status requests at least a second apart (0 until
	// the handler has two samples).
	MessagesPerSecond float64 `json:"messages_per_second"`
	// Failed: this node's copy of the topic stopped after a storage error
	// or a lost log (fenced): its commit point no longer moves, and it
	// answers STORAGE_FAILED, until the operator acts.
	Failed bool `json:"failed,omitempty"`
	// Segments and Bytes are the log's files on this node's disk.
	Segments int   `json:"segments"`
	Bytes    int64 `json:"bytes"`
	// Followers is the replication progress of the other members, only
	// when the answering node leads the topic.
	Followers []FollowerStatus `json:"followers,omitempty"`
}

// FollowerStatus is a follower's replication progress, from the leader's
// raft state.
type FollowerStatus struct {
	ID   uint64 `json:"id"`
	Name string `json:"name"`
	// Match is the highest raft index known to be in the follower's log.
	Match uint64 `json:"match"`
	// LagEntries is how many raft entries the leader's log has past Match;
	// null when unknown: the leader has not heard the follower's position
	// (a leader elected since, a follower that has not answered it: raft
	// then knows no Match, and the whole log would show as missing).
	LagEntries *uint64 `json:"lag_entries"`
	// LagMessages is how many messages those entries hold; null when
	// unknown (as LagEntries, or Match is below the leader's retained log).
	LagMessages *uint64 `json:"lag_messages"`
	// State is raft's replication state: StateProbe, StateReplicate or
	// StateSnapshot.
	State   string `json:"state"`
	Learner bool   `json:"learner"`
}

// collectTimeout bounds one collection; statusTimeout one raft Status call.
const (
	collectTimeout = 3 * time.Second
	statusTimeout  = 500 * time.Millisecond
	// groupParallelism bounds concurrent raft Status calls.
	groupParallelism = 16
)

// selfID is this node's raft ID, from the metadata group's status.
func (h *handler) selfID(ctx context.Context) uint64 {
	if id := h.self.Load(); id != 0 {
		return id
	}
	ctx, cancel := context.WithTimeout(ctx, statusTimeout)
	defer cancel()
	st, err := h.srv.Registry().Meta().Status(ctx)
	if err != nil {
		return 0
	}
	h.self.Store(st.ID)
	return st.ID
}

func nameOf(members []topic.Member, id uint64) string {
	for _, m := range members {
		if m.ID == id {
			return m.Name
		}
	}
	if id == 0 {
		return ""
	}
	return strconv.FormatUint(id, 10)
}

// collect takes the node's status. Peer health is checked only with health.
func (h *handler) collect(ctx context.Context, health bool) Status {
	ctx, cancel := context.WithTimeout(ctx, collectTimeout)
	defer cancel()
	reg := h.srv.Registry()
	self := h.selfID(ctx)
	members := reg.Members()
	clusterID, _, _ := client.ParseConnectionString(h.srv.ConnectionString())
	// The node's own name, also once it is no member (removed).
	st := Status{Cluster: clusterID, NodeID: self, Node: h.srv.NodeName(), Removed: reg.RemovedSelf(), RefusedBy: h.srv.RefusedBy(), Build: h.build, Time: time.Now(), Nodes: []NodeStatus{}, Topics: []TopicStatus{}}
	if c := h.srv.ServingCertificate(); c != nil {
		st.TLS = &TLSStatus{Subject: c.Subject.String(), Issuer: c.Issuer.String(), Serial: c.SerialNumber.String(), NotAfter: c.NotAfter}
	}
	for _, m := range members {
		st.Nodes = append(st.Nodes, NodeStatus{ID: m.ID, Name: m.Name, Address: m.Address, Self: m.ID == self})
	}
	if health {
		h.health.check(ctx, st.Nodes, h.srv.Done(), h.srv.PeerCredentials())
	}

	var topics []*topic.Topic
	for _, t := range reg.List() {
		if t.Group != nil {
			topics = append(topics, t)
		}
	}
	st.Topics = make([]TopicStatus, len(topics))
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		st.Metadata = metadataStatus(ctx, reg.Meta(), self, members)
	}()
	sem := make(chan struct{}, groupParallelism)
	for i, t := range topics {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			st.Topics[i] = topicStatus(ctx, t, self, members)
		}()
	}
	wg.Wait()
	return st
}

func topicStatus(ctx context.Context, t *topic.Topic, self uint64, members []topic.Member) TopicStatus {
	g := t.Group
	d := g.Details()
	ls := g.Log().Stats()
	ts := TopicStatus{
		Name: t.Name, Leader: nameOf(members, d.Leader), LeaderID: d.Leader, IsLeader: self != 0 && d.Leader == self,
		Term: d.Term, FirstID: d.FirstID, LastID: d.LastID, CommitID: d.CommitID,
		Segments: ls.Segments, Bytes: ls.Bytes, Failed: g.Failed(),
	}
	if ts.IsLeader {
		ts.Followers = followers(ctx, g, d, self, members, true)
	}
	return ts
}

func metadataStatus(ctx context.Context, g *replica.Group, self uint64, members []topic.Member) MetadataStatus {
	d := g.Details()
	ms := MetadataStatus{
		Leader: nameOf(members, d.Leader), LeaderID: d.Leader, IsLeader: self != 0 && d.Leader == self,
		Term: d.Term, Applied: g.Applied(), Failed: g.Failed(),
	}
	if last, err := g.Log().LastIndex(); err == nil {
		ms.LastIndex = last
	}
	if ms.IsLeader {
		ms.Followers = followers(ctx, g, d, self, members, false)
	}
	return ms
}

// followers reads the leader's raft progress of every other member, with
// their lag in messages when messages is set (a topic's log).
func followers(ctx context.Context, g *replica.Group, d replica.Details, self uint64, members []topic.Member, messages bool) []FollowerStatus {
	ctx, cancel := context.WithTimeout(ctx, statusTimeout)
	defer cancel()
	rs, err := g.Status(ctx)
	if err != nil || rs.Progress == nil {
		return nil
	}
	log := g.Log()
	last, err := log.LastIndex()
	if err != nil {
		return nil
	}
	out := []FollowerStatus{}
	for id, pr := range rs.Progress {
		if id == self {
			continue
		}
		f := FollowerStatus{ID: id, Name: nameOf(members, id), Match: pr.Match, State: pr.State.String(), Learner: pr.IsLearner}
		if pr.Match == 0 && pr.State == tracker.StateProbe {
			out = append(out, f) // position unknown: no lag
			continue
		}
		var lagEntries uint64
		if last > pr.Match {
			lagEntries = last - pr.Match
		}
		f.LagEntries = &lagEntries
		if !messages {
			out = append(out, f)
			continue
		}
		if ids, err := log.IDs(pr.Match); err == nil {
			var lag uint64
			if have := ids.Next - 1; d.LastID > have {
				lag = d.LastID - have
			}
			f.LagMessages = &lag
		} else if lagEntries == 0 {
			var zero uint64
			f.LagMessages = &zero
		}
		out = append(out, f)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Health checks.

const (
	// HealthTimeout bounds one peer health check.
	HealthTimeout = 500 * time.Millisecond
	// HealthCacheFor is how long a health check result is reused.
	HealthCacheFor = time.Second
)

type healthResult struct {
	up  bool
	err string
	at  time.Time
}

// healthCache checks peers with the gRPC health service and remembers the
// answers for HealthCacheFor. One refresh runs at a time.
type healthCache struct {
	mu      sync.Mutex
	results map[string]healthResult // by address
}

func (c *healthCache) check(ctx context.Context, nodes []NodeStatus, done <-chan struct{}, creds credentials.TransportCredentials) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.results == nil {
		c.results = map[string]healthResult{}
	}
	now := time.Now()
	var wg sync.WaitGroup
	var mu sync.Mutex // guards fresh while probes run
	fresh := map[string]healthResult{}
	for _, n := range nodes {
		if n.Self || n.Address == "" {
			continue
		}
		mu.Lock()
		_, claimed := fresh[n.Address]
		if !claimed {
			if r, ok := c.results[n.Address]; ok && now.Sub(r.at) < HealthCacheFor {
				fresh[n.Address] = r
				claimed = true
			} else {
				fresh[n.Address] = healthResult{err: "not checked"} // claimed; the probe fills it
			}
		}
		mu.Unlock()
		if claimed {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := probe(ctx, n.Address, creds)
			mu.Lock()
			fresh[n.Address] = r
			mu.Unlock()
		}()
	}
	wg.Wait()
	c.results = fresh // forgets the addresses of removed members
	for i := range nodes {
		n := &nodes[i]
		if n.Self {
			n.CheckedAt = now
			select {
			case <-done:
				n.Error = "stopped"
			default:
				n.Up = true
			}
			continue
		}
		r, ok := fresh[n.Address]
		if !ok {
			n.Error = "no address"
			continue
		}
		n.Up, n.Error, n.CheckedAt = r.up, r.err, r.at
	}
}

// probe calls grpc.health.v1.Health/Check on addr over a connection of its
// own, closed after the call.
func probe(ctx context.Context, addr string, creds credentials.TransportCredentials) healthResult {
	ctx, cancel := context.WithTimeout(ctx, HealthTimeout)
	defer cancel()
	conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		return healthResult{err: err.Error(), at: time.Now()}
	}
	defer conn.Close()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	switch {
	case err != nil && errors.Is(ctx.Err(), context.DeadlineExceeded):
		return healthResult{err: "no answer within " + HealthTimeout.String(), at: time.Now()}
	case err != nil:
		return healthResult{err: err.Error(), at: time.Now()}
	case resp.GetStatus() != healthpb.HealthCheckResponse_SERVING:
		return healthResult{err: resp.GetStatus().String(), at: time.Now()}
	}
	return healthResult{up: true, at: time.Now()}
}

// Message rates.

// rates keeps, per topic, a commit ID sample and the rate it last computed.
type rates struct {
	mu sync.Mutex
	m  map[string]rateSample
}

type rateSample struct {
	at     time.Time
	commit uint64
	rate   float64
}

// minRateInterval: samples closer than this reuse the last rate, so that
// several viewers refreshing at once do not make it jump.
const minRateInterval = time.Second

func (r *rates) fill(st *Status) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.m == nil {
		r.m = map[string]rateSample{}
	}
	seen := map[string]bool{}
	for i := range st.Topics {
		t := &st.Topics[i]
		seen[t.Name] = true
		prev, ok := r.m[t.Name]
		switch {
		case !ok || t.CommitID < prev.commit:
			r.m[t.Name] = rateSample{at: st.Time, commit: t.CommitID}
		case st.Time.Sub(prev.at) >= minRateInterval:
			rate := float64(t.CommitID-prev.commit) / st.Time.Sub(prev.at).Seconds()
			r.m[t.Name] = rateSample{at: st.Time, commit: t.CommitID, rate: rate}
			t.MessagesPerSecond = rate
		default:
			t.MessagesPerSecond = prev.rate
		}
	}
	for name := range r.m {
		if !seen[name] {
			delete(r.m, name)
		}
	}
}
