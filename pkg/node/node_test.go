package node_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/elchat/elchat/internal/phxtest"
	"github.com/elchat/elchat/internal/testenv"
	"github.com/elchat/elchat/pkg/auth"
	"github.com/elchat/elchat/pkg/node"
)

func TestMain(m *testing.M) { testenv.Main(m) }

const secret = "node-test-secret-0123456789"

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// embedded is a valid single-node configuration on the embedded store.
func embedded(t *testing.T) node.Config {
	cfg := node.DefaultConfig()
	cfg.Secret = secret
	cfg.DataDir = filepath.Join(t.TempDir(), "data")
	cfg.Logger = quiet
	cfg.DrainTimeout = 0
	return cfg
}

// TestRefusals: configurations that lose data or leak access fail New with
// an error that says what to change, before anything is opened.
func TestRefusals(t *testing.T) {
	for _, tc := range []struct {
		name   string
		edit   func(*node.Config)
		err    error
		saying []string
	}{
		{"redis without database", func(c *node.Config) { c.RedisURL = "redis://127.0.0.1:1/0" },
			node.ErrRedisWithoutDatabase, []string{"--redis-url", "--database-url", "collide"}},
		{"dev with a real secret", func(c *node.Config) { c.Dev = true },
			node.ErrDevWithSecret, []string{"--dev", "secret", "users 1-5"}},
		{"no secret", func(c *node.Config) { c.Secret = "" },
			node.ErrNoSecret, []string{"ELCHAT_SECRET", "--dev"}},
		{"short secret", func(c *node.Config) { c.Secret = "short" },
			node.ErrShortSecret, []string{"16 bytes"}},
		{"action cable without redis", func(c *node.Config) { c.ActionCablePrefix = "app" },
			node.ErrCableWithoutRedis, []string{"--actioncable-prefix", "--redis-url"}},
		{"database url not postgres", func(c *node.Config) { c.DatabaseURL = "mysql://x" },
			node.ErrDatabaseURL, []string{"postgres://"}},
		{"unknown engine", func(c *node.Config) { c.Transport = "kqueue" }, nil, []string{"--transport", "kqueue"}},
		{"negative limit", func(c *node.Config) { c.MaxConnsPerUser = -1 }, nil, []string{"--max-conns-per-user", "negative"}},
		{"advertise address without a port", func(c *node.Config) { c.AdvertiseAddr = "10.0.0.7" }, nil, []string{"--advertise-addr", "host:port"}},
		{"long-poll timeout within the window", func(c *node.Config) { c.LongPollWindow, c.LongPollTimeout = 10*time.Second, 5*time.Second },
			nil, []string{"--longpoll-timeout", "--longpoll-window"}},
		{"unknown chat policy", func(c *node.Config) { c.ChatPolicy = "closed" }, nil, []string{"--chat-policy", "open or granted"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := embedded(t)
			tc.edit(&cfg)
			n, err := node.New(context.Background(), cfg)
			if err == nil {
				n.Shutdown(context.Background()) //nolint:errcheck
				t.Fatal("New accepted the configuration")
			}
			if tc.err != nil && !errors.Is(err, tc.err) {
				t.Fatalf("error %v, want %v", err, tc.err)
			}
			for _, s := range tc.saying {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not mention %q", err, s)
				}
			}
			if _, serr := os.Stat(cfg.DataDir); !errors.Is(serr, os.ErrNotExist) {
				t.Errorf("refused node created its store: %v", serr)
			}
		})
	}
}

// TestDefaults: the transport gets the node's 64 KiB frame limit, not its
// own 1 MiB, and zero fields take DefaultConfig's values.
func TestDefaults(t *testing.T) {
	if got := node.DefaultConfig().Engine.MaxMessageSize; got != 64<<10 {
		t.Fatalf("default max frame %d", got)
	}
	cfg := embedded(t)
	cfg.Engine.MaxMessageSize = 0
	cfg.MaxChannels = 0
	cfg.MaxConnsPerUser = 0
	n := start(t, cfg)
	got := n.Config()
	if got.Engine.MaxMessageSize != 64<<10 || got.MaxChannels != 100 {
		t.Fatalf("defaults not applied: frame %d channels %d", got.Engine.MaxMessageSize, got.MaxChannels)
	}
	if got.MaxConnsPerUser != 0 {
		t.Fatalf("zero per-user limit (off) replaced by %d", got.MaxConnsPerUser)
	}
	// A message over 64 KiB closes the socket with 1009.
	c := dial(t, n, "big")
	if err := c.WriteText(bytes.Repeat([]byte("x"), 64<<10+1)); err != nil {
		t.Fatal(err)
	}
	ce, err := c.ExpectClose(10 * time.Second)
	if err != nil || ce.Code != 1009 {
		t.Fatalf("oversized frame: %v %+v", err, ce)
	}
}

func start(t *testing.T, cfg node.Config) *node.Node {
	t.Helper()
	n, err := node.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	n.Start(ln)
	t.Cleanup(func() { n.Shutdown(context.Background()) }) //nolint:errcheck
	return n
}

