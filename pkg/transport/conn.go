package transport

import (
	"encoding/binary"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"unicode/utf8"

	"github.com/gobwas/ws"

	"github.com/elchat/elchat/pkg/closecode"
)

// Connection state bits. They change only with Conn.mu held, but are
// stored atomically so hot paths and the reaper can test them lock-free.
const (
	fInWorker   uint32 = 1 << iota // epoll: a worker (or Add, until registered) owns the read side; the registration is disarmed
	fWantWrite                     // epoll: the queue has bytes the socket refused; EPOLLOUT is wanted
	fClosing                       // our close frame is queued: Send refuses, data frames are dropped
	fFailed                        // protocol error: all further input is discarded
	fPeerClosed                    // the peer's close frame arrived
	fDead                          // tear down at the next chance, without flushing
	fClosed                        // torn down; the socket is closed
	fFinSent                       // write side shut after the close frame left
	fPaused                        // PauseReads: read nothing more from the socket until ResumeReads
	fHeld                          // Hold: SendLater queues until Release, like during a worker's turn
)

// readsPaused reports whether the read side must stop. A closing
// connection reads on regardless: it delivers no more messages, and the
// peer's answer to our close frame must still be seen.
func readsPaused(f uint32) bool { return f&(fPaused|fClosing) == fPaused }

// driver is what differs between the engines. Every method runs with
// Conn.mu held and must neither block nor call into the Session.
type driver interface {
	// writeNowLocked writes what it can of e, the next frame of c's empty
	// queue, without blocking: it returns the bytes written, or -1 if the
	// socket failed. An engine that only writes from its own goroutine
	// returns 0.
	writeNowLocked(c *Conn, e qent) int
	// flushLocked moves queued bytes towards the socket without blocking
	// the caller.
	flushLocked(c *Conn)
	// wakeLocked makes the goroutine that owns c's read side notice fDead
	// promptly; c is not closed yet.
	wakeLocked(c *Conn)
	// pauseLocked and resumeLocked run after fPaused was set or cleared,
	// so that the read side stops or restarts reading the socket.
	pauseLocked(c *Conn)
	resumeLocked(c *Conn)
	// shutWriteLocked half-closes c after the close frame was written.
	shutWriteLocked(c *Conn)
	// detach unhooks c from the engine's machinery before its socket is
	// closed; c is already fClosed.
	detach(c *Conn)
}

// Conn is one served WebSocket connection. It is deliberately small: an
// idle epoll connection is this struct plus Go's net.TCPConn and nothing
// else (no queue, no buffer, no goroutine).
type Conn struct {
	// What the reaper reads of every connection each tick comes first,
	// in one 32-byte block: Conns are 224 bytes, so every Conn starts
	// 32-byte aligned and the block never straddles a cache line. A pass
	// over a node's idle sockets then costs one cache miss per socket.
	lastRecv atomic.Int64  // unix seconds of the last complete frame (or of Add, or of ResumeReads)
	closeAt  atomic.Int64  // unix seconds when fClosing was set
	stallAt  atomic.Int64  // unix seconds since when queued bytes made no progress; 0 when the queue is empty
	flags    atomic.Uint32 // written with mu held; read atomically anywhere
	fd       int32         // immutable; epoll only. Valid while fClosed is unset, which mu protects

	b    *base           // immutable
	nc   net.Conn        // immutable
	sess Session         // immutable once Add has set it, before the first read
	rc   syscall.RawConn // immutable; epoll only
	pw   chan struct{}   // immutable; portable only: wakes the writer goroutine
	// pr wakes the portable reader goroutine that waits out a pause;
	// guarded by mu. It exists only while the reader waits, so a
	// connection that was never paused does not pay for it.
	pr   chan struct{}
	slot int32  // guarded by b.reg.mu
	gen  uint32 // immutable; tells the poller a stale event from a reused slot

	// The read side: touched only by whoever holds it (the epoll worker
	// that set fInWorker, or the portable reader goroutine). Code that
	// checks fInWorker under mu may read it while no worker holds c.
	partial []byte    // bytes of an incomplete frame, or held back by a pause; nil between frames
	msg     []byte    // payload of a fragmented message so far; nil otherwise
	msgOp   ws.OpCode // opcode of the fragmented message in msg; 0 when none
	// held is set when a pause stopped the parser with bytes left in
	// partial that may hold complete frames: they are parsed before the
	// next read, even if the socket has nothing new.
	held bool

	mu     sync.Mutex
	queue  []qent // guarded by mu; frames to write, from qhead on; nil when empty
	qhead  int32  // guarded by mu
	qoff   int32  // guarded by mu; bytes of queue[qhead] (header first, then payload) already written
	qbytes int    // guarded by mu; unwritten bytes in queue, headers included
	// closeAfter is the body of a close frame that Close left for the end
	// of the worker's turn; guarded by mu.
	closeAfter *[]byte
}

