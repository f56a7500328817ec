package client

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
)

// route selects the node a call starts from.
type route int

const (
	// routeLeader starts from the topic's cached leader (sends).
	routeLeader route = iota
	// routeRead starts from the last node that answered a read.
	routeRead
	// routeAdmin starts from the last node that answered an admin call.
	routeAdmin
)

// attempt performs one RPC on cc, passing opts to the stub.
type attempt func(ctx context.Context, cc *grpc.ClientConn, opts ...grpc.CallOption) error

// invoke runs call against the nodes, failing over between them.
//
// A pass tries every node at most once, starting from the preferred node of
// the route. A NOT_LEADER answer with a leader hint puts the hinted node
// next. Errors that another node cannot fix (unknown topic, invalid
// argument, cluster ID mismatch) end the call at once. When a pass fails,
// invoke waits (50 ms, doubling to 1 s) and makes another pass, until the
// context ends or, when the context has no deadline, the retry window has
// passed since the call started. It then returns an error matching
// ErrNoNodesAvailable that wraps the last node's error.
func (c *Client) invoke(ctx context.Context, op, topic string, rt route, call attempt) error {
	callCtx, unbind := c.bind(ctx) // also ended by Close
	defer unbind()
	return c.invokeBound(ctx, callCtx, op, topic, rt, false, call)
}

// invokeBound is invoke for a caller that bound ctx to the Client's life
// itself (callCtx, from bind): a call made of several invocations (a long
// poll's re-issues) binds once, so that a Close between two of them ends
// it too.
//
// longPoll marks a waiting read: its window starts again at the failure of
// an attempt a node held for a while (it served until then), so that a
// poll held past the window and then cut (a node restarting, a connection
// reset) is retried however its earlier attempts went. Such a call waits
// without bound by design anyway; a send's window is not reset.
func (c *Client) invokeBound(ctx, callCtx context.Context, op, topic string, rt route, longPoll bool, call attempt) error {
	if len(c.nodes) == 0 {
		// An empty node list (or a zero Client): nothing to try, nothing
		// to wait for. The original answered at once too.
		return c.ended(ctx, op, nil, nil)
	}
	start := time.Now()
	callCtx = c.outgoing(callCtx)
	// Without a context deadline the retry window counts from the call's
	// first failure (set at the end of the first pass), not from its
	// start: an attempt that ran long before it failed (a long poll a
	// node held for its wait cap) does not use the window up.
	deadline, ctxDeadline := ctx.Deadline()
	// expired reports the end of ctx, also when gRPC noticed its deadline
	// before ctx's own timer fired.
	expired := func() error {
		if err := ctx.Err(); err != nil {
			return err
		}
		if ctxDeadline && !time.Now().Before(deadline) {
			return context.DeadlineExceeded
		}
		return nil
	}
	var (
		lastErr   error
		firstFail time.Time
		attempted time.Time // when the attempt in progress began
	)
	failed := func(err error) {
		lastErr = err
		now := time.Now()
		if firstFail.IsZero() || longPoll && now.Sub(attempted) >= min(c.retryWindow, maxPassBackoff) {
			firstFail = now
		}
	}
	ended := func(last error) error { return c.ended(ctx, op, last, lastErr) }
	wait := minPassBackoff
	for {
		order := c.order(rt, topic)
		for i := 0; i < len(order); i++ {
			node := order[i]
			if callCtx.Err() != nil { // ctx ended, or Close
				return ended(lastErr)
			}
			if longPoll {
				attempted = time.Now() // only a long poll's window looks at it
			}
			cc, err := c.conn(node)
			if err != nil {
				failed(fmt.Errorf("forestbus: node %s: %w", node, err))
				c.debugLog(op, topic, node, start, lastErr)
				continue
			}
			var hdr metadata.MD
			err = call(callCtx, cc, grpc.Header(&hdr))
			if err == nil {
				c.remember(rt, topic, node, hdr)
				c.debugLog(op, topic, node, start, nil)
				return nil
			}
			if cerr := expired(); cerr != nil {
				c.debugLog(op, topic, node, start, err)
				return c.ctxFail(op, cerr, lastErr)
			}
			if callCtx.Err() != nil { // Close, or ctx just now
				c.debugLog(op, topic, node, start, err)
				return ended(fmt.Errorf("forestbus: node %s: %w", node, err))
			}
			se := newStatusError(node, err)
			if se == nil {
				// Not a gRPC status: treat as a transport failure.
				failed(fmt.Errorf("forestbus: node %s: %w", node, err))
				c.debugLog(op, topic, node, start, lastErr)
				continue
			}
			c.debugLog(op, topic, node, start, se)
			if se.Code == codes.Canceled {
				// Cancelled under the call with callCtx still live: the
				// node's or the connection's doing (a Close whose
				// connection closed before its cancel of callCtx ran
				// lands here too, with the same error).
				return &noNodesError{op: op, last: se}
			}
			if classify(se, rt == routeRead) == fatal {
				return se
			}
			failed(se)
			c.forget(rt, topic, node)
			if errors.Is(se, ErrNotLeader) && se.Leader != "" {
				if rt == routeLeader {
					c.setLeader(topic, se.Leader)
				}
				if !slices.Contains(order[:i+1], se.Leader) {
					order = slices.DeleteFunc(order, func(n string) bool { return n == se.Leader })
					order = slices.Insert(order, i+1, se.Leader)
				}
			}
		}
		now := time.Now()
		if !ctxDeadline {
			deadline = firstFail.Add(c.retryWindow) // a pass that ends has failed
		}
		if !now.Before(deadline) {
			if ctxDeadline {
				return c.ctxFail(op, context.DeadlineExceeded, lastErr)
			}
			return &noNodesError{op: op, last: lastErr}
		}
		d := min(wait, deadline.Sub(now))
		wait = min(2*wait, maxPassBackoff)
		t := time.NewTimer(d)
		select {
		case <-callCtx.Done():
			t.Stop()
			return ended(lastErr)
		case <-t.C:
		}
	}
}

