// Package server accepts TCP connections, upgrades WebSocket requests at
// /socket/websocket straight on the connection with gobwas/ws (no net/http
// hijack, so no buffers outlive the handshake), authenticates them, and
// serves every other path (health, metrics, API, demo, long-poll) with
// net/http on the same port. Authorize applies the upgrade's rules to a
// long-poll open, so both transports admit exactly the same clients.
package server

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"
	"golang.org/x/time/rate"

	"github.com/elchat/elchat/internal/gopool"
	"github.com/elchat/elchat/pkg/auth"
	"github.com/elchat/elchat/pkg/closecode"
	"github.com/elchat/elchat/pkg/hub"
	"github.com/elchat/elchat/pkg/transport"
)

// SocketPath is where phoenix.js connects: its Socket appends /websocket to
// the endpoint, and "/socket" is Phoenix's default mount.
const SocketPath = "/socket/websocket"

// Config wires a Server.
type Config struct {
	Verifier         *auth.Verifier
	Origins          Origins
	Engine           transport.Engine
	Hub              *hub.Hub
	HTTP             http.Handler  // every path but SocketPath; nil: 404
	HandshakeTimeout time.Duration // whole upgrade, from accept to 101 (default 10s)
	MaxHandshakes    int           // upgrades in progress at once (default 1024)
	Limits           *Limits       // nil: no per-user or per-address limits
	// Banned, when set, refuses a user at the handshake (HTTP 403 with
	// its reason). It must answer from memory: it runs on every upgrade.
	Banned func(userID string) (reason string, banned bool)
	// UpgradeRate and UpgradeBurst cap accepted upgrades per second on this
	// node, so a reconnect storm after a restart is spread out (phoenix.js
	// backs off and retries) instead of starving live traffic. 0: no cap.
	UpgradeRate  float64
	UpgradeBurst int
	Logger       *slog.Logger
	Metrics      Metrics // nil: none
}

// Metrics receives handshake outcomes.
type Metrics interface {
	HandshakeRejected(reason string)
	Connected()
}

type nopMetrics struct{}

func (nopMetrics) HandshakeRejected(string) {}
func (nopMetrics) Connected()               {}

// Server is one ElChat node's listener.
type Server struct {
	// Set by New and immutable afterwards; the values they point to are
	// safe for concurrent use.
	cfg      Config
	shakers  *gopool.Pool  // runs the handshakes, at most MaxHandshakes at once
	http     *http.Server  // serves every path but sockets
	httpL    *chanListener // feeds http the connections handle looked at
	expiries *expiries     // closes sockets whose token ran out
	upgrades *rate.Limiter // nil: unlimited
	stop     context.CancelFunc

	draining atomic.Bool
	mu       sync.Mutex
	ln       net.Listener // guarded by mu
}

// New returns a server; call Serve.
func New(cfg Config) *Server {
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = 10 * time.Second
	}
	if cfg.MaxHandshakes <= 0 {
		cfg.MaxHandshakes = 1024
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Metrics == nil {
		cfg.Metrics = nopMetrics{}
	}
	h := cfg.HTTP
	if h == nil {
		h = http.NotFoundHandler()
	}
	var s *Server
	inner := h
	h = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == SocketPath {
			s.ServeHTTP(w, r)
			return
		}
		inner.ServeHTTP(w, r)
	})
	s = &Server{cfg: cfg, shakers: gopool.New(cfg.MaxHandshakes, handshakerIdle), httpL: newChanListener(), expiries: newExpiries()}
	if cfg.UpgradeRate > 0 {
		s.upgrades = rate.NewLimiter(rate.Limit(cfg.UpgradeRate), max(cfg.UpgradeBurst, 1))
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.stop = cancel
	go s.expiries.run(ctx)
	s.http = &http.Server{
		Handler:           h,
		ReadHeaderTimeout: cfg.HandshakeTimeout,
		IdleTimeout:       60 * time.Second,
		ErrorLog:          slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelWarn),
	}
	go s.http.Serve(s.httpL) //nolint:errcheck // ends with ErrServerClosed
	return s
}

// Serve accepts connections on ln until Drain or Close.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	s.ln = ln
	s.mu.Unlock()
	var delay time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			if s.draining.Load() || errors.Is(err, net.ErrClosed) {
				return nil
			}
			// Out of file descriptors and the like: back off as net/http
			// does rather than spin.
			delay = min(max(delay*2, 5*time.Millisecond), time.Second)
			s.cfg.Logger.Warn("accept failed", "err", err, "retry_in", delay)
			time.Sleep(delay)
			continue
		}
		delay = 0
		if !s.shakers.Go(func() { s.handle(nc) }) {
			// Too many upgrades in flight: shed load before reading a byte.
			s.cfg.Metrics.HandshakeRejected("busy")
			nc.Close()
		}
	}
}