func (c *Conn) setLocked(f uint32)   { c.flags.Store(c.flags.Load() | f) }
func (c *Conn) clearLocked(f uint32) { c.flags.Store(c.flags.Load() &^ f) }
func (c *Conn) pendingLocked() int   { return len(c.queue) - int(c.qhead) }

// RemoteAddr is the peer's address.
func (c *Conn) RemoteAddr() net.Addr { return c.nc.RemoteAddr() }

// Send sends msg, one complete text message (UTF-8, a Phoenix JSON
// message), as one text frame. msg may be shared with any number of
// connections and must not change afterwards; the transport never writes
// it. The frame header is the only thing built per connection: the epoll
// engine first tries to write header and payload straight to the socket
// and queues only what the socket refuses, so a fanout to connections that
// keep up allocates nothing per recipient.
//
// Send never blocks and never calls back into the Session. Messages leave
// in the order of the Send calls. If the queue would exceed its bounds
// (headers included), the queue is dropped, the connection is torn down
// and ErrSlowConsumer is returned; on a closing or closed connection it
// returns ErrClosed.
func (c *Conn) Send(msg []byte) error { return c.send(ws.OpText, msg, false) }

// SendLater is Send for messages that answer what the connection's own
// handler is processing: while an epoll worker holds the connection, the
// message is only queued, and the worker writes everything queued in one
// writev when its turn ends, so a reply and the broadcasts it caused
// leave in one system call. Called from anywhere else it is Send.
func (c *Conn) SendLater(msg []byte) error { return c.send(ws.OpText, msg, true) }

// Hold makes SendLater queue without writing until Release, as it does
// while an epoll worker handles the connection's frames: whoever answers
// a request of the connection off the event loop (the hub's request
// stage) holds it, so the reply and the broadcasts the request caused
// leave in one write. Send from anywhere else still writes at once (and
// takes the held frames along, in order). One holder at a time.
func (c *Conn) Hold() {
	c.mu.Lock()
	c.setLocked(fHeld)
	c.mu.Unlock()
}

// Release ends Hold and writes what SendLater queued meanwhile.
func (c *Conn) Release() {
	c.mu.Lock()
	c.clearLocked(fHeld)
	f := c.flags.Load()
	if f&(fInWorker|fWantWrite|fDead|fClosed) == 0 && c.pendingLocked() > 0 {
		c.b.drv.flushLocked(c)
	}
	c.mu.Unlock()
}

func (c *Conn) send(op ws.OpCode, payload []byte, later bool) error {
	e := frameOf(op, payload)
	c.mu.Lock()
	f := c.flags.Load()
	if f&(fClosing|fDead|fClosed) != 0 {
		c.mu.Unlock()
		return ErrClosed
	}
	o := &c.b.opts
	if c.pendingLocked()+1 > o.MaxQueueFrames || c.qbytes+e.size() > o.MaxQueueBytes {
		c.b.st.slow.Add(1)
		c.killLocked()
		c.mu.Unlock()
		return ErrSlowConsumer
	}
	switch {
	case later && f&(fInWorker|fHeld) != 0:
		c.enqueueLocked(e) // the worker's turn or Release flushes
	case c.pendingLocked() == 0:
		// Nothing queued to keep order with: write straight away and
		// queue (which allocates) only the rest the socket refused.
		n := c.b.drv.writeNowLocked(c, e)
		switch {
		case n < 0:
			c.killLocked()
		case n == e.size():
			c.b.st.bytesOut.Add(int64(n))
			c.b.st.framesOut.Add(1)
		default:
			c.enqueueLocked(e)
			c.consumeWrittenLocked(n)
			c.b.drv.flushLocked(c)
		}
	default:
		c.enqueueLocked(e)
		c.b.drv.flushLocked(c)
	}
	c.mu.Unlock()
	return nil
}

