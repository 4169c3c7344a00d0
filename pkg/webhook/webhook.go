// Package webhook sends ElChat's events to the host app: signed JSON POSTs
// from the store's durable outbox (store.Outbox), at least once.
//
// Every node runs a Sender. It claims due events in small batches (on
// PostgreSQL with FOR UPDATE SKIP LOCKED, so the nodes of a cluster share
// the work and never claim the same event at once), POSTs each one with a
// timeout and records the outcome. A claim is a lease of Lease (three
// times the POST timeout): a node killed mid-delivery leaves its events to
// be claimed again once their leases end, by whichever node comes first,
// with the same event id and body. That is the at-least-once half; the
// receiver's half is to ignore an ElChat-Event-Id it has already handled.
//
// Outcomes, the receiver contract of the README:
//
//   - 2xx: delivered, the event is deleted.
//   - 408, 425, 429, 5xx, a timeout or a connection error: retried after
//     RetryBase·2^(attempt-1) (±20%, at most RetryMax, or the receiver's
//     Retry-After), up to MaxAttempts attempts; then dead.
//   - any other status (3xx, 4xx): dead at once. The receiver looked at
//     the request and refused it; sending the same bytes again cannot
//     change its mind, and retrying a wrong URL or secret for hours would
//     only hide the mistake. Dead events stay visible through
//     GET /api/v1/webhooks/dead and elchat_webhook_dead.
//
// Unread-ness is checked by the outbox when it claims: an event none of
// whose messages is still unread is dropped, never sent.
package webhook

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/elchat/elchat/pkg/store"
)

// Config configures a Sender. Zero fields take the defaults below.
type Config struct {
	URL    string // where to POST (http:// or https://)
	Secret string // HMAC-SHA256 key of ElChat-Signature
	Outbox store.Outbox
	// Owner names this sender in the outbox's claims; unique per process.
	Owner string

	Timeout     time.Duration // one POST, response included (default 10s)
	MaxAttempts int           // attempts before an event is dead (default 10)
	RetryBase   time.Duration // first retry delay (default 10s)
	RetryMax    time.Duration // longest retry delay (default 1h)
	Poll        time.Duration // how often to look for due events (default 250ms)
	Concurrency int           // POSTs in flight at once (default 16)

	Client  *http.Client // default: one with Timeout, no redirects
	Metrics Metrics      // nil: none
	Logger  *slog.Logger // nil: slog.Default()
}

// Defaults of Config.
const (
	DefaultTimeout     = 10 * time.Second
	DefaultMaxAttempts = 10
	DefaultRetryBase   = 10 * time.Second
	DefaultRetryMax    = time.Hour
)

// Metrics receives what a Sender does. pkg/metrics implements it.
type Metrics interface {
	// WebhookSent counts a delivered event; delay is from the event's
	// due time to the receiver's 2xx.
	WebhookSent(delay time.Duration)
	WebhookFailed() // an attempt that will be retried
	WebhookDead()   // an event given up on
	WebhookCancelled(n int)
}

// Validate checks a URL and secret before a node starts with them.
func Validate(rawURL, secret string) error {
	u, err := url.Parse(rawURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("--webhook-url %q must be an http:// or https:// URL", rawURL)
	}
	if secret == "" {
		return errors.New("--webhook-url needs --webhook-secret (ELCHAT_WEBHOOK_SECRET): receivers must be able to tell ElChat's POSTs from anybody's")
	}
	if len(secret) < 16 {
		return errors.New("--webhook-secret must be at least 16 bytes")
	}
	return nil
}

// Probe dials the receiver's host and port once, so that a node started
// with a URL nothing answers on says so at start-up instead of quietly
// filling its outbox.
func Probe(ctx context.Context, rawURL string) error {
	u, err := url.Parse(rawURL)
	if err != nil {
		return err
	}
	port := u.Port()
	if port == "" {
		port = map[string]string{"http": "80", "https": "443"}[u.Scheme]
	}
	addr := net.JoinHostPort(u.Hostname(), port)
	c, err := (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("webhook receiver %s unreachable: %w", addr, err)
	}
	return c.Close()
}

// Sender delivers the outbox's events. Run it once per node.
type Sender struct {
	cfg    Config // immutable after New
	secret []byte
	lease  time.Duration
	log    *slog.Logger

	sent, failed, dead, cancelled atomic.Int64
	// The outbox's backlog, sampled every CountEvery by Run.
	pending, sending, deadNow atomic.Int64
}

// CountEvery is how often Run samples the outbox's backlog for Backlog.
const CountEvery = 5 * time.Second

