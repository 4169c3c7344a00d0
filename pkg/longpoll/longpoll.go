// Package longpoll serves Phoenix's LongPoll transport at
// <mount>/longpoll, the fallback phoenix.js takes by itself when
// WebSockets are blocked (longPollFallbackMs) or when a page asks for it
// (transport: LongPoll). A long-poll session feeds the same hub as a
// WebSocket: the hub produces the same Phoenix messages and enforces the
// same rules; this package only frames them as phoenix.js's LongPoll
// expects.
//
// # The wire protocol (phoenix.js 1.8 longpoll.js)
//
//   - GET without a session token opens a session: {"status":410,
//     "token":T,"messages":[]}. The open is authorized like a WebSocket
//     upgrade (vsn, origin, host-app token from ?token= or the
//     X-Phoenix-AuthToken header, upgrade rate, per-user and per-address
//     limits).
//   - GET with T is a poll, held up to Config.Window: {"status":200,
//     "token":T,"messages":["<frame>",…]} as soon as the mailbox has
//     messages, {"status":204,…} when the window passes, {"status":410}
//     when the session is gone (phoenix.js then reconnects and rejoins,
//     catching up with last_id).
//   - POST with T carries ndjson, one V2 frame a line, fed to the hub in
//     order; {"status":200} once every line was handed over.
//
// phoenix.js looks at the JSON status only, so every answer it acts on
// has HTTP status 200 (as Phoenix does), and browsers log nothing.
// Refusals carry the same status in HTTP and in JSON (403, 400, 413), and
// a shed open (rate limit, draining) says 500, on which phoenix.js retries
// with backoff.
//
// # No sticky sessions
//
// A session lives on the node that opened it, but a round-robin load
// balancer sends its polls and posts anywhere. The session token is signed
// with a key derived from the node secret and names the owning node and
// the address other nodes reach it at (Config.Advertise); a node that gets
// a request for another node's session verifies the signature and
// reverse-proxies the request there, once (a forwarded request is never
// forwarded again). This needs no shared state and no bus round trip per
// request, works on a cluster and on nodes that share only the secret,
// and the address cannot be chosen by a client: only signed addresses are
// dialled. Ordering is the owner's: phoenix.js sends one POST at a time
// and waits for its answer, which comes after every line was fed to the
// hub, and holds one poll at a time, which takes the mailbox in order.
// When the owner cannot be reached (it died), the request is answered 410,
// so phoenix.js opens a new session elsewhere and its channels rejoin
// with last_id.
//
// # Bounds
//
// An idle session holds no goroutine and no timer: one reaper per Manager
// expires sessions with no poll for Config.SessionTimeout and sessions
// whose user token expired. The mailbox is bounded like a socket's
// outbound queue (MaxQueueBytes, MaxQueueFrames) and overflowing it
// closes the session as a slow consumer. POST bodies are bounded
// (MaxBodyBytes), as are their lines (MaxFrames, MaxMessageSize).
//
// # Lock order
//
//	session.postMu → hub locks → session.mu
//
// A POST feeds HandleText with postMu held, and the hub calls the
// session's hub.Conn methods with its own locks held; session.mu is the
// innermost lock and nothing is called with it held but the runtime.
// Manager.mu is taken alone.
package longpoll

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/elchat/elchat/internal/pace"
	"github.com/elchat/elchat/pkg/auth"
	"github.com/elchat/elchat/pkg/closecode"
	"github.com/elchat/elchat/pkg/hub"
	"github.com/elchat/elchat/pkg/phx"
)

// Path is where phoenix.js long-polls: it replaces the /websocket of the
// socket URL with /longpoll.
const Path = "/socket/longpoll"

// Headers phoenix.js and the nodes use.
const (
	headerSessionToken = "X-Phoenix-Longpoll-Token" // phoenix.js ≥ 1.9 (1.8 uses ?token=)
	headerAuthToken    = "X-Phoenix-AuthToken"      // phoenix.js authToken option
	// headerHop marks a request one node forwarded to the session's owner;
	// it carries the forwarding node's id, for the logs.
	headerHop = "X-Elchat-Longpoll-Hop"
)

