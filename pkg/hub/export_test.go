package hub

import (
	"context"
	"time"
)

// ResyncRequested exposes what the bus handler does on another node's
// announcement, with the delays the test picks.
func (h *Hub) ResyncRequested(ctx context.Context, watermark int64, delay, spread time.Duration) int {
	return h.resyncRequested(ctx, watermark, delay, spread)
}

// Subscribers counts topic's local subscribers.
func (h *Hub) Subscribers(topic string) int {
	s := h.shard(topic)
	s.mu.RLock()
	defer s.mu.RUnlock()
	if subs := s.topics[topic]; subs != nil {
		return len(subs.clients)
	}
	return 0
}
