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
	if e.shut.Load() {
		return nil, ErrEngineClosed
	}
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

func (e *portableEngine) writeLoop(c *Conn) {
	defer e.wg.Done()
	var bufs net.Buffers
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
			bufs = append(bufs[:0], c.queue[c.qhead:]...)
			bufs[0] = bufs[0][c.qoff:]
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

func (e *portableEngine) flushLocked(c *Conn) { poke(c.pw) }

// wakeLocked interrupts the reader's blocking Read.
func (e *portableEngine) wakeLocked(c *Conn) {
	_ = c.nc.SetReadDeadline(time.Unix(1, 0))
	poke(c.pw)
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
	if !e.shut.CompareAndSwap(false, true) {
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
