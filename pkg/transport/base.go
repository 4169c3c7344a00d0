package transport

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/elchat/elchat/pkg/closecode"
)

// closeGrace bounds how long a connection waits for the peer to answer
// our close frame before it is torn down anyway.
const closeGrace = 5 * time.Second

type counters struct {
	conns, framesIn, framesOut, bytesIn, bytesOut, slow, idle, proto atomic.Int64
}

// base is the engine-independent part of an engine: the connection
// registry, counters, the coarse clock and the reaper.
type base struct {
	opts  Options      // immutable
	log   *slog.Logger // immutable
	drv   driver       // immutable
	grace int64        // immutable; seconds
	clock atomic.Int64 // unix seconds, advanced by the reaper
	gen   atomic.Uint32
	st    counters
	reg   registry

	// addMu orders Add against Shutdown. An Add holds it shared from its
	// look at shut until its connection is fully set up (registered,
	// given its session, armed); Shutdown takes it exclusively to set
	// shut. So every connection Shutdown drains or tears down has its
	// session, and none is set up behind the drain's back. Lock order:
	// addMu, then Conn.mu or registry.mu (never both; see the package
	// doc).
	addMu sync.RWMutex
	shut  bool // guarded by addMu; set by Shutdown, Add refuses afterwards

	reaperStop chan struct{} // immutable; closed to stop the reaper
	reaperDone chan struct{} // immutable; closed when the reaper returned
}

func (b *base) init(opts Options, drv driver) {
	b.opts, b.log, b.drv = opts, opts.Logger, drv
	b.grace = int64(closeGrace / time.Second)
	b.clock.Store(time.Now().Unix())
	b.reaperStop = make(chan struct{})
	b.reaperDone = make(chan struct{})
	go b.reap()
}

// now is the coarse clock: reading it costs an atomic load instead of a
// time.Now per frame.
func (b *base) now() int64 { return b.clock.Load() }

func (b *base) Len() int { return int(b.st.conns.Load()) }

func (b *base) Stats() Stats {
	return Stats{
		Conns:               b.st.conns.Load(),
		FramesIn:            b.st.framesIn.Load(),
		FramesOut:           b.st.framesOut.Load(),
		BytesIn:             b.st.bytesIn.Load(),
		BytesOut:            b.st.bytesOut.Load(),
		SlowConsumerCloses:  b.st.slow.Load(),
		IdleCloses:          b.st.idle.Load(),
		ProtocolErrorCloses: b.st.proto.Load(),
	}
}

// beginAdd admits an Add unless Shutdown began; a true return must be
// paired with endAdd once the connection is set up or refused. newSession
// runs in between, so it must not call Shutdown.
func (b *base) beginAdd() bool {
	b.addMu.RLock()
	if b.shut {
		b.addMu.RUnlock()
		return false
	}
	return true
}

func (b *base) endAdd() { b.addMu.RUnlock() }

// closeAdds refuses every Add from now on, after waiting for those under
// way. It reports false when Shutdown already ran.
func (b *base) closeAdds() bool {
	b.addMu.Lock()
	defer b.addMu.Unlock()
	if b.shut {
		return false
	}
	b.shut = true
	return true
}

// register makes c known to the reaper and to Len.
func (b *base) register(c *Conn) {
	c.b = b
	c.gen = b.gen.Add(1)
	c.lastRecv.Store(b.now())
	b.reg.add(c)
	b.st.conns.Add(1)
}

func (b *base) unregister(c *Conn) {
	b.reg.remove(c)
	b.st.conns.Add(-1)
}

func secondsCeil(d time.Duration) int64 {
	s := int64((d + time.Second - 1) / time.Second)
	if s < 1 {
		s = 1
	}
	return s
}

