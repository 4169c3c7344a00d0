package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/elchat/elchat/pkg/api"
	"github.com/elchat/elchat/pkg/auth"
	"github.com/elchat/elchat/pkg/demo"
	"github.com/elchat/elchat/pkg/hub"
	"github.com/elchat/elchat/pkg/metrics"
	"github.com/elchat/elchat/pkg/redisbus"
	"github.com/elchat/elchat/pkg/server"
	"github.com/elchat/elchat/pkg/store"
	"github.com/elchat/elchat/pkg/store/postgres"
	"github.com/elchat/elchat/pkg/store/sqlite"
	"github.com/elchat/elchat/pkg/transport"
)

// config is every setting of "elchat serve"; the README's configuration
// table lists them.
type config struct {
	addr           string
	secret         string
	dev            bool
	databaseURL    string
	dataDir        string
	migrate        bool
	allowedOrigins string
	transport      string
	workers        int
	maxChannels    int
	maxBody        int
	maxFrame       int
	idleTimeout    time.Duration
	handshakeTO    time.Duration
	maxHandshakes  int
	queueBytes     int
	queueFrames    int
	writeTimeout   time.Duration
	maxPerUser     int
	maxPerIP       int
	drainTimeout   time.Duration
	upgradeRate    float64
	upgradeBurst   int
	pushRate       float64
	pushBurst      int
	apiKey         string
	redisURL       string
	redisPrefix    string
	presenceTTL    time.Duration
	cablePrefix    string
	nodeID         string
	pprofAddr      string
	logLevel       string
	logFormat      string
}

func (c *config) flags(fs *flag.FlagSet) {
	fs.StringVar(&c.addr, "addr", ":4000", "listen address")
	fs.StringVar(&c.secret, "secret", "", "HS256 secret shared with the host app (required unless --dev)")
	fs.BoolVar(&c.dev, "dev", false, "development mode: demo page, demo token endpoint, public dev secret if none is set")
	fs.StringVar(&c.databaseURL, "database-url", "", "PostgreSQL URL; empty: embedded SQLite store in --data-dir")
	fs.StringVar(&c.dataDir, "data-dir", "./data", "directory of the embedded store")
	fs.BoolVar(&c.migrate, "migrate", false, "apply PostgreSQL migrations on start")
	fs.StringVar(&c.allowedOrigins, "allowed-origins", "", "comma-separated browser origins allowed to connect (\"*\": any); same-origin pages are always allowed")
	fs.StringVar(&c.transport, "transport", transport.DefaultKind(), "socket engine: epoll (Linux) or portable (goroutine per connection)")
	fs.IntVar(&c.workers, "workers", 256, "epoll worker goroutines")
	fs.IntVar(&c.maxChannels, "max-channels", 100, "channels one connection may join")
	fs.IntVar(&c.maxBody, "max-body", 4096, "message body limit in bytes")
	fs.IntVar(&c.maxFrame, "max-frame", 64<<10, "WebSocket message limit in bytes (larger: close 1009)")
	fs.DurationVar(&c.idleTimeout, "idle-timeout", 60*time.Second, "close a socket that sent nothing for this long")
	fs.DurationVar(&c.handshakeTO, "handshake-timeout", 10*time.Second, "deadline for the HTTP upgrade")
	fs.IntVar(&c.maxHandshakes, "max-handshakes", 1024, "upgrades in progress at once")
	fs.IntVar(&c.queueBytes, "queue-bytes", 1<<20, "outbound bytes queued per connection before it is dropped as a slow consumer")
	fs.IntVar(&c.queueFrames, "queue-frames", 1024, "outbound frames queued per connection before it is dropped as a slow consumer")
	fs.DurationVar(&c.writeTimeout, "write-timeout", 10*time.Second, "a connection that cannot drain its queue for this long is a slow consumer")
	fs.IntVar(&c.maxPerUser, "max-conns-per-user", 20, "connections per user on this node (0: unlimited)")
	fs.IntVar(&c.maxPerIP, "max-conns-per-ip", 0, "connections per source address on this node (0: unlimited)")
	fs.DurationVar(&c.drainTimeout, "drain-timeout", 20*time.Second, "on SIGTERM, spread socket closes (1012) over this long")
	fs.Float64Var(&c.upgradeRate, "upgrade-rate", 2000, "WebSocket upgrades accepted per second on this node (0: no cap)")
	fs.IntVar(&c.upgradeBurst, "upgrade-burst", 4000, "burst above --upgrade-rate")
	fs.Float64Var(&c.pushRate, "push-rate", 20, "channel events and joins per second per connection (token bucket; heartbeats and leaves exempt)")
	fs.IntVar(&c.pushBurst, "push-burst", 40, "burst above --push-rate")
	fs.StringVar(&c.apiKey, "api-key", "", "bearer key of the server-to-server HTTP API under /api/v1/ (empty: API off)")
	fs.StringVar(&c.redisURL, "redis-url", "", "Redis URL (redis://...); set on every node of a cluster, empty: single node")
	fs.StringVar(&c.redisPrefix, "redis-prefix", "elchat:", "prefix of every Redis key and channel ElChat uses")
	fs.DurationVar(&c.presenceTTL, "presence-ttl", 30*time.Second, "how long the presence of a dead node may outlive it")
	fs.StringVar(&c.cablePrefix, "actioncable-prefix", "", "Action Cable channel_prefix to listen on for broadcasts to user:/chat: streams (empty: off)")
	fs.StringVar(&c.nodeID, "node-id", "", "this node's id in the cluster (default: hostname and pid)")
	fs.StringVar(&c.pprofAddr, "pprof-addr", "", "serve net/http/pprof on this separate address, e.g. 127.0.0.1:6060 (empty: off)")
	fs.StringVar(&c.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&c.logFormat, "log-format", "text", "text or json")
}

