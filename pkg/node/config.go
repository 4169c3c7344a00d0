package node

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/elchat/elchat/pkg/hub"
	"github.com/elchat/elchat/pkg/metrics"
	"github.com/elchat/elchat/pkg/store"
	"github.com/elchat/elchat/pkg/transport"
	"github.com/elchat/elchat/pkg/webhook"
)

// Config is every setting of one ElChat node. cmd/elchat fills it from
// flags and ELCHAT_* variables, internal/phxtest from its NodeOptions; both
// start from DefaultConfig, which is the one place defaults are defined.
//
// New fills a field left at its zero value from DefaultConfig when zero is
// not a meaningful setting for it. Zero stays zero (off) for
// MaxConnsPerUser, MaxConnsPerIP, UpgradeRate and DrainTimeout, and for the
// strings and booleans.
type Config struct {
	// Secret is the HS256 secret shared with the host app, at least 16
	// bytes. Required unless Dev; refused with Dev (see ErrDevWithSecret).
	Secret string
	// Dev serves the demo page and its token endpoint at "/" and signs with
	// the public DevSecret. Such a node must never face the internet.
	Dev bool
	// AllowedOrigins is a comma-separated list of browser origins allowed
	// to connect ("*": any); same-origin pages are always allowed.
	AllowedOrigins string

	// DatabaseURL is a postgres:// URL; empty: the embedded SQLite store
	// in DataDir (single node only, see ErrRedisWithoutDatabase).
	DatabaseURL string
	DataDir     string // directory of the embedded store
	Migrate     bool   // apply PostgreSQL migrations before opening
	// StoreTimeout bounds one store call made for a client.
	StoreTimeout time.Duration
	// Store, when set, is used instead of opening one from DatabaseURL or
	// DataDir (tests inject slow or failing stores this way); the node
	// closes it on Shutdown.
	Store store.Store

	// RedisURL joins a cluster (redis://…); empty: single node. With
	// RedisSentinels only its user, password and database are used.
	RedisURL string
	// RedisSentinels is a comma-separated list of Sentinel host:port
	// addresses: the nodes follow the primary they name RedisMaster
	// (needed with it) and the failovers they decide. Joins a cluster
	// like RedisURL.
	RedisSentinels string
	RedisMaster    string
	// RedisCluster is a comma-separated list of Redis Cluster seed
	// host:port addresses (Redis 7 or later): fanout over sharded pub/sub,
	// presence keys hash-tagged per partition. Exclusive with
	// RedisSentinels. Joins a cluster like RedisURL.
	RedisCluster string
	RedisPrefix  string        // prefix of every Redis key and channel
	PresenceTTL  time.Duration // how long a dead node's presence may outlive it
	// RedisLiveness bounds how long the pub/sub connection may stay
	// silent: the node's canary to itself must come back within it.
	RedisLiveness time.Duration
	// ActionCablePrefix is the Action Cable channel_prefix whose
	// broadcasts to user: and chat: streams are relayed (empty: off).
	// Needs RedisURL.
	ActionCablePrefix string
	// NodeID names this node in the cluster (empty: random).
	NodeID string
	// AdvertiseAddr is host:port at which the other nodes reach this
	// node's HTTP side; long-poll requests that a load balancer sends to
	// another node are forwarded here. Empty: the listen address when it
	// names a host (127.0.0.1:4000), else no forwarding (requests for this
	// node's sessions that land elsewhere get 410 and open a new session).
	AdvertiseAddr string

	// LongPollWindow is how long a long-poll GET is held without messages.
	LongPollWindow time.Duration
	// LongPollTimeout expires a long-poll session no poll reached for this
	// long (the client went away without a word).
	LongPollTimeout time.Duration
	// LongPollMaxBody bounds a long-poll POST body in bytes.
	LongPollMaxBody int

	// Transport is the socket engine kind: "epoll" (Linux) or "portable".
	Transport string
	// Engine configures the socket engine; its Logger defaults to Logger.
	Engine transport.Options

	MaxChannels  int     // channels one connection may join
	MaxBodyBytes int     // message body limit in bytes
	PushRate     float64 // channel events and joins per second per connection
	PushBurst    int     // burst above PushRate
	// RequestWorkers is the hub's request stage: how many store and
	// presence calls run at once on this node. Sockets never wait for
	// them on the event loop.
	RequestWorkers int
	// RequestQueue is how many requests of one connection may wait for
	// the stage before the connection stops being read.
	RequestQueue int

	HandshakeTimeout time.Duration // deadline for the HTTP upgrade
	MaxHandshakes    int           // upgrades in progress at once
	MaxConnsPerUser  int           // sockets per user on this node (0: unlimited)
	MaxConnsPerIP    int           // sockets per source address on this node (0: unlimited)
	UpgradeRate      float64       // upgrades per second on this node (0: no cap)
	UpgradeBurst     int           // burst above UpgradeRate
	// DrainTimeout is how long Shutdown spreads the 1012 closes over
	// (0: all at once).
	DrainTimeout time.Duration

	// APIKey is the bearer key of /api/v1/ (empty: API off).
	APIKey string

	// WebhookURL receives the host-app webhooks (empty: off); it needs
	// WebhookSecret, the HMAC key of ElChat-Signature (pkg/webhook).
	WebhookURL    string
	WebhookSecret string
	// NotifyAfter is how long a message must stay unread, its recipient
	// not in the chat, before a message.unread event goes out.
	NotifyAfter time.Duration
	// WebhookTimeout bounds one POST; a claim's lease is three times it
	// plus 5s (how late a killed node's events can be).
	WebhookTimeout time.Duration
	// WebhookMaxAttempts and WebhookRetryBase shape the retries: attempt n
	// fails into a wait of about RetryBase·2^(n-1), at most an hour, and
	// after MaxAttempts the event is dead.
	WebhookMaxAttempts int
	WebhookRetryBase   time.Duration
	// ChatPolicy is who may open a chat: ChatPolicyOpen (any two users,
	// the default) or ChatPolicyGranted (a chat join carries a grant the
	// host app signed, unless the chat was opened by one before).
	ChatPolicy string
	// EditWindow is how long an author may edit or delete their message
	// (default 15 minutes; negative: no limit).
	EditWindow time.Duration

	Logger  *slog.Logger     // nil: slog.Default()
	Metrics *metrics.Metrics // nil: a new registry; never share one between nodes
}

