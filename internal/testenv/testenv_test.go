//go:build linux

package testenv_test

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/elchat/elchat/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

func pgQuery(t *testing.T, dbURL, q string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return "", err
	}
	defer conn.Close(ctx)
	var s string
	err = conn.QueryRow(ctx, q).Scan(&s)
	return s, err
}

func TestPostgresFreshDatabases(t *testing.T) {
	a, b := testenv.Postgres(t), testenv.Postgres(t)
	if a == b {
		t.Fatalf("two calls returned the same database %s", a)
	}
	for _, u := range []string{a, b} {
		name, err := pgQuery(t, u, "SELECT current_database()")
		if err != nil {
			t.Fatal(err)
		}
		parsed, _ := url.Parse(u)
		if "/"+name != parsed.Path {
			t.Errorf("connected to %s via %s", name, u)
		}
		if fsync, err := pgQuery(t, u, "SHOW fsync"); err != nil || fsync != "on" {
			t.Errorf("fsync = %q, %v; want on", fsync, err)
		}
		if n, err := pgQuery(t, u, "SELECT count(*)::text FROM pg_tables WHERE schemaname = 'public'"); err != nil || n != "0" {
			t.Errorf("fresh database has %s tables (%v)", n, err)
		}
	}
	if parsed, _ := url.Parse(a); parsed.Port() == "5432" {
		t.Errorf("testenv used the machine's default PostgreSQL port: %s", a)
	}
}

func TestPostgresServerStopStart(t *testing.T) {
	s := testenv.StartPostgresServer(t)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, s.URL())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "CREATE TABLE kept AS SELECT 'x'::text AS v"); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)
	s.Stop()
	if _, err := pgQuery(t, s.URL(), "SELECT 1::text"); err == nil {
		t.Fatal("query succeeded on a stopped server")
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	if v, err := pgQuery(t, s.URL(), "SELECT v FROM kept"); err != nil || v != "x" {
		t.Fatalf("after restart: %q, %v", v, err)
	}
	s.Kill()
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	if v, err := pgQuery(t, s.URL(), "SELECT v FROM kept"); err != nil || v != "x" {
		t.Fatalf("after crash recovery: %q, %v", v, err)
	}
}

func redisCmd(t *testing.T, addr, cmd string) (string, error) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Write([]byte(cmd + "\r\n")); err != nil {
		return "", err
	}
	buf := make([]byte, 512)
	n, err := conn.Read(buf)
	return string(buf[:n]), err
}

func TestRedisDistinctDBs(t *testing.T) {
	a, b := testenv.Redis(t), testenv.Redis(t)
	ua, _ := url.Parse(a)
	ub, _ := url.Parse(b)
	if ua.Host != ub.Host || ua.Path == ub.Path || ua.Path == "/0" {
		t.Fatalf("Redis() = %s, %s; want one server, distinct non-zero DBs", a, b)
	}
	if got, err := redisCmd(t, ua.Host, "PING"); err != nil || got != "+PONG\r\n" {
		t.Fatalf("PING = %q, %v", got, err)
	}
}

func TestRedisServerKillRestart(t *testing.T) {
	s := testenv.StartRedisServer(t)
	if _, err := redisCmd(t, s.Addr(), "SET k v"); err != nil {
		t.Fatal(err)
	}
	s.Kill()
	if _, err := redisCmd(t, s.Addr(), "PING"); err == nil {
		t.Fatal("PING answered by a killed server")
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	if got, err := redisCmd(t, s.Addr(), "EXISTS k"); err != nil || got != ":0\r\n" {
		t.Errorf("after restart EXISTS k = %q, %v; want empty server", got, err)
	}
	s.Stop()
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
}

func TestSentinelFailover(t *testing.T) {
	if testing.Short() {
		t.Skip("starts five servers")
	}
	ss := testenv.StartSentinelSet(t)
	addr, err := ss.MasterAddr()
	if err != nil || addr != ss.Primary.Addr() {
		t.Fatalf("master %q (%v), want %s", addr, err, ss.Primary.Addr())
	}
	start := time.Now()
	ss.Primary.Kill()
	if err := wait30(func() error {
		a, err := ss.MasterAddr()
		if err != nil {
			return err
		}
		if a != ss.Replica.Addr() {
			return fmt.Errorf("master still %s", a)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("replica promoted %v after the kill", time.Since(start).Round(time.Millisecond))
}

func wait30(f func() error) error {
	var err error
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if err = f(); err == nil {
			return nil
		}
	}
	return err
}

func TestRedisClusterStarts(t *testing.T) {
	if testing.Short() {
		t.Skip("starts six servers")
	}
	start := time.Now()
	c := testenv.StartRedisCluster(t)
	if n := len(c.Primaries()); n != 3 {
		t.Fatalf("%d primaries, want 3", n)
	}
	t.Logf("cluster ready after %v", time.Since(start).Round(time.Millisecond))

	// Every node's client and bus port lie below the ephemeral range,
	// where no outgoing connection of a busy test run can take them
	// between the choice and the bind.
	low := ephemeralLow(t)
	for _, s := range c.Servers {
		nodes, err := s.Do("CLUSTER", "NODES")
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(fmt.Sprint(nodes), "\n") {
			f := strings.Fields(line)
			if len(f) < 3 || !strings.Contains(f[2], "myself") {
				continue
			}
			// f[1] is ip:port@cport[,hostname]
			addr, _, _ := strings.Cut(f[1], ",")
			hostport, cport, _ := strings.Cut(addr, "@")
			_, port, _ := net.SplitHostPort(hostport)
			for _, p := range []string{port, cport} {
				if n, err := strconv.Atoi(p); err != nil || n >= low {
					t.Errorf("%s: port %s of %q is not below the ephemeral range (%d)", s.Addr(), p, f[1], low)
				}
			}
		}
	}
}

func ephemeralLow(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		t.Skip(err)
	}
	n, err := strconv.Atoi(strings.Fields(string(b))[0])
	if err != nil {
		t.Fatal(err)
	}
	return n
}
