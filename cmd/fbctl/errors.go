package main

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"google.golang.org/grpc/codes"

	"github.com/forestbus/forestbus/batcher"
	"github.com/forestbus/forestbus/client"
)

// subjectError records which topic or node a failed call was about, for
// the message explain writes.
type subjectError struct {
	kind string // "topic" or "node"
	name string
	err  error
}

func (e *subjectError) Error() string { return e.err.Error() }
func (e *subjectError) Unwrap() error { return e.err }

func aboutTopic(name string, err error) error {
	if err == nil {
		return nil
	}
	return &subjectError{kind: "topic", name: name, err: err}
}

func aboutNode(name string, err error) error {
	if err == nil {
		return nil
	}
	return &subjectError{kind: "node", name: name, err: err}
}

// explain turns an error into the one line fbctl prints after "fbctl: ".
func explain(err error) string {
	var subj *subjectError
	name := ""
	if errors.As(err, &subj) {
		name = subj.name
	}
	// The node's own answer, from the client or from adminCall.
	var ans struct {
		node, msg, text string
		code            codes.Code
	}
	var se *client.StatusError
	var re *rpcError
	hasStatus := true
	switch {
	case errors.As(err, &se):
		ans.node, ans.msg, ans.text, ans.code = se.Node, se.Message, se.Error(), se.Code
	case errors.As(err, &re):
		ans.node, ans.msg, ans.text, ans.code = re.node, re.msg, re.Error(), re.code
	default:
		hasStatus = false
	}
	serverSays := func(fallback string) string {
		if hasStatus && ans.msg != "" {
			return ans.msg
		}
		return fallback
	}
	var msg string
	switch {
	case errors.Is(err, client.ErrClusterIdMismatch):
		if hasStatus && ans.msg != "" {
			msg = fmt.Sprintf("cluster ID mismatch: %s (node %s); check the connection string",
				strings.TrimPrefix(ans.msg, "cluster ID mismatch: "), ans.node)
		} else {
			msg = "cluster ID mismatch: " + trimForestbus(err.Error()) + "; check the connection string"
		}
	case errors.Is(err, client.ErrTopicNotFound):
		msg = fmt.Sprintf("topic %q not found", name)
	case errors.Is(err, client.ErrTopicExists):
		msg = fmt.Sprintf("topic %q already exists", name)
	case errors.Is(err, client.ErrNodeNotFound):
		msg = fmt.Sprintf("node %q is not a member of the cluster", name)
	case errors.Is(err, client.ErrNodeExists):
		msg = fmt.Sprintf("node %q already exists with another address", name)
	case errors.Is(err, client.ErrMessageTooLarge):
		msg = withPrefix("message too large: ", serverSays("a message exceeds the node's maximum message size"))
	case errors.Is(err, client.ErrBatchTooLarge):
		msg = withPrefix("batch too large: ", serverSays("a batch exceeds the node's maximum batch size"))
	case errors.Is(err, client.ErrInvalidArgument) && hasStatus && ans.code == codes.FailedPrecondition:
		// A valid request the cluster's state refuses (RemoveNode of the
		// last voter, or of one that would cost the live majority).
		msg = withPrefix("refused: ", serverSays(trimForestbus(err.Error())))
	case errors.Is(err, client.ErrInvalidArgument):
		msg = withPrefix("invalid argument: ", serverSays(trimForestbus(err.Error())))
	case errors.Is(err, client.ErrDuplicateBatch):
		msg = "the node took a batch for a duplicate whose IDs it no longer knows; it may have been stored earlier"
	case errors.Is(err, client.ErrNoNodesAvailable):
		msg = "no node of the cluster answered in time"
		if hasStatus {
			msg += "; last error: " + trimForestbus(ans.text)
		} else if errors.Is(err, context.DeadlineExceeded) {
			msg += " (timed out)"
		}
	case errors.Is(err, batcher.ErrClosed):
		msg = "interrupted before the messages could be sent"
	case errors.Is(err, context.DeadlineExceeded):
		msg = "timed out (see -timeout)"
	default:
		msg = trimForestbus(err.Error())
	}
	return oneLine(msg)
}

func trimForestbus(s string) string { return strings.TrimPrefix(s, "forestbus: ") }

// oneLine folds a message onto one line.
func oneLine(s string) string {
	s = strings.TrimSpace(s)
	return strings.NewReplacer("\r\n", "; ", "\n", "; ", "\r", " ").Replace(s)
}

// withPrefix puts prefix before msg unless the node's message has it.
func withPrefix(prefix, msg string) string {
	if strings.HasPrefix(msg, prefix) {
		return msg
	}
	return prefix + msg
}