func dial(t *testing.T, n *node.Node, user string) *phxtest.Client {
	t.Helper()
	key := secret
	if n.Config().Dev {
		key = node.DevSecret
	}
	tok, err := auth.Mint([]byte(key), user, user, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c, err := phxtest.Dial(n.Addr(), phxtest.DialOptions{Token: tok})
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

var client = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

func get(t *testing.T, n *node.Node, path string) (int, string) {
	t.Helper()
	resp, err := client.Get("http://" + n.Addr() + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestServes: a node on the embedded store answers health, readiness and
// metrics and takes WebSocket clients; with the store gone /readyz says so
// without the store's error text.
func TestServes(t *testing.T) {
	n := start(t, embedded(t))
	if code, body := get(t, n, "/healthz"); code != 200 || body != "ok\n" {
		t.Fatalf("/healthz: %d %q", code, body)
	}
	if code, body := get(t, n, "/readyz"); code != 200 || body != "ready\n" {
		t.Fatalf("/readyz: %d %q", code, body)
	}
	c := dial(t, n, "1")
	if r, err := c.Join("user:1", nil, 10*time.Second); err != nil || r.Status != "ok" {
		t.Fatalf("join: %v %+v", err, r)
	}
	if err := c.Heartbeat(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	code, body := get(t, n, "/metrics")
	if code != 200 || !strings.Contains(body, "elchat_connections 1") || !strings.Contains(body, "elchat_clients 1") {
		t.Fatalf("/metrics: %d, no elchat_connections 1 / elchat_clients 1", code)
	}
	if code, _ := get(t, n, "/api/v1/publish"); code != 404 {
		t.Fatalf("API without a key: %d, want 404", code)
	}
	if code, _ := get(t, n, "/demo/users"); code != 404 {
		t.Fatalf("demo outside dev mode: %d, want 404", code)
	}

	n.Store().Close()
	code, body = get(t, n, "/readyz")
	if code != http.StatusServiceUnavailable || body != "store unavailable\n" {
		t.Fatalf("/readyz with the store closed: %d %q", code, body)
	}
}

// TestDevMode: with Dev and no secret the node serves the demo and its
// tokens are accepted.
func TestDevMode(t *testing.T) {
	cfg := embedded(t)
	cfg.Secret, cfg.Dev = "", true
	n := start(t, cfg)
	if code, body := get(t, n, "/demo/users"); code != 200 || !strings.Contains(body, "alice") {
		t.Fatalf("/demo/users: %d %q", code, body)
	}
	dial(t, n, "1")
}

// TestShutdownReleases: Shutdown drains the clients, closes the store and
// leaves no goroutine behind.
func TestShutdownReleases(t *testing.T) {
	before := runtime.NumGoroutine()
	cfg := embedded(t)
	n, err := node.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	n.Start(ln)
	var cs []*phxtest.Client
	for _, u := range []string{"1", "2", "3"} {
		c := dial(t, n, u)
		if r, err := c.Join("user:"+u, nil, 10*time.Second); err != nil || r.Status != "ok" {
			t.Fatalf("join: %v %+v", err, r)
		}
		cs = append(cs, c)
	}
	get(t, n, "/healthz")
	var wg sync.WaitGroup
	codes := make([]int, len(cs))
	for i, c := range cs {
		wg.Go(func() {
			if ce, err := c.ExpectClose(10 * time.Second); err == nil {
				codes[i] = ce.Code
			}
			c.Close() // as a browser does after the close frame
		})
	}
	if err := n.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	for i, code := range codes {
		if code != 1012 {
			t.Errorf("client %d closed with %d, want 1012", i, code)
		}
	}
	if err := n.Store().Ping(context.Background()); err == nil {
		t.Error("store still open after Shutdown")
	}
	if _, err := net.Dial("tcp", ln.Addr().String()); err == nil {
		t.Error("listener still accepting after Shutdown")
	}
	const tolerance = 3
	if !phxtest.WaitFor(5*time.Second, func() bool { return runtime.NumGoroutine() <= before+tolerance }) {
		buf := make([]byte, 1<<20)
		t.Fatalf("goroutines: %d before, %d after Shutdown\n%s", before, runtime.NumGoroutine(), buf[:runtime.Stack(buf, true)])
	}
}

// TestNewFailureReleases: when New fails after opening the store (Redis
// unreachable), it closes what it opened.
func TestNewFailureReleases(t *testing.T) {
	db := testenv.Postgres(t)
	before := runtime.NumGoroutine()
	cfg := embedded(t)
	cfg.DatabaseURL = db
	cfg.Migrate = true
	cfg.RedisURL = "redis://127.0.0.1:1/0"
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n, err := node.New(ctx, cfg)
	if err == nil {
		n.Shutdown(context.Background()) //nolint:errcheck
		t.Fatal("New succeeded without Redis")
	}
	if !strings.HasPrefix(err.Error(), "redis: ") {
		t.Fatalf("error %q", err)
	}
	if !phxtest.WaitFor(5*time.Second, func() bool { return runtime.NumGoroutine() <= before+3 }) {
		buf := make([]byte, 1<<20)
		t.Fatalf("goroutines: %d before, %d after\n%s", before, runtime.NumGoroutine(), buf[:runtime.Stack(buf, true)])
	}
}

// TestClusterNode: a node on PostgreSQL and Redis (with the Action Cable
// ingress) serves, is ready, and Shutdown releases the bus as well.
func TestClusterNode(t *testing.T) {
	db, rdb := testenv.Postgres(t), testenv.Redis(t)
	before := runtime.NumGoroutine()
	cfg := embedded(t)
	cfg.DatabaseURL, cfg.Migrate = db, true
	cfg.RedisURL, cfg.RedisPrefix, cfg.ActionCablePrefix = rdb, "nodetest:", "app"
	cfg.NodeID = "node-test"
	n, err := node.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	n.Start(ln)
	if code, body := get(t, n, "/readyz"); code != 200 || body != "ready\n" {
		t.Fatalf("/readyz: %d %q", code, body)
	}
	if _, body := get(t, n, "/metrics"); !strings.Contains(body, "elchat_bus_published_total") {
		t.Fatal("/metrics lacks the bus counters")
	}
	c := dial(t, n, "7")
	if r, err := c.Join("user:7", nil, 10*time.Second); err != nil || r.Status != "ok" {
		t.Fatalf("join: %v %+v", err, r)
	}
	c.Close()
	if err := n.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := n.Bus().Ready(); err == nil {
		t.Error("bus still up after Shutdown")
	}
	if !phxtest.WaitFor(5*time.Second, func() bool { return runtime.NumGoroutine() <= before+3 }) {
		buf := make([]byte, 1<<20)
		t.Fatalf("goroutines: %d before, %d after Shutdown\n%s", before, runtime.NumGoroutine(), buf[:runtime.Stack(buf, true)])
	}
}

// TestLongPollSharesSocketLimits: a long-poll session counts against the
// per-user connection limit as a socket does, and gives its slot back when
// it ends; the session token names the node, reachable at its listener.
func TestLongPollSharesSocketLimits(t *testing.T) {
	cfg := embedded(t)
	cfg.MaxConnsPerUser = 1
	cfg.LongPollWindow, cfg.LongPollTimeout = 200*time.Millisecond, 600*time.Millisecond
	n := start(t, cfg)
	tok, err := auth.Mint([]byte(secret), "7", "seven", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	open := func() map[string]any {
		resp, err := client.Get("http://" + n.Addr() + "/socket/longpoll?vsn=2.0.0&token=" + tok)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var a map[string]any
		if err := json.NewDecoder(resp.Body).Decode(&a); err != nil {
			t.Fatal(err)
		}
		return a
	}
	first := open()
	if first["status"] != 410.0 {
		t.Fatalf("open: %v", first)
	}
	if _, err := phxtest.Dial(n.Addr(), phxtest.DialOptions{Token: tok}); err == nil {
		t.Fatal("a socket beyond the per-user limit was accepted next to a long-poll session")
	}
	if second := open(); second["status"] != 500.0 {
		t.Fatalf("second session beyond the limit: %v", second)
	}
	// The upgrade rate counts long-poll opens too (503, status 500: phoenix.js
	// backs off and retries).
	if code, body := get(t, n, "/socket/longpoll?vsn=2.0.0&token="+tok); code != http.StatusTooManyRequests || !strings.Contains(body, `"status":500`) {
		t.Fatalf("open over the per-user limit: %d %s", code, body)
	}
	// Nobody polls the first one: it expires and frees the slot.
	if !phxtest.WaitFor(5*time.Second, func() bool { return open()["status"] == 410.0 }) {
		t.Fatal("the abandoned session never gave its slot back")
	}
}

// TestLongPollUpgradeRate: long-poll opens draw on the node's upgrade rate
// like WebSocket upgrades.
func TestLongPollUpgradeRate(t *testing.T) {
	cfg := embedded(t)
	cfg.UpgradeRate, cfg.UpgradeBurst = 0.01, 1
	n := start(t, cfg)
	path := func(user string) string {
		tok, err := auth.Mint([]byte(secret), user, user, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return "/socket/longpoll?vsn=2.0.0&token=" + tok
	}
	if code, body := get(t, n, path("1")); code != 200 || !strings.Contains(body, `"status":410`) {
		t.Fatalf("first open: %d %s", code, body)
	}
	if code, body := get(t, n, path("2")); code != http.StatusServiceUnavailable || !strings.Contains(body, `"status":500`) || !strings.Contains(body, "rate limited") {
		t.Fatalf("open over the upgrade rate: %d %s", code, body)
	}
	if _, err := phxtest.Dial(n.Addr(), phxtest.DialOptions{Token: path("3")[len("/socket/longpoll?vsn=2.0.0&token="):]}); err == nil {
		t.Fatal("the WebSocket upgrade after it was not limited too")
	}
}