// Close queues a close frame with code and reason behind what is already
// queued (it is exempt from the queue bound), flushes, and tears the
// connection down once the peer answers, hangs up, or a grace period
// (5s, enforced by the reaper) passes. It lifts a pause, so that the
// peer's answer is read. Safe from any goroutine, never blocks; only the
// first call has an effect.
//
// If an epoll worker is handling the connection's frames right now, the
// close waits for the end of that turn, so that replies to what the
// client sent (a message being stored, say) still go out before the close
// frame: a draining node answers what it accepted.
func (c *Conn) Close(code int, reason string) {
	body := closeBody(code, reason)
	c.mu.Lock()
	switch {
	case c.flags.Load()&fInWorker == 0:
		c.closeLocked(body)
	case c.closeAfter == nil:
		c.closeAfter = &body
	default:
		// A close already waits for the turn's end: the first one wins,
		// as it does once the close frame is queued.
	}
	c.mu.Unlock()
}

// PauseReads stops reading from the socket: no further message is
// delivered until ResumeReads, not even one already read into the
// engine's buffer (called from HandleText, it is the last message until
// the resume). Writes go on, Close and teardown still work, and the
// reaper does not idle-close a paused connection. Idempotent; safe from
// any goroutine, including the connection's own handler; never blocks.
//
// The kernel's receive buffer fills while paused and TCP flow control
// then stops the peer: this is how a consumer that runs a connection's
// requests off the event loop pushes back when its queue is full. What
// the engine had already read stays with the connection (at most one
// read buffer) until the resume.
//
// A paused connection learns that its peer went away only from a failing
// write, a reset or hang-up (epoll), or after the resume, so a pause
// should not outlast the work it waits for. A Close lifts the pause.
func (c *Conn) PauseReads() {
	c.mu.Lock()
	if f := c.flags.Load(); f&(fPaused|fDead|fClosed) == 0 {
		c.setLocked(fPaused)
		c.b.drv.pauseLocked(c)
	}
	c.mu.Unlock()
}

// ResumeReads undoes PauseReads: messages that arrived meanwhile are
// delivered, in order, and the idle clock restarts as if a frame had just
// arrived. Idempotent; safe from any goroutine; never blocks.
func (c *Conn) ResumeReads() {
	c.mu.Lock()
	if f := c.flags.Load(); f&fPaused != 0 {
		c.clearLocked(fPaused)
		c.lastRecv.Store(c.b.now())
		if f&(fDead|fClosed) == 0 {
			c.b.drv.resumeLocked(c)
		}
	}
	c.mu.Unlock()
}

// endTurnLocked runs when a worker's turn on c ends: the close that waited
// for it, if any.
func (c *Conn) endTurnLocked() {
	if b := c.closeAfter; b != nil {
		c.closeAfter = nil
		c.closeLocked(*b)
	}
}

func (c *Conn) closeLocked(body []byte) {
	f := c.flags.Load()
	if f&(fClosing|fDead|fClosed) != 0 {
		return
	}
	c.setLocked(fClosing)
	c.closeAt.Store(c.b.now())
	if f&fPaused != 0 {
		c.b.drv.resumeLocked(c) // a closing connection reads on: see readsPaused
	}
	c.enqueueLocked(frameOf(ws.OpClose, body))
	c.b.drv.flushLocked(c)
}

// kill tears the connection down without a close handshake.
func (c *Conn) kill() {
	c.mu.Lock()
	c.killLocked()
	c.mu.Unlock()
}

func (c *Conn) killLocked() {
	if c.flags.Load()&(fDead|fClosed) != 0 {
		return
	}
	c.setLocked(fDead)
	c.releaseQueueLocked()
	c.b.drv.wakeLocked(c)
}

func (c *Conn) releaseQueueLocked() {
	c.queue, c.qhead, c.qoff, c.qbytes = nil, 0, 0, 0
	c.stallAt.Store(0)
}

func (c *Conn) enqueueLocked(e qent) {
	if c.pendingLocked() == 0 {
		c.stallAt.Store(c.b.now())
	}
	c.queue = append(c.queue, e)
	c.qbytes += e.size()
}

// unsentLocked returns what is left to write of the i-th pending frame:
// the rest of its header and the rest of its payload, either possibly
// empty. Only the first pending frame can be partly written.
func (c *Conn) unsentLocked(i int) (hdr, payload []byte) {
	e := &c.queue[int(c.qhead)+i]
	hdr, payload = e.hdr[:e.hlen], e.p
	if i == 0 && c.qoff > 0 {
		if off := int(c.qoff); off < len(hdr) {
			hdr = hdr[off:]
		} else {
			payload = payload[off-len(hdr):]
			hdr = nil
		}
	}
	return hdr, payload
}