// Authorizer applies the WebSocket handshake rules to a long-poll open;
// pkg/server implements it.
type Authorizer interface {
	// Authorize checks r as an upgrade would (draining, upgrade rate, vsn,
	// origin, token, per-user and per-address limits) with token as the
	// host-app token. It returns the claims and a release func for the
	// limits taken, or a rejection reason and HTTP status.
	Authorize(r *http.Request, token string) (claims auth.Claims, release func(), reason string, status int)
	// OriginAllowed reports whether a browser request from r's Origin may
	// use a socket (always true without an Origin header).
	OriginAllowed(r *http.Request) bool
	// Verify checks a host-app token.
	Verify(token string) (auth.Claims, error)
}

// Config configures a Manager. Zero limits take the defaults below.
type Config struct {
	Secret []byte // node secret; session tokens are signed with a key derived from it
	NodeID string // this node's id, named in its tokens
	// Advertise is host:port at which the other nodes reach this node's
	// HTTP side; empty: requests for this node's sessions that reach
	// another node are answered 410 (the client opens a new session
	// there), which works but churns sessions behind a round-robin
	// balancer. SetAdvertise may set it once the listener is known.
	Advertise string
	Hub       *hub.Hub
	Auth      Authorizer

	Window         time.Duration // how long a poll is held (default 10s)
	SessionTimeout time.Duration // a session with no poll for this long expires (default 20s)
	PauseTimeout   time.Duration // how long a POST waits for paused reads (default 10s)
	MaxBodyBytes   int           // POST body limit (default 1 MiB)
	MaxFrames      int           // lines per POST (default 100, phoenix.js's batch)
	MaxMessageSize int           // one line, as the WebSocket message limit (default 64 KiB)
	MaxQueueBytes  int           // mailbox bound in bytes (default 1 MiB)
	MaxQueueFrames int           // mailbox bound in messages (default 1024)

	Transport http.RoundTripper // for forwarding; nil: a dedicated http.Transport
	Logger    *slog.Logger
}

func (c Config) withDefaults() Config {
	setD := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	setI := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	setD(&c.Window, 10*time.Second)
	setD(&c.SessionTimeout, 20*time.Second)
	setD(&c.PauseTimeout, 10*time.Second)
	setI(&c.MaxBodyBytes, 1<<20)
	setI(&c.MaxFrames, 100)
	setI(&c.MaxMessageSize, 64<<10)
	setI(&c.MaxQueueBytes, 1<<20)
	setI(&c.MaxQueueFrames, 1024)
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Transport == nil {
		c.Transport = &http.Transport{
			DialContext:         (&net.Dialer{Timeout: 2 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			MaxIdleConnsPerHost: 64,
			IdleConnTimeout:     90 * time.Second,
			// A poll is held for Window: the owner answers within it.
			ResponseHeaderTimeout: c.Window + 10*time.Second,
			// A forwarded poll keeps its connection's buffers while it is
			// held: keep them small (a request is a line and a few
			// headers; a longer answer streams through).
			WriteBufferSize: 1 << 10,
			ReadBufferSize:  1 << 10,
		}
	}
	return c
}

// Manager holds this node's long-poll sessions and serves Path.
type Manager struct {
	cfg       Config // immutable after New
	sign      signer
	advertise atomic.Pointer[string]

	mu       sync.Mutex
	sessions map[string]*session // guarded by mu
	draining bool                // guarded by mu

	slow      atomic.Int64
	forwarded atomic.Int64
	stop      context.CancelFunc
	reaped    chan struct{}
}

// New returns a Manager and starts its reaper; stop it with Close.
func New(cfg Config) *Manager {
	cfg = cfg.withDefaults()
	m := &Manager{cfg: cfg, sign: newSigner(cfg.Secret), sessions: make(map[string]*session), reaped: make(chan struct{})}
	m.advertise.Store(&cfg.Advertise)
	ctx, cancel := context.WithCancel(context.Background())
	m.stop = cancel
	go m.reap(ctx)
	return m
}

// SetAdvertise sets the address other nodes reach this node at, for the
// tokens of sessions opened from now on.
func (m *Manager) SetAdvertise(addr string) { m.advertise.Store(&addr) }

// Len reports how many sessions live on this node.
func (m *Manager) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.sessions)
}

// Stats reports counters, for metrics: sessions closed as slow consumers
// and requests forwarded to their owner.
func (m *Manager) Stats() (slowConsumers, forwarded int64) {
	return m.slow.Load(), m.forwarded.Load()
}

