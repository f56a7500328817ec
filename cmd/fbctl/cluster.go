package main

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/forestbus/forestbus/client"
)

const defaultNodeTimeout = 2 * time.Second

const clusterAbout = `
cluster status: the cluster's members (as a node of the connection string
reports them), each asked directly whether it is up and how fast it answers,
with how many topics it leads;
then, for every topic, the leader and the first, last and commit IDs as each
node reports them, with each node's lag: the leader's commit ID minus the
node's. A node that does not answer within -node-timeout is down. Without
a metadata quorum the topics are unknown (the nodes' table still shows).
With -check, the exit status is 3 when a member is down, the topics are
unknown, a topic has no leader, or a node's copy of a topic is fenced
after a storage error or a lost log (STORAGE_FAILED in the ERROR column)
(for health probes and cron jobs).`

func (a *app) cluster(args []string) error {
	return a.group("cluster", "status", clusterAbout, map[string]func(*app, []string) error{
		"status": (*app).clusterStatus,
	}, args)
}

// Status documents of -o json.
type (
	clusterStatusJSON struct {
		ClusterID  string           `json:"cluster_id"`
		AnsweredBy string           `json:"answered_by"`
		Nodes      []nodeStatusJSON `json:"nodes"`
		// TopicsError says why the topics are unknown (no metadata
		// quorum: ListTopics failed); Topics is then empty.
		TopicsError string            `json:"topics_error,omitempty"`
		Topics      []topicStatusJSON `json:"topics"`
	}
	nodeStatusJSON struct {
		Name      string   `json:"name"`
		Address   string   `json:"address"`
		Up        bool     `json:"up"`
		Learner   bool     `json:"learner,omitempty"` // joined, still catching up on the metadata group: not yet a voter there (each topic's lag shows its own catch-up)
		LatencyMS *float64 `json:"latency_ms,omitempty"`
		// Leads is how many topics it leads (the topics' LEADER column):
		// leaders are spread over the nodes, and come back to a node
		// that restarted (leader balancing).
		Leads int    `json:"leads"`
		Error string `json:"error,omitempty"`
	}
	topicStatusJSON struct {
		Name     string              `json:"name"`
		Leader   string              `json:"leader"`
		Replicas []replicaStatusJSON `json:"replicas"`
	}
	replicaStatusJSON struct {
		Node     string `json:"node"`
		FirstID  *int64 `json:"first_id,omitempty"`
		LastID   *int64 `json:"last_id,omitempty"`
		CommitID *int64 `json:"commit_id,omitempty"`
		Leader   string `json:"leader,omitempty"` // the leader this node knows
		Lag      *int64 `json:"lag,omitempty"`
		Error    string `json:"error,omitempty"`
		// Failed: the node's copy is fenced after a storage error or a
		// lost log (STORAGE_FAILED); it stays so until the operator acts.
		Failed bool `json:"failed,omitempty"`
	}
)

func (a *app) clusterStatus(args []string) error {
	f := a.flags("cluster status", "[flags]", clusterAbout, true, true)
	nodeTimeout := f.Duration("node-timeout", defaultNodeTimeout, "how long each node has to answer each question")
	check := f.Bool("check", false, "exit with status 3 when a member is down, the topics are unknown (no metadata quorum), a topic has no leader, or a node's copy of a topic is fenced")
	if _, err := f.parse(args, 0, 0); err != nil {
		return err
	}
	if *nodeTimeout <= 0 {
		return usagef("cluster status: -node-timeout %s: want above 0", *nodeTimeout)
	}
	c, ci, err := f.connect()
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := f.deadline()
	defer cancel()
	cd, err := firstAnswer(ctx, c, ci, *nodeTimeout, (*client.Client).ClusterDetails)
	if err != nil {
		return err
	}
	// The topics need the metadata group's quorum (a node without one
	// answers NO_LEADER after about 2 s); without it, the nodes' table
	// still tells what is down.
	lctx, lcancel := context.WithTimeout(ctx, *nodeTimeout+3*time.Second)
	topics, err := firstAnswer(lctx, c, ci, *nodeTimeout+3*time.Second, (*client.Client).ListTopics)
	lcancel()
	var topicsErr string
	if err != nil {
		if a.ctx.Err() != nil || ctx.Err() != nil {
			return err
		}
		topicsErr = shortError(err)
	}

	out := clusterStatusJSON{ClusterID: cd.ClusterID, AnsweredBy: cd.NodeName, TopicsError: topicsErr,
		Nodes: make([]nodeStatusJSON, len(cd.Nodes)), Topics: make([]topicStatusJSON, len(topics))}
	for i, t := range topics {
		out.Topics[i] = topicStatusJSON{Name: t.Name, Replicas: make([]replicaStatusJSON, len(cd.Nodes))}
	}
	var wg sync.WaitGroup
	for i, n := range cd.Nodes {
		wg.Go(func() {
			out.Nodes[i] = probeNode(ctx, ci, n, *nodeTimeout, topics, out.Topics, i)
		})
	}
	wg.Wait()
	if err := a.ctx.Err(); err != nil {
		return err
	}
	for i := range out.Topics {
		computeLag(&out.Topics[i])
		for j := range out.Nodes {
			if out.Nodes[j].Name == out.Topics[i].Leader {
				out.Nodes[j].Leads++
			}
		}
	}

	if err := a.printClusterStatus(f.json(), out); err != nil {
		return err
	}
	if *check && !out.healthy() {
		return errUnhealthy
	}
	return nil
}

