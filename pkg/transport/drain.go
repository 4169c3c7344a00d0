package transport

import (
	"context"
	"time"
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
	const tick = 100 * time.Millisecond
	batches := max(int(spread/tick), 1)
	per := (len(conns) + batches - 1) / batches
	t := time.NewTicker(tick)
	defer t.Stop()
	for len(conns) > 0 {
		n := min(per, len(conns))
		for _, c := range conns[:n] {
			c.Close(code, reason)
		}
		conns = conns[n:]
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
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