// ServeHTTP serves Path: GET opens or polls, POST sends, OPTIONS answers a
// CORS preflight.
func (m *Manager) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	tok := sessionToken(r)
	var t ticket
	var terr error
	if tok != "" && (r.Method == http.MethodGet || r.Method == http.MethodPost) {
		t, terr = m.sign.parse(tok, time.Now())
		if terr == nil && t.Node != m.cfg.NodeID {
			// The owner answers, headers and all.
			m.forward(w, r, t)
			return
		}
	}
	h := w.Header()
	h.Set("Cache-Control", "no-store")
	if o := r.Header.Get("Origin"); o != "" && m.cfg.Auth.OriginAllowed(r) {
		// A cross-origin page may read the answers only from an origin the
		// WebSocket rules allow.
		h.Set("Access-Control-Allow-Origin", o)
		h.Add("Vary", "Origin")
	}
	switch r.Method {
	case http.MethodOptions:
		h.Set("Access-Control-Allow-Methods", "GET, POST, OPTIONS")
		if rh := r.Header.Get("Access-Control-Request-Headers"); rh != "" {
			h.Set("Access-Control-Allow-Headers", rh)
		}
		h.Set("Access-Control-Max-Age", "3600")
		w.WriteHeader(http.StatusOK)
		return
	case http.MethodGet, http.MethodPost:
	default:
		h.Set("Allow", "GET, POST, OPTIONS")
		writeStatus(w, http.StatusMethodNotAllowed, http.StatusMethodNotAllowed, "method not allowed")
		return
	}
	if tok == "" {
		if r.Method == http.MethodPost {
			writeStatus(w, http.StatusOK, http.StatusGone, "no session")
			return
		}
		m.open(w, r)
		return
	}
	switch {
	case errors.Is(terr, errExpired):
		writeStatus(w, http.StatusOK, http.StatusGone, "session token expired")
		return
	case terr != nil:
		writeStatus(w, http.StatusForbidden, http.StatusForbidden, "invalid session token")
		return
	}
	if !m.cfg.Auth.OriginAllowed(r) {
		writeStatus(w, http.StatusForbidden, http.StatusForbidden, "origin")
		return
	}
	s := m.lookup(t.Session)
	if s == nil || s.user != t.User {
		writeStatus(w, http.StatusOK, http.StatusGone, "session gone")
		return
	}
	// The session token is the capability; a host-app token sent along
	// must be for the same user.
	if ut := userToken(r); ut != "" {
		c, err := m.cfg.Auth.Verify(ut)
		switch {
		case errors.Is(err, auth.ErrExpired):
			// The reaper ends the session at the token's expiry; answer
			// as it will, so the client reconnects with a fresh token.
			s.Close(closecode.TokenExpired, "token expired")
			writeStatus(w, http.StatusOK, http.StatusGone, "token expired")
			return
		case err != nil:
			writeStatus(w, http.StatusForbidden, http.StatusForbidden, "token "+auth.Reason(err))
			return
		case c.UserID != s.user:
			writeStatus(w, http.StatusForbidden, http.StatusForbidden, "session of another user")
			return
		}
	}
	if r.Method == http.MethodGet {
		m.poll(w, r, s)
	} else {
		m.post(w, r, s)
	}
}

// sessionToken finds the session token: the header phoenix.js 1.9 sends,
// else the last ?token= that is a session token (1.8 appends it after the
// user's params, which may hold a host-app token named token too).
func sessionToken(r *http.Request) string {
	if t := r.Header.Get(headerSessionToken); t != "" {
		return t
	}
	vs := r.URL.Query()["token"]
	for i := len(vs) - 1; i >= 0; i-- {
		if strings.HasPrefix(vs[i], tokenPrefix) {
			return vs[i]
		}
	}
	return ""
}

// userToken finds the host-app token: the authToken header, else the first
// ?token= that is not a session token.
func userToken(r *http.Request) string {
	if t := r.Header.Get(headerAuthToken); t != "" {
		return t
	}
	for _, v := range r.URL.Query()["token"] {
		if v != "" && !strings.HasPrefix(v, tokenPrefix) {
			return v
		}
	}
	return ""
}

func (m *Manager) lookup(id string) *session {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.sessions[id]
}