// healthy reports whether every member is up and every topic has a leader.
func (out *clusterStatusJSON) healthy() bool {
	if out.TopicsError != "" {
		return false
	}
	for _, n := range out.Nodes {
		if !n.Up {
			return false
		}
	}
	for _, t := range out.Topics {
		if t.Leader == "" {
			return false
		}
		for _, r := range t.Replicas {
			if r.Failed { // not the passing errors: elections, a topic being created
				return false
			}
		}
	}
	return true
}

// printClusterStatus writes out, as JSON or as tables.
func (a *app) printClusterStatus(asJSON bool, out clusterStatusJSON) error {
	if asJSON {
		return writeJSONDoc(a.stdout, out)
	}
	up := 0
	for _, n := range out.Nodes {
		if n.Up {
			up++
		}
	}
	fmt.Fprintf(a.stdout, "cluster %s: %d of %d nodes up (members as reported by %s)\n\n", out.ClusterID, up, len(out.Nodes), out.AnsweredBy)
	tw := newTable(a.stdout)
	fmt.Fprintln(tw, "NODE\tADDRESS\tSTATUS\tLATENCY\tROLE\tLEADS\tERROR")
	for _, n := range out.Nodes {
		status, lat := "down", "-"
		if n.Up {
			status, lat = "up", fmt.Sprintf("%.2fms", *n.LatencyMS)
		}
		role := "voter"
		if n.Learner {
			role = "learner"
		}
		leads := "-"
		if out.TopicsError == "" {
			leads = strconv.Itoa(n.Leads)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", n.Name, n.Address, status, lat, role, leads, n.Error)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(a.stdout)
	if out.TopicsError != "" {
		fmt.Fprintf(a.stdout, "topics unknown: %s\n", out.TopicsError)
		return nil
	}
	if len(out.Topics) == 0 {
		fmt.Fprintln(a.stdout, "no topics")
		return nil
	}
	tw = newTable(a.stdout)
	fmt.Fprintln(tw, "TOPIC\tLEADER\tNODE\tFIRST\tLAST\tCOMMIT\tLAG\tERROR")
	for _, t := range out.Topics {
		leader := t.Leader
		if leader == "" {
			leader = "(none)"
		}
		for _, r := range t.Replicas {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", t.Name, leader, r.Node,
				optInt(r.FirstID), optInt(r.LastID), optInt(r.CommitID), optInt(r.Lag), r.Error)
		}
	}
	return tw.Flush()
}

// probeNode asks node n, alone, for the cluster's details (up, latency)
// and for the details of every topic, which it stores in topics[*].Replicas[i].
func probeNode(ctx context.Context, ci connInfo, n client.Node, timeout time.Duration, topics []client.Topic, out []topicStatusJSON, i int) nodeStatusJSON {
	ns := nodeStatusJSON{Name: n.Name, Address: n.Address, Learner: n.Learner}
	for ti := range out {
		out[ti].Replicas[i] = replicaStatusJSON{Node: n.Name}
	}
	// A client of this node alone, making a single attempt per call: its
	// own answers, not another node's after a failover.
	nc := client.New(ci.cluster, []string{n.Address}, append([]client.Option{client.WithRetryWindow(0)}, ci.opts...)...)
	defer nc.Close()
	ask := func(f func(context.Context) error) (time.Duration, error) {
		cctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		start := time.Now()
		err := f(cctx)
		return time.Since(start), err
	}
	var answered string // the name of the node that answers at n's address
	details := func(ctx context.Context) error {
		d, err := nc.ClusterDetails(ctx)
		if err == nil {
			answered = d.NodeName
		}
		return err
	}
	down := func(why string) nodeStatusJSON {
		ns.Error = why
		for ti := range out {
			out[ti].Replicas[i].Error = "node down"
		}
		return ns
	}
	// The first call also connects; the second measures a call's latency.
	if _, err := ask(details); err != nil {
		return down(shortError(err))
	}
	if answered != n.Name {
		// Another node listens at n's address: n is not up there.
		return down(fmt.Sprintf("node %q answers at this address", answered))
	}
	lat, err := ask(details)
	if err != nil {
		ns.Error = shortError(err)
		return ns
	}
	ms := float64(lat.Microseconds()) / 1000
	ns.Up, ns.LatencyMS = true, &ms
	for ti, t := range topics {
		var d *client.TopicDetails
		_, err := ask(func(ctx context.Context) (err error) {
			d, err = nc.TopicDetails(ctx, t.Name)
			return err
		})
		r := &out[ti].Replicas[i]
		if err != nil {
			r.Error, r.Failed = shortError(err), errors.Is(err, client.ErrStorageFailed)
			if errors.Is(err, client.ErrTopicNotFound) {
				r.Error = "topic not on this node"
			}
			continue
		}
		r.FirstID, r.LastID, r.CommitID, r.Leader = &d.FirstID, &d.LastID, &d.CommitID, d.Leader
	}
	return ns
}

// computeLag picks the topic's leader (the one most nodes name) and sets
// each replica's lag behind the leader's commit ID.
func computeLag(t *topicStatusJSON) {
	votes := map[string]int{}
	for _, r := range t.Replicas {
		if r.Leader != "" {
			votes[r.Leader]++
		}
	}
	names := make([]string, 0, len(votes))
	for n := range votes {
		names = append(names, n)
	}
	sort.Slice(names, func(i, j int) bool {
		if votes[names[i]] != votes[names[j]] {
			return votes[names[i]] > votes[names[j]]
		}
		return names[i] < names[j]
	})
	if len(names) == 0 {
		return
	}
	t.Leader = names[0]
	var leaderCommit *int64
	for _, r := range t.Replicas {
		if r.Node == t.Leader {
			leaderCommit = r.CommitID
		}
	}
	if leaderCommit == nil {
		return
	}
	for i := range t.Replicas {
		r := &t.Replicas[i]
		if r.CommitID != nil {
			lag := *leaderCommit - *r.CommitID
			r.Lag = &lag
		}
	}
}

// shortError describes a node's failure to answer in a few words.
func shortError(err error) string {
	var se *client.StatusError
	switch {
	case errors.Is(err, client.ErrClusterIdMismatch):
		return "wrong cluster: " + explain(err)
	case errors.As(err, &se):
		if se.Reason != "" {
			return se.Reason + ": " + oneLine(se.Message)
		}
		return se.Code.String() + ": " + oneLine(se.Message)
	case errors.Is(err, context.DeadlineExceeded):
		return "timed out"
	}
	return explain(err)
}

func optInt(p *int64) string {
	if p == nil {
		return "-"
	}
	return strconv.FormatInt(*p, 10)
}

// firstAnswer asks every node of the connection string at once, each
// through a client of its own within timeout, and returns the first
// answer. Through the failover client a hung node (paused, taking
// connections but never answering) took its connect timeout, 5 s, before
// the next was asked (review). When none answers in time, the failover
// client c asks again within ctx, for its error.
func firstAnswer[T any](ctx context.Context, c *client.Client, ci connInfo, timeout time.Duration, ask func(*client.Client, context.Context) (T, error)) (T, error) {
	pctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	answers := make(chan T, len(ci.nodes))
	var wg sync.WaitGroup
	for _, addr := range ci.nodes {
		wg.Go(func() {
			nc := client.New(ci.cluster, []string{addr}, append([]client.Option{client.WithRetryWindow(0)}, ci.opts...)...)
			defer nc.Close()
			if v, err := ask(nc, pctx); err == nil {
				answers <- v
				cancel() // the others need not answer
			}
		})
	}
	wg.Wait()
	close(answers)
	if v, ok := <-answers; ok {
		return v, nil
	}
	if err := ctx.Err(); err != nil {
		var zero T
		return zero, err
	}
	return ask(c, ctx)
}
