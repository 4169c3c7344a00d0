package node

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/elchat/elchat/pkg/hub"
	"github.com/elchat/elchat/pkg/redisbus"
)

// relayOutages sets the bus's outage callbacks so that they reach the hub.
//
// The bus starts watching Redis inside redisbus.New, before the hub exists
// (the hub needs the bus), so an event can arrive early. The callbacks,
// which the bus runs on goroutines of their own, wait until attach hands
// them the hub and the bus, or return at once after abandon (the node gave
// up or stopped). ctx, given to attach, ends when the node stops.
//
// Temporary: once the hub receives these events itself through the bus's
// Run, this function goes away.
func relayOutages(opts *redisbus.Options, log *slog.Logger) (attach func(ctx context.Context, h *hub.Hub, bus *redisbus.Bus), abandon func()) {
	ready, gone := make(chan struct{}), make(chan struct{})
	var once sync.Once
	// Written before ready is closed, read after.
	var (
		ctx context.Context
		h   *hub.Hub
		b   *redisbus.Bus
	)
	wait := func() bool {
		select {
		case <-ready:
			return true
		case <-gone:
			return false
		}
	}
	// Frames published while Redis is away are lost; the hub makes clients
	// rejoin afterwards and catch up from a watermark taken before the
	// outage.
	opts.OnDown = func() {
		if wait() {
			h.BusDown()
		}
	}
	opts.OnRecover = func() {
		if !wait() {
			return
		}
		n := h.BusUp(ctx, 2*time.Second, 5*time.Second)
		log.Info("clients asked to rejoin after the redis outage", "topics", n)
		// If only this node lost Redis, the others' clients missed its
		// frames without noticing anything: tell them.
		actx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if err := b.AnnounceResync(actx, h.Watermark()); err != nil && ctx.Err() == nil {
			log.Warn("could not announce the resync to the other nodes", "err", err)
		}
	}
	opts.OnResync = func(watermark int64, node string) {
		if !wait() {
			return
		}
		if n := h.ResyncRequested(ctx, watermark, time.Second, 5*time.Second); n > 0 {
			log.Info("clients asked to rejoin: another node lost frames", "node", node, "topics", n)
		}
	}
	attach = func(c context.Context, hh *hub.Hub, bus *redisbus.Bus) {
		ctx, h, b = c, hh, bus
		close(ready)
	}
	abandon = func() { once.Do(func() { close(gone) }) }
	return attach, abandon
}