func serve(args []string, stderr io.Writer) error {
	var cfg config
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfg.flags(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	log := newLogger(stderr, cfg.logLevel, cfg.logFormat)
	slog.SetDefault(log)
	key, err := secretKey(cfg.secret, cfg.dev, log)
	if err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	m := metrics.New()
	st, err := openStore(ctx, &cfg, log, store.BatchConfig{Observer: m.StoreBatch})
	if err != nil {
		return err
	}
	defer st.Close()

	hcfg := hub.Config{
		Store:        st,
		Metrics:      m,
		Logger:       log,
		MaxChannels:  cfg.maxChannels,
		MaxBodyBytes: cfg.maxBody,
		PushRate:     cfg.pushRate,
		PushBurst:    cfg.pushBurst,
	}
	var bus *redisbus.Bus
	var h *hub.Hub
	if cfg.redisURL != "" {
		bus, err = redisbus.New(ctx, redisbus.Options{
			URL: cfg.redisURL, Prefix: cfg.redisPrefix, NodeID: cfg.nodeID,
			PresenceTTL: cfg.presenceTTL, Logger: log, OnPublish: m.BusPublished,
			// Frames published while Redis is away are lost; the hub makes
			// clients rejoin afterwards and catch up from a watermark taken
			// before the outage.
			OnDown: func() { h.BusDown() },
			OnRecover: func() {
				n := h.BusUp(context.Background(), 2*time.Second, 5*time.Second)
				log.Info("clients asked to rejoin after the redis outage", "topics", n)
				// If only this node lost Redis, the others' clients missed
				// its frames without noticing anything: tell them.
				actx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				if err := bus.AnnounceResync(actx, h.Watermark()); err != nil {
					log.Warn("could not announce the resync to the other nodes", "err", err)
				}
			},
			OnResync: func(watermark int64, node string) {
				n := h.ResyncRequested(context.Background(), watermark, time.Second, 5*time.Second)
				if n > 0 {
					log.Info("clients asked to rejoin: another node lost frames", "node", node, "topics", n)
				}
			},
		})
		if err != nil {
			return fmt.Errorf("redis: %w", err)
		}
		// Close after the drain: it withdraws this node's presence at once
		// instead of leaving it to expire.
		defer bus.Close()
		hcfg.Bus, hcfg.Presence = bus, bus.Presence()
	} else if cfg.cablePrefix != "" {
		return errors.New("--actioncable-prefix needs --redis-url")
	}
	h = hub.New(hcfg)
	hubCtx, stopHub := context.WithCancel(context.Background())
	defer stopHub()
	go h.Run(hubCtx) //nolint:errcheck // ends with hubCtx
	if bus != nil {
		go h.TrackWatermark(hubCtx, 5*time.Second)
	}
	if bus != nil && cfg.cablePrefix != "" {
		go func() {
			if err := bus.ListenActionCable(hubCtx, cfg.cablePrefix, nil); err != nil && hubCtx.Err() == nil {
				log.Error("action cable listener stopped", "err", err)
			}
		}()
	}

	engine, err := transport.New(cfg.transport, transport.Options{
		Workers:        cfg.workers,
		MaxMessageSize: cfg.maxFrame,
		IdleTimeout:    cfg.idleTimeout,
		MaxQueueBytes:  cfg.queueBytes,
		MaxQueueFrames: cfg.queueFrames,
		WriteTimeout:   cfg.writeTimeout,
		Logger:         log,
	})
	if err != nil {
		return err
	}

	mux := http.NewServeMux()
	srv := server.New(server.Config{
		Verifier:         auth.NewVerifier(key),
		Origins:          server.ParseOrigins(cfg.allowedOrigins),
		Engine:           engine,
		Hub:              h,
		HTTP:             mux,
		HandshakeTimeout: cfg.handshakeTO,
		MaxHandshakes:    cfg.maxHandshakes,
		Limits:           &server.Limits{PerUser: cfg.maxPerUser, PerIP: cfg.maxPerIP},
		UpgradeRate:      cfg.upgradeRate,
		UpgradeBurst:     cfg.upgradeBurst,
		Logger:           log,
		Metrics:          m,
	})
	m.GaugeFunc("elchat_connections", "WebSocket connections open on this node.", func() float64 { return float64(engine.Len()) })
	m.GaugeFunc("elchat_clients", "Authenticated clients on this node.", func() float64 { return float64(h.Clients()) })
	m.CounterFunc("elchat_slow_consumer_closes_total", "Connections dropped because their outbound queue overflowed or stalled.",
		func() float64 { return float64(engine.Stats().SlowConsumerCloses) })
	m.CounterFunc("elchat_idle_closes_total", "Connections closed by the idle timeout.",
		func() float64 { return float64(engine.Stats().IdleCloses) })
	m.CounterFunc("elchat_protocol_error_closes_total", "Connections closed for a WebSocket protocol error.",
		func() float64 { return float64(engine.Stats().ProtocolErrorCloses) })
	m.CounterFunc("elchat_ws_frames_in_total", "WebSocket frames received.", func() float64 { return float64(engine.Stats().FramesIn) })
	m.CounterFunc("elchat_ws_frames_out_total", "WebSocket frames written.", func() float64 { return float64(engine.Stats().FramesOut) })
	m.CounterFunc("elchat_ws_bytes_in_total", "WebSocket bytes received.", func() float64 { return float64(engine.Stats().BytesIn) })
	m.CounterFunc("elchat_ws_bytes_out_total", "WebSocket bytes written.", func() float64 { return float64(engine.Stats().BytesOut) })
	if bus != nil {
		m.CounterFunc("elchat_bus_published_total", "Frames published to Redis.", func() float64 { return float64(bus.Stats().Published) })
		m.CounterFunc("elchat_bus_lost_total", "Frames dropped or failed on the way to Redis (outage or full queue).",
			func() float64 { st := bus.Stats(); return float64(st.Dropped + st.Failed) })
	}
	mux.Handle("GET /metrics", m.Handler())
	mux.Handle("/api/v1/", api.New(cfg.apiKey, h))
	if cfg.dev {
		mux.Handle("/", demo.New(key, h.Presence()))
	}
	if cfg.pprofAddr != "" {
		go func() {
			log.Info("pprof listening", "addr", cfg.pprofAddr)
			if err := http.ListenAndServe(cfg.pprofAddr, pprofMux()); err != nil {
				log.Error("pprof", "err", err)
			}
		}()
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "ok\n") //nolint:errcheck
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if srv.Draining() {
			http.Error(w, "draining", http.StatusServiceUnavailable)
			return
		}
		pctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if err := st.Ping(pctx); err != nil {
			http.Error(w, "store: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		if bus != nil {
			if err := bus.Ready(); err != nil {
				http.Error(w, "redis: "+err.Error(), http.StatusServiceUnavailable)
				return
			}
		}
		io.WriteString(w, "ready\n") //nolint:errcheck
	})

	ln, err := net.Listen("tcp", cfg.addr)
	if err != nil {
		return err
	}
	log.Info("elchat listening", "addr", ln.Addr().String(), "transport", cfg.transport,
		"store", storeKind(&cfg), "socket", "ws://"+ln.Addr().String()+server.SocketPath)
	if cfg.dev {
		host, port, _ := net.SplitHostPort(ln.Addr().String())
		if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
			host = "localhost"
		}
		base := "http://" + net.JoinHostPort(host, port)
		log.Info("demo page: open two browser tabs as two users", "alice", base+"/?user=1", "bob", base+"/?user=2")
		log.Info("or mint a token for your own client", "command", "elchat token --dev --user 42 --name Ann",
			"connect", "ws://"+net.JoinHostPort(host, port)+server.SocketPath+"?vsn=2.0.0&token=TOKEN")
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()

	select {
	case err := <-serveErr:
		return err
	case <-ctx.Done():
	}
	stop()
	log.Info("draining", "timeout", cfg.drainTimeout)
	srv.StopAccepting()
	drainCtx, cancel := context.WithTimeout(context.Background(), cfg.drainTimeout+5*time.Second)
	defer cancel()
	transport.Drain(drainCtx, engine, hub.CloseServiceRestart, "server restart", cfg.drainTimeout)
	if err := engine.Shutdown(drainCtx); err != nil {
		log.Warn("transport shutdown", "err", err)
	}
	_ = srv.Close(drainCtx)
	stopHub()
	log.Info("stopped")
	return nil
}

func storeKind(c *config) string {
	if c.databaseURL != "" {
		return "postgres"
	}
	return "sqlite:" + c.dataDir
}

func openStore(ctx context.Context, c *config, log *slog.Logger, batch store.BatchConfig) (store.Store, error) {
	if c.databaseURL == "" {
		return sqlite.OpenWith(ctx, c.dataDir, sqlite.Options{Batch: batch})
	}
	if !strings.HasPrefix(c.databaseURL, "postgres://") && !strings.HasPrefix(c.databaseURL, "postgresql://") {
		return nil, errors.New("ELCHAT_DATABASE_URL must be a postgres:// URL")
	}
	if c.migrate {
		log.Info("applying migrations")
		if err := postgres.Migrate(ctx, c.databaseURL); err != nil {
			return nil, fmt.Errorf("migrate: %w", err)
		}
	}
	return postgres.Open(ctx, c.databaseURL, postgres.Options{Batch: batch})
}

func newLogger(w io.Writer, level, format string) *slog.Logger {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		lv = slog.LevelInfo
	}
	opts := &slog.HandlerOptions{Level: lv}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

func pprofMux() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}