// consumeWrittenLocked drops n written bytes from the front of the queue.
func (c *Conn) consumeWrittenLocked(n int) {
	if n <= 0 {
		return
	}
	c.b.st.bytesOut.Add(int64(n))
	c.qbytes -= n
	frames := 0
	for n > 0 {
		rem := c.queue[c.qhead].size() - int(c.qoff)
		if n < rem {
			c.qoff += int32(n)
			break
		}
		n -= rem
		c.queue[c.qhead] = qent{} // the payload may be shared and large; do not pin it
		c.qhead++
		c.qoff = 0
		frames++
	}
	c.b.st.framesOut.Add(int64(frames))
	if c.pendingLocked() > 0 {
		c.stallAt.Store(c.b.now())
		return
	}
	// An idle connection holds no queue: the next Send most likely
	// writes straight to the socket and needs none.
	c.stallAt.Store(0)
	c.queue, c.qhead = nil, 0
}

// drainedLocked runs when the queue became empty: once our close frame is
// out, half-close so the peer sees EOF even if it never answers.
func (c *Conn) drainedLocked() {
	f := c.flags.Load()
	if f&fClosing == 0 || f&(fDead|fClosed) != 0 {
		return
	}
	if f&fPeerClosed != 0 {
		// Our answer to the peer's close is out: the handshake is done,
		// so have the read side tear down even if it is blocked reading.
		c.killLocked()
		return
	}
	if f&fFinSent == 0 {
		c.setLocked(fFinSent)
		c.b.drv.shutWriteLocked(c)
	}
}

// readerShouldStop reports whether the read side must tear down now: it
// was killed, or the close handshake finished and our reply is written.
func (c *Conn) readerShouldStop() bool {
	f := c.flags.Load()
	if f&fDead != 0 {
		return true
	}
	if f&fPeerClosed == 0 {
		return false
	}
	c.mu.Lock()
	done := c.pendingLocked() == 0
	c.mu.Unlock()
	return done
}

// teardown closes the connection for good. Only the read side calls it, so
// it is ordered after every Handle* call and Closed runs exactly once.
func (c *Conn) teardown() {
	c.mu.Lock()
	if c.flags.Load()&fClosed != 0 {
		c.mu.Unlock()
		return
	}
	c.setLocked(fClosed | fDead)
	c.releaseQueueLocked()
	c.pr = nil
	c.mu.Unlock()
	c.b.drv.detach(c)
	c.b.reg.remove(c)
	_ = c.nc.Close()
	c.partial, c.msg, c.msgOp, c.held = nil, nil, 0, false
	c.b.st.conns.Add(-1)
	c.sess.Closed()
}

// readBuf returns where the next read should land: straight into the
// spare room of a large incomplete frame, or into scratch behind the
// bytes of a small one, which afterRead copies in front.
func (c *Conn) readBuf(scratch []byte) []byte {
	if cap(c.partial) > len(scratch) {
		return c.partial[len(c.partial):cap(c.partial)]
	}
	return scratch[len(c.partial):]
}

// afterRead processes n bytes just read into readBuf(scratch): it delivers
// every complete frame and keeps only the leftover of an incomplete one,
// or everything from the first frame a pause held back. n may be 0 to
// parse what a pause held.
func (c *Conn) afterRead(scratch []byte, n int) {
	c.b.st.bytesIn.Add(int64(n))
	c.held = false
	var data []byte
	big := cap(c.partial) > len(scratch)
	if big {
		c.partial = c.partial[:len(c.partial)+n]
		data = c.partial
	} else {
		h := copy(scratch, c.partial)
		data = scratch[:h+n]
	}
	consumed, need := c.parse(data)
	rest := data[consumed:]
	switch {
	case len(rest) == 0:
		c.partial = nil
	case need > len(scratch):
		if big && consumed == 0 {
			return // still filling the frame's own buffer
		}
		p := make([]byte, len(rest), need)
		copy(p, rest)
		c.partial = p
	case !big && cap(c.partial) >= len(rest):
		c.partial = append(c.partial[:0], rest...) // rest is in scratch: no overlap
	default:
		c.partial = append([]byte(nil), rest...)
	}
}

