//go:build linux

package transport

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/elchat/elchat/internal/rawsys"
)

const (
	readEvents = unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT

	readBufSize  = 16 << 10
	readsPerTurn = 4 // bounds one connection's turn on a worker
	// maxIovecs bounds one writev: 64 frames, each a header and a
	// payload iovec.
	maxIovecs = 128
)

// bufPool holds the read buffers: a worker borrows one only while it reads.
var bufPool = sync.Pool{New: func() any { b := make([]byte, readBufSize); return &b }}

// epollEngine parks idle connections on an epoll instance. Every
// registration is EPOLLONESHOT: an event disarms it, the poller hands the
// connection to a worker (setting fInWorker), and the worker re-arms it
// when done. The exceptions re-arm a connection no worker holds, always
// with Conn.mu held: Send arming EPOLLOUT, and PauseReads/ResumeReads
// dropping or restoring EPOLLIN. A resulting duplicate event finds
// fInWorker set and is dropped, as the holder re-arms level-triggered
// readiness anyway.
//
// A paused connection is registered without EPOLLIN and EPOLLRDHUP (only
// EPOLLOUT while writes are pending), so that neither unread data nor a
// half-close wakes it over and over; EPOLLHUP and EPOLLERR, which epoll
// always reports, still reach it, and that is how a kill (shutdown both
// ways) tears down a paused connection.
//
// The poller does not block in epoll_wait. The epoll fd is itself
// registered with Go's network poller (os.NewFile on a non-blocking fd),
// and the poller goroutine parks there like any goroutine waiting on a
// socket, draining the instance with zero-timeout epoll_waits when the
// runtime reports it readable. A blocking epoll_wait would hold a thread
// in a syscall: with one P the runtime hands the P to another thread to
// keep polling the network, and each wake-up then costs thread hand-offs
// (futex wake-ups and a scheduler pass on both sides), which on a node of
// mostly idle sockets is most of what a heartbeat costs.
type epollEngine struct {
	base
	epfd int             // immutable; owned by epf, which closes it
	epf  *os.File        // immutable; epfd in Go's network poller
	eprc syscall.RawConn // immutable; epf's, for the poller's waits
	evfd int             // immutable; an eventfd that wakes the poller to stop
	work chan job        // poller → workers; closed by the poller when it stops
	wg   sync.WaitGroup
}

// job is a connection handed to a worker with the events that woke it.
type job struct {
	c  *Conn
	ev uint32
}

func newEpoll(opts Options) (Engine, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("transport: epoll_create1: %w", err)
	}
	// Non-blocking, so that os.NewFile hands the fd to the runtime's
	// poller; epoll_wait itself only heeds its timeout.
	if err := unix.SetNonblock(epfd, true); err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("transport: epoll fd: %w", err)
	}
	epf := os.NewFile(uintptr(epfd), "epoll")
	// NewFile does not say when the runtime refused the fd (ENOSPC past
	// fs.epoll.max_user_watches, ENOMEM); a file outside the runtime's
	// poller has no deadlines, and the poller could never park on it.
	if err := epf.SetReadDeadline(time.Time{}); err != nil {
		epf.Close()
		return nil, fmt.Errorf("transport: epoll fd not pollable by the runtime: %w", err)
	}
	eprc, err := epf.SyscallConn()
	if err != nil {
		epf.Close()
		return nil, fmt.Errorf("transport: epoll fd: %w", err)
	}
	evfd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		epf.Close()
		return nil, fmt.Errorf("transport: eventfd: %w", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: -1}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, evfd, &ev); err != nil {
		epf.Close()
		unix.Close(evfd)
		return nil, fmt.Errorf("transport: epoll_ctl eventfd: %w", err)
	}
	e := &epollEngine{epfd: epfd, epf: epf, eprc: eprc, evfd: evfd, work: make(chan job, max(opts.Workers*4, 64))}
	e.base.init(opts, e)
	e.wg.Add(1 + opts.Workers)
	go e.poll()
	for range opts.Workers {
		w := &worker{e: e}
		w.readFn = w.read // one method value per worker, not a closure per read
		go w.run()
	}
	return e, nil
}

