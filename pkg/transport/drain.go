package transport

import (
	"context"
	"time"

	"github.com/elchat/elchat/internal/pace"
)

// Drain closes every connection of e with code and reason in batches
// spread evenly over spread, so that clients reconnecting to other nodes
// arrive as a steady stream rather than a thundering herd. It returns when
// every connection is gone or ctx ends. Connections added meanwhile are
// closed in the last batch; the caller stops accepting first.
func Drain(ctx context.Context, e Engine, code int, reason string, spread time.Duration) {
	b, ok := e.(interface{ snapshot([]*Conn) []*Conn })
	if !ok {
		return
	}
	conns := b.snapshot(nil)
	if pace.Spread(ctx, len(conns), spread, func(i int) { conns[i].Close(code, reason) }) < len(conns) {
		return
	}
	t := time.NewTicker(pace.Tick)
	defer t.Stop()
	for _, c := range b.snapshot(nil) {
		c.Close(code, reason)
	}
	for e.Len() > 0 {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (b *base) snapshot(dst []*Conn) []*Conn { return b.reg.snapshot(dst) }