// Chat policies (Config.ChatPolicy).
const (
	ChatPolicyOpen    = "open"
	ChatPolicyGranted = "granted"
)

// DevSecret signs tokens in Dev mode only; it is public, so a node that
// uses it must never face the internet.
const DevSecret = "elchat-development-secret-do-not-use-in-production"

// DefaultConfig returns the defaults of every setting.
func DefaultConfig() Config {
	return Config{
		DataDir:       "./data",
		StoreTimeout:  5 * time.Second,
		RedisPrefix:   "elchat:",
		PresenceTTL:   30 * time.Second,
		RedisLiveness: 3 * time.Second,
		Transport:     transport.DefaultKind(),
		Engine: transport.Options{
			Workers:        256,
			MaxMessageSize: 64 << 10,
			IdleTimeout:    60 * time.Second,
			MaxQueueBytes:  1 << 20,
			MaxQueueFrames: 1024,
			WriteTimeout:   10 * time.Second,
		},
		MaxChannels:      100,
		MaxBodyBytes:     4096,
		PushRate:         20,
		PushBurst:        40,
		RequestWorkers:   hub.DefaultWorkers,
		RequestQueue:     hub.DefaultMailboxSize,
		HandshakeTimeout: 10 * time.Second,
		MaxHandshakes:    1024,
		MaxConnsPerUser:  20,
		MaxConnsPerIP:    0,
		UpgradeRate:      2000,
		UpgradeBurst:     4000,
		DrainTimeout:     20 * time.Second,

		NotifyAfter:        5 * time.Minute,
		WebhookTimeout:     webhook.DefaultTimeout,
		WebhookMaxAttempts: webhook.DefaultMaxAttempts,
		WebhookRetryBase:   webhook.DefaultRetryBase,
		LongPollWindow:     10 * time.Second,
		LongPollTimeout:    20 * time.Second,
		LongPollMaxBody:    1 << 20,
		ChatPolicy:         ChatPolicyOpen,
		EditWindow:         hub.DefaultEditWindow,
	}
}

