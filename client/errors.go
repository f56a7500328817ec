package client

import (
	"errors"
	"fmt"
	"strings"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	forestbusv1 "github.com/forestbus/forestbus/gen/forestbus/v1"
)

// ErrorDomain is the google.rpc.ErrorInfo domain of errors raised by Forest
// Bus nodes.
const ErrorDomain = "forestbus"

// Sentinel errors. The first three keep the texts of the original client.
// Errors returned by the Client match them with errors.Is.
var (
	// ErrNoNodesAvailable is a potentially transitory error: no node in the
	// list gave a usable answer within the retry window (nodes down, no
	// leader elected yet, ...). The error returned wraps the last node's
	// error as well.
	ErrNoNodesAvailable = errors.New("Unable to connect to any of the given nodes.") //nolint:staticcheck // original text

	// ErrClusterIdMismatch is a serious error: a node belongs to another
	// cluster than the one given to New. Failover stops at once.
	ErrClusterIdMismatch = errors.New("The nodes cluster ID does not match that given by the client.") //nolint:staticcheck,revive // original name and text

	// ErrTopicNotFound is returned when the topic does not exist on the node.
	ErrTopicNotFound = errors.New("Topic not found on the node.") //nolint:staticcheck // original text

	// ErrTopicExists is returned by CreateTopic when the topic exists.
	ErrTopicExists = errors.New("forestbus: topic exists")
	// ErrInvalidArgument is returned when a request field is out of range or
	// malformed (bad topic name, empty batch, ...).
	ErrInvalidArgument = errors.New("forestbus: invalid argument")
	// ErrMessageTooLarge is returned when a message exceeds the node's
	// maximum message size.
	ErrMessageTooLarge = errors.New("forestbus: message too large")
	// ErrBatchTooLarge is returned when a batch exceeds the node's maximum
	// batch size.
	ErrBatchTooLarge = errors.New("forestbus: batch too large")
	// ErrNotLeader is answered by a node that does not lead the topic. The
	// client follows the leader hint itself; it surfaces only wrapped in an
	// ErrNoNodesAvailable error.
	ErrNotLeader = errors.New("forestbus: node is not the topic leader")
	// ErrNoLeader is answered while a topic has no leader (election under
	// way). The client retries it.
	ErrNoLeader = errors.New("forestbus: topic has no leader")
	// ErrShuttingDown is answered by a node that is stopping. The client
	// tries another node.
	ErrShuttingDown = errors.New("forestbus: node is shutting down")
	// ErrProposalDropped is answered when the topic leader has too much
	// uncommitted data or lost the proposal. The client retries it.
	ErrProposalDropped = errors.New("forestbus: proposal dropped")
	// ErrStorageFailed is answered by a node whose copy of the topic is
	// fenced after a storage error. The client tries another node.
	ErrStorageFailed = errors.New("forestbus: storage failed")
	// ErrNodeNotFound is answered by an admin call naming a node that is
	// not a member of the cluster.
	ErrNodeNotFound = errors.New("forestbus: node not found")
	// ErrNodeExists is answered by an admin call adding a node that is a
	// member already.
	ErrNodeExists = errors.New("forestbus: node exists")
	// ErrDuplicateBatch is answered to a send whose batch (producer id and
	// sequence) the topic holds already but whose original IDs it no longer
	// remembers (see SendMessagesContext). The batch was stored once,
	// earlier, or was overtaken by too many later batches of the same
	// Client; it is not stored again. Failover stops at once.
	ErrDuplicateBatch = errors.New("forestbus: duplicate batch, original IDs unknown")
	// ErrTooManyTopics is answered by CreateTopic when the cluster holds
	// as many topics as its metadata leader allows (fbnode -max-topics).
	ErrTooManyTopics = errors.New("forestbus: too many topics")
)

// reasonSentinels maps ErrorInfo reasons (ErrorReason names without the
// "ERROR_REASON_" prefix) to sentinel errors.
var reasonSentinels = map[string]error{
	reasonName(forestbusv1.ErrorReason_ERROR_REASON_TOPIC_NOT_FOUND):     ErrTopicNotFound,
	reasonName(forestbusv1.ErrorReason_ERROR_REASON_TOPIC_EXISTS):        ErrTopicExists,
	reasonName(forestbusv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT):    ErrInvalidArgument,
	reasonName(forestbusv1.ErrorReason_ERROR_REASON_MESSAGE_TOO_LARGE):   ErrMessageTooLarge,
	reasonName(forestbusv1.ErrorReason_ERROR_REASON_BATCH_TOO_LARGE):     ErrBatchTooLarge,
	reasonName(forestbusv1.ErrorReason_ERROR_REASON_CLUSTER_ID_MISMATCH): ErrClusterIdMismatch,
	reasonName(forestbusv1.ErrorReason_ERROR_REASON_NOT_LEADER):          ErrNotLeader,
	reasonName(forestbusv1.ErrorReason_ERROR_REASON_NO_LEADER):           ErrNoLeader,
	reasonName(forestbusv1.ErrorReason_ERROR_REASON_SHUTTING_DOWN):       ErrShuttingDown,
	reasonName(forestbusv1.ErrorReason_ERROR_REASON_PROPOSAL_DROPPED):    ErrProposalDropped,
	reasonName(forestbusv1.ErrorReason_ERROR_REASON_STORAGE_FAILED):      ErrStorageFailed,
	reasonName(forestbusv1.ErrorReason_ERROR_REASON_NODE_NOT_FOUND):      ErrNodeNotFound,
	reasonName(forestbusv1.ErrorReason_ERROR_REASON_NODE_EXISTS):         ErrNodeExists,
	reasonName(forestbusv1.ErrorReason_ERROR_REASON_DUPLICATE_BATCH):     ErrDuplicateBatch,
	reasonName(forestbusv1.ErrorReason_ERROR_REASON_TOO_MANY_TOPICS):     ErrTooManyTopics,
}