// Draining reports whether the server stopped accepting.
func (s *Server) Draining() bool { return s.draining.Load() }

// StopAccepting closes the listener; established sockets stay.
func (s *Server) StopAccepting() {
	s.draining.Store(true)
	s.mu.Lock()
	if s.ln != nil {
		s.ln.Close()
	}
	s.mu.Unlock()
}

// Close stops the HTTP side and lets the handshake goroutines go.
func (s *Server) Close(ctx context.Context) error {
	s.StopAccepting()
	s.shakers.Close()
	s.stop()
	return s.http.Shutdown(ctx)
}

// readerPool lends handshake buffers; a request's headers must fit (a
// token in the query may take 8 KiB on its own).
var readerPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 16<<10) }}

// handshakerIdle is how long a handshake goroutine waits for the next
// connection before it exits (see gopool).
const handshakerIdle = 5 * time.Second

func (s *Server) handle(nc net.Conn) {
	_ = nc.SetDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	br := readerPool.Get().(*bufio.Reader)
	br.Reset(nc)
	path, headLen, err := peekHead(br)
	if err != nil {
		if errors.Is(err, errHeadTooLarge) {
			s.cfg.Metrics.HandshakeRejected("headers too large")
			io.WriteString(nc, "HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\nContent-Length: 0\r\n\r\n") //nolint:errcheck
		}
		br.Reset(nil)
		readerPool.Put(br)
		nc.Close()
		return
	}
	if path != SocketPath {
		// Plain HTTP: hand the connection, with what was peeked, to net/http.
		// This reader stays with the connection; only sockets are frugal.
		// net/http sets its own read deadlines (ReadHeaderTimeout,
		// IdleTimeout) and none for writes: the handshake deadline must
		// not stay, or a held long-poll (or any answer on a kept-alive
		// connection older than HandshakeTimeout) fails to write.
		_ = nc.SetDeadline(time.Time{})
		s.httpL.push(&peekedConn{Conn: nc, r: br})
		return
	}
	s.upgrade(nc, br, headLen)
}

var errHeadTooLarge = errors.New("request head too large")

// peekHead returns the request target's path and the length of the request
// head (request line and headers, up to the blank line) without consuming
// anything, so the upgrader can be given exactly the head and whatever a
// client sent after it is still in br.
func peekHead(br *bufio.Reader) (path string, headLen int, err error) {
	for n := 1; ; n = br.Buffered() + 1 {
		if n > br.Size() {
			return "", 0, errHeadTooLarge
		}
		if _, err := br.Peek(n); err != nil {
			return "", 0, err
		}
		// Look at everything buffered so far, not just the n bytes asked
		// for: asking for more than the client sent would block.
		b, _ := br.Peek(br.Buffered())
		end := bytes.Index(b, []byte("\r\n\r\n"))
		if end < 0 {
			continue
		}
		line, _, _ := bytes.Cut(b, []byte{'\n'})
		fields := bytes.Fields(line)
		if len(fields) < 2 {
			return "", 0, errors.New("malformed request line")
		}
		p, _, _ := bytes.Cut(fields[1], []byte{'?'})
		return string(p), end + 4, nil
	}
}

// upgrading is the state of one upgrade, pooled with its ws.Upgrader,
// whose callbacks are bound to it once: built per upgrade, the upgrader's
// method values, the handshake they fill and the reader wrappers were
// about ten allocations per connect.
type upgrading struct {
	s       *Server
	nc      net.Conn
	hs      handshake
	claims  auth.Claims
	release func()
	u       ws.Upgrader
	head    io.LimitedReader
	rw      struct {
		io.Reader
		io.Writer
	}
}

var upgradingPool = sync.Pool{New: func() any {
	up := &upgrading{}
	up.u = ws.Upgrader{
		OnRequest:       up.hs.onRequest,
		OnHeader:        up.hs.onHeader,
		OnHost:          up.hs.onHost,
		ProtocolCustom:  up.hs.protocols,
		OnBeforeUpgrade: up.beforeUpgrade,
	}
	return up
}}

func (up *upgrading) beforeUpgrade() (ws.HandshakeHeader, error) {
	s, nc := up.s, up.nc
	ip := "" // only a per-address limit reads it, and formatting it allocates
	if l := s.cfg.Limits; l != nil && l.PerIP > 0 {
		ip = remoteIP(nc)
	}
	reason, status := s.authorize(&up.hs, ip, &up.claims, &up.release)
	if reason != "" {
		s.cfg.Metrics.HandshakeRejected(reason)
		s.cfg.Logger.Debug("handshake rejected", "reason", reason, "remote", nc.RemoteAddr()) // formatted only when logged
		return nil, ws.RejectConnectionError(ws.RejectionStatus(status), ws.RejectionReason(reason))
	}
	return nil, nil
}