// ended is the error for a call whose bound context ended: ctx's when the
// caller's context ended (with lastErr, the last node's failure, if any),
// else Close's (an ErrNoNodesAvailable error wrapping last).
func (c *Client) ended(ctx context.Context, op string, last, lastErr error) error {
	if err := ctx.Err(); err != nil {
		return c.ctxFail(op, err, lastErr)
	}
	return &noNodesError{op: op, last: last}
}

// ctxFail builds the error for a call whose context ended: the context's
// error alone when no node failed before, else an ErrNoNodesAvailable error
// wrapping both.
func (c *Client) ctxFail(op string, ctxErr, lastErr error) error {
	if lastErr == nil {
		return ctxError(op, ctxErr)
	}
	return &noNodesError{op: op, last: lastErr, ctxErr: ctxErr}
}

// order returns the nodes in the order a pass tries them.
func (c *Client) order(rt route, topic string) []string {
	c.mu.Lock()
	var preferred string
	switch rt {
	case routeLeader:
		preferred = c.leaders[topic]
	case routeRead:
		preferred = c.lastGet
	case routeAdmin:
		preferred = c.admin
	}
	c.mu.Unlock()
	order := make([]string, 0, len(c.nodes)+1)
	if preferred != "" {
		order = append(order, preferred)
	}
	for _, n := range c.nodes {
		if n != preferred {
			order = append(order, n)
		}
	}
	return order
}

// remember records the node that answered a call.
func (c *Client) remember(rt route, topic, node string, hdr metadata.MD) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch rt {
	case routeLeader:
		if l := hdr.Get(LeaderMetadataKey); len(l) > 0 && l[0] != "" {
			node = l[0]
		}
		c.leaders[topic] = node
	case routeRead:
		c.lastGet = node
	case routeAdmin:
		c.admin = node
	}
}

// forget drops node as the preferred node of the route if it is.
func (c *Client) forget(rt route, topic, node string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch rt {
	case routeLeader:
		if c.leaders[topic] == node {
			delete(c.leaders, topic)
		}
	case routeRead:
		if c.lastGet == node {
			c.lastGet = ""
		}
	case routeAdmin:
		if c.admin == node {
			c.admin = ""
		}
	}
}

func (c *Client) setLeader(topic, leader string) {
	c.mu.Lock()
	c.leaders[topic] = leader
	c.mu.Unlock()
}

// leader returns the cached leader of topic, or "".
func (c *Client) leader(topic string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.leaders[topic]
}

func (c *Client) debugLog(op, topic, node string, start time.Time, err error) {
	if !c.debug {
		return
	}
	if err != nil {
		c.logger.Debug("forestbus: call failed", "op", op, "topic", topic, "node", node, "elapsed", time.Since(start), "error", err)
		return
	}
	c.logger.Debug("forestbus: call", "op", op, "topic", topic, "node", node, "elapsed", time.Since(start))
}