func (e *epollEngine) Add(nc net.Conn, newSession func(*Conn) Session) (*Conn, error) {
	if !e.beginAdd() {
		return nil, ErrEngineClosed
	}
	defer e.endAdd()
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return nil, errors.New("transport: epoll engine needs a syscall.Conn")
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil, err
	}
	fd := -1
	if err := rc.Control(func(f uintptr) { fd = int(f) }); err != nil {
		return nil, err
	}
	c := &Conn{nc: nc, rc: rc, fd: int32(fd)}
	// Until it is registered, Add holds c as a worker would: a Send,
	// PauseReads or Close from newSession must not re-arm a registration
	// that does not exist yet, and is settled below instead.
	c.flags.Store(fInWorker)
	e.register(c)
	c.sess = newSession(c)
	// Registering under mu orders the setup above before the poller's
	// hand-off, which also locks mu (the kernel's ordering is invisible
	// to the race detector).
	c.mu.Lock()
	if c.pendingLocked() > 0 && c.flags.Load()&fWantWrite == 0 {
		e.flushLocked(c)
	}
	c.clearLocked(fInWorker)
	ev := unix.EpollEvent{Events: e.eventsLocked(c), Fd: c.slot, Pad: int32(c.gen)}
	err = rawsys.EpollCtl(e.epfd, unix.EPOLL_CTL_ADD, fd, &ev)
	if err == nil {
		c.endTurnLocked()
	}
	c.mu.Unlock()
	if err != nil {
		e.unregister(c)
		return nil, fmt.Errorf("transport: epoll_ctl add: %w", err)
	}
	return c, nil
}

// eventsLocked is what c's oneshot registration waits for now: input
// unless paused, output while the socket refused bytes. Frames a pause
// held back are parsed at the next turn even if no input comes: EPOLLOUT,
// nearly always ready, brings that turn about.
func (e *epollEngine) eventsLocked(c *Conn) uint32 {
	f := c.flags.Load()
	var ev uint32 = unix.EPOLLONESHOT
	if !readsPaused(f) {
		ev = readEvents
		if c.held {
			ev |= unix.EPOLLOUT
		}
	}
	if f&fWantWrite != 0 {
		ev |= unix.EPOLLOUT
	}
	return ev
}

// rearmLocked re-enables c's oneshot registration.
func (e *epollEngine) rearmLocked(c *Conn) {
	ev := unix.EpollEvent{Events: e.eventsLocked(c), Fd: c.slot, Pad: int32(c.gen)}
	if err := rawsys.EpollCtl(e.epfd, unix.EPOLL_CTL_MOD, int(c.fd), &ev); err != nil {
		e.log.Warn("transport: epoll_ctl mod", "err", err)
		c.killLocked()
	}
}

// poll waits for events and hands each to a worker, except a lone event,
// which it handles itself: most wake-ups of a node full of idle sockets
// are one heartbeat, and handing it over cost a goroutine wake-up. A
// handler never blocks (the Session contract), so the poller is back
// waiting after one bounded turn; events arriving meanwhile wait in the
// kernel for it.
//
// The wait is the runtime's: eprc.Read calls wait, and when it returns
// false (a short batch), parks the goroutine until the epoll fd is
// readable again. Nothing is lost between the batch and the park: the
// kernel signals the runtime's registration of the fd each time it queues
// an event on the instance, even one added to a non-empty ready list, and
// eprc.Read clears the runtime's readiness only once, before its first
// call of wait, so a signal that comes while wait runs makes the park
// return at once (at worst into one empty epoll_wait).
//
// Two costs come with the nesting. Every EPOLL_CTL_ADD to an instance
// that is itself watched takes the kernel's global epoll nesting lock and
// a reverse path check; the connect figures in bench/README.md include
// it. And with every P busy, the runtime polls the network only when a P
// runs out of work or from sysmon (every 10 ms at most), where a thread
// blocked in epoll_wait came back by itself; ordinary Go sockets live
// with the same.
func (e *epollEngine) poll() {
	defer e.wg.Done()
	defer close(e.work)
	self := &worker{e: e}
	self.readFn = self.read
	evs := make([]unix.EpollEvent, 256)
	wait := func(fd uintptr) bool {
		for {
			n, err := rawsys.EpollReady(int(fd), evs)
			if err != nil {
				e.log.Error("transport: epoll_wait", "err", err)
				return true
			}
			if e.dispatch(self, evs[:n]) {
				return true // the eventfd: Shutdown
			}
			if n < len(evs) {
				return false // drained: park until the next edge
			}
		}
	}
	if err := e.eprc.Read(wait); err != nil {
		e.log.Error("transport: epoll poller", "err", err)
	}
}

