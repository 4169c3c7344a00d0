//go:build linux

package testenv

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// redisDBs is how many logical databases our servers get, so that every
// Redis call in a binary can have its own index.
const redisDBs = 1024

// RedisServer is a throwaway redis-server without persistence. Stop, Start
// and Kill let fault tests take it away and bring it back on the same port
// (empty: nothing is saved).
type RedisServer struct {
	process
	bin, dir string
	port     int
	extra    []string // more redis-server arguments (replicaof, cluster mode)
}

// StartRedisServer starts a dedicated server for t, killed in t.Cleanup.
func StartRedisServer(t testing.TB) *RedisServer {
	t.Helper()
	s, err := newRedisServer()
	if err != nil {
		skipOrFail(t, err)
	}
	t.Cleanup(s.destroy)
	return s
}

// URL is redis://127.0.0.1:port/0.
func (s *RedisServer) URL() string { return fmt.Sprintf("redis://%s/0", s.Addr()) }

// Addr is host:port.
func (s *RedisServer) Addr() string { return "127.0.0.1:" + strconv.Itoa(s.port) }

func newRedisServer(extra ...string) (*RedisServer, error) {
	bin, err := findBinary("redis-server", "/usr/bin/redis-server", "/usr/local/bin/redis-server")
	if err != nil {
		return nil, err
	}
	dir, err := newTempDir()
	if err != nil {
		return nil, err
	}
	s := &RedisServer{bin: bin, dir: dir, extra: extra, process: process{name: "redis", log: dir + "/redis.log"}}
	if err := onFreePort(s.log, func(port int) error { s.port = port; return s.Start() }); err != nil {
		s.destroy()
		return nil, err
	}
	return s, nil
}

// Start starts the server if it is stopped and waits until it answers PING.
func (s *RedisServer) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return nil
	}
	cmd := exec.Command(s.bin, "--port", strconv.Itoa(s.port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--databases", strconv.Itoa(redisDBs),
		"--dir", s.dir, "--logfile", s.log, "--daemonize", "no")
	cmd.Args = append(cmd.Args, s.extra...)
	return s.launchLocked(cmd, syscall.SIGKILL, 30*time.Second, 20*time.Millisecond, func() error {
		return redisDo(s.Addr(), "PING")
	})
}

// Stop shuts the server down gracefully and waits for it.
func (s *RedisServer) Stop() { s.signal(syscall.SIGTERM, 10*time.Second) }

// Kill kills the server abruptly, like a crash, and waits for it.
func (s *RedisServer) Kill() { s.signal(syscall.SIGKILL, 10*time.Second) }

func (s *RedisServer) destroy() {
	s.Kill()
	os.RemoveAll(s.dir)
}

// redisDo sends one inline command per argument list and fails unless every
// reply is a status or integer; enough for PING, SELECT and FLUSHDB without
// pulling a client library into every test binary.
func redisDo(addr string, cmds ...string) error {
	conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Write([]byte(strings.Join(cmds, "\r\n") + "\r\n")); err != nil {
		return err
	}
	r := bufio.NewReader(conn)
	for _, c := range cmds {
		line, err := r.ReadString('\n')
		if err != nil {
			return fmt.Errorf("%s: %w", c, err)
		}
		if !strings.HasPrefix(line, "+") && !strings.HasPrefix(line, ":") {
			return fmt.Errorf("%s: %s", c, strings.TrimSpace(line))
		}
	}
	return nil
}

var (
	sharedRedisOnce sync.Once
	sharedRedisAddr string // set once by sharedRedisOnce
	sharedRedisPass string // password from ELCHAT_TEST_REDIS_URL, if any
	sharedRedisDBs  int    // DB indexes usable on the shared server
	sharedRedisErr  error  // set once by sharedRedisOnce
	redisCounter    atomic.Int64
)

// Port is the server's port.
func (s *RedisServer) Port() int { return s.port }

// Do sends one command to the server (arguments as RESP bulk strings) and
// returns its reply: a string for status, integer and bulk replies, a
// []any for arrays. An error reply is returned as an error.
func (s *RedisServer) Do(args ...string) (any, error) { return redisCall(s.Addr(), args...) }

func redisCall(addr string, args ...string) (any, error) {
	conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := conn.Write([]byte(b.String())); err != nil {
		return nil, err
	}
	return readReply(bufio.NewReader(conn), 0)
}

func readReply(r *bufio.Reader, depth int) (any, error) {
	if depth > 8 {
		return nil, fmt.Errorf("reply nested too deep")
	}
	line, err := r.ReadString('\n')
	if err != nil {
		return nil, err
	}
	line = strings.TrimSuffix(line, "\r\n")
	if line == "" {
		return nil, fmt.Errorf("empty reply line")
	}
	switch line[0] {
	case '+', ':':
		return line[1:], nil
	case '-':
		return nil, fmt.Errorf("%s", line[1:])
	case '$':
		n, err := strconv.Atoi(line[1:])
		if err != nil || n < 0 {
			return nil, err
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(r, buf); err != nil {
			return nil, err
		}
		return string(buf[:n]), nil
	case '*':
		n, err := strconv.Atoi(line[1:])
		if err != nil || n < 0 || n > 1<<16 {
			return nil, err
		}
		out := make([]any, n)
		for i := range out {
			if out[i], err = readReply(r, depth+1); err != nil {
				return nil, err
			}
		}
		return out, nil
	}
	return nil, fmt.Errorf("unexpected reply %q", line)
}

// Redis returns redis://host:port/N for the binary's shared server (started
// on first use, or ELCHAT_TEST_REDIS_URL's server), with N not handed out
// before in this binary while indexes last, and flushed.
func Redis(t testing.TB) string {
	t.Helper()
	sharedRedisOnce.Do(func() {
		if env := os.Getenv("ELCHAT_TEST_REDIS_URL"); env != "" {
			u, err := url.Parse(env)
			if err != nil {
				sharedRedisErr = fmt.Errorf("ELCHAT_TEST_REDIS_URL: %w", err)
				return
			}
			sharedRedisAddr = u.Host
			sharedRedisPass, _ = u.User.Password()
			sharedRedisDBs = 16 // the stock default; we cannot know more
			return
		}
		s, err := newRedisServer()
		if err != nil {
			sharedRedisErr = err
			return
		}
		sharedRedisAddr, sharedRedisDBs = s.Addr(), redisDBs
		atShutdown(s.destroy)
	})
	if sharedRedisErr != nil {
		skipOrFail(t, sharedRedisErr)
	}
	// Index 0 is left alone: it is what clients use when they ignore the
	// URL path, and a test doing that should not meet another's keys.
	db := 1 + int(redisCounter.Add(1)-1)%(sharedRedisDBs-1)
	cmds := []string{"SELECT " + strconv.Itoa(db), "FLUSHDB"}
	if sharedRedisPass != "" {
		cmds = append([]string{"AUTH " + sharedRedisPass}, cmds...)
	}
	if err := redisDo(sharedRedisAddr, cmds...); err != nil {
		t.Fatalf("testenv: prepare redis db %d: %v", db, err)
	}
	u := url.URL{Scheme: "redis", Host: sharedRedisAddr, Path: "/" + strconv.Itoa(db)}
	if sharedRedisPass != "" {
		u.User = url.UserPassword("", sharedRedisPass)
	}
	return u.String()
}
