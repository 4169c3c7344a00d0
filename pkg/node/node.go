// Package node wires one ElChat node: store, Redis bus, hub, socket engine,
// server, metrics, HTTP API, health endpoints and, in development mode, the
// demo page. It is the only place a node is put together: cmd/elchat and
// the in-process test nodes of internal/phxtest both call New.
package node

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/elchat/elchat/pkg/api"
	"github.com/elchat/elchat/pkg/auth"
	"github.com/elchat/elchat/pkg/closecode"
	"github.com/elchat/elchat/pkg/demo"
	"github.com/elchat/elchat/pkg/hub"
	"github.com/elchat/elchat/pkg/longpoll"
	"github.com/elchat/elchat/pkg/metrics"
	"github.com/elchat/elchat/pkg/redisbus"
	"github.com/elchat/elchat/pkg/server"
	"github.com/elchat/elchat/pkg/store"
	"github.com/elchat/elchat/pkg/store/postgres"
	"github.com/elchat/elchat/pkg/store/sqlite"
	"github.com/elchat/elchat/pkg/transport"
	"github.com/elchat/elchat/pkg/webhook"
)

// Node is a running ElChat node. Serve (or Start) it on a listener; stop
// it with Shutdown.
type Node struct {
	cfg    Config // immutable after New, with defaults filled in
	log    *slog.Logger
	st     store.Store
	outbox store.Outbox  // the store's webhook outbox; nil when it keeps none
	bus    *redisbus.Bus // nil: single node
	hub    *hub.Hub
	engine transport.Engine
	srv    *server.Server
	lp     *longpoll.Manager
	m      *metrics.Metrics
	mux    *http.ServeMux
	hooks  *webhook.Sender // nil: webhooks off

	stopHub   context.CancelFunc
	bg        sync.WaitGroup // hub.Run
	stopHooks context.CancelFunc
	hooksDone sync.WaitGroup // the webhook sender

	mu sync.Mutex
	ln net.Listener // guarded by mu

	shutdownOnce sync.Once
	shutdownErr  error
}

