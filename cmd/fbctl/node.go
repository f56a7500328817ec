package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/forestbus/forestbus/client"
	forestbusv1 "github.com/forestbus/forestbus/gen/forestbus/v1"
)

const nodeAbout = `
Change the cluster's membership:

  node add NAME ADDRESS   add a member; it joins every group as a learner and
                          becomes a voter once caught up. (fbnode -join does
                          this itself; this is for a node started otherwise.)
  node remove NAME        remove a member from the cluster and every group;
                          its raft ID is never reused.

Run 'fbctl cluster status' to see the members.`

func (a *app) node(args []string) error {
	return a.group("node", "add|remove", nodeAbout, map[string]func(*app, []string) error{
		"add":    (*app).nodeAdd,
		"remove": (*app).nodeRemove,
	}, args)
}

type nodeJSON struct {
	Name    string `json:"name"`
	Address string `json:"address"`
	ID      uint64 `json:"id"`
}

func (a *app) nodeAdd(args []string) error {
	f := a.flags("node add", "NAME ADDRESS [flags]", "Add a member to the cluster: NAME at ADDRESS (host:port).", true, true)
	pos, err := f.parse(args, 2, 2)
	if err != nil {
		return err
	}
	name, addr := pos[0], pos[1]
	_, ci, err := f.connect()
	if err != nil {
		return err
	}
	ctx, cancel := f.deadline()
	defer cancel()
	var resp *forestbusv1.AddNodeResponse
	err = adminCall(ctx, ci, func(ctx context.Context, ac forestbusv1.AdminServiceClient) (err error) {
		resp, err = ac.AddNode(ctx, &forestbusv1.AddNodeRequest{Name: name, Address: addr})
		return err
	})
	if err != nil {
		return aboutNode(name, err)
	}
	toJSON := func(n *forestbusv1.Node) nodeJSON {
		return nodeJSON{Name: n.GetName(), Address: n.GetAddress(), ID: n.GetId()}
	}
	out := struct {
		Node  nodeJSON   `json:"node"`
		Nodes []nodeJSON `json:"nodes"`
	}{Node: toJSON(resp.GetNode()), Nodes: []nodeJSON{}}
	for _, n := range resp.GetNodes() {
		out.Nodes = append(out.Nodes, toJSON(n))
	}
	if f.json() {
		return writeJSONDoc(a.stdout, out)
	}
	fmt.Fprintf(a.stdout, "added node %s at %s (raft ID %d); members:\n", out.Node.Name, out.Node.Address, out.Node.ID)
	tw := newTable(a.stdout)
	fmt.Fprintln(tw, "NAME\tADDRESS\tID")
	for _, n := range out.Nodes {
		fmt.Fprintf(tw, "%s\t%s\t%d\n", n.Name, n.Address, n.ID)
	}
	return tw.Flush()
}

func (a *app) nodeRemove(args []string) error {
	f := a.flags("node remove", "NAME [flags]", "Remove the member NAME from the cluster.", true, true)
	pos, err := f.parse(args, 1, 1)
	if err != nil {
		return err
	}
	name := pos[0]
	_, ci, err := f.connect()
	if err != nil {
		return err
	}
	ctx, cancel := f.deadline()
	defer cancel()
	err = adminCall(ctx, ci, func(ctx context.Context, ac forestbusv1.AdminServiceClient) error {
		_, err := ac.RemoveNode(ctx, &forestbusv1.RemoveNodeRequest{Name: name})
		return err
	})
	if err != nil {
		return aboutNode(name, err)
	}
	if f.json() {
		return writeJSONDoc(a.stdout, struct {
			Node    string `json:"node"`
			Removed bool   `json:"removed"`
		}{name, true})
	}
	fmt.Fprintf(a.stdout, "removed node %s\n", name)
	return nil
}

// The client package has no AddNode/RemoveNode: adminCall is a small
// failover loop over the generated AdminService stub, with the client's
// error sentinels, so explain treats its errors as the client's.

// rpcError is a node's answer to an admin call.
type rpcError struct {
	node     string
	code     codes.Code
	reason   string
	msg      string
	leader   string
	sentinel error
}

func (e *rpcError) Error() string {
	what := e.reason
	if what == "" {
		what = e.code.String()
	}
	return fmt.Sprintf("node %s: %s: %s", e.node, what, e.msg)
}

func (e *rpcError) Unwrap() error { return e.sentinel }

