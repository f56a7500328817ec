package topic

import (
	"context"
	"math"
	"time"
)

// EnforceRetention makes one retention round on the topics this node
// leads: when a topic's oldest whole segments are older than its retention
// age, or it holds more than its retention bytes, the leader replicates a
// cut through the topic's raft group (replica.Group.Truncate), so every node
// drops the same prefix and reports the same first ID. Only committed whole
// segments are cut, never the active one. Topic settings of 0 fall back to
// the registry's defaults.
func (r *Registry) EnforceRetention(ctx context.Context, now time.Time) {
	for _, t := range r.List() {
		g := t.Group
		if g == nil || g.Leader() != r.cfg.NodeID {
			continue
		}
		age := retentionAge(t.Settings.RetentionSeconds)
		if age == 0 {
			age = r.cfg.DefaultRetention
		}
		maxBytes := t.Settings.RetentionBytes
		if maxBytes == 0 {
			maxBytes = r.cfg.DefaultRetentionBytes
		}
		if age <= 0 && maxBytes <= 0 {
			continue
		}
		segs := g.Log().Segments()
		var total int64
		for _, s := range segs {
			total += s.Bytes
		}
		applied := g.Applied()
		cut := 0
		for i := 0; i < len(segs)-1; i++ {
			s := segs[i]
			if s.LastIndex > applied {
				break
			}
			old := age > 0 && now.Sub(s.Modified) > age
			big := maxBytes > 0 && total > maxBytes
			if !old && !big {
				break
			}
			total -= s.Bytes
			cut = i + 1
		}
		if cut == 0 {
			continue
		}
		keep := segs[cut]
		if keep.FirstID <= g.Log().FirstID() {
			continue
		}
		if err := g.Truncate(ctx, keep.FirstIndex, keep.FirstID); err != nil && ctx.Err() == nil {
			r.log.Warn("retention cut not replicated", "topic", t.Name, "err", err)
			continue
		}
		r.log.Info("retention", "topic", t.Name, "first_id", keep.FirstID)
	}
}

// retentionAge is a retention of sec seconds as a duration; one too long
// for a duration (stored before Validate refused it) keeps messages for
// ever instead of wrapping around to a short or negative age.
func retentionAge(sec int64) time.Duration {
	if sec > MaxRetentionSeconds {
		return math.MaxInt64
	}
	return time.Duration(sec) * time.Second
}
