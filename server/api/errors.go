package api

import (
	"context"
	"errors"
	"log/slog"
	"strconv"
	"strings"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	forestbusv1 "github.com/forestbus/forestbus/gen/forestbus/v1"
	"github.com/forestbus/forestbus/server/replica"
	"github.com/forestbus/forestbus/server/topic"
)

// Domain is the ErrorInfo domain of every Forest Bus error.
const Domain = "forestbus"

// Errors raised by the api package itself.
var (
	ErrInvalidArgument   = errors.New("invalid argument")
	ErrMessageTooLarge   = errors.New("message too large")
	ErrBatchTooLarge     = errors.New("batch too large")
	ErrClusterIDMismatch = errors.New("cluster ID mismatch")
	ErrShuttingDown      = errors.New("node shutting down")
	// ErrSequenceReused: a producer sequence already holds another batch
	// (of another size); nothing was stored (DUPLICATE_BATCH).
	ErrSequenceReused = errors.New("producer sequence reused")
)

type errorRow struct {
	err    error
	code   codes.Code
	reason forestbusv1.ErrorReason
}

// errorTable maps sentinels to status codes and reasons, first match wins.
// A round-trip test covers every row.
var errorTable = []errorRow{
	{topic.ErrNotFound, codes.NotFound, forestbusv1.ErrorReason_ERROR_REASON_TOPIC_NOT_FOUND},
	{topic.ErrExists, codes.AlreadyExists, forestbusv1.ErrorReason_ERROR_REASON_TOPIC_EXISTS},
	{topic.ErrNodeNotFound, codes.NotFound, forestbusv1.ErrorReason_ERROR_REASON_NODE_NOT_FOUND},
	{topic.ErrNodeExists, codes.AlreadyExists, forestbusv1.ErrorReason_ERROR_REASON_NODE_EXISTS},
	{topic.ErrLastVoter, codes.FailedPrecondition, forestbusv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT},
	{topic.ErrQuorumLoss, codes.FailedPrecondition, forestbusv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT},
	{topic.ErrInvalidName, codes.InvalidArgument, forestbusv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT},
	{topic.ErrInvalidMember, codes.InvalidArgument, forestbusv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT},
	{topic.ErrInvalidSettings, codes.InvalidArgument, forestbusv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT},
	{topic.ErrTooManyTopics, codes.ResourceExhausted, forestbusv1.ErrorReason_ERROR_REASON_TOO_MANY_TOPICS},
	{ErrInvalidArgument, codes.InvalidArgument, forestbusv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT},
	{ErrMessageTooLarge, codes.InvalidArgument, forestbusv1.ErrorReason_ERROR_REASON_MESSAGE_TOO_LARGE},
	{ErrBatchTooLarge, codes.InvalidArgument, forestbusv1.ErrorReason_ERROR_REASON_BATCH_TOO_LARGE},
	{ErrClusterIDMismatch, codes.FailedPrecondition, forestbusv1.ErrorReason_ERROR_REASON_CLUSTER_ID_MISMATCH},
	{replica.ErrNotLeader, codes.FailedPrecondition, forestbusv1.ErrorReason_ERROR_REASON_NOT_LEADER},
	{replica.ErrNoLeader, codes.Unavailable, forestbusv1.ErrorReason_ERROR_REASON_NO_LEADER},
	{replica.ErrLeadershipLost, codes.Unavailable, forestbusv1.ErrorReason_ERROR_REASON_NO_LEADER},
	{replica.ErrStopped, codes.Unavailable, forestbusv1.ErrorReason_ERROR_REASON_SHUTTING_DOWN},
	{ErrShuttingDown, codes.Unavailable, forestbusv1.ErrorReason_ERROR_REASON_SHUTTING_DOWN},
	{replica.ErrProposalDropped, codes.ResourceExhausted, forestbusv1.ErrorReason_ERROR_REASON_PROPOSAL_DROPPED},
	{replica.ErrDuplicate, codes.AlreadyExists, forestbusv1.ErrorReason_ERROR_REASON_DUPLICATE_BATCH},
	{ErrSequenceReused, codes.AlreadyExists, forestbusv1.ErrorReason_ERROR_REASON_DUPLICATE_BATCH},
	{replica.ErrStorageFailed, codes.Unavailable, forestbusv1.ErrorReason_ERROR_REASON_STORAGE_FAILED},
}

// Reason is the ErrorInfo reason for r: its enum name without the
// "ERROR_REASON_" prefix.
func Reason(r forestbusv1.ErrorReason) string {
	return strings.TrimPrefix(r.String(), "ERROR_REASON_")
}

// toStatus maps a handler error to the status the client sees. leaderAddr
// resolves a raft node ID to its client address for NOT_LEADER hints.
func toStatus(ctx context.Context, err error, leaderAddr func(uint64) string, log *slog.Logger) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err // already a status (recovery, grpc internals)
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return status.FromContextError(err).Err()
	}
	for _, row := range errorTable {
		if !errors.Is(err, row.err) {
			continue
		}
		info := &errdetails.ErrorInfo{Reason: Reason(row.reason), Domain: Domain}
		var nl *replica.NotLeaderError
		if errors.As(err, &nl) && nl.Leader != 0 {
			info.Metadata = map[string]string{"leader_id": strconv.FormatUint(nl.Leader, 10)}
			if leaderAddr != nil {
				if addr := leaderAddr(nl.Leader); addr != "" {
					info.Metadata["leader"] = addr
				}
			}
		}
		st, derr := status.New(row.code, err.Error()).WithDetails(info)
		if derr != nil {
			return status.Error(row.code, err.Error())
		}
		return st.Err()
	}
	log.ErrorContext(ctx, "internal error", "err", err)
	return status.Error(codes.Internal, err.Error())
}