// dispatch hands the connections of evs to workers, or handles a lone
// one on self. It reports whether Shutdown's eventfd fired.
func (e *epollEngine) dispatch(self *worker, evs []unix.EpollEvent) (stop bool) {
	for i := range evs {
		if evs[i].Fd < 0 {
			return true
		}
		c := e.reg.get(evs[i].Fd)
		if c == nil || c.gen != uint32(evs[i].Pad) {
			continue // the slot was reused since the event was queued
		}
		c.mu.Lock()
		if c.flags.Load()&(fInWorker|fClosed) != 0 {
			c.mu.Unlock()
			continue
		}
		c.setLocked(fInWorker)
		c.mu.Unlock()
		if len(evs) == 1 {
			self.handle(c, evs[i].Events)
			continue
		}
		e.work <- job{c, evs[i].Events}
	}
	return false
}

// worker holds the per-goroutine state for non-blocking reads, so reading
// allocates nothing. A turn's syscalls are raw (internal/rawsys): they
// never block, and the runtime's bookkeeping woke a sleeping sysmon.
type worker struct {
	e      *epollEngine
	readFn func(fd uintptr) bool
	dst    []byte
	n      int
	err    error
}

func (w *worker) read(fd uintptr) bool {
	w.n, w.err = rawsys.Read(int(fd), w.dst)
	if w.err != nil {
		w.n = -1
	}
	return true // never let the runtime park us: we are not waiting
}

func (w *worker) run() {
	defer w.e.wg.Done()
	for j := range w.e.work {
		w.handle(j.c, j.ev)
	}
}

// handle gives c one turn: finish pending writes, read what is there
// without blocking (nothing, if paused), deliver complete frames, then
// park c again.
func (w *worker) handle(c *Conn, ev uint32) {
	e := w.e
	c.mu.Lock()
	f := c.flags.Load()
	// Hang-up or error while paused: nobody will read the socket to
	// find out, and the condition is level-triggered, so re-arming would
	// only bring it back at once. Nothing useful can be written to such a
	// socket any more: tear it down.
	if f&fDead != 0 || (readsPaused(f) && ev&(unix.EPOLLHUP|unix.EPOLLERR) != 0) {
		c.mu.Unlock()
		c.teardown()
		return
	}
	if f&fWantWrite != 0 {
		e.flushLocked(c)
	}
	c.mu.Unlock()

	bp := bufPool.Get().(*[]byte)
	scratch := *bp
	gone := false
	if c.held && !readsPaused(c.flags.Load()) {
		c.afterRead(scratch, 0) // what a pause held back comes before new input
	}
	for range readsPerTurn {
		if f := c.flags.Load(); f&fDead != 0 || readsPaused(f) {
			break
		}
		w.dst = c.readBuf(scratch)
		err := c.rc.Read(w.readFn)
		if err == nil {
			err = w.err
		}
		if err == unix.EAGAIN {
			break
		}
		if err != nil || w.n <= 0 {
			gone = true // EOF, reset, or closed
			break
		}
		full := w.n == len(w.dst)
		c.afterRead(scratch, w.n)
		if !full {
			break
		}
	}
	w.dst = nil
	bufPool.Put(bp)
	if gone || c.readerShouldStop() {
		c.teardown()
		return
	}
	c.mu.Lock()
	if c.flags.Load()&fDead != 0 {
		c.mu.Unlock()
		c.teardown()
		return
	}
	if c.pendingLocked() > 0 && c.flags.Load()&fWantWrite == 0 {
		e.flushLocked(c) // what SendLater queued during this turn
	}
	c.clearLocked(fInWorker)
	c.endTurnLocked()
	e.rearmLocked(c)
	c.mu.Unlock()
}

// writer holds the state of one non-blocking write; pooled so that a Send
// allocates nothing.
type writer struct {
	iov []unix.Iovec
	hdr [maxHeader]byte // the header of a frame written before it is queued
	n   int
	err error
	fn  func(fd uintptr) bool
}

func (w *writer) add(b []byte) {
	if len(b) > 0 {
		v := unix.Iovec{Base: &b[0]}
		v.SetLen(len(b))
		w.iov = append(w.iov, v)
	}
}

// do runs the prepared writev on c's socket and recycles w. It returns
// the bytes written and the error: EAGAIN when the socket is full.
func (w *writer) do(c *Conn) (int, error) {
	err := c.rc.Write(w.fn)
	if err == nil {
		err = w.err
	}
	n := w.n
	clear(w.iov) // drop the pointers into payloads before pooling
	w.iov, w.err = w.iov[:0], nil
	writerPool.Put(w)
	return n, err
}