// reap is the engine's only timer: it scans all connections for idle
// peers, stalled writers and unanswered closes, so connections need no
// timers of their own.
func (b *base) reap() {
	defer close(b.reaperDone)
	tick := min(b.opts.IdleTimeout, b.opts.WriteTimeout) / 4
	tick = max(min(tick, time.Second), 50*time.Millisecond)
	t := time.NewTicker(tick)
	defer t.Stop()
	var idle, slow, kill []*Conn
	for {
		select {
		case <-b.reaperStop:
			return
		case now := <-t.C:
			b.clock.Store(now.Unix())
			idle, slow, kill = b.scan(now.Unix(), idle[:0], slow[:0], kill[:0])
			for _, c := range idle {
				b.st.idle.Add(1)
				c.Close(closecode.GoingAway, "idle timeout")
			}
			for _, c := range slow {
				b.st.slow.Add(1)
				c.kill()
			}
			for _, c := range kill {
				c.kill()
			}
			clear(idle)
			clear(slow)
			clear(kill)
		}
	}
}

func (b *base) scan(now int64, idle, slow, kill []*Conn) ([]*Conn, []*Conn, []*Conn) {
	idleS := secondsCeil(b.opts.IdleTimeout)
	writeS := secondsCeil(b.opts.WriteTimeout)
	// Whole-second timestamps: requiring "more than" the limit means a
	// connection is never reaped early, at most a second and a tick late.
	b.reg.mu.RLock()
	for _, c := range b.reg.slots {
		if c == nil {
			continue
		}
		f := c.flags.Load()
		if f&(fDead|fClosed) != 0 {
			continue
		}
		if stall := c.stallAt.Load(); stall != 0 && now-stall > writeS {
			slow = append(slow, c)
			continue
		}
		if f&fClosing != 0 {
			if now-c.closeAt.Load() > b.grace {
				kill = append(kill, c)
			}
			continue
		}
		// A paused peer may well be silent because we stopped reading
		// it; ResumeReads restarts its idle clock.
		if f&fPaused == 0 && now-c.lastRecv.Load() > idleS {
			idle = append(idle, c)
		}
	}
	b.reg.mu.RUnlock()
	return idle, slow, kill
}

func (b *base) stopReaper() {
	close(b.reaperStop)
	<-b.reaperDone
}

// drain closes every connection and waits until all are gone. When ctx
// ends first, the rest are killed and given a moment to tear down.
func (b *base) drain(ctx context.Context) error {
	b.closeAll()
	poll := time.NewTicker(10 * time.Millisecond)
	defer poll.Stop()
	for i := 1; ; i++ {
		if b.st.conns.Load() == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			for _, c := range b.reg.snapshot(nil) {
				c.kill()
			}
			deadline := time.Now().Add(time.Second)
			for b.st.conns.Load() > 0 && time.Now().Before(deadline) {
				time.Sleep(5 * time.Millisecond)
			}
			return ctx.Err()
		case <-poll.C:
			if i%100 == 0 {
				// Again every second: a Close that found a connection
				// mid-turn is retried (no Add can run any more).
				b.closeAll()
			}
		}
	}
}

func (b *base) closeAll() {
	for _, c := range b.reg.snapshot(nil) {
		c.Close(closecode.GoingAway, "server shutdown")
	}
}

// registry holds the live connections in a slice, so the reaper scans
// memory linearly and the poller finds a connection by slot index.
type registry struct {
	mu    sync.RWMutex
	slots []*Conn // guarded by mu; nil marks a free slot
	free  []int32 // guarded by mu
}

func (r *registry) add(c *Conn) {
	r.mu.Lock()
	var i int32
	if n := len(r.free); n > 0 {
		i = r.free[n-1]
		r.free = r.free[:n-1]
	} else {
		i = int32(len(r.slots))
		r.slots = append(r.slots, nil)
	}
	r.slots[i] = c
	c.slot = i
	r.mu.Unlock()
}

func (r *registry) remove(c *Conn) {
	r.mu.Lock()
	if i := c.slot; i >= 0 && int(i) < len(r.slots) && r.slots[i] == c {
		r.slots[i] = nil
		r.free = append(r.free, i)
		c.slot = -1
	}
	r.mu.Unlock()
}

func (r *registry) get(i int32) *Conn {
	r.mu.RLock()
	var c *Conn
	if i >= 0 && int(i) < len(r.slots) {
		c = r.slots[i]
	}
	r.mu.RUnlock()
	return c
}

func (r *registry) snapshot(dst []*Conn) []*Conn {
	r.mu.RLock()
	for _, c := range r.slots {
		if c != nil {
			dst = append(dst, c)
		}
	}
	r.mu.RUnlock()
	return dst
}