var reasonSentinels = map[forestbusv1.ErrorReason]error{
	forestbusv1.ErrorReason_ERROR_REASON_TOPIC_NOT_FOUND:     client.ErrTopicNotFound,
	forestbusv1.ErrorReason_ERROR_REASON_TOPIC_EXISTS:        client.ErrTopicExists,
	forestbusv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT:    client.ErrInvalidArgument,
	forestbusv1.ErrorReason_ERROR_REASON_CLUSTER_ID_MISMATCH: client.ErrClusterIdMismatch,
	forestbusv1.ErrorReason_ERROR_REASON_NOT_LEADER:          client.ErrNotLeader,
	forestbusv1.ErrorReason_ERROR_REASON_NO_LEADER:           client.ErrNoLeader,
	forestbusv1.ErrorReason_ERROR_REASON_SHUTTING_DOWN:       client.ErrShuttingDown,
	forestbusv1.ErrorReason_ERROR_REASON_PROPOSAL_DROPPED:    client.ErrProposalDropped,
	forestbusv1.ErrorReason_ERROR_REASON_STORAGE_FAILED:      client.ErrStorageFailed,
	forestbusv1.ErrorReason_ERROR_REASON_NODE_NOT_FOUND:      client.ErrNodeNotFound,
	forestbusv1.ErrorReason_ERROR_REASON_NODE_EXISTS:         client.ErrNodeExists,
}

func toRPCError(node string, err error) *rpcError {
	st := status.Convert(err)
	e := &rpcError{node: node, code: st.Code(), msg: st.Message()}
	for _, d := range st.Details() {
		info, ok := d.(*errdetails.ErrorInfo)
		if !ok || info.GetDomain() != client.ErrorDomain {
			continue
		}
		e.reason = info.GetReason()
		e.leader = info.GetMetadata()["leader"]
		for r, s := range reasonSentinels {
			if strings.TrimPrefix(r.String(), "ERROR_REASON_") == e.reason {
				e.sentinel = s
			}
		}
	}
	return e
}

// retryable: another node, or the same one later, may answer better.
func (e *rpcError) retryable() bool {
	switch e.sentinel {
	case client.ErrNotLeader, client.ErrNoLeader, client.ErrShuttingDown, client.ErrProposalDropped, client.ErrStorageFailed:
		return true
	case nil:
		switch e.code {
		case codes.Unavailable, codes.Unknown, codes.DeadlineExceeded, codes.Aborted:
			return true
		}
	}
	return false
}

// adminCall runs call against the connection's nodes in turn, following a
// NOT_LEADER hint, in passes until ctx ends. Errors no other node would
// change end it at once.
func adminCall(ctx context.Context, ci connInfo, call func(context.Context, forestbusv1.AdminServiceClient) error) error {
	if ci.cluster != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, client.ClusterIDMetadataKey, ci.cluster)
	}
	conns := map[string]*grpc.ClientConn{}
	defer func() {
		for _, cc := range conns {
			_ = cc.Close()
		}
	}()
	var last error
	wait := 50 * time.Millisecond
	for {
		order := slices.Clone(ci.nodes)
		for i := 0; i < len(order); i++ {
			node := order[i]
			cc, ok := conns[node]
			if !ok {
				var err error
				// A node that takes connections but never answers (a paused
				// process) fails its connect after defaultNodeTimeout, and
				// the next node is asked: it held the call for all of -timeout.
				connect := grpc.ConnectParams{Backoff: backoff.DefaultConfig, MinConnectTimeout: defaultNodeTimeout}
				if cc, err = grpc.NewClient("passthrough:///"+node, grpc.WithTransportCredentials(ci.creds), grpc.WithConnectParams(connect)); err != nil {
					last = fmt.Errorf("node %s: %w", node, err)
					continue
				}
				conns[node] = cc
			}
			err := call(ctx, forestbusv1.NewAdminServiceClient(cc))
			if err == nil {
				return nil
			}
			if ctx.Err() != nil {
				break
			}
			re := toRPCError(node, err)
			if !re.retryable() {
				return re
			}
			last = re
			if re.leader != "" && !slices.Contains(order[:i+1], re.leader) {
				order = slices.Insert(slices.DeleteFunc(order, func(n string) bool { return n == re.leader }), i+1, re.leader)
			}
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			if last == nil {
				return ctx.Err()
			}
			return fmt.Errorf("%w (%w) Last error: %w", client.ErrNoNodesAvailable, ctx.Err(), last)
		case <-t.C:
		}
		wait = min(2*wait, time.Second)
	}
}