var writerPool = sync.Pool{New: func() any {
	w := &writer{iov: make([]unix.Iovec, 0, maxIovecs)}
	w.fn = w.write
	return w
}}

func (w *writer) write(fd uintptr) bool {
	w.n, w.err = rawsys.Writev(int(fd), w.iov)
	return true // never park: EAGAIN means EPOLLOUT takes over
}

// writeNowLocked writes e, the next frame of c's empty queue, header and
// shared payload as two iovecs of one writev.
func (e *epollEngine) writeNowLocked(c *Conn, q qent) int {
	w := writerPool.Get().(*writer)
	w.hdr = q.hdr
	w.add(w.hdr[:q.hlen])
	w.add(q.p)
	n, err := w.do(c)
	switch {
	case err == unix.EAGAIN:
		return 0
	case err != nil:
		return -1
	}
	return n
}

// flushLocked writes as much of the queue as the socket takes right now,
// many frames per writev (each a header and a payload iovec, so shared
// payloads are never copied), and arms EPOLLOUT for the rest. A partial
// write can end anywhere, inside a header too: consumeWrittenLocked and
// unsentLocked keep the offset across both parts of a frame.
func (e *epollEngine) flushLocked(c *Conn) {
	for c.pendingLocked() > 0 {
		w := writerPool.Get().(*writer)
		for i := range c.pendingLocked() {
			if len(w.iov)+2 > maxIovecs {
				break
			}
			h, p := c.unsentLocked(i)
			w.add(h)
			w.add(p)
		}
		n, err := w.do(c)
		if n > 0 {
			c.consumeWrittenLocked(n)
		}
		if err == unix.EAGAIN {
			break
		}
		if err != nil {
			c.killLocked()
			return
		}
	}
	f := c.flags.Load()
	if c.pendingLocked() == 0 {
		c.clearLocked(fWantWrite)
		c.drainedLocked()
		return
	}
	if f&fWantWrite == 0 {
		c.setLocked(fWantWrite)
		if f&fInWorker == 0 {
			// Parked: arm EPOLLOUT now. A worker holding c re-arms with
			// EPOLLOUT itself when it finishes.
			e.rearmLocked(c)
		}
	}
}

// wakeLocked shuts the socket down both ways: the registration reports
// HUP, so a worker runs the teardown in order with any reading.
func (e *epollEngine) wakeLocked(c *Conn) {
	_ = unix.Shutdown(int(c.fd), unix.SHUT_RDWR)
}

// pauseLocked drops EPOLLIN from a parked connection's registration; a
// worker holding c sees fPaused, stops reading, and re-arms without it.
func (e *epollEngine) pauseLocked(c *Conn) {
	if c.flags.Load()&fInWorker == 0 {
		e.rearmLocked(c)
	}
}

// resumeLocked restores EPOLLIN on a parked connection. Data that arrived
// while paused is still in the socket, and epoll readiness is
// level-triggered, so the EPOLL_CTL_MOD reports it at once; frames the
// parser held back get a turn through EPOLLOUT (see rearmLocked). A
// worker holding c re-arms for input itself when its turn ends.
func (e *epollEngine) resumeLocked(c *Conn) {
	if c.flags.Load()&fInWorker == 0 {
		e.rearmLocked(c)
	}
}

func (e *epollEngine) shutWriteLocked(c *Conn) {
	_ = unix.Shutdown(int(c.fd), unix.SHUT_WR)
}

func (e *epollEngine) detach(c *Conn) {
	_ = rawsys.EpollCtl(e.epfd, unix.EPOLL_CTL_DEL, int(c.fd), nil)
}

func (e *epollEngine) Shutdown(ctx context.Context) error {
	if !e.closeAdds() {
		return ErrEngineClosed
	}
	err := e.drain(ctx)
	one := [8]byte{1} // eventfd adds a native-endian uint64; any non-zero value wakes it
	_, _ = unix.Write(e.evfd, one[:])
	e.wg.Wait()
	e.stopReaper()
	// No worker is left, so tearing the stragglers down here cannot race
	// with their Handle* calls.
	for _, c := range e.reg.snapshot(nil) {
		c.teardown()
	}
	e.epf.Close()
	unix.Close(e.evfd)
	return err
}