// open authorizes a new session as a WebSocket upgrade is, and answers
// with its token.
func (m *Manager) open(w http.ResponseWriter, r *http.Request) {
	claims, release, reason, status := m.cfg.Auth.Authorize(r, userToken(r))
	if reason != "" {
		js := status
		if status != http.StatusForbidden {
			// Shed or malformed: phoenix.js retries a 500 with backoff;
			// any status it does not know would stall it.
			js = http.StatusInternalServerError
		}
		writeStatus(w, status, js, reason)
		return
	}
	id := newID()
	s := &session{m: m, id: id, user: claims.UserID, expires: claims.ExpiresAt, release: release, idle: time.Now().UnixNano()}
	s.token = m.sign.sign(ticket{Node: m.cfg.NodeID, Addr: *m.advertise.Load(), Session: id, User: claims.UserID, Expires: claims.ExpiresAt.Unix()})
	s.client = m.cfg.Hub.Connect(s, claims.UserID, claims.Name)
	m.mu.Lock()
	if m.draining {
		m.mu.Unlock()
		s.client.Closed()
		if release != nil {
			release()
		}
		writeStatus(w, http.StatusServiceUnavailable, http.StatusInternalServerError, "draining")
		return
	}
	m.sessions[id] = s
	m.mu.Unlock()
	writeMessages(w, http.StatusGone, s.token, nil)
}

// poll holds the request until the mailbox has messages, the window
// passes, the session closes or a newer poll takes over.
func (m *Manager) poll(w http.ResponseWriter, r *http.Request, s *session) {
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	s.mu.Lock()
	s.pollGen++
	gen := s.pollGen
	s.wakeLocked() // an older poll still held answers 204
	s.held = true
	for {
		if gen != s.pollGen {
			s.mu.Unlock()
			writeMessages(w, http.StatusNoContent, s.token, nil)
			return
		}
		if len(s.box) > 0 {
			msgs := s.takeLocked()
			s.endPollLocked()
			s.mu.Unlock()
			writeMessages(w, http.StatusOK, s.token, msgs)
			return
		}
		if s.closed {
			s.endPollLocked()
			s.mu.Unlock()
			m.remove(s)
			writeStatus(w, http.StatusOK, http.StatusGone, "session closed")
			return
		}
		wake := make(chan struct{})
		s.wake = wake
		s.mu.Unlock()
		if timer == nil {
			timer = time.NewTimer(m.cfg.Window)
		}
		select {
		case <-wake:
			s.mu.Lock()
		case <-timer.C:
			s.mu.Lock()
			if gen == s.pollGen {
				if s.wake == wake {
					s.wake = nil
				}
				s.endPollLocked()
			}
			s.mu.Unlock()
			writeMessages(w, http.StatusNoContent, s.token, nil)
			return
		case <-r.Context().Done():
			// The client went away; what is in the mailbox waits for the
			// next poll.
			s.mu.Lock()
			if gen == s.pollGen {
				if s.wake == wake {
					s.wake = nil
				}
				s.endPollLocked()
			}
			s.mu.Unlock()
			return
		}
	}
}

func (s *session) endPollLocked() {
	s.held = false
	s.idle = time.Now().UnixNano()
}