func reasonName(r forestbusv1.ErrorReason) string {
	return strings.TrimPrefix(r.String(), "ERROR_REASON_")
}

// StatusError is an error answered by a node: a gRPC status, with the
// Forest Bus reason when the node gave one. It unwraps to the sentinel of
// its reason (ErrTopicNotFound, ...), so use errors.Is to test it.
type StatusError struct {
	// Code is the gRPC status code.
	Code codes.Code
	// Reason is the ErrorInfo reason, e.g. "TOPIC_NOT_FOUND"; empty when
	// the status carried no Forest Bus ErrorInfo.
	Reason string
	// Message is the status message.
	Message string
	// Leader is the leader address a NOT_LEADER answer named, if any.
	Leader string
	// Node is the address of the node that answered.
	Node string

	sentinel error
	st       *status.Status
}

// Error implements error.
func (e *StatusError) Error() string {
	var b strings.Builder
	b.WriteString("forestbus: node ")
	b.WriteString(e.Node)
	b.WriteString(": ")
	if e.Reason != "" {
		b.WriteString(e.Reason)
	} else {
		b.WriteString(e.Code.String())
	}
	if e.Message != "" {
		b.WriteString(": ")
		b.WriteString(e.Message)
	}
	return b.String()
}

// Unwrap returns the sentinel error of the reason, or nil.
func (e *StatusError) Unwrap() error { return e.sentinel }

// GRPCStatus returns the status as received, so status.FromError and
// status.Code work on a StatusError.
func (e *StatusError) GRPCStatus() *status.Status { return e.st }

// newStatusError turns a gRPC error from node into a *StatusError. It
// returns nil when err carries no gRPC status.
func newStatusError(node string, err error) *StatusError {
	st, ok := status.FromError(err)
	if !ok {
		return nil
	}
	se := &StatusError{Code: st.Code(), Message: st.Message(), Node: node, st: st}
	for _, d := range st.Details() {
		info, ok := d.(*errdetails.ErrorInfo)
		if !ok || info.GetDomain() != ErrorDomain {
			continue
		}
		se.Reason = info.GetReason()
		se.Leader = info.GetMetadata()["leader"]
		se.sentinel = reasonSentinels[se.Reason]
		break
	}
	return se
}

// verdict says what the failover loop does with an attempt's error.
type verdict int

const (
	// nextNode: try the next node of the pass (and further passes).
	nextNode verdict = iota
	// fatal: return the error at once.
	fatal
)

// classify decides whether a node's answer is worth trying elsewhere. A
// read (read set) refused with a plain RESOURCE_EXHAUSTED is: the node
// serves its cap of waiting reads or of streams; for a send the code means
// a request too large for the node.
func classify(se *StatusError, read bool) verdict {
	switch se.sentinel {
	case ErrNotLeader, ErrNoLeader, ErrShuttingDown, ErrStorageFailed, ErrProposalDropped:
		return nextNode
	case nil:
	default:
		// Topic or node not found / exists, invalid arguments, cluster
		// mismatch, duplicate batch.
		return fatal
	}
	switch se.Code {
	case codes.Unavailable, codes.Internal, codes.Unknown, codes.DeadlineExceeded, codes.Aborted:
		// Transport failures, and failures the original client also
		// retried on another node (RI_INTERNAL_ERROR).
		return nextNode
	case codes.ResourceExhausted:
		if read {
			return nextNode
		}
	}
	return fatal
}

// noNodesError is returned when no node gave a usable answer within the
// retry window or the context's lifetime. It matches ErrNoNodesAvailable,
// the last node's error and, when the context ended, the context's error,
// with errors.Is.
type noNodesError struct {
	op     string
	last   error
	ctxErr error
}

func (e *noNodesError) Error() string {
	msg := ErrNoNodesAvailable.Error()
	if e.op != "" {
		msg = "forestbus: " + e.op + ": " + msg
	}
	if e.ctxErr != nil {
		msg += " (" + e.ctxErr.Error() + ")"
	}
	if e.last != nil {
		msg += " Last error: " + e.last.Error()
	}
	return msg
}

func (e *noNodesError) Unwrap() []error {
	errs := []error{ErrNoNodesAvailable}
	if e.ctxErr != nil {
		errs = append(errs, e.ctxErr)
	}
	if e.last != nil {
		errs = append(errs, e.last)
	}
	return errs
}

// ctxError wraps a context's error when the context ended before any node
// failed.
func ctxError(op string, err error) error {
	return fmt.Errorf("forestbus: %s: %w", op, err)
}

// LegacyError returns the original client's bare sentinel for errors that
// match one, so that programs written against the original package which
// compare errors with == keep working. Other errors are returned as is.
// The calls without a context and the MessageBatcher's results use it.
func LegacyError(err error) error {
	for _, s := range [...]error{ErrClusterIdMismatch, ErrTopicNotFound, ErrNoNodesAvailable} {
		if errors.Is(err, s) {
			return s
		}
	}
	return err
}
