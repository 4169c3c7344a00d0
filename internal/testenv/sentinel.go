//go:build linux

package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// SentinelSet is a primary, its replica and three Sentinels watching them
// under MasterName, with a quorum of two and a down-after of 1 s, so a
// killed primary is replaced within a few seconds.
type SentinelSet struct {
	MasterName string
	Primary    *RedisServer // the primary at start; after a failover, a replica or dead
	Replica    *RedisServer
	Sentinels  []*SentinelServer
}

// SentinelServer is one redis-server --sentinel.
type SentinelServer struct {
	process
	bin, dir, conf string
	port           int
}

// Addr is host:port.
func (s *SentinelServer) Addr() string { return "127.0.0.1:" + strconv.Itoa(s.port) }

// StartSentinelSet starts the set for t and waits until the Sentinels
// agree they could fail over; everything is killed in t.Cleanup.
func StartSentinelSet(t testing.TB) *SentinelSet {
	t.Helper()
	ss, err := newSentinelSet("elchat-test")
	if err != nil {
		skipOrFail(t, err)
	}
	return ss.register(t)
}

func (ss *SentinelSet) register(t testing.TB) *SentinelSet {
	t.Cleanup(func() {
		for _, s := range ss.Sentinels {
			s.Kill()
			os.RemoveAll(s.dir)
		}
		ss.Replica.destroy()
		ss.Primary.destroy()
	})
	return ss
}

func newSentinelSet(name string) (_ *SentinelSet, err error) {
	ss := &SentinelSet{MasterName: name}
	defer func() {
		if err != nil {
			for _, s := range ss.Sentinels {
				s.Kill()
				os.RemoveAll(s.dir)
			}
			if ss.Replica != nil {
				ss.Replica.destroy()
			}
			if ss.Primary != nil {
				ss.Primary.destroy()
			}
		}
	}()
	if ss.Primary, err = newRedisServer(); err != nil {
		return ss, err
	}
	if ss.Replica, err = newRedisServer("--replicaof", "127.0.0.1", strconv.Itoa(ss.Primary.port)); err != nil {
		return ss, err
	}
	if err := waitFor(30*time.Second, func() error {
		info, err := ss.Replica.Do("INFO", "replication")
		if err != nil {
			return err
		}
		if !strings.Contains(fmt.Sprint(info), "master_link_status:up") {
			return fmt.Errorf("replica not in sync yet")
		}
		return nil
	}); err != nil {
		return ss, err
	}
	for range 3 {
		s, err := newSentinel(name, ss.Primary.port)
		if err != nil {
			return ss, err
		}
		ss.Sentinels = append(ss.Sentinels, s)
	}
	// The Sentinels find each other through hello messages on the
	// primary; until they have, a failover could not be authorised.
	err = waitFor(60*time.Second, func() error {
		for _, s := range ss.Sentinels {
			if err := redisDo(s.Addr(), "SENTINEL ckquorum "+name); err != nil {
				return err
			}
			n, err := redisCall(s.Addr(), "SENTINEL", "sentinels", name)
			if err != nil {
				return err
			}
			if l, _ := n.([]any); len(l) < 2 {
				return fmt.Errorf("sentinel %s knows %d others", s.Addr(), len(l))
			}
			r, err := redisCall(s.Addr(), "SENTINEL", "replicas", name)
			if err != nil {
				return err
			}
			if l, _ := r.([]any); len(l) < 1 {
				return fmt.Errorf("sentinel %s knows no replica yet", s.Addr())
			}
		}
		return nil
	})
	return ss, err
}

// Addrs are the Sentinels' host:port addresses.
func (ss *SentinelSet) Addrs() []string {
	var out []string
	for _, s := range ss.Sentinels {
		out = append(out, s.Addr())
	}
	return out
}

// MasterAddr asks the first answering Sentinel for the current primary.
func (ss *SentinelSet) MasterAddr() (string, error) {
	var last error
	for _, s := range ss.Sentinels {
		r, err := redisCall(s.Addr(), "SENTINEL", "get-master-addr-by-name", ss.MasterName)
		if err != nil {
			last = err
			continue
		}
		if l, _ := r.([]any); len(l) == 2 {
			return fmt.Sprintf("%v:%v", l[0], l[1]), nil
		}
	}
	return "", fmt.Errorf("no sentinel named the primary: %v", last)
}

func newSentinel(name string, primaryPort int) (*SentinelServer, error) {
	bin, err := findBinary("redis-server", "/usr/bin/redis-server", "/usr/local/bin/redis-server")
	if err != nil {
		return nil, err
	}
	dir, err := newTempDir()
	if err != nil {
		return nil, err
	}
	s := &SentinelServer{bin: bin, dir: dir, conf: filepath.Join(dir, "sentinel.conf"),
		process: process{name: "sentinel", log: filepath.Join(dir, "sentinel.log")}}
	if err := onFreePort(s.log, func(port int) error { s.port = port; return s.launch(name, primaryPort) }); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return s, nil
}

// launch writes the configuration for s.port and starts the Sentinel.
func (s *SentinelServer) launch(name string, primaryPort int) error {
	port, dir := s.port, s.dir
	conf := fmt.Sprintf(`port %d
bind 127.0.0.1
daemonize no
dir %s
logfile %s
sentinel monitor %s 127.0.0.1 %d 2
sentinel down-after-milliseconds %s 1000
sentinel failover-timeout %s 10000
sentinel parallel-syncs %s 1
`, port, dir, s.log, name, primaryPort, name, name, name)
	if err := os.WriteFile(s.conf, []byte(conf), 0o644); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	cmd := exec.Command(s.bin, s.conf, "--sentinel")
	return s.launchLocked(cmd, syscall.SIGKILL, 30*time.Second, 20*time.Millisecond, func() error {
		return redisDo(s.Addr(), "PING")
	})
}

// Kill kills the Sentinel and waits for it.
func (s *SentinelServer) Kill() { s.signal(syscall.SIGKILL, 10*time.Second) }

func waitFor(limit time.Duration, f func() error) error {
	deadline := time.Now().Add(limit)
	for {
		err := f()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("after %v: %w", limit, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