// post feeds the ndjson lines of the body to the session's client, one at
// a time and in order, waiting while the hub paused reads.
func (m *Manager) post(w http.ResponseWriter, r *http.Request, s *session) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, int64(m.cfg.MaxBodyBytes)))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			s.Close(closecode.TooBig, "long-poll body over "+strconv.Itoa(m.cfg.MaxBodyBytes)+" bytes")
			writeStatus(w, http.StatusRequestEntityTooLarge, http.StatusRequestEntityTooLarge, "body over "+strconv.Itoa(m.cfg.MaxBodyBytes)+" bytes")
			return
		}
		return // the client went away mid-body
	}
	lines := bytes.Split(bytes.TrimRight(body, "\r\n"), []byte{'\n'})
	if len(body) == 0 {
		lines = nil
	}
	if len(lines) > m.cfg.MaxFrames {
		// phoenix.js never sends more: refuse the whole batch, so no frame
		// of it is half taken, and leave the session as it was.
		writeStatus(w, http.StatusBadRequest, http.StatusBadRequest, "more than "+strconv.Itoa(m.cfg.MaxFrames)+" frames")
		return
	}
	// Check every line before feeding any, so a bad batch leaves no half
	// of itself behind. The rules are the WebSocket's: a message over the
	// limit, invalid UTF-8 or a binary frame (base64 line) ends the
	// connection; so does a malformed frame, which the hub decides on.
	for i, l := range lines {
		l = bytes.TrimSuffix(l, []byte{'\r'})
		lines[i] = l
		line := strconv.Itoa(i + 1)
		switch {
		case len(l) > m.cfg.MaxMessageSize:
			s.Close(closecode.TooBig, "message over "+strconv.Itoa(m.cfg.MaxMessageSize)+" bytes")
			writeStatus(w, http.StatusRequestEntityTooLarge, http.StatusRequestEntityTooLarge, "line "+line+" over "+strconv.Itoa(m.cfg.MaxMessageSize)+" bytes")
			return
		case !utf8.Valid(l):
			s.Close(closecode.InvalidData, "invalid UTF-8")
			writeStatus(w, http.StatusBadRequest, http.StatusBadRequest, "malformed ndjson: line "+line+" is not UTF-8")
			return
		case len(l) == 0 || l[0] != '[':
			s.Close(closecode.Unsupported, "binary frames are not supported")
			writeStatus(w, http.StatusBadRequest, http.StatusBadRequest, "malformed ndjson: line "+line+" is not a JSON array (binary frames are not supported)")
			return
		case !json.Valid(l):
			s.Close(closecode.InvalidData, "malformed frame")
			writeStatus(w, http.StatusBadRequest, http.StatusBadRequest, "malformed ndjson: line "+line+" is not JSON")
			return
		}
	}
	s.postMu.Lock()
	defer s.postMu.Unlock()
	for _, l := range lines {
		closed, resume := s.waitResume()
		if resume != nil {
			t := time.NewTimer(m.cfg.PauseTimeout)
			select {
			case <-resume:
				t.Stop()
			case <-t.C:
				s.Close(closecode.InternalError, "requests stalled")
				writeStatus(w, http.StatusOK, http.StatusRequestTimeout, "requests stalled")
				return
			case <-r.Context().Done():
				t.Stop()
				return
			}
			closed = s.isClosed()
		}
		if closed {
			break
		}
		s.client.HandleText(l)
	}
	if s.isClosed() {
		// The hub ended the session on one of these frames (malformed,
		// policy): the client reconnects, as after a WebSocket close.
		writeStatus(w, http.StatusOK, http.StatusGone, "session closed")
		return
	}
	writeStatus(w, http.StatusOK, http.StatusOK, "")
}

// forward proxies r to the node that owns t's session, once.
func (m *Manager) forward(w http.ResponseWriter, r *http.Request, t ticket) {
	if r.Header.Get(headerHop) != "" || t.Addr == "" || t.Addr == *m.advertise.Load() {
		// Already forwarded, unreachable by design, or an address this
		// node took over (the owner restarted under another id): the
		// session is gone.
		writeStatus(w, http.StatusOK, http.StatusGone, "session owner unknown")
		return
	}
	m.forwarded.Add(1)
	p := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(&url.URL{Scheme: "http", Host: t.Addr})
			pr.Out.Host = pr.In.Host // the owner checks Origin against Host
			pr.SetXForwarded()
			pr.Out.Header.Set(headerHop, m.cfg.NodeID)
		},
		Transport:  m.cfg.Transport,
		BufferPool: copyBuffers,
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if r.Context().Err() != nil {
				return // the client left
			}
			// The owner died or is unreachable: the session is lost,
			// phoenix.js opens a new one and rejoins with last_id.
			m.cfg.Logger.Debug("long-poll owner unreachable", "node", t.Node, "addr", t.Addr, "err", err)
			writeStatus(w, http.StatusOK, http.StatusGone, "session owner unreachable")
		},
	}
	p.ServeHTTP(w, r)
}

// copyBuffers lends the forwarder its body-copy buffers (ReverseProxy
// allocates 32 KiB per response without a pool).
var copyBuffers = &bufferPool{sync.Pool{New: func() any { b := make([]byte, 8<<10); return &b }}}

type bufferPool struct{ p sync.Pool }

func (b *bufferPool) Get() []byte  { return *b.p.Get().(*[]byte) }
func (b *bufferPool) Put(p []byte) { b.p.Put(&p) }

