package transport

import (
	"context"
	"errors"
	"net"
	"os"
	"sync"
	"time"
)

// portableBufSize is the reader goroutine's buffer, the usual bufio size.
const portableBufSize = 4 << 10

// portableEngine serves each connection with a reader goroutine, which
// owns the read side exactly like an epoll worker does, and a writer
// goroutine that drains the queue with blocking, deadline-bounded writes.
type portableEngine struct {
	base
	wg sync.WaitGroup
}

func newPortable(opts Options) *portableEngine {
	e := &portableEngine{}
	e.base.init(opts, e)
	return e
}

func (e *portableEngine) Add(nc net.Conn, newSession func(*Conn) Session) (*Conn, error) {
	if !e.beginAdd() {
		return nil, ErrEngineClosed
	}
	defer e.endAdd()
	c := &Conn{nc: nc, pw: make(chan struct{}, 1)}
	e.register(c)
	c.sess = newSession(c)
	e.wg.Add(2)
	go e.readLoop(c)
	go e.writeLoop(c)
	return c, nil
}

func (e *portableEngine) readLoop(c *Conn) {
	defer e.wg.Done()
	scratch := make([]byte, portableBufSize)
	for c.flags.Load()&fDead == 0 {
		if readsPaused(c.flags.Load()) {
			c.waitResume()
			continue
		}
		if c.held {
			c.afterRead(scratch, 0) // what a pause held back comes before new input
			if c.readerShouldStop() {
				break
			}
			continue
		}
		n, err := c.nc.Read(c.readBuf(scratch))
		if n > 0 {
			c.afterRead(scratch, n)
		}
		if err != nil || c.readerShouldStop() {
			break
		}
	}
	c.teardown()
}

// waitResume blocks the reader goroutine while reads are paused; resume,
// close and kill wake it.
func (c *Conn) waitResume() {
	c.mu.Lock()
	if !readsPaused(c.flags.Load()) || c.flags.Load()&fDead != 0 {
		c.mu.Unlock()
		return
	}
	if c.pr == nil {
		c.pr = make(chan struct{}, 1)
	}
	ch := c.pr
	c.mu.Unlock()
	<-ch
}

// writeBatch bounds the frames one writev takes, and with it the scratch
// the writer keeps.
const writeBatch = 64

func (e *portableEngine) writeLoop(c *Conn) {
	defer e.wg.Done()
	var bufs net.Buffers
	// hdrs holds copies of the headers being written: the writer writes
	// without Conn.mu, and the queue's entries must not be read then.
	var hdrs []byte
	for range c.pw {
		for {
			c.mu.Lock()
			if c.flags.Load()&(fDead|fClosed) != 0 {
				c.mu.Unlock()
				return
			}
			if c.pendingLocked() == 0 {
				c.drainedLocked()
				c.mu.Unlock()
				break
			}
			batch := min(c.pendingLocked(), writeBatch)
			if hdrs == nil {
				hdrs = make([]byte, 0, writeBatch*maxHeader)
			}
			hdrs, bufs = hdrs[:0], bufs[:0]
			for i := range batch {
				h, p := c.unsentLocked(i)
				if len(h) > 0 {
					start := len(hdrs)
					hdrs = append(hdrs, h...) // never grows: cap fits writeBatch headers
					bufs = append(bufs, hdrs[start:])
				}
				if len(p) > 0 {
					bufs = append(bufs, p)
				}
			}
			c.mu.Unlock()

			_ = c.nc.SetWriteDeadline(time.Now().Add(e.opts.WriteTimeout))
			wb := bufs // WriteTo consumes its receiver
			n, err := wb.WriteTo(c.nc)
			clear(bufs)

			c.mu.Lock()
			if c.flags.Load()&(fDead|fClosed) != 0 {
				c.mu.Unlock()
				return
			}
			c.consumeWrittenLocked(int(n))
			if err != nil {
				if errors.Is(err, os.ErrDeadlineExceeded) {
					e.st.slow.Add(1)
				}
				c.killLocked()
				c.mu.Unlock()
				return
			}
			c.mu.Unlock()
		}
	}
}

// writeNowLocked writes nothing: only the writer goroutine writes, with
// blocking writes Send must not wait for.
func (e *portableEngine) writeNowLocked(*Conn, qent) int { return 0 }

func (e *portableEngine) flushLocked(c *Conn) { poke(c.pw) }

// wakeLocked interrupts the reader's blocking Read, or its wait for a
// resume.
func (e *portableEngine) wakeLocked(c *Conn) {
	_ = c.nc.SetReadDeadline(time.Unix(1, 0))
	poke(c.pw)
	c.pokeReaderLocked()
}

// pauseLocked has nothing to do: the reader checks fPaused before every
// Read, and the parser before every frame.
func (e *portableEngine) pauseLocked(*Conn) {}

func (e *portableEngine) resumeLocked(c *Conn) { c.pokeReaderLocked() }

// pokeReaderLocked wakes a reader waiting out a pause. The channel goes
// with the wake-up: the reader took its own reference to it.
func (c *Conn) pokeReaderLocked() {
	if c.pr != nil {
		poke(c.pr)
		c.pr = nil
	}
}

func (e *portableEngine) shutWriteLocked(c *Conn) {
	if cw, ok := c.nc.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
}

func (e *portableEngine) detach(c *Conn) { poke(c.pw) }

func poke(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

func (e *portableEngine) Shutdown(ctx context.Context) error {
	if !e.closeAdds() {
		return ErrEngineClosed
	}
	err := e.drain(ctx)
	e.stopReaper()
	done := make(chan struct{})
	go func() { e.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		if err == nil {
			err = ctx.Err()
		}
	}
	return err
}
