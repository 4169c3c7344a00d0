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
	"github.com/elchat/elchat/pkg/server"
	"github.com/elchat/elchat/pkg/store"
	"github.com/elchat/elchat/pkg/store/postgres"
	"github.com/elchat/elchat/pkg/transport"
)

// Secret is the HS256 secret of every test node.
var Secret = []byte("phxtest-secret-0123456789abcdef")

// NodeOptions configure an in-process node. Zero values are serve.go's
// defaults where that matters.
type NodeOptions struct {
	DatabaseURL      string // PostgreSQL (required)
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

// Node is an ElChat node wired like cmd/elchat/serve.go, in process.
type Node struct {
	Addr    string
	Store   store.Store
	Hub     *hub.Hub
	Engine  transport.Engine
	Server  *server.Server
	Metrics *metrics.Metrics
	stop    func()
}

// StartNode starts a node on a free loopback port; it stops in t.Cleanup.
func StartNode(t testing.TB, o NodeOptions) *Node {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	log := o.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	m := metrics.New()
	st, err := postgres.Open(ctx, o.DatabaseURL, postgres.Options{Migrate: true, Batch: store.BatchConfig{Observer: m.StoreBatch}})
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	h := hub.New(hub.Config{Store: st, Metrics: m, Logger: log, PushRate: o.PushRate, PushBurst: o.PushBurst,
		StoreTimeout: o.StoreTimeout})
	hubCtx, stopHub := context.WithCancel(context.Background())
	go h.Run(hubCtx) //nolint:errcheck
	kind := o.Kind
	if kind == "" {
		kind = transport.DefaultKind()
	}
	to := o.Transport
	to.Logger = log
	if to.Workers == 0 {
		to.Workers = 32
	}
	engine, err := transport.New(kind, to)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	srv := server.New(server.Config{
		Verifier: auth.NewVerifier(Secret), Origins: server.ParseOrigins(o.Origins), Engine: engine, Hub: h, HTTP: mux,
		HandshakeTimeout: o.HandshakeTimeout, MaxHandshakes: o.MaxHandshakes,
		Limits:      &server.Limits{PerUser: o.PerUser, PerIP: o.PerIP},
		UpgradeRate: o.UpgradeRate, UpgradeBurst: o.UpgradeBurst, Logger: log, Metrics: m,
	})
	mux.Handle("GET /metrics", m.Handler())
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") }) //nolint:errcheck
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln) //nolint:errcheck
	n := &Node{Addr: ln.Addr().String(), Store: st, Hub: h, Engine: engine, Server: srv, Metrics: m}
	n.stop = func() {
		srv.StopAccepting()
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = engine.Shutdown(sctx)
		_ = srv.Close(sctx)
		stopHub()
		st.Close()
	}
	t.Cleanup(n.stop)
	return n
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