// Refusals of New: configurations that would lose data or leak access.
var (
	// ErrRedisWithoutDatabase: in a cluster each node with its own
	// embedded SQLite file numbers messages on its own, so ids collide
	// across nodes and clients skip or repeat messages.
	ErrRedisWithoutDatabase = errors.New("--redis-url (or --redis-sentinels, --redis-cluster) needs --database-url: with the embedded SQLite store every node keeps its own message ids, which collide across the cluster; point every node at the same PostgreSQL")
	// ErrDevWithSecret: the demo token endpoint signs tokens for demo
	// users 1–5 with the node's secret; with a real secret that would let
	// anybody act as the host app's users 1–5.
	ErrDevWithSecret = errors.New("--dev refuses --secret (ELCHAT_SECRET): the demo token endpoint would sign tokens for users 1-5 with that secret; unset the secret to use the public development secret, or drop --dev")
	ErrNoSecret      = errors.New("set ELCHAT_SECRET (or --secret) to the HS256 secret shared with the host app, or pass --dev")
	ErrShortSecret   = errors.New("ELCHAT_SECRET must be at least 16 bytes")
	// ErrCableWithoutRedis: Action Cable broadcasts arrive through Redis.
	ErrCableWithoutRedis = errors.New("--actioncable-prefix needs --redis-url, --redis-sentinels or --redis-cluster")
	// ErrSentinelWithoutMaster: Sentinels watch several primaries by name.
	ErrSentinelWithoutMaster = errors.New("--redis-sentinels needs --redis-master, the name the Sentinels know the primary by")
	ErrMasterWithoutSentinel = errors.New("--redis-master needs --redis-sentinels")
	ErrSentinelAndCluster    = errors.New("--redis-sentinels and --redis-cluster are exclusive: Redis Cluster fails over by itself")
	ErrDatabaseURL           = errors.New("ELCHAT_DATABASE_URL must be a postgres:// URL")
	// ErrWebhookSecretWithoutURL: a secret alone suggests the URL was
	// meant to be set too, and nothing would ever be sent.
	ErrWebhookSecretWithoutURL = errors.New("--webhook-secret is set but --webhook-url is not: set both to send webhooks, or neither")
)

// withDefaults fills the fields whose zero value means "unset".
func (c Config) withDefaults() Config {
	d := DefaultConfig()
	setStr := func(v *string, def string) {
		if *v == "" {
			*v = def
		}
	}
	setInt := func(v *int, def int) {
		if *v == 0 {
			*v = def
		}
	}
	setDur := func(v *time.Duration, def time.Duration) {
		if *v == 0 {
			*v = def
		}
	}
	setStr(&c.DataDir, d.DataDir)
	setStr(&c.ChatPolicy, d.ChatPolicy)
	setDur(&c.EditWindow, d.EditWindow)
	setDur(&c.StoreTimeout, d.StoreTimeout)
	setStr(&c.RedisPrefix, d.RedisPrefix)
	setDur(&c.PresenceTTL, d.PresenceTTL)
	setDur(&c.RedisLiveness, d.RedisLiveness)
	setStr(&c.Transport, d.Transport)
	setInt(&c.Engine.Workers, d.Engine.Workers)
	setInt(&c.RequestWorkers, d.RequestWorkers)
	setInt(&c.RequestQueue, d.RequestQueue)
	setInt(&c.Engine.MaxMessageSize, d.Engine.MaxMessageSize)
	setDur(&c.Engine.IdleTimeout, d.Engine.IdleTimeout)
	setInt(&c.Engine.MaxQueueBytes, d.Engine.MaxQueueBytes)
	setInt(&c.Engine.MaxQueueFrames, d.Engine.MaxQueueFrames)
	setDur(&c.Engine.WriteTimeout, d.Engine.WriteTimeout)
	setInt(&c.MaxChannels, d.MaxChannels)
	setInt(&c.MaxBodyBytes, d.MaxBodyBytes)
	if c.PushRate == 0 {
		c.PushRate = d.PushRate
	}
	setInt(&c.PushBurst, d.PushBurst)
	setDur(&c.HandshakeTimeout, d.HandshakeTimeout)
	setInt(&c.MaxHandshakes, d.MaxHandshakes)
	setInt(&c.UpgradeBurst, d.UpgradeBurst)
	setDur(&c.NotifyAfter, d.NotifyAfter)
	setDur(&c.WebhookTimeout, d.WebhookTimeout)
	setInt(&c.WebhookMaxAttempts, d.WebhookMaxAttempts)
	setDur(&c.WebhookRetryBase, d.WebhookRetryBase)
	setDur(&c.LongPollWindow, d.LongPollWindow)
	setDur(&c.LongPollTimeout, d.LongPollTimeout)
	setInt(&c.LongPollMaxBody, d.LongPollMaxBody)
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Engine.Logger == nil {
		c.Engine.Logger = c.Logger
	}
	return c
}

// clustered reports whether the node joins a cluster through Redis.
func (c *Config) clustered() bool {
	return c.RedisURL != "" || c.RedisSentinels != "" || c.RedisCluster != ""
}

// sentinels splits RedisSentinels.
func (c *Config) sentinels() []string { return splitAddrs(c.RedisSentinels) }

// clusterSeeds splits RedisCluster.
func (c *Config) clusterSeeds() []string { return splitAddrs(c.RedisCluster) }

func splitAddrs(list string) []string {
	var out []string
	for _, a := range strings.Split(list, ",") {
		if a = strings.TrimSpace(a); a != "" {
			out = append(out, a)
		}
	}
	return out
}