// New validates cfg, opens the store and, with RedisURL, the Redis bus, and
// builds the hub, the engine, the server and the HTTP handlers. With
// WebhookURL it also checks that the receiver accepts a TCP connection and
// starts the webhook sender. ctx bounds
// the opening only; the node runs until Shutdown. On error everything
// opened so far is closed again.
func New(ctx context.Context, cfg Config) (_ *Node, err error) {
	cfg = cfg.withDefaults()
	key, err := cfg.validate()
	if err != nil {
		return nil, err
	}
	if cfg.NodeID == "" {
		// Long-poll session tokens name their node, and the bus its
		// presence: one id for both, even on a single node.
		cfg.NodeID = randomID()
	}
	log := cfg.Logger
	if cfg.Dev {
		log.Warn("development mode: demo token endpoint signs with the public development secret; never expose this node")
	}
	m := cfg.Metrics
	if m == nil {
		m = metrics.New()
	}
	n := &Node{cfg: cfg, log: log, m: m, mux: http.NewServeMux()}

	// undo closes, newest first, what New opened if it fails.
	var undo []func()
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
		}
	}()

	if n.st = cfg.Store; n.st == nil {
		if n.st, err = openStore(ctx, &cfg, store.BatchConfig{Observer: m.StoreBatch}); err != nil {
			return nil, err
		}
	}
	undo = append(undo, func() { n.st.Close() })
	// Outages are logged when they start and when they end, not once per
	// failed call.
	// The outbox is the store's own ability, not the hub's business: the
	// sender and the API take the store unwrapped.
	n.outbox, _ = n.st.(store.Outbox)
	n.st = store.Watch(n.st, log)

	hcfg := hub.Config{
		Store:        n.st,
		Metrics:      m,
		Logger:       log,
		MaxChannels:  cfg.MaxChannels,
		MaxBodyBytes: cfg.MaxBodyBytes,
		StoreTimeout: cfg.StoreTimeout,
		PushRate:     cfg.PushRate,
		PushBurst:    cfg.PushBurst,
		Workers:      cfg.RequestWorkers,
		MailboxSize:  cfg.RequestQueue,
		// A reply over the outbound queue bound would get the socket
		// dropped as a slow consumer: keep pages well below it.
		MaxReplyBytes: min(hub.DefaultMaxReplyBytes, cfg.Engine.MaxQueueBytes/4),
		EditWindow:    cfg.EditWindow,
	}
	verifier := auth.NewVerifier(key)
	if cfg.ChatPolicy == ChatPolicyGranted {
		hcfg.Grants = verifier
	}
	if cfg.clustered() {
		opts := redisbus.Options{
			URL: cfg.RedisURL, Sentinels: cfg.sentinels(), MasterName: cfg.RedisMaster,
			Cluster: cfg.clusterSeeds(),
			Prefix:  cfg.RedisPrefix, NodeID: cfg.NodeID,
			PresenceTTL: cfg.PresenceTTL, Liveness: cfg.RedisLiveness,
			Logger: log, OnPublish: m.BusPublished,
		}
		// The bus reports outages and remote messages to the hub through
		// hub.Run, so nothing it sees before the hub exists is lost.
		if n.bus, err = redisbus.New(ctx, opts); err != nil {
			return nil, fmt.Errorf("redis: %w", err)
		}
		undo = append(undo, n.bus.Close)
		hcfg.Bus, hcfg.Presence = n.bus, n.bus.Presence()
	}

	n.engine, err = transport.New(cfg.Transport, cfg.Engine)
	if err != nil {
		return nil, err
	}
	undo = append(undo, func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = n.engine.Shutdown(sctx)
	})

	if cfg.WebhookURL != "" {
		ob := n.outbox
		if ob == nil {
			return nil, fmt.Errorf("webhooks: the store (%T) keeps no outbox", cfg.Store)
		}
		if err = webhook.Probe(ctx, cfg.WebhookURL); err != nil {
			return nil, fmt.Errorf("%w (--webhook-url %s; start the receiver first)", err, cfg.WebhookURL)
		}
		owner := cfg.NodeID
		if owner == "" {
			owner = "node"
		}
		// Unique per process: a restarted node must not finish what its
		// previous life claimed, so its claims expire instead.
		owner += "-" + strconv.FormatInt(time.Now().UnixNano(), 36)
		if n.hooks, err = webhook.New(webhook.Config{
			URL: cfg.WebhookURL, Secret: cfg.WebhookSecret, Outbox: ob, Owner: owner,
			Timeout: cfg.WebhookTimeout, MaxAttempts: cfg.WebhookMaxAttempts, RetryBase: cfg.WebhookRetryBase,
			Metrics: m, Logger: log,
		}); err != nil {
			return nil, err
		}
		hcfg.NotifyAfter = cfg.NotifyAfter
	}

	n.hub = hub.New(hcfg)
	undo = append(undo, n.hub.Close)
	// Bans are refused from the first handshake on.
	if err := n.hub.LoadBans(ctx); err != nil {
		log.Warn("could not read the bans; retrying in the background", "err", err)
	}
	hubCtx, stopHub := context.WithCancel(context.Background())
	n.stopHub = stopHub
	n.bg.Add(1)
	go func() {
		defer n.bg.Done()
		n.hub.Run(hubCtx) //nolint:errcheck // ends with hubCtx
	}()
	undo = append(undo, func() { stopHub(); n.bg.Wait() })
	if n.bus != nil {
		if cfg.ActionCablePrefix != "" {
			if err = n.bus.ListenActionCable(hubCtx, cfg.ActionCablePrefix, nil); err != nil {
				return nil, fmt.Errorf("action cable listener: %w", err)
			}
		}
	}

	if n.hooks != nil {
		hctx, stop := context.WithCancel(context.Background())
		n.stopHooks = stop
		n.hooksDone.Go(func() { n.hooks.Run(hctx) })
		undo = append(undo, n.stopWebhooks)
	}

	n.srv = server.New(server.Config{
		Verifier:         verifier,
		Banned:           n.hub.Banned,
		Origins:          server.ParseOrigins(cfg.AllowedOrigins),
		Engine:           n.engine,
		Hub:              n.hub,
		HTTP:             n.mux,
		HandshakeTimeout: cfg.HandshakeTimeout,
		MaxHandshakes:    cfg.MaxHandshakes,
		Limits:           &server.Limits{PerUser: cfg.MaxConnsPerUser, PerIP: cfg.MaxConnsPerIP},
		UpgradeRate:      cfg.UpgradeRate,
		UpgradeBurst:     cfg.UpgradeBurst,
		Logger:           log,
		Metrics:          m,
	})
	n.lp = longpoll.New(longpoll.Config{
		Secret:         key,
		NodeID:         cfg.NodeID,
		Advertise:      cfg.AdvertiseAddr,
		Hub:            n.hub,
		Auth:           n.srv,
		Window:         cfg.LongPollWindow,
		SessionTimeout: cfg.LongPollTimeout,
		MaxBodyBytes:   cfg.LongPollMaxBody,
		MaxMessageSize: cfg.Engine.MaxMessageSize,
		// A long-poll mailbox is bounded as a socket's outbound queue is.
		MaxQueueBytes:  cfg.Engine.MaxQueueBytes,
		MaxQueueFrames: cfg.Engine.MaxQueueFrames,
		Logger:         log,
	})
	undo = append(undo, n.lp.Close)
	n.registerMetrics()
	n.routes(key)
	return n, nil
}

