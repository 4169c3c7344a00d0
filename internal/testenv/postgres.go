//go:build linux

package testenv

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

var pgBinGlobs = []string{"/usr/lib/postgresql/*/bin/%s", "/usr/local/pgsql/bin/%s"}

// PGServer is a throwaway PostgreSQL cluster owned by one test (or, for the
// shared server, by the test binary). Stop, Start and Kill let fault tests
// take it away and bring it back on the same port with the same data.
type PGServer struct {
	process
	dir, data, sock string
	port            int
	postgres        string
	cred            *syscall.Credential // nil unless we run as root
}

// StartPostgresServer starts a dedicated cluster for t, stopped and deleted
// in t.Cleanup. URL points at an empty database named elchat.
func StartPostgresServer(t testing.TB) *PGServer {
	t.Helper()
	s, err := newPGServer()
	if err != nil {
		skipOrFail(t, err)
	}
	t.Cleanup(s.destroy)
	if err := s.createDB(context.Background(), "elchat"); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return s
}

// URL is the elchat database of a server from StartPostgresServer.
func (s *PGServer) URL() string { return s.dbURL("elchat") }

// Port is the TCP port the server listens on, on 127.0.0.1.
func (s *PGServer) Port() int { return s.port }

func (s *PGServer) dbURL(db string) string {
	u := url.URL{Scheme: "postgres", User: url.User("postgres"),
		Host: "127.0.0.1:" + strconv.Itoa(s.port), Path: "/" + db, RawQuery: "sslmode=disable"}
	return u.String()
}

func newPGServer() (*PGServer, error) {
	globs := func(name string) []string {
		out := make([]string, len(pgBinGlobs))
		for i, g := range pgBinGlobs {
			out[i] = fmt.Sprintf(g, name)
		}
		return out
	}
	initdb, err := findBinary("initdb", globs("initdb")...)
	if err != nil {
		return nil, err
	}
	// postgres must come from the same installation as initdb.
	postgres := filepath.Join(filepath.Dir(initdb), "postgres")
	if resolved, err := filepath.EvalSymlinks(initdb); err == nil {
		postgres = filepath.Join(filepath.Dir(resolved), "postgres")
	}
	if _, err := os.Stat(postgres); err != nil {
		return nil, fmt.Errorf("%w: postgres next to %s", errNoBinaries, initdb)
	}

	dir, err := newTempDir()
	if err != nil {
		return nil, err
	}
	s := &PGServer{dir: dir, data: filepath.Join(dir, "data"), sock: dir, postgres: postgres,
		process: process{name: "postgres", log: filepath.Join(dir, "postgres.log")}}

	// PostgreSQL refuses to run as root; as root we hand the directory to
	// the postgres OS user and run the binaries under its credentials.
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("%w: running as root needs a postgres OS user: %v", errNoBinaries, err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		s.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		if err := os.Chown(dir, uid, gid); err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
		os.Chown(filepath.Join(dir, "owner.pid"), uid, gid)
	}

	// --no-sync only skips initdb's own flush of a cluster that is thrown
	// away anyway; the server itself runs with fsync on.
	cmd := exec.Command(initdb, "-D", s.data, "-U", "postgres", "--auth=trust",
		"-E", "UTF8", "--locale=C", "--no-sync")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred}
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("initdb: %v\n%s", err, out)
	}
	if err := onFreePort(s.log, func(port int) error { s.port = port; return s.Start() }); err != nil {
		s.destroy()
		return nil, err
	}
	return s, nil
}

// Start starts the server if it is stopped and waits until it accepts
// connections. It may be called from any goroutine.
func (s *PGServer) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return nil
	}
	logf, err := os.OpenFile(s.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o666)
	if err != nil {
		return err
	}
	defer logf.Close()
	if s.cred != nil {
		os.Chown(s.log, int(s.cred.Uid), int(s.cred.Gid))
	}
	cmd := exec.Command(s.postgres, "-D", s.data, "-p", strconv.Itoa(s.port), "-k", s.sock,
		"-c", "listen_addresses=127.0.0.1", "-c", "fsync=on", "-c", "max_connections=200",
		"-c", "shared_buffers=32MB", "-c", "log_min_messages=warning")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred}
	cmd.Stdout, cmd.Stderr = logf, logf
	// SIGQUIT is PostgreSQL's immediate shutdown: the backends go with the
	// postmaster if the test binary dies.
	return s.launchLocked(cmd, syscall.SIGQUIT, 60*time.Second, 50*time.Millisecond, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, s.dbURL("postgres"))
		if err == nil {
			conn.Close(ctx)
		}
		return err
	})
}

// Stop shuts the server down cleanly (fast shutdown) and waits for it.
func (s *PGServer) Stop() { s.signal(syscall.SIGINT, 30*time.Second) }

// Kill stops the server the way a crash would (immediate shutdown, WAL
// recovery on the next Start) and waits for it.
func (s *PGServer) Kill() { s.signal(syscall.SIGQUIT, 30*time.Second) }

func (s *PGServer) destroy() {
	s.Stop()
	os.RemoveAll(s.dir)
}

func (s *PGServer) createDB(ctx context.Context, name string) error {
	return createDB(ctx, s.dbURL("postgres"), name)
}

func createDB(ctx context.Context, adminURL, name string) error {
	conn, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		return fmt.Errorf("connect %s: %w", redact(adminURL), err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return fmt.Errorf("create database %s: %w", name, err)
	}
	return nil
}

func dropDB(ctx context.Context, adminURL, name string) error {
	conn, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	// FORCE ends sessions a test leaked (an unclosed pool) instead of
	// failing the drop.
	_, err = conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
	return err
}

func redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "<unparseable url>"
	}
	return u.Redacted()
}

var (
	sharedPGOnce sync.Once
	sharedPGURL  string // admin URL; set once by sharedPGOnce
	sharedPGErr  error  // set once by sharedPGOnce
	dbCounter    atomic.Int64
)

// Postgres returns the URL of a new, empty database on the binary's shared
// server (started on first use, or ELCHAT_TEST_DATABASE_URL's server). The
// database is dropped when t finishes.
func Postgres(t testing.TB) string {
	t.Helper()
	sharedPGOnce.Do(func() {
		if env := os.Getenv("ELCHAT_TEST_DATABASE_URL"); env != "" {
			sharedPGURL = env
			return
		}
		s, err := newPGServer()
		if err != nil {
			sharedPGErr = err
			return
		}
		sharedPGURL = s.dbURL("postgres")
		atShutdown(s.destroy)
	})
	if sharedPGErr != nil {
		skipOrFail(t, sharedPGErr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	name := fmt.Sprintf("elchat_test_%d_%d", os.Getpid(), dbCounter.Add(1))
	if err := createDB(ctx, sharedPGURL, name); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := dropDB(ctx, sharedPGURL, name); err != nil && !errors.Is(err, context.Canceled) {
			t.Logf("testenv: drop database %s: %v", name, err)
		}
	})
	u, err := url.Parse(sharedPGURL)
	if err != nil {
		t.Fatalf("testenv: bad database URL %s: %v", redact(sharedPGURL), err)
	}
	u.Path = "/" + name
	return u.String()
}