// Backlog returns the outbox's events by state as last sampled: pending
// (collecting), sending (sealed: in flight or waiting for a retry) and
// dead. Every node samples the same shared outbox.
func (s *Sender) Backlog() (pending, sending, dead int64) {
	return s.pending.Load(), s.sending.Load(), s.deadNow.Load()
}

func (s *Sender) sampleBacklog(ctx context.Context) {
	t := time.NewTicker(CountEvery)
	defer t.Stop()
	for {
		cctx, cancel := context.WithTimeout(ctx, CountEvery)
		c, err := s.cfg.Outbox.EventCounts(cctx)
		cancel()
		if err == nil {
			s.pending.Store(c[store.EventPending])
			s.sending.Store(c[store.EventSending])
			s.deadNow.Store(c[store.EventDead])
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// New returns a Sender for cfg, which must pass Validate.
func New(cfg Config) (*Sender, error) {
	if err := Validate(cfg.URL, cfg.Secret); err != nil {
		return nil, err
	}
	if cfg.Outbox == nil {
		return nil, errors.New("webhook: the store keeps no outbox")
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = DefaultMaxAttempts
	}
	if cfg.RetryBase <= 0 {
		cfg.RetryBase = DefaultRetryBase
	}
	if cfg.RetryMax <= 0 {
		cfg.RetryMax = DefaultRetryMax
	}
	if cfg.Poll <= 0 {
		cfg.Poll = 250 * time.Millisecond
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 16
	}
	if cfg.Owner == "" {
		cfg.Owner = "elchat-" + strconv.FormatUint(rand.Uint64(), 36)
	}
	if cfg.Client == nil {
		cfg.Client = &http.Client{
			Timeout: cfg.Timeout,
			// A redirect is the receiver's configuration problem: follow
			// none, and report the 3xx (see the package doc).
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
			Transport: &http.Transport{
				Proxy:               http.ProxyFromEnvironment,
				MaxIdleConnsPerHost: cfg.Concurrency,
				IdleConnTimeout:     90 * time.Second,
			},
		}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Sender{cfg: cfg, secret: []byte(cfg.Secret), lease: 3*cfg.Timeout + 5*time.Second, log: cfg.Logger}, nil
}

// Stats counts what this sender did since it started.
type Stats struct{ Sent, Failed, Dead, Cancelled int64 }

// Stats returns the counts so far.
func (s *Sender) Stats() Stats {
	return Stats{Sent: s.sent.Load(), Failed: s.failed.Load(), Dead: s.dead.Load(), Cancelled: s.cancelled.Load()}
}

// Lease is how long a claim lasts: a node that dies holding one delays its
// events by at most this much.
func (s *Sender) Lease() time.Duration { return s.lease }

// Run delivers due events until ctx ends, then waits for the POSTs in
// flight (each bounded by Timeout) and records their outcomes, so a
// graceful shutdown leaves no claim to expire.
func (s *Sender) Run(ctx context.Context) {
	slots := make(chan struct{}, s.cfg.Concurrency)
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { s.sampleBacklog(ctx) })
	timer := time.NewTimer(0)
	defer timer.Stop()
	var lastErr time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		// Claim only what can be sent right away: a claimed event waiting
		// for a free slot would burn its lease.
		n := 0
		select {
		case slots <- struct{}{}:
			n++
		case <-ctx.Done():
			return
		}
	fill:
		for n < s.cfg.Concurrency {
			select {
			case slots <- struct{}{}:
				n++
			default:
				break fill
			}
		}
		cctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
		evs, cancelled, err := s.cfg.Outbox.ClaimEvents(cctx, s.cfg.Owner, s.lease, n)
		cancel()
		for range n - len(evs) {
			<-slots
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if time.Since(lastErr) > time.Minute {
				s.log.Warn("webhook: cannot claim events", "err", err)
				lastErr = time.Now()
			}
			timer.Reset(s.cfg.Poll)
			continue
		}
		if cancelled > 0 {
			s.cancelled.Add(int64(cancelled))
			if s.cfg.Metrics != nil {
				s.cfg.Metrics.WebhookCancelled(cancelled)
			}
		}
		for _, ev := range evs {
			wg.Go(func() {
				defer func() { <-slots }()
				s.deliver(ev)
			})
		}
		if len(evs) == n {
			timer.Reset(0) // more may be due
		} else {
			timer.Reset(s.cfg.Poll)
		}
	}
}

// EventID is the public id of outbox event id: the ElChat-Event-Id header
// and the body's "id".
func EventID(id int64) string { return "evt_" + strconv.FormatInt(id, 10) }

// Body is the JSON body of a message.unread event.
type Body struct {
	ID       string          `json:"id"`
	Type     string          `json:"type"`
	UserID   string          `json:"user_id"`
	DueAt    time.Time       `json:"due_at"`
	Messages []store.Message `json:"messages"`
}

// Encode returns ev's body. It depends only on what the outbox fixed at
// the first claim, so every attempt sends the same bytes.
func Encode(ev store.Event) ([]byte, error) {
	msgs := ev.Messages
	if msgs == nil {
		msgs = []store.Message{}
	}
	return json.Marshal(Body{ID: EventID(ev.ID), Type: ev.Type, UserID: ev.UserID, DueAt: ev.DueAt, Messages: msgs})
}

func (s *Sender) deliver(ev store.Event) {
	o := s.attempt(ev)
	// Background, not Run's ctx: a shutdown still records what happened.
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.Timeout)
	defer cancel()
	held, err := s.cfg.Outbox.FinishEvent(ctx, ev.ID, s.cfg.Owner, o)
	if err != nil {
		// The lease ends and the event is sent again: at least once.
		s.log.Warn("webhook: cannot record an attempt; the event will be retried", "event", EventID(ev.ID), "err", err)
	} else if !held {
		s.log.Warn("webhook: lease lost before the outcome was recorded", "event", EventID(ev.ID))
	}
	switch o.Kind {
	case store.Sent:
		s.sent.Add(1)
		if s.cfg.Metrics != nil {
			s.cfg.Metrics.WebhookSent(time.Since(ev.DueAt))
		}
	case store.Retry:
		s.failed.Add(1)
		if s.cfg.Metrics != nil {
			s.cfg.Metrics.WebhookFailed()
		}
	case store.Dead:
		s.dead.Add(1)
		if s.cfg.Metrics != nil {
			s.cfg.Metrics.WebhookDead()
		}
		s.log.Error("webhook: event dead", "event", EventID(ev.ID), "user", ev.UserID, "attempts", ev.Attempts, "err", o.Error)
	}
}

// attempt POSTs ev once and classifies the answer.
func (s *Sender) attempt(ev store.Event) store.Outcome {
	body, err := Encode(ev)
	if err != nil {
		return store.Outcome{Kind: store.Dead, Error: "encode: " + err.Error()}
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.cfg.URL, bytes.NewReader(body))
	if err != nil {
		return store.Outcome{Kind: store.Dead, Error: err.Error()}
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "ElChat-Webhook/1")
	req.Header.Set(HeaderEventID, EventID(ev.ID))
	req.Header.Set(HeaderAttempt, strconv.Itoa(ev.Attempts))
	req.Header.Set(HeaderSignature, Sign(s.secret, time.Now().Unix(), body))
	resp, err := s.cfg.Client.Do(req)
	if err != nil {
		return s.retry(ev, "POST: "+err.Error(), 0)
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10)) //nolint:errcheck // drained for connection reuse only
	resp.Body.Close()
	code := resp.StatusCode
	switch {
	case code >= 200 && code < 300:
		return store.Outcome{Kind: store.Sent}
	case code == http.StatusRequestTimeout, code == http.StatusTooEarly, code == http.StatusTooManyRequests, code >= 500:
		return s.retry(ev, "HTTP "+strconv.Itoa(code), retryAfter(resp.Header.Get("Retry-After")))
	default:
		return store.Outcome{Kind: store.Dead, Error: "HTTP " + strconv.Itoa(code) + ": refused by the receiver"}
	}
}

