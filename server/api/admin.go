package api

import (
	"context"

	forestbusv1 "github.com/forestbus/forestbus/gen/forestbus/v1"
	"github.com/forestbus/forestbus/server/topic"
)

func settingsFrom(p *forestbusv1.TopicSettings) topic.Settings {
	return topic.Settings{
		SegmentBytes:     p.GetSegmentBytes(),
		RetentionSeconds: p.GetRetentionSeconds(),
		RetentionBytes:   p.GetRetentionBytes(),
	}
}

func topicProto(name string, s topic.Settings) *forestbusv1.Topic {
	return &forestbusv1.Topic{Name: name, Settings: &forestbusv1.TopicSettings{
		SegmentBytes:     s.SegmentBytes,
		RetentionSeconds: s.RetentionSeconds,
		RetentionBytes:   s.RetentionBytes,
	}}
}

// CreateTopic implements AdminService.CreateTopic.
func (s *Service) CreateTopic(ctx context.Context, req *forestbusv1.CreateTopicRequest) (*forestbusv1.CreateTopicResponse, error) {
	st := settingsFrom(req.GetSettings())
	if err := s.registry.Create(ctx, req.GetName(), st); err != nil {
		return nil, err
	}
	return &forestbusv1.CreateTopicResponse{Topic: topicProto(req.GetName(), st)}, nil
}

// UpdateTopic implements AdminService.UpdateTopic.
func (s *Service) UpdateTopic(ctx context.Context, req *forestbusv1.UpdateTopicRequest) (*forestbusv1.UpdateTopicResponse, error) {
	st := settingsFrom(req.GetSettings())
	if err := s.registry.Update(ctx, req.GetName(), st); err != nil {
		return nil, err
	}
	return &forestbusv1.UpdateTopicResponse{Topic: topicProto(req.GetName(), st)}, nil
}

// RemoveTopic implements AdminService.RemoveTopic.
func (s *Service) RemoveTopic(ctx context.Context, req *forestbusv1.RemoveTopicRequest) (*forestbusv1.RemoveTopicResponse, error) {
	if err := s.registry.Remove(ctx, req.GetName()); err != nil {
		return nil, err
	}
	return &forestbusv1.RemoveTopicResponse{}, nil
}

// ListTopics implements AdminService.ListTopics.
func (s *Service) ListTopics(ctx context.Context, _ *forestbusv1.ListTopicsRequest) (*forestbusv1.ListTopicsResponse, error) {
	// After the metadata read barrier: a node that has not yet applied an
	// update acknowledged through another node (or its forward to the
	// leader) answered the old settings, and fbctl topic update, which
	// sends every setting back, undid the update.
	topics, err := s.registry.ListConfirmed(ctx)
	if err != nil {
		return nil, err
	}
	resp := &forestbusv1.ListTopicsResponse{}
	for _, t := range topics {
		resp.Topics = append(resp.Topics, topicProto(t.Name, t.Settings))
	}
	return resp, nil
}

func nodeProto(m topic.Member) *forestbusv1.Node {
	return &forestbusv1.Node{Name: m.Name, Address: m.Address, Id: m.ID, Learner: m.Learner}
}

// AddNode implements AdminService.AddNode.
func (s *Service) AddNode(ctx context.Context, req *forestbusv1.AddNodeRequest) (*forestbusv1.AddNodeResponse, error) {
	m, err := s.registry.AddNode(ctx, req.GetName(), req.GetAddress())
	if err != nil {
		return nil, err
	}
	resp := &forestbusv1.AddNodeResponse{}
	for _, mm := range s.registry.Members() { // Members tells learners
		resp.Nodes = append(resp.Nodes, nodeProto(mm))
		if mm.ID == m.ID {
			resp.Node = resp.Nodes[len(resp.Nodes)-1]
		}
	}
	if resp.Node == nil {
		resp.Node = nodeProto(m) // removed again meanwhile
	}
	return resp, nil
}

// RemoveNode implements AdminService.RemoveNode.
func (s *Service) RemoveNode(ctx context.Context, req *forestbusv1.RemoveNodeRequest) (*forestbusv1.RemoveNodeResponse, error) {
	if err := s.registry.RemoveNode(ctx, req.GetName()); err != nil {
		return nil, err
	}
	return &forestbusv1.RemoveNodeResponse{}, nil
}