func openStore(ctx context.Context, c *Config, batch store.BatchConfig) (store.Store, error) {
	if c.DatabaseURL == "" {
		st, err := sqlite.OpenWith(ctx, c.DataDir, sqlite.Options{Batch: batch})
		if err != nil {
			return nil, fmt.Errorf("store: %w", err)
		}
		return st, nil
	}
	if c.Migrate {
		c.Logger.Info("applying migrations")
	}
	st, err := postgres.Open(ctx, c.DatabaseURL, postgres.Options{Batch: batch, Migrate: c.Migrate})
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	return st, nil
}

func (n *Node) registerMetrics() {
	m, engine, h := n.m, n.engine, n.hub
	m.GaugeFunc("elchat_connections", "WebSocket connections open on this node.", func() float64 { return float64(engine.Len()) })
	m.GaugeFunc("elchat_clients", "Authenticated clients on this node.", func() float64 { return float64(h.Clients()) })
	m.CounterFunc("elchat_slow_consumer_closes_total", "Connections (sockets and long-poll sessions) dropped because their outbound queue overflowed or stalled.",
		func() float64 { slow, _ := n.lp.Stats(); return float64(engine.Stats().SlowConsumerCloses + slow) })
	m.CounterFunc("elchat_idle_closes_total", "Connections closed by the idle timeout.",
		func() float64 { return float64(engine.Stats().IdleCloses) })
	m.CounterFunc("elchat_protocol_error_closes_total", "Connections closed for a WebSocket protocol error.",
		func() float64 { return float64(engine.Stats().ProtocolErrorCloses) })
	m.CounterFunc("elchat_ws_frames_in_total", "WebSocket frames received.", func() float64 { return float64(engine.Stats().FramesIn) })
	m.CounterFunc("elchat_ws_frames_out_total", "WebSocket frames written.", func() float64 { return float64(engine.Stats().FramesOut) })
	m.CounterFunc("elchat_ws_bytes_in_total", "WebSocket bytes received.", func() float64 { return float64(engine.Stats().BytesIn) })
	m.CounterFunc("elchat_ws_bytes_out_total", "WebSocket bytes written.", func() float64 { return float64(engine.Stats().BytesOut) })
	if hooks := n.hooks; hooks != nil {
		m.GaugeFunc("elchat_webhook_pending", "Webhook events collecting messages until due (whole outbox, sampled every 5s).",
			func() float64 { p, _, _ := hooks.Backlog(); return float64(p) })
		m.GaugeFunc("elchat_webhook_sending", "Webhook events sealed and in flight or waiting for a retry (whole outbox).",
			func() float64 { _, s, _ := hooks.Backlog(); return float64(s) })
		m.GaugeFunc("elchat_webhook_dead", "Dead-lettered webhook events kept in the outbox (GET /api/v1/webhooks/dead).",
			func() float64 { _, _, d := hooks.Backlog(); return float64(d) })
	}
	lp := n.lp
	m.GaugeFunc("elchat_longpoll_sessions", "Long-poll sessions owned by this node.", func() float64 { return float64(lp.Len()) })
	m.CounterFunc("elchat_longpoll_forwarded_total", "Long-poll requests forwarded to the node that owns their session.",
		func() float64 { _, fwd := lp.Stats(); return float64(fwd) })
	if bus := n.bus; bus != nil {
		m.CounterFunc("elchat_bus_published_total", "Frames published to Redis.", func() float64 { return float64(bus.Stats().Published) })
		m.CounterFunc("elchat_bus_lost_total", "Frames dropped or failed on the way to Redis (outage or full queue).",
			func() float64 { st := bus.Stats(); return float64(st.Dropped + st.Failed) })
		m.CounterFunc("elchat_bus_ingress_refused_total", "Host-app messages refused at the Redis ingress (Action Cable, plain PUBLISH).",
			func() float64 { return float64(bus.Stats().Refused) })
		m.CounterFunc("elchat_bus_forged_total", "Malformed messages dropped on the node-to-node Redis channels.",
			func() float64 { return float64(bus.Stats().Forged) })
		m.CounterFunc("elchat_bus_silent_total", "Pub/sub connections found silent by their canary and replaced.",
			func() float64 { return float64(bus.Stats().Silent) })
	}
}