// retry is the outcome of a failed attempt: another one after the backoff
// (or the receiver's Retry-After), or dead once MaxAttempts are spent.
func (s *Sender) retry(ev store.Event, why string, after time.Duration) store.Outcome {
	if ev.Attempts >= s.cfg.MaxAttempts {
		return store.Outcome{Kind: store.Dead, Error: fmt.Sprintf("%s (attempt %d of %d)", why, ev.Attempts, s.cfg.MaxAttempts)}
	}
	if after <= 0 {
		after = Backoff(s.cfg.RetryBase, s.cfg.RetryMax, ev.Attempts)
	}
	return store.Outcome{Kind: store.Retry, RetryIn: min(after, s.cfg.RetryMax), Error: why}
}

// Backoff is the delay after failed attempt n (1-based): base·2^(n-1),
// jittered by ±20% so events failed together do not return together, and
// at most max.
func Backoff(base, maxDelay time.Duration, n int) time.Duration {
	d := base
	for i := 1; i < n && d < maxDelay; i++ {
		d *= 2
	}
	d = min(d, maxDelay)
	return time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
}

func retryAfter(v string) time.Duration {
	if v == "" {
		return 0
	}
	if secs, err := strconv.Atoi(v); err == nil && secs > 0 {
		return time.Duration(secs) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		return time.Until(t)
	}
	return 0
}