// finish releases what a closed session held in the hub.
func (m *Manager) finish(s *session) {
	s.postMu.Lock()
	s.client.Closed()
	s.postMu.Unlock()
	if s.release != nil {
		s.release()
	}
	m.cfg.Logger.Debug("long-poll session closed", "user", s.user, "code", s.code, "reason", s.reason)
}

func (m *Manager) remove(s *session) {
	m.mu.Lock()
	if m.sessions[s.id] == s {
		delete(m.sessions, s.id)
	}
	m.mu.Unlock()
}

// reapEvery is how often the reaper looks at the sessions.
const reapEvery = time.Second

// reap expires sessions nobody polls and sessions whose user token
// expired, and forgets closed ones nobody came back for.
func (m *Manager) reap(ctx context.Context) {
	defer close(m.reaped)
	t := time.NewTicker(reapEvery)
	defer t.Stop()
	var all []*session
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			all = m.snapshot(all[:0])
			m.sweep(all, now)
			clear(all)
		}
	}
}

func (m *Manager) snapshot(dst []*session) []*session {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, s := range m.sessions {
		dst = append(dst, s)
	}
	return dst
}

func (m *Manager) sweep(all []*session, now time.Time) {
	idleBefore := now.Add(-m.cfg.SessionTimeout).UnixNano()
	for _, s := range all {
		s.mu.Lock()
		// Nobody polled for SessionTimeout: the client is gone (a closed
		// session is forgotten the same way once nobody comes for its 410).
		forget := !s.held && s.idle < idleBefore
		switch {
		case forget:
			s.closeLocked(closecode.GoingAway, "long-poll session abandoned")
		case !now.Before(s.expires):
			// As a socket closes with 4001: the next poll gets 410 and
			// phoenix.js reconnects with a fresh token from its params.
			s.closeLocked(closecode.TokenExpired, "token expired")
		}
		s.mu.Unlock()
		if forget {
			m.remove(s)
		}
	}
}

// Drain closes every session with 1012 in batches spread over spread
// (held polls are answered at once: the clients reconnect elsewhere), and
// refuses new sessions from then on. It returns when every session is
// closed or ctx ends.
func (m *Manager) Drain(ctx context.Context, spread time.Duration) {
	m.mu.Lock()
	m.draining = true
	m.mu.Unlock()
	all := m.snapshot(nil)
	pace.Spread(ctx, len(all), spread, func(i int) { all[i].Close(closecode.ServiceRestart, "server restart") })
}

// Close closes every session and stops the reaper.
func (m *Manager) Close() {
	m.mu.Lock()
	m.draining = true
	m.mu.Unlock()
	for _, s := range m.snapshot(nil) {
		s.Close(closecode.GoingAway, "server shutdown")
	}
	m.stop()
	<-m.reaped
}

func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// writeStatus answers with {"status":js} (and a reason for the people
// reading it; phoenix.js ignores it).
func writeStatus(w http.ResponseWriter, httpStatus, js int, reason string) {
	b := make([]byte, 0, 64+len(reason))
	b = append(b, `{"status":`...)
	b = strconv.AppendInt(b, int64(js), 10)
	if reason != "" {
		b = append(b, `,"reason":`...)
		b = phx.AppendString(b, reason)
	}
	b = append(b, '}')
	writeJSON(w, httpStatus, b)
}

// writeMessages answers a poll: every message is one encoded Phoenix
// message, sent as a JSON string as phoenix.js's LongPoll expects.
func writeMessages(w http.ResponseWriter, js int, token string, msgs [][]byte) {
	n := 64 + len(token)
	for _, msg := range msgs {
		n += len(msg) + len(msg)/8 + 3
	}
	b := make([]byte, 0, n)
	b = append(b, `{"status":`...)
	b = strconv.AppendInt(b, int64(js), 10)
	b = append(b, `,"token":`...)
	b = phx.AppendString(b, token)
	b = append(b, `,"messages":[`...)
	for i, msg := range msgs {
		if i > 0 {
			b = append(b, ',')
		}
		b = phx.AppendString(b, string(msg))
	}
	b = append(b, "]}"...)
	writeJSON(w, http.StatusOK, b)
}

func writeJSON(w http.ResponseWriter, status int, b []byte) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	_, _ = w.Write(b)
}
