package client

import (
	"context"

	"google.golang.org/grpc"

	forestbusv1 "github.com/forestbus/forestbus/gen/forestbus/v1"
)

// TopicSettings are a topic's storage settings. A zero field means the
// node's default.
type TopicSettings struct {
	// SegmentBytes is the size at which a segment file is closed and a new
	// one started (default 64 MiB; minimum 1 MiB, a node setting: every
	// retained segment holds a file open on every node).
	SegmentBytes int64
	// RetentionSeconds: messages older than this may be removed, whole
	// segments at a time. 0 keeps them for ever.
	RetentionSeconds int64
	// RetentionBytes: the oldest segments are removed while the topic holds
	// more than this many bytes. 0 means no limit.
	RetentionBytes int64
}

// Topic is a topic and its settings.
type Topic struct {
	// Name is the topic's name.
	Name string
	// Settings are the settings in force.
	Settings TopicSettings
}

func (s TopicSettings) proto() *forestbusv1.TopicSettings {
	return &forestbusv1.TopicSettings{
		SegmentBytes:     s.SegmentBytes,
		RetentionSeconds: s.RetentionSeconds,
		RetentionBytes:   s.RetentionBytes,
	}
}

func fromProtoSettings(p *forestbusv1.TopicSettings) TopicSettings {
	return TopicSettings{
		SegmentBytes:     p.GetSegmentBytes(),
		RetentionSeconds: p.GetRetentionSeconds(),
		RetentionBytes:   p.GetRetentionBytes(),
	}
}

// CreateTopic creates an empty topic named name (1 to 200 characters from
// [A-Za-z0-9._-]) with the given settings.
//
// Errors match, with errors.Is: ErrTopicExists, ErrInvalidArgument,
// ErrClusterIdMismatch, ErrNoNodesAvailable, and ctx's error. A retried
// call whose first attempt created the topic reports ErrTopicExists.
func (c *Client) CreateTopic(ctx context.Context, name string, settings TopicSettings) error {
	req := &forestbusv1.CreateTopicRequest{Name: name, Settings: settings.proto()}
	return c.invoke(ctx, "create topic", name, routeAdmin, func(ctx context.Context, cc *grpc.ClientConn, opts ...grpc.CallOption) error {
		_, err := forestbusv1.NewAdminServiceClient(cc).CreateTopic(ctx, req, opts...)
		return err
	})
}

// UpdateTopic replaces the settings of topic name whole.
//
// Errors match, with errors.Is: ErrTopicNotFound, ErrInvalidArgument,
// ErrClusterIdMismatch, ErrNoNodesAvailable, and ctx's error.
func (c *Client) UpdateTopic(ctx context.Context, name string, settings TopicSettings) error {
	req := &forestbusv1.UpdateTopicRequest{Name: name, Settings: settings.proto()}
	return c.invoke(ctx, "update topic", name, routeAdmin, func(ctx context.Context, cc *grpc.ClientConn, opts ...grpc.CallOption) error {
		_, err := forestbusv1.NewAdminServiceClient(cc).UpdateTopic(ctx, req, opts...)
		return err
	})
}

// RemoveTopic stops the cluster serving topic name. The nodes keep its
// files, moved aside, for an operator to recover.
//
// Errors match, with errors.Is: ErrTopicNotFound, ErrClusterIdMismatch,
// ErrNoNodesAvailable, and ctx's error.
func (c *Client) RemoveTopic(ctx context.Context, name string) error {
	req := &forestbusv1.RemoveTopicRequest{Name: name}
	return c.invoke(ctx, "remove topic", name, routeAdmin, func(ctx context.Context, cc *grpc.ClientConn, opts ...grpc.CallOption) error {
		_, err := forestbusv1.NewAdminServiceClient(cc).RemoveTopic(ctx, req, opts...)
		return err
	})
}

// ListTopics lists every topic with its settings, sorted by name.
//
// Errors match, with errors.Is: ErrClusterIdMismatch, ErrNoNodesAvailable,
// and ctx's error.
func (c *Client) ListTopics(ctx context.Context) ([]Topic, error) {
	var resp *forestbusv1.ListTopicsResponse
	err := c.invoke(ctx, "list topics", "", routeAdmin, func(ctx context.Context, cc *grpc.ClientConn, opts ...grpc.CallOption) error {
		r, err := forestbusv1.NewAdminServiceClient(cc).ListTopics(ctx, &forestbusv1.ListTopicsRequest{}, opts...)
		resp = r
		return err
	})
	if err != nil {
		return nil, err
	}
	topics := make([]Topic, 0, len(resp.GetTopics()))
	for _, t := range resp.GetTopics() {
		topics = append(topics, Topic{Name: t.GetName(), Settings: fromProtoSettings(t.GetSettings())})
	}
	return topics, nil
}