func (n *Node) routes(key []byte) {
	n.mux.Handle("GET /metrics", n.m.Handler())
	n.mux.Handle(longpoll.Path, n.lp)
	a := api.New(n.cfg.APIKey, n.hub)
	if n.hooks != nil {
		a.DeadEvents(n.outbox)
	}
	n.mux.Handle("/api/v1/", a)
	if n.cfg.Dev {
		n.mux.Handle("/", demo.New(key, n.hub.Presence()))
	}
	n.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "ok\n") //nolint:errcheck
	})
	r := &readiness{draining: n.srv.Draining, store: n.st.Ping, log: n.log, every: readyLogEvery}
	if n.bus != nil {
		r.redis = n.bus.Ready
	}
	n.mux.Handle("GET /readyz", r)
}

// stopWebhooks stops the sender and waits for its POSTs in flight (each
// bounded by WebhookTimeout) to be recorded, before the store closes.
func (n *Node) stopWebhooks() {
	if n.stopHooks != nil {
		n.stopHooks()
		n.hooksDone.Wait()
	}
}

// Webhooks is the node's webhook sender (nil: webhooks off).
func (n *Node) Webhooks() *webhook.Sender { return n.hooks }

// Listen opens the node's TCP listener on addr. Accepted connections get
// no TCP keepalive: a socket's heartbeats and the engine's idle timeout
// find dead peers already, and the four setsockopt calls Go's default
// makes per accepted connection are a measurable part of a connect.
func Listen(ctx context.Context, addr string) (net.Listener, error) {
	lc := net.ListenConfig{KeepAlive: -1}
	return lc.Listen(ctx, "tcp", addr)
}

// Serve accepts connections on ln until Shutdown; it returns nil then.
func (n *Node) Serve(ln net.Listener) error {
	n.setListener(ln)
	return n.srv.Serve(ln)
}

// Start serves ln in the background; Addr is set when it returns.
func (n *Node) Start(ln net.Listener) {
	n.setListener(ln)
	go n.srv.Serve(ln) //nolint:errcheck // returns nil after Shutdown
}

