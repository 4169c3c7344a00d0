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

// BusDown and BusUp are what the bus handler does on an outage and its
// end, with the delays the test picks.
func (h *Hub) BusDown(lastAlive time.Time) { h.busDown(lastAlive) }

func (h *Hub) BusUp(ctx context.Context, delay, spread time.Duration) int {
	return h.busUp(ctx, delay, spread)
}

// WavePending reports whether a rejoin wave is scheduled and not started.
func (h *Hub) WavePending() bool {
	h.resyncMu.Lock()
	defer h.resyncMu.Unlock()
	return h.waveAt > time.Now().UnixNano()
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

// AsBusHandler is the hub as its bus sees it.
func (h *Hub) AsBusHandler() BusHandler { return (*busHandler)(h) }

// QuickMessageParams and JSONMessageParams expose the two new_message
// payload readers to the fuzz test.
var (
	QuickMessageParams = quickMessageParams
	JSONMessageParams  = jsonMessageParams
)

// EncodeMessage exposes the message encoder to its tests.
var EncodeMessage = encodeMessage