func (s *Server) upgrade(nc net.Conn, br *bufio.Reader, headLen int) {
	up := upgradingPool.Get().(*upgrading)
	up.s, up.nc = s, nc
	// The upgrader buffers what it reads: give it the head and nothing
	// more, so bytes sent behind it stay in br where we can see them.
	up.head = io.LimitedReader{R: br, N: int64(headLen)}
	up.rw.Reader, up.rw.Writer = &up.head, nc
	_, err := up.u.Upgrade(&up.rw)
	claims, release := up.claims, up.release
	*up = upgrading{u: up.u} // drop every reference before pooling
	upgradingPool.Put(up)

	// Frames sent before the 101 arrived break the protocol; and a reader
	// that still holds bytes cannot go back to the pool with them.
	early := br.Buffered() > 0
	br.Reset(nil)
	readerPool.Put(br)
	if err != nil || early {
		if release != nil {
			release()
		}
		if err == nil {
			s.cfg.Metrics.HandshakeRejected("early frames")
			nc.Write(transport.CloseFrame(closecode.Policy, "frame sent before the handshake completed")) //nolint:errcheck
		}
		nc.Close()
		return
	}
	_ = nc.SetDeadline(time.Time{})
	s.attach(nc, claims, release)
}

// attach hands an upgraded connection to the engine and the hub.
func (s *Server) attach(nc net.Conn, claims auth.Claims, release func()) {
	var sess *session
	_, err := s.cfg.Engine.Add(nc, func(c *transport.Conn) transport.Session {
		cl := s.cfg.Hub.Connect(c, claims.UserID, claims.Name)
		sess = &session{Client: cl, release: release, conn: c, expiries: s.expiries,
			slot: s.expiries.add(c, claims.ExpiresAt)}
		return sess
	})
	if err != nil {
		// The engine never serves a connection it refused, so nothing will
		// call Closed for it: undo the session here.
		if sess != nil {
			sess.Closed()
		} else if release != nil {
			release()
		}
		s.cfg.Logger.Warn("transport refused connection", "err", err)
		nc.Close()
		return
	}
	s.cfg.Metrics.Connected()
}

// ServeHTTP upgrades a socket request that reached net/http: one sent on a
// kept-alive connection after a plain request (proxies with upstream
// keepalive pools do this). It costs net/http's buffers during the
// handshake only; the socket then lives on the engine like any other.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	hs := handshake{host: r.Host}
	hs.onRequest([]byte(r.URL.RequestURI())) //nolint:errcheck // never fails
	if o := r.Header.Get("Origin"); o != "" {
		hs.origin, hs.hasOrig = o, true
	}
	hs.protocols([]byte(strings.Join(r.Header.Values("Sec-WebSocket-Protocol"), ",")))
	var claims auth.Claims
	var release func()
	if reason, status := s.authorize(&hs, remoteIPOf(r.RemoteAddr), &claims, &release); reason != "" {
		s.cfg.Metrics.HandshakeRejected(reason)
		http.Error(w, reason, status)
		return
	}
	u := ws.HTTPUpgrader{Protocol: func(p string) bool { return p == "phoenix" }}
	nc, rw, _, err := u.Upgrade(r, w)
	if err != nil {
		if release != nil {
			release()
		}
		return
	}
	// The engine needs the bare TCP connection (epoll polls its fd), and
	// nothing may be left unread in the buffers we drop here.
	if pc, ok := nc.(*peekedConn); ok && pc.buffered() == 0 && rw.Reader.Buffered() == 0 {
		nc = pc.Conn
	} else if rw.Reader.Buffered() > 0 {
		if release != nil {
			release()
		}
		nc.Close()
		return
	}
	_ = nc.SetDeadline(time.Time{})
	s.attach(nc, claims, release)
}

