// Package transport serves WebSocket connections after the HTTP upgrade.
//
// Two engines share one Conn type, one incremental frame assembler, one
// bounded outbound queue and one close protocol:
//
//   - "epoll" (Linux): idle connections are parked on an epoll instance and
//     own no goroutine and no buffer; a bounded worker pool reads whatever
//     is available without ever blocking and parks the connection again.
//   - "portable": a reader and a writer goroutine per connection. It runs
//     everywhere and is the baseline the epoll engine is measured against.
//
// # Framing
//
// Only this package turns messages into WebSocket frames. Conn.Send takes a
// complete text message; the transport adds the per-connection frame
// header (2 to 10 bytes) and writes header and payload side by side (one
// writev, or net.Buffers), so one payload shared by every recipient of a
// broadcast is never copied. Control frames (pong, close) are built here
// too; CloseFrame exists only for refusing a connection before an engine
// serves it.
//
// # Goroutines and the Session
//
// The engine calls the methods of one Session from one goroutine at a time,
// never concurrently, in this order: any number of HandleText and
// HandleBinary calls, then Closed exactly once. Which goroutine that is
// varies: with the epoll engine it is whichever pool worker holds the
// connection, or the poller itself for an event that came alone (a
// different one from turn to turn, with the hand-over ordered by
// Conn.mu), or the goroutine running Engine.Shutdown for stragglers; with the portable engine, the connection's reader
// goroutine.
//
// A Handle call runs on an epoll worker or the poller, and one blocked
// there stalls every connection waiting for it: HandleText and HandleBinary
// must never block on I/O, nor wait for a lock that anyone holds across
// I/O (a database, Redis, another socket). Work like that goes to another
// goroutine, which answers with Send. If that goroutine's queue for the
// connection fills up, PauseReads stops further input until ResumeReads,
// instead of blocking the handler or dropping messages.
//
// # Conn methods
//
// Send, SendLater, Close, PauseReads, ResumeReads and RemoteAddr are safe
// from any goroutine, including the connection's own Handle calls. They
// never block (Send writes only what the socket takes at once and queues
// the rest) and never call back into the Session synchronously: Closed
// runs later, on the connection's read side.
//
// # Lock order
//
// The transport has three kinds of locks: an engine's Add gate (addMu),
// its registry lock, and each Conn's mutex (Conn.mu). Add holds the gate
// shared while it sets a connection up, Shutdown exclusively while it
// marks the engine shut; under the gate Add takes Conn.mu or the registry
// lock, never both at once. The transport holds Conn.mu only for short,
// non-blocking work (queueing, a non-blocking writev, epoll_ctl,
// shutdown(2)); it calls no Session method and takes no lock outside this
// package (but the runtime's and, on an epoll_ctl failure, the logger's)
// while holding either. Callers may therefore call any Conn method while
// holding their own locks: the order is "caller's locks → Conn.mu", and
// Session methods are entered with no transport lock held. The one
// exception is Add's newSession, which runs under the shared gate: it must
// be quick and must not call Add or Shutdown.
package transport

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime"
	"time"
)

// Session receives the messages of one connection. The engine never calls
// the methods of one Session concurrently; see the package documentation
// for the goroutines that call them and what they must not do.
type Session interface {
	// HandleText gets one complete, UTF-8 validated text message with its
	// fragments reassembled. data is valid only during the call. It runs
	// on an epoll worker: it must not block on I/O.
	HandleText(data []byte)
	// HandleBinary gets one complete binary message; data is valid only
	// during the call.
	HandleBinary(data []byte)
	// Closed is called exactly once after the connection is gone (also
	// when it was killed while its reads were paused). No Handle* call
	// follows it, and Send on the Conn returns ErrClosed from then on.
	Closed()
}

// Options configure an Engine. Zero values select the defaults.
type Options struct {
	Workers        int           // epoll worker pool size (default 256)
	MaxMessageSize int           // default 1 MiB; larger messages close with 1009
	IdleTimeout    time.Duration // default 60s without a complete frame closes with 1001
	MaxQueueBytes  int           // outbound bytes (payloads and frame headers) queued per connection, default 1 MiB
	MaxQueueFrames int           // outbound frames (messages, pongs, the close) queued per connection, default 1024
	WriteTimeout   time.Duration // default 10s without write progress marks a slow consumer
	Logger         *slog.Logger  // default slog.Default()
}

func (o Options) withDefaults() Options {
	if o.Workers <= 0 {
		o.Workers = 256
	}
	if o.MaxMessageSize <= 0 {
		o.MaxMessageSize = 1 << 20
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = 60 * time.Second
	}
	if o.MaxQueueBytes <= 0 {
		o.MaxQueueBytes = 1 << 20
	}
	if o.MaxQueueFrames <= 0 {
		o.MaxQueueFrames = 1024
	}
	if o.WriteTimeout <= 0 {
		o.WriteTimeout = 10 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o
}

// Stats is a snapshot of an engine's counters.
type Stats struct {
	Conns               int64 // connections served now
	FramesIn            int64
	FramesOut           int64
	BytesIn             int64
	BytesOut            int64
	SlowConsumerCloses  int64
	IdleCloses          int64
	ProtocolErrorCloses int64
}

// Engine serves upgraded WebSocket connections.
type Engine interface {
	// Add starts serving nc. newSession is called once, before the first
	// frame is read, to create the Session that receives nc's messages;
	// Shutdown waits for it, so it must be quick and must not call Add or
	// Shutdown. After Add returns without error the engine owns nc; on
	// error the caller still owns it.
	Add(nc net.Conn, newSession func(*Conn) Session) (*Conn, error)
	// Len reports how many connections are served now.
	Len() int
	// Stats returns a snapshot of the engine's counters.
	Stats() Stats
	// Shutdown closes every connection with 1001, waits for them to go
	// (killing the stragglers when ctx is done) and stops the engine. It
	// first waits for the Adds under way, which ctx does not bound: so
	// that every connection it drains has its session.
	Shutdown(ctx context.Context) error
}

var (
	// ErrSlowConsumer is returned by Send when the connection's outbound
	// queue overflowed; the connection is being torn down.
	ErrSlowConsumer = errors.New("transport: slow consumer")
	// ErrClosed is returned by Send on a connection that is closing or gone.
	ErrClosed = errors.New("transport: connection closed")
	// ErrEngineClosed is returned by Add after Shutdown.
	ErrEngineClosed = errors.New("transport: engine shut down")
	// ErrUnsupported is returned by New for an engine this platform lacks.
	ErrUnsupported = errors.New("transport: engine not supported on this platform")
)

// DefaultKind is the engine New should get on this platform.
func DefaultKind() string {
	if runtime.GOOS == "linux" {
		return "epoll"
	}
	return "portable"
}

// New creates an engine of the given kind: "epoll" (Linux only) or
// "portable".
func New(kind string, opts Options) (Engine, error) {
	opts = opts.withDefaults()
	switch kind {
	case "epoll":
		return newEpoll(opts)
	case "portable":
		return newPortable(opts), nil
	}
	return nil, fmt.Errorf("transport: unknown engine kind %q", kind)
}