// validate refuses configurations that lose data or leak access, and
// returns the token signing key.
func (c *Config) validate() ([]byte, error) {
	var key []byte
	switch {
	case c.Dev && c.Secret != "":
		return nil, ErrDevWithSecret
	case c.Dev:
		key = []byte(DevSecret)
	case c.Secret == "":
		return nil, ErrNoSecret
	case len(c.Secret) < 16:
		return nil, ErrShortSecret
	default:
		key = []byte(c.Secret)
	}
	if c.DatabaseURL != "" && !strings.HasPrefix(c.DatabaseURL, "postgres://") && !strings.HasPrefix(c.DatabaseURL, "postgresql://") {
		return nil, ErrDatabaseURL
	}
	switch {
	case c.RedisSentinels != "" && c.RedisCluster != "":
		return nil, ErrSentinelAndCluster
	case c.RedisSentinels != "" && c.RedisMaster == "":
		return nil, ErrSentinelWithoutMaster
	case c.RedisMaster != "" && c.RedisSentinels == "":
		return nil, ErrMasterWithoutSentinel
	}
	for _, a := range c.sentinels() {
		if _, _, err := net.SplitHostPort(a); err != nil {
			return nil, fmt.Errorf("--redis-sentinels: %q is not host:port", a)
		}
	}
	for _, a := range c.clusterSeeds() {
		if _, _, err := net.SplitHostPort(a); err != nil {
			return nil, fmt.Errorf("--redis-cluster: %q is not host:port", a)
		}
	}
	if c.clustered() && c.DatabaseURL == "" {
		return nil, ErrRedisWithoutDatabase
	}
	if c.ActionCablePrefix != "" && !c.clustered() {
		return nil, ErrCableWithoutRedis
	}
	if c.WebhookURL != "" {
		if err := webhook.Validate(c.WebhookURL, c.WebhookSecret); err != nil {
			return nil, err
		}
	} else if c.WebhookSecret != "" {
		return nil, ErrWebhookSecretWithoutURL
	}
	if c.AdvertiseAddr != "" {
		if host, port, err := net.SplitHostPort(c.AdvertiseAddr); err != nil || host == "" || port == "" {
			return nil, fmt.Errorf("--advertise-addr %q: want host:port that the other nodes can reach", c.AdvertiseAddr)
		}
	}
	if c.LongPollTimeout <= c.LongPollWindow {
		// A held poll counts as activity, but the gap between two polls
		// must fit too: phoenix.js polls again at once.
		return nil, fmt.Errorf("--longpoll-timeout (%v) must exceed --longpoll-window (%v)", c.LongPollTimeout, c.LongPollWindow)
	}
	if c.ChatPolicy != ChatPolicyOpen && c.ChatPolicy != ChatPolicyGranted {
		return nil, fmt.Errorf("--chat-policy %q: want open or granted", c.ChatPolicy)
	}
	if c.Transport != "epoll" && c.Transport != "portable" {
		return nil, fmt.Errorf("--transport %q: want epoll or portable", c.Transport)
	}
	for _, f := range []struct {
		flag string
		v    float64
	}{
		{"workers", float64(c.Engine.Workers)}, {"max-frame", float64(c.Engine.MaxMessageSize)},
		{"idle-timeout", float64(c.Engine.IdleTimeout)}, {"queue-bytes", float64(c.Engine.MaxQueueBytes)},
		{"queue-frames", float64(c.Engine.MaxQueueFrames)}, {"write-timeout", float64(c.Engine.WriteTimeout)},
		{"max-channels", float64(c.MaxChannels)}, {"max-body", float64(c.MaxBodyBytes)},
		{"push-rate", c.PushRate}, {"push-burst", float64(c.PushBurst)},
		{"handshake-timeout", float64(c.HandshakeTimeout)}, {"max-handshakes", float64(c.MaxHandshakes)},
		{"max-conns-per-user", float64(c.MaxConnsPerUser)}, {"max-conns-per-ip", float64(c.MaxConnsPerIP)},
		{"upgrade-rate", c.UpgradeRate}, {"upgrade-burst", float64(c.UpgradeBurst)},
		{"drain-timeout", float64(c.DrainTimeout)}, {"presence-ttl", float64(c.PresenceTTL)},
		{"store-timeout", float64(c.StoreTimeout)}, {"notify-after", float64(c.NotifyAfter)},
		{"webhook-timeout", float64(c.WebhookTimeout)}, {"webhook-max-attempts", float64(c.WebhookMaxAttempts)},
		{"webhook-retry-base", float64(c.WebhookRetryBase)},
		{"longpoll-window", float64(c.LongPollWindow)}, {"longpoll-timeout", float64(c.LongPollTimeout)},
		{"longpoll-max-body", float64(c.LongPollMaxBody)}, {"redis-liveness", float64(c.RedisLiveness)},
	} {
		if f.v < 0 {
			return nil, fmt.Errorf("--%s must not be negative", f.flag)
		}
	}
	return key, nil
}
