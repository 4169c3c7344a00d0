package main

import (
	"context"
	"errors"
	"flag"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/elchat/elchat/pkg/node"
	"github.com/elchat/elchat/pkg/server"
)

// config is every setting of "elchat serve": the node's own settings plus
// what belongs to the process (listen address, pprof, logging). The
// README's configuration table lists them.
type config struct {
	node      node.Config
	addr      string
	pprofAddr string
	logLevel  string
	logFormat string
	gcPercent int
}

// flags binds every setting to a flag; defaults come from
// node.DefaultConfig, the one place they are defined.
func (c *config) flags(fs *flag.FlagSet) {
	d := node.DefaultConfig()
	n := &c.node
	fs.StringVar(&c.addr, "addr", ":4000", "listen address")
	fs.StringVar(&n.Secret, "secret", d.Secret, "HS256 secret shared with the host app (required unless --dev; refused with --dev)")
	fs.BoolVar(&n.Dev, "dev", d.Dev, "development mode: demo page and demo token endpoint, signed with the public dev secret (refuses --secret)")
	fs.StringVar(&n.DatabaseURL, "database-url", d.DatabaseURL, "PostgreSQL URL; empty: embedded SQLite store in --data-dir (single node only)")
	fs.StringVar(&n.DataDir, "data-dir", d.DataDir, "directory of the embedded store")
	fs.BoolVar(&n.Migrate, "migrate", d.Migrate, "apply PostgreSQL migrations on start")
	fs.DurationVar(&n.StoreTimeout, "store-timeout", d.StoreTimeout, "deadline of one store call made for a client")
	fs.StringVar(&n.AllowedOrigins, "allowed-origins", d.AllowedOrigins, "comma-separated browser origins allowed to connect (\"*\": any); same-origin pages are always allowed")
	fs.StringVar(&n.Transport, "transport", d.Transport, "socket engine: epoll (Linux) or portable (goroutine per connection)")
	fs.IntVar(&n.Engine.Workers, "workers", d.Engine.Workers, "epoll worker goroutines")
	fs.IntVar(&n.MaxChannels, "max-channels", d.MaxChannels, "channels one connection may join")
	fs.IntVar(&n.MaxBodyBytes, "max-body", d.MaxBodyBytes, "message body limit in bytes")
	fs.IntVar(&n.Engine.MaxMessageSize, "max-frame", d.Engine.MaxMessageSize, "WebSocket message limit in bytes (larger: close 1009)")
	fs.DurationVar(&n.Engine.IdleTimeout, "idle-timeout", d.Engine.IdleTimeout, "close a socket that sent nothing for this long")
	fs.DurationVar(&n.HandshakeTimeout, "handshake-timeout", d.HandshakeTimeout, "deadline for the HTTP upgrade")
	fs.IntVar(&n.MaxHandshakes, "max-handshakes", d.MaxHandshakes, "upgrades in progress at once")
	fs.IntVar(&n.Engine.MaxQueueBytes, "queue-bytes", d.Engine.MaxQueueBytes, "outbound bytes queued per connection before it is dropped as a slow consumer")
	fs.IntVar(&n.Engine.MaxQueueFrames, "queue-frames", d.Engine.MaxQueueFrames, "outbound frames queued per connection before it is dropped as a slow consumer")
	fs.DurationVar(&n.Engine.WriteTimeout, "write-timeout", d.Engine.WriteTimeout, "a connection that cannot drain its queue for this long is a slow consumer")
	fs.IntVar(&n.MaxConnsPerUser, "max-conns-per-user", d.MaxConnsPerUser, "connections per user on this node (0: unlimited)")
	fs.IntVar(&n.MaxConnsPerIP, "max-conns-per-ip", d.MaxConnsPerIP, "connections per source address on this node (0: unlimited)")
	fs.DurationVar(&n.DrainTimeout, "drain-timeout", d.DrainTimeout, "on SIGTERM, spread socket closes (1012) over this long")
	fs.Float64Var(&n.UpgradeRate, "upgrade-rate", d.UpgradeRate, "WebSocket upgrades accepted per second on this node (0: no cap)")
	fs.IntVar(&n.UpgradeBurst, "upgrade-burst", d.UpgradeBurst, "burst above --upgrade-rate")
	fs.Float64Var(&n.PushRate, "push-rate", d.PushRate, "channel events and joins per second per connection (token bucket; heartbeats and leaves exempt)")
	fs.IntVar(&n.PushBurst, "push-burst", d.PushBurst, "burst above --push-rate")
	fs.IntVar(&n.RequestWorkers, "request-workers", d.RequestWorkers, "store and presence calls running at once (the hub's request stage; sockets never wait for them)")
	fs.IntVar(&n.RequestQueue, "request-queue", d.RequestQueue, "requests of one connection waiting for the store before its reads pause")
	fs.StringVar(&n.ChatPolicy, "chat-policy", d.ChatPolicy, "who may open a chat: open (any two users) or granted (a chat join carries a grant the host app signed; see elchat grant)")
	fs.DurationVar(&n.EditWindow, "edit-window", d.EditWindow, "how long an author may edit or delete a message (negative: no limit)")
	fs.StringVar(&n.APIKey, "api-key", d.APIKey, "bearer key of the server-to-server HTTP API under /api/v1/ (empty: API off)")
	fs.StringVar(&n.WebhookURL, "webhook-url", d.WebhookURL, "POST signed webhook events (message.unread) to this URL (empty: off; needs --webhook-secret)")
	fs.StringVar(&n.WebhookSecret, "webhook-secret", d.WebhookSecret, "HMAC-SHA256 key of the ElChat-Signature header, at least 16 bytes")
	fs.DurationVar(&n.NotifyAfter, "notify-after", d.NotifyAfter, "send message.unread when a message is still unread this long after it was stored and its recipient was not in the chat")
	fs.DurationVar(&n.WebhookTimeout, "webhook-timeout", d.WebhookTimeout, "deadline of one webhook POST (a node killed mid-delivery delays its events by 3x this + 5s)")
	fs.IntVar(&n.WebhookMaxAttempts, "webhook-max-attempts", d.WebhookMaxAttempts, "attempts before a webhook event is dead-lettered")
	fs.DurationVar(&n.WebhookRetryBase, "webhook-retry-base", d.WebhookRetryBase, "delay before the first webhook retry; doubles per attempt up to 1h")
	fs.StringVar(&n.RedisURL, "redis-url", d.RedisURL, "Redis URL (redis://...); set on every node of a cluster, with --database-url; empty: single node")
	fs.StringVar(&n.RedisSentinels, "redis-sentinels", d.RedisSentinels, "comma-separated Sentinel host:port addresses: follow the primary they name --redis-master (password and database from --redis-url)")
	fs.StringVar(&n.RedisMaster, "redis-master", d.RedisMaster, "name the Sentinels know the primary by (with --redis-sentinels)")
	fs.StringVar(&n.RedisCluster, "redis-cluster", d.RedisCluster, "comma-separated Redis Cluster seed host:port addresses (Redis 7+): sharded pub/sub; password from --redis-url")
	fs.StringVar(&n.RedisPrefix, "redis-prefix", d.RedisPrefix, "prefix of every Redis key and channel ElChat uses")
	fs.DurationVar(&n.RedisLiveness, "redis-liveness", d.RedisLiveness, "a pub/sub connection whose canary has not come back for this long is replaced")
	fs.DurationVar(&n.PresenceTTL, "presence-ttl", d.PresenceTTL, "how long the presence of a dead node may outlive it")
	fs.StringVar(&n.ActionCablePrefix, "actioncable-prefix", d.ActionCablePrefix, "Action Cable channel_prefix to listen on for broadcasts to user:/chat: streams (empty: off)")
	fs.StringVar(&n.NodeID, "node-id", d.NodeID, "this node's id in the cluster (default: random)")
	fs.StringVar(&n.AdvertiseAddr, "advertise-addr", d.AdvertiseAddr, "host:port at which the other nodes reach this one; long-poll requests for its sessions are forwarded there (default: --addr when it names a host)")
	fs.DurationVar(&n.LongPollWindow, "longpoll-window", d.LongPollWindow, "how long a long-poll GET is held without messages")
	fs.DurationVar(&n.LongPollTimeout, "longpoll-timeout", d.LongPollTimeout, "expire a long-poll session no poll reached for this long")
	fs.IntVar(&n.LongPollMaxBody, "longpoll-max-body", d.LongPollMaxBody, "long-poll POST body limit in bytes")
	fs.StringVar(&c.pprofAddr, "pprof-addr", "", "serve net/http/pprof on this separate address, e.g. 127.0.0.1:6060 (empty: off)")
	fs.StringVar(&c.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&c.logFormat, "log-format", "text", "text or json")
	fs.IntVar(&c.gcPercent, "gc-percent", defaultGCPercent, "Go GC target: heap growth in percent between collections (GOGC in the environment wins)")
}