func (n *Node) setListener(ln net.Listener) {
	n.mu.Lock()
	n.ln = ln
	n.mu.Unlock()
	if n.cfg.AdvertiseAddr == "" {
		if a, ok := ln.Addr().(*net.TCPAddr); ok && !a.IP.IsUnspecified() {
			n.lp.SetAdvertise(a.String())
		} else if n.bus != nil {
			n.log.Warn("no --advertise-addr: long-poll requests that the load balancer sends to another node cannot reach this node's sessions, which then reopen there", "listen", ln.Addr().String())
		}
	}
}

func randomID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Addr is the address being served ("" before Serve or Start).
func (n *Node) Addr() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.ln == nil {
		return ""
	}
	return n.ln.Addr().String()
}

// Config returns the node's configuration, defaults filled in.
func (n *Node) Config() Config { return n.cfg }

// Hub, Store, Engine, Server, Metrics, Bus, Handler (the HTTP side) and
// Logger expose the parts, for tests and diagnostics. Bus is nil on a
// single node.
func (n *Node) Hub() *hub.Hub             { return n.hub }
func (n *Node) Store() store.Store        { return n.st }
func (n *Node) Engine() transport.Engine  { return n.engine }
func (n *Node) Server() *server.Server    { return n.srv }
func (n *Node) Metrics() *metrics.Metrics { return n.m }
func (n *Node) Bus() *redisbus.Bus        { return n.bus }
func (n *Node) Handler() http.Handler     { return n.mux }
func (n *Node) Logger() *slog.Logger      { return n.log }

// Shutdown drains and stops the node: it stops accepting (so /readyz says
// draining and load balancers move on), closes the sockets with 1012 in
// batches spread over DrainTimeout (clients reconnect elsewhere without a
// thundering herd), shuts the engine and the HTTP side down, stops the hub,
// closes the Redis bus (withdrawing this node's presence at once), stops
// the webhook sender once its POSTs in flight are recorded, and finally
// closes the store, which flushes its pending batch. The drain gives up
// DrainTimeout+5s after it started or when ctx ends, whichever comes
// first. Later calls return the first call's result.
func (n *Node) Shutdown(ctx context.Context) error {
	n.shutdownOnce.Do(func() { n.shutdownErr = n.shutdown(ctx) })
	return n.shutdownErr
}

func (n *Node) shutdown(ctx context.Context) error {
	n.log.Info("draining", "timeout", n.cfg.DrainTimeout)
	n.srv.StopAccepting()
	dctx, cancel := context.WithTimeout(ctx, n.cfg.DrainTimeout+5*time.Second)
	defer cancel()
	// Sockets and long-poll sessions drain side by side over the same
	// window; a held poll is answered when its session closes, so its
	// client reconnects elsewhere at once.
	lpDone := make(chan struct{})
	go func() {
		defer close(lpDone)
		n.lp.Drain(dctx, n.cfg.DrainTimeout)
	}()
	transport.Drain(dctx, n.engine, closecode.ServiceRestart, "server restart", n.cfg.DrainTimeout)
	<-lpDone
	var errs []error
	if err := n.engine.Shutdown(dctx); err != nil {
		n.log.Warn("transport shutdown", "err", err)
		errs = append(errs, fmt.Errorf("transport: %w", err))
	}
	n.lp.Close()
	if err := n.srv.Close(dctx); err != nil {
		errs = append(errs, fmt.Errorf("http: %w", err))
	}
	// The closed sockets' presence is withdrawn on the hub's request
	// stage: let it finish while the bus still carries the leaves.
	if err := n.hub.Drain(dctx); err != nil {
		n.log.Warn("hub requests still running at shutdown", "err", err)
	}
	if n.bus != nil {
		n.bus.Close()
	}
	n.stopHub()
	n.bg.Wait()
	n.hub.Close()
	n.stopWebhooks()
	if err := n.st.Close(); err != nil {
		errs = append(errs, fmt.Errorf("store: %w", err))
	}
	n.log.Info("stopped")
	return errors.Join(errs...)
}
