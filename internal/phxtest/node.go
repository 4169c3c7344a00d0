package phxtest

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/elchat/elchat/pkg/auth"
	"github.com/elchat/elchat/pkg/hub"
	"github.com/elchat/elchat/pkg/metrics"
	"github.com/elchat/elchat/pkg/node"
	"github.com/elchat/elchat/pkg/server"
	"github.com/elchat/elchat/pkg/store"
	"github.com/elchat/elchat/pkg/transport"
)

// Secret is the HS256 secret of every test node.
var Secret = []byte("phxtest-secret-0123456789abcdef")

// NodeOptions configure an in-process node. A zero field takes
// node.DefaultConfig's value, except PerUser, PerIP and UpgradeRate: zero
// is off there (test nodes are uncapped unless a test asks), and the epoll
// engine runs 32 workers unless Transport.Workers says otherwise.
type NodeOptions struct {
	DatabaseURL      string // PostgreSQL (required); migrated on start
	Transport        transport.Options
	Kind             string // engine kind (default: platform default)
	HandshakeTimeout time.Duration
	MaxHandshakes    int
	PerUser, PerIP   int
	UpgradeRate      float64
	UpgradeBurst     int
	PushRate         float64
	PushBurst        int
	StoreTimeout     time.Duration
	Origins          string
	Logger           *slog.Logger
}

// Node is an ElChat node built by node.New, in process.
type Node struct {
	Addr    string
	Store   store.Store
	Hub     *hub.Hub
	Engine  transport.Engine
	Server  *server.Server
	Metrics *metrics.Metrics
	Node    *node.Node
}

// Config maps o onto a node configuration.
func (o NodeOptions) Config() node.Config {
	cfg := node.DefaultConfig()
	cfg.Secret = string(Secret)
	cfg.DatabaseURL = o.DatabaseURL
	cfg.Migrate = true
	cfg.AllowedOrigins = o.Origins
	cfg.Engine.Workers = 32
	t := o.Transport
	set := func(dst *int, v int) {
		if v != 0 {
			*dst = v
		}
	}
	setD := func(dst *time.Duration, v time.Duration) {
		if v != 0 {
			*dst = v
		}
	}
	set(&cfg.Engine.Workers, t.Workers)
	set(&cfg.Engine.MaxMessageSize, t.MaxMessageSize)
	setD(&cfg.Engine.IdleTimeout, t.IdleTimeout)
	set(&cfg.Engine.MaxQueueBytes, t.MaxQueueBytes)
	set(&cfg.Engine.MaxQueueFrames, t.MaxQueueFrames)
	setD(&cfg.Engine.WriteTimeout, t.WriteTimeout)
	cfg.Engine.Logger = t.Logger
	if o.Kind != "" {
		cfg.Transport = o.Kind
	}
	setD(&cfg.HandshakeTimeout, o.HandshakeTimeout)
	set(&cfg.MaxHandshakes, o.MaxHandshakes)
	cfg.MaxConnsPerUser, cfg.MaxConnsPerIP = o.PerUser, o.PerIP
	cfg.UpgradeRate = o.UpgradeRate
	set(&cfg.UpgradeBurst, o.UpgradeBurst)
	if o.PushRate != 0 {
		cfg.PushRate = o.PushRate
	}
	set(&cfg.PushBurst, o.PushBurst)
	setD(&cfg.StoreTimeout, o.StoreTimeout)
	// Cleanup closes whatever sockets a test left open at once.
	cfg.DrainTimeout = 0
	cfg.Logger = o.Logger
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return cfg
}

// StartNode starts a node on a free loopback port; it stops in t.Cleanup.
func StartNode(t testing.TB, o NodeOptions) *Node {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	nd, err := node.New(ctx, o.Config())
	if err != nil {
		t.Fatalf("start node: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		nd.Shutdown(context.Background()) //nolint:errcheck
		t.Fatal(err)
	}
	nd.Start(ln)
	t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		nd.Shutdown(sctx) //nolint:errcheck
	})
	return &Node{Addr: nd.Addr(), Store: nd.Store(), Hub: nd.Hub(), Engine: nd.Engine(), Server: nd.Server(),
		Metrics: nd.Metrics(), Node: nd}
}

// Token mints a valid token for user.
func Token(t testing.TB, user string) string {
	t.Helper()
	tok, err := auth.Mint(Secret, user, user, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// TokenFor mints a valid token for user, for code without a testing.TB.
func TokenFor(user string) (string, error) { return auth.Mint(Secret, user, user, time.Hour) }

// Connect dials addr as user and fails t on error.
func Connect(t testing.TB, addr, user string) *Client {
	t.Helper()
	c, err := Dial(addr, DialOptions{Token: Token(t, user)})
	if err != nil {
		t.Fatalf("connect %s: %v", user, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// WaitFor polls cond every 20ms until it holds or timeout passes.
func WaitFor(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// CountByClientID returns how many rows each client id has in the
// messages table of dbURL.
func CountByClientID(ctx context.Context, dbURL string, ids []string) (map[string]int, error) {
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return nil, err
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, `SELECT client_id, count(*) FROM messages WHERE client_id = ANY($1) GROUP BY client_id`, ids)
	if err != nil {
		return nil, err
	}
	out := map[string]int{}
	for rows.Next() {
		var id string
		var n int
		if err := rows.Scan(&id, &n); err != nil {
			return nil, err
		}
		out[id] = n
	}
	return out, rows.Err()
}

// BodyByID returns the stored body of message id.
func BodyByID(ctx context.Context, dbURL string, id int64) (string, error) {
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return "", err
	}
	defer conn.Close(ctx)
	var body string
	err = conn.QueryRow(ctx, `SELECT body FROM messages WHERE id = $1`, id).Scan(&body)
	return body, err
}

// MetricValue fetches /metrics from addr and returns the named sample.
func MetricValue(addr, name string) (float64, error) {
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Get("http://" + addr + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			return strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	return 0, io.EOF
}
