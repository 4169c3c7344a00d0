//go:build linux

// Package testenv gives tests real, throwaway PostgreSQL and Redis servers.
// Nothing here is a mock, and nothing touches services already running on
// the machine: each test binary starts its own servers on free loopback
// ports, in temporary directories, and tears them down when it exits.
//
// Use it from a package's tests like this:
//
//	func TestMain(m *testing.M) { testenv.Main(m) }
//
//	func TestX(t *testing.T) {
//		url := testenv.Postgres(t) // fresh empty database, dropped after t
//		rdb := testenv.Redis(t)    // redis://127.0.0.1:port/N, N flushed
//	}
//
// Main stops the shared servers when the tests finish. Packages that forget
// it still leak nothing lasting: servers are started with a parent-death
// signal, so they die with the test binary, and the next run sweeps the
// temporary directories of dead runs.
//
// Environment:
//   - ELCHAT_TEST_DATABASE_URL: use this PostgreSQL server instead of
//     starting one; its user needs CREATEDB. Each Postgres call creates and
//     drops its own database there.
//   - ELCHAT_TEST_REDIS_URL: use this Redis server; Redis calls hand out DB
//     indexes 1..15 on it and FLUSHDB them, so point it at a throwaway server
//     and run packages one at a time (go test -p 1).
//   - CI: when set, missing server binaries fail the test instead of
//     skipping it, so CI cannot go green by testing nothing.
//
// Redis Pub/Sub channels are global, not per DB index: tests that publish
// must use channel names of their own.
package testenv

import (
	"errors"
	"fmt"
	mathrand "math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// Main runs m, stops every server testenv started and exits with m's code.
func Main(m *testing.M) {
	code := m.Run()
	Shutdown()
	os.Exit(code)
}

// Shutdown stops the shared servers and removes their files. Main calls it;
// call it yourself from a TestMain that cannot use Main.
func Shutdown() {
	sharedMu.Lock()
	fns := shutdowns
	shutdowns = nil
	sharedMu.Unlock()
	for i := len(fns) - 1; i >= 0; i-- {
		fns[i]()
	}
}

var (
	sharedMu  sync.Mutex
	shutdowns []func() // guarded by sharedMu; run by Shutdown, newest first
)

func atShutdown(fn func()) {
	sharedMu.Lock()
	shutdowns = append(shutdowns, fn)
	sharedMu.Unlock()
}

// errNoBinaries marks a server that cannot be started because it is not
// installed, the one case a developer run may skip.
var errNoBinaries = errors.New("server binaries not found")

func skipOrFail(t testing.TB, err error) {
	t.Helper()
	if errors.Is(err, errNoBinaries) && os.Getenv("CI") == "" {
		t.Skipf("testenv: %v (install them, or set the ELCHAT_TEST_*_URL variables; with CI set this fails)", err)
	}
	t.Fatalf("testenv: %v", err)
}

// spawn starts cmd from one goroutine locked to its OS thread for the life
// of the binary. Pdeathsig fires when the thread that forked the child
// exits, not the process; pinning the thread makes it mean "when the test
// binary dies", which is what keeps killed test runs from leaking servers.
func spawn(cmd *exec.Cmd, deathSig syscall.Signal) error {
	spawnOnce.Do(func() {
		spawnCh = make(chan spawnReq)
		go func() {
			runtime.LockOSThread() // never unlocked: this thread must outlive every child
			for r := range spawnCh {
				r.done <- r.cmd.Start()
			}
		}()
	})
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = deathSig
	done := make(chan error, 1)
	spawnCh <- spawnReq{cmd, done}
	return <-done
}

type spawnReq struct {
	cmd  *exec.Cmd
	done chan error
}

var (
	spawnOnce sync.Once
	spawnCh   chan spawnReq // set once by spawnOnce
)

const tempPrefix = "elchat-testenv-"

// newTempDir makes a directory that sweepStale can recognise as ours and
// reclaim once this process is gone.
func newTempDir() (string, error) {
	sweepOnce.Do(sweepStale)
	dir, err := os.MkdirTemp("", tempPrefix)
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, "owner.pid"), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		os.RemoveAll(dir)
		return "", err
	}
	return dir, nil
}

var sweepOnce sync.Once

// sweepStale removes directories left by test binaries that were killed
// before their cleanup ran (their servers died with them via Pdeathsig).
func sweepStale() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), tempPrefix+"*"))
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join(d, "owner.pid"))
		if err != nil {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || pid <= 0 {
			continue
		}
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			os.RemoveAll(d)
		}
	}
}

// findBinary looks on PATH, then in the given glob patterns (newest match
// last wins, so the highest installed version is used).
func findBinary(name string, patterns ...string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	var found string
	for _, pat := range patterns {
		matches, _ := filepath.Glob(pat)
		for _, m := range matches {
			if fi, err := os.Stat(m); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
				found = m
			}
		}
	}
	if found == "" {
		return "", fmt.Errorf("%w: %s not on PATH or in %v", errNoBinaries, name, patterns)
	}
	return found, nil
}

// freePort returns a loopback port that nothing listens on now, chosen
// below the kernel's ephemeral range: a port from that range (what
// "127.0.0.1:0" hands out) can be taken by any outgoing connection of the
// busy test binaries around us before the server we start binds it, and a
// Redis Cluster node's bus port can collide the same way. Another process
// can still win the race, so callers that start servers retry on a bind
// failure (see isBindError).
func freePort() (int, error) {
	lo, hi := 10000, ephemeralLow()
	for range 200 {
		if hi-lo < 1000 {
			break
		}
		port := lo + mathrand.IntN(hi-lo)
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
		if err != nil {
			continue
		}
		l.Close()
		return port, nil
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// ephemeralLow is the first port of the kernel's ephemeral range.
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 32768
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 32768
	}
	n, err := strconv.Atoi(f[0])
	if err != nil {
		return 32768
	}
	return n
}

// onFreePort calls start with a free port until it succeeds or fails
// for another reason than a port taken by someone else (between freePort
// and the server's bind), at most five times. log, when not empty, is the
// server's log file, removed before each try so that an error quotes
// only its own try.
func onFreePort(log string, start func(port int) error) error {
	var err error
	for range 5 {
		var port int
		if port, err = freePort(); err != nil {
			return err
		}
		if log != "" {
			os.Remove(log)
		}
		if err = start(port); err == nil || !strings.Contains(err.Error(), "Address already in use") {
			return err
		}
	}
	return err
}

func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}