// parse delivers the complete frames at the front of p. It returns how many
// bytes it consumed and, if the next frame's header is complete but its
// payload is not, that frame's total length. After a protocol error or the
// peer's close it consumes everything; after a pause it stops and sets
// held.
func (c *Conn) parse(p []byte) (consumed, need int) {
	maxMsg := int64(c.b.opts.MaxMessageSize)
	for {
		f := c.flags.Load()
		if f&(fFailed|fPeerClosed|fDead) != 0 {
			return len(p), 0
		}
		if readsPaused(f) {
			c.held = consumed < len(p)
			return consumed, 0
		}
		b := p[consumed:]
		if len(b) < 2 {
			return consumed, 0
		}
		fin := b[0]&0x80 != 0
		op := ws.OpCode(b[0] & 0x0f)
		switch {
		case b[0]&0x70 != 0:
			c.fail(closecode.ProtocolError, "reserved bits set")
			continue
		case op.IsReserved():
			c.fail(closecode.ProtocolError, "unknown opcode")
			continue
		case b[1]&0x80 == 0:
			c.fail(closecode.ProtocolError, "unmasked client frame")
			continue
		}
		length := int64(b[1] & 0x7f)
		hlen := 2 + 4
		switch length {
		case 126:
			hlen += 2
		case 127:
			hlen += 8
		}
		if len(b) < hlen {
			return consumed, 0
		}
		switch length {
		case 126:
			length = int64(binary.BigEndian.Uint16(b[2:]))
		case 127:
			u := binary.BigEndian.Uint64(b[2:])
			if u>>63 != 0 {
				c.fail(closecode.ProtocolError, "bad frame length")
				continue
			}
			length = int64(u)
		}
		if op.IsControl() {
			if !fin || length > 125 {
				c.fail(closecode.ProtocolError, "bad control frame")
				continue
			}
		} else {
			if (op == ws.OpContinuation) != (c.msgOp != 0) {
				c.fail(closecode.ProtocolError, "bad fragmentation")
				continue
			}
			if int64(len(c.msg))+length > maxMsg {
				c.fail(closecode.TooBig, "message too big")
				continue
			}
		}
		total := hlen + int(length)
		if len(b) < total {
			return consumed, total
		}
		payload := b[hlen:total]
		ws.Cipher(payload, [4]byte(b[hlen-4:hlen]), 0)
		consumed += total
		c.lastRecv.Store(c.b.now())
		c.b.st.framesIn.Add(1)
		c.frame(op, fin, payload)
	}
}

// frame handles one complete, unmasked frame.
func (c *Conn) frame(op ws.OpCode, fin bool, payload []byte) {
	switch op {
	case ws.OpPing:
		if c.flags.Load()&fClosing == 0 {
			// payload lives in the read buffer: the pong needs its own copy.
			_ = c.send(ws.OpPong, append([]byte(nil), payload...), false)
		}
		return
	case ws.OpPong:
		return
	case ws.OpClose:
		c.peerClose(payload)
		return
	}
	dropping := c.flags.Load()&fClosing != 0
	if fin && c.msgOp == 0 {
		if !dropping {
			c.deliver(op, payload)
		}
		return
	}
	if op != ws.OpContinuation {
		c.msgOp = op
	}
	if !dropping {
		c.msg = append(c.msg, payload...)
	}
	if fin {
		msg, mop := c.msg, c.msgOp
		// Free the reassembly buffer before delivering: a message handler
		// that closes the connection must not find state to reuse.
		c.msg, c.msgOp = nil, 0
		if !dropping {
			c.deliver(mop, msg)
		}
	}
}

func (c *Conn) deliver(op ws.OpCode, data []byte) {
	if op == ws.OpText {
		if !utf8.Valid(data) {
			c.fail(closecode.InvalidData, "invalid UTF-8")
			return
		}
		c.sess.HandleText(data)
		return
	}
	c.sess.HandleBinary(data)
}

// peerClose answers the peer's close frame and marks the handshake done.
func (c *Conn) peerClose(payload []byte) {
	var reply []byte
	switch {
	case len(payload) == 0:
		reply = nil // an empty close answers an empty close
	case len(payload) == 1:
		c.fail(closecode.ProtocolError, "bad close frame")
		return
	default:
		code := int(binary.BigEndian.Uint16(payload))
		if !validCloseCode(code) {
			c.fail(closecode.ProtocolError, "bad close code")
			return
		}
		if !utf8.Valid(payload[2:]) {
			c.fail(closecode.InvalidData, "invalid UTF-8")
			return
		}
		reply = closeBody(code, "")
	}
	c.mu.Lock()
	c.setLocked(fPeerClosed)
	c.closeLocked(reply) // no-op if we started the close: this was the answer
	c.mu.Unlock()
}

func validCloseCode(code int) bool {
	switch {
	case code >= 1000 && code <= 1003, code >= 1007 && code <= 1014:
		return true
	case code >= 3000 && code <= 4999:
		return true
	}
	return false
}

// fail closes the connection for a protocol violation; the rest of the
// input is discarded.
func (c *Conn) fail(code int, reason string) {
	c.b.st.proto.Add(1)
	c.mu.Lock()
	c.setLocked(fFailed)
	c.closeLocked(closeBody(code, reason))
	c.mu.Unlock()
}