// authorize applies the handshake rules; it returns a rejection reason and
// HTTP status, or "" to accept. ip is the client's address, which only a
// per-address limit reads (callers may leave it empty when PerIP is 0).
func (s *Server) authorize(hs *handshake, ip string, claims *auth.Claims, release *func()) (string, int) {
	if s.draining.Load() {
		return "draining", http.StatusServiceUnavailable
	}
	if s.upgrades != nil && !s.upgrades.Allow() {
		return "rate limited", http.StatusServiceUnavailable
	}
	if hs.badQuery {
		return "malformed query", http.StatusBadRequest
	}
	if len(hs.vsn) < 2 || hs.vsn[:2] != "2." {
		return "unsupported vsn", http.StatusForbidden
	}
	if hs.hasOrig && !hs.sameOrigin() && !s.cfg.Origins.Allow(hs.origin) {
		return "origin", http.StatusForbidden
	}
	tok := hs.authToken()
	if tok == "" {
		return "token missing", http.StatusForbidden
	}
	c, err := s.cfg.Verifier.Verify(tok)
	if err != nil {
		return "token " + auth.Reason(err), http.StatusForbidden
	}
	*claims = c
	if s.cfg.Banned != nil {
		// A fixed reason: it is also a metrics label. The ban's own reason
		// reached the client in the close frame.
		if _, banned := s.cfg.Banned(c.UserID); banned {
			return "banned", http.StatusForbidden
		}
	}
	if s.cfg.Limits != nil {
		r, reason := s.cfg.Limits.acquire(c.UserID, ip)
		if reason != "" {
			return reason, http.StatusTooManyRequests
		}
		*release = r
	}
	return "", 0
}

// session ties a hub client to the per-connection limits it holds.
type session struct {
	*hub.Client
	conn     *transport.Conn
	release  func()
	expiries *expiries
	upgrades *rate.Limiter // nil: unlimited
	slot     int64         // the expiry slot holding conn
}

func (s *session) Closed() {
	s.expiries.remove(s.conn, s.slot)
	s.Client.Closed()
	if s.release != nil {
		s.release()
	}
}

// peekedConn is a connection whose first bytes sit in r. Once net/http
// has read them, r goes back to the pool and reads go straight to the
// connection: a kept-alive or long-polling connection does not hold the
// 16 KiB peek buffer for its whole life (net/http has its own). Reads come
// from one goroutine at a time (net/http's), so r needs no lock.
type peekedConn struct {
	net.Conn
	r *bufio.Reader // nil once drained
}

func (c *peekedConn) Read(p []byte) (int, error) {
	if c.r == nil {
		return c.Conn.Read(p)
	}
	if c.r.Buffered() == 0 {
		c.release()
		return c.Conn.Read(p)
	}
	n, err := c.r.Read(p)
	if c.r.Buffered() == 0 {
		c.release()
	}
	return n, err
}

func (c *peekedConn) release() {
	c.r.Reset(nil)
	readerPool.Put(c.r)
	c.r = nil
}

func (c *peekedConn) buffered() int {
	if c.r == nil {
		return 0
	}
	return c.r.Buffered()
}

// chanListener feeds connections the server has already looked at to
// net/http.
type chanListener struct {
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func newChanListener() *chanListener {
	return &chanListener{ch: make(chan net.Conn), done: make(chan struct{})}
}

func (l *chanListener) push(c net.Conn) {
	select {
	case l.ch <- c:
	case <-l.done:
		c.Close()
	}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return &net.TCPAddr{} }

func remoteIP(nc net.Conn) string {
	if a, ok := nc.RemoteAddr().(*net.TCPAddr); ok {
		return a.IP.String()
	}
	return remoteIPOf(nc.RemoteAddr().String())
}

func remoteIPOf(addr string) string {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	return host
}

// Authorize applies the upgrade rules to a plain HTTP request that opens a
// connection by other means (a long-poll session): draining, upgrade rate,
// vsn, origin, token (given, as the caller found it) and the per-user and
// per-address limits. On success release gives the limits back; the
// caller must call it when the connection ends.
func (s *Server) Authorize(r *http.Request, token string) (claims auth.Claims, release func(), reason string, status int) {
	hs := handshake{host: r.Host}
	hs.onRequest([]byte(r.URL.RequestURI())) //nolint:errcheck // never fails
	hs.token = token
	if o := r.Header.Get("Origin"); o != "" {
		hs.origin, hs.hasOrig = o, true
	}
	reason, status = s.authorize(&hs, remoteIPOf(r.RemoteAddr), &claims, &release)
	if reason != "" {
		s.cfg.Metrics.HandshakeRejected(reason)
		return auth.Claims{}, nil, reason, status
	}
	s.cfg.Metrics.Connected()
	return claims, release, "", 0
}

// OriginAllowed reports whether a request's Origin passes the rule the
// upgrade applies (no Origin, same origin, or an allowed one).
func (s *Server) OriginAllowed(r *http.Request) bool {
	o := r.Header.Get("Origin")
	if o == "" {
		return true
	}
	hs := handshake{host: r.Host, origin: o, hasOrig: true}
	return hs.sameOrigin() || s.cfg.Origins.Allow(o)
}

// Verify checks a host-app token with the server's verifier.
func (s *Server) Verify(token string) (auth.Claims, error) { return s.cfg.Verifier.Verify(token) }