// defaultGCPercent is lower than Go's 100 because a node's heap is mostly
// long-lived per-connection state: at 19,000 idle sockets it cuts server
// RSS per socket from 3.52 to 2.93 KiB after the ramp
// (bench/results/20261201-121555-connect against -133333-connect) for
// about 5 % more CPU per stored message at saturation (-133057-chat, at
// GOGC=50, against -133153-chat).
const defaultGCPercent = 50

// setGCPercent applies --gc-percent unless the operator set GOGC, which
// the Go runtime has applied already.
func setGCPercent(p int) {
	if _, ok := os.LookupEnv("GOGC"); !ok {
		debug.SetGCPercent(p)
	}
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
	setGCPercent(cfg.gcPercent)
	cfg.node.Logger = log

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	n, err := node.New(ctx, cfg.node)
	if err != nil {
		return err
	}
	ln, err := node.Listen(ctx, cfg.addr)
	if err != nil {
		n.Shutdown(context.Background()) //nolint:errcheck // the listen error is the one to report
		return err
	}
	logListening(log, &cfg, ln.Addr().String())
	if cfg.pprofAddr != "" {
		ps := &http.Server{Addr: cfg.pprofAddr, Handler: pprofMux(), ReadHeaderTimeout: 10 * time.Second}
		go func() {
			log.Info("pprof listening", "addr", cfg.pprofAddr)
			if err := ps.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("pprof", "err", err)
			}
		}()
		defer ps.Close()
	}

	serveErr := make(chan error, 1)
	go func() { serveErr <- n.Serve(ln) }()
	select {
	case err = <-serveErr:
	case <-ctx.Done():
	}
	stop() // a second signal kills the process
	if serr := n.Shutdown(context.Background()); serr != nil {
		log.Warn("shutdown", "err", serr)
	}
	return err
}

// logListening prints where the node listens and, in development mode,
// the demo URLs.
func logListening(log *slog.Logger, cfg *config, addr string) {
	store := "sqlite:" + cfg.node.DataDir
	if cfg.node.DatabaseURL != "" {
		store = "postgres"
	}
	transport := cfg.node.Transport
	if transport == "" {
		transport = node.DefaultConfig().Transport
	}
	log.Info("elchat listening", "addr", addr, "transport", transport,
		"store", store, "socket", "ws://"+addr+server.SocketPath)
	if !cfg.node.Dev {
		return
	}
	host, port, _ := net.SplitHostPort(addr)
	if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
		host = "localhost"
	}
	base := "http://" + net.JoinHostPort(host, port)
	log.Info("demo page: open two browser tabs as two users", "alice", base+"/?user=1", "bob", base+"/?user=2")
	log.Info("or mint a token for your own client", "command", "elchat token --dev --user 42 --name Ann",
		"connect", "ws://"+net.JoinHostPort(host, port)+server.SocketPath+"?vsn=2.0.0&token=TOKEN")
}

func newLogger(w io.Writer, level, format string) *slog.Logger {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(strings.TrimSpace(level))); err != nil {
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
