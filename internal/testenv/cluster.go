//go:build linux

package testenv

import (
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// RedisCluster is a Redis Cluster of three primaries with one replica
// each, on free loopback ports, with a node timeout of 2 s so that a
// killed primary is replaced within a few seconds.
type RedisCluster struct {
	Servers []*RedisServer // the first three start as primaries
}

// StartRedisCluster starts the cluster for t and waits until every node
// reports cluster_state:ok; everything is killed in t.Cleanup.
func StartRedisCluster(t testing.TB) *RedisCluster {
	t.Helper()
	c, err := newRedisCluster()
	if err != nil {
		skipOrFail(t, err)
	}
	t.Cleanup(func() {
		for _, s := range c.Servers {
			s.destroy()
		}
	})
	return c
}

func newRedisCluster() (_ *RedisCluster, err error) {
	c := &RedisCluster{}
	defer func() {
		if err != nil {
			for _, s := range c.Servers {
				s.destroy()
			}
		}
	}()
	cli, err := findBinary("redis-cli", "/usr/bin/redis-cli", "/usr/local/bin/redis-cli")
	if err != nil {
		return c, err
	}
	for range 6 {
		// The bus port is chosen like the client port rather than left
		// at Redis's port+10000, which can land in the ephemeral range
		// and be taken by any outgoing connection.
		var s *RedisServer
		err := onFreePort("", func(bus int) (err error) {
			s, err = newRedisServer("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
				"--cluster-port", strconv.Itoa(bus),
				"--cluster-node-timeout", "2000", "--cluster-require-full-coverage", "no")
			return err
		})
		if err != nil {
			return c, err
		}
		c.Servers = append(c.Servers, s)
	}
	args := []string{"--cluster", "create"}
	args = append(args, c.Seeds()...)
	args = append(args, "--cluster-replicas", "1", "--cluster-yes")
	if out, err := exec.Command(cli, args...).CombinedOutput(); err != nil {
		return c, fmt.Errorf("redis-cli --cluster create: %v\n%s", err, out)
	}
	err = waitFor(60*time.Second, func() error {
		for _, s := range c.Servers {
			info, err := s.Do("CLUSTER", "INFO")
			if err != nil {
				return err
			}
			if !strings.Contains(fmt.Sprint(info), "cluster_state:ok") {
				return fmt.Errorf("%s: cluster not ok yet", s.Addr())
			}
		}
		// Replicas must be in sync before a failover can promote them.
		for _, s := range c.Servers {
			info, err := s.Do("INFO", "replication")
			if err != nil {
				return err
			}
			if r := fmt.Sprint(info); strings.Contains(r, "role:slave") && !strings.Contains(r, "master_link_status:up") {
				return fmt.Errorf("%s: replica not in sync yet", s.Addr())
			}
		}
		return nil
	})
	return c, err
}

// Seeds are every node's host:port.
func (c *RedisCluster) Seeds() []string {
	var out []string
	for _, s := range c.Servers {
		out = append(out, s.Addr())
	}
	return out
}

// Primaries returns the servers that are primaries now and answer.
func (c *RedisCluster) Primaries() []*RedisServer {
	var out []*RedisServer
	for _, s := range c.Servers {
		info, err := s.Do("INFO", "replication")
		if err == nil && strings.Contains(fmt.Sprint(info), "role:master") {
			out = append(out, s)
		}
	}
	return out
}

// WaitOK waits until every answering node reports cluster_state:ok.
func (c *RedisCluster) WaitOK(limit time.Duration) error {
	return waitFor(limit, func() error {
		for _, s := range c.Servers {
			info, err := s.Do("CLUSTER", "INFO")
			if err != nil {
				continue // killed
			}
			if !strings.Contains(fmt.Sprint(info), "cluster_state:ok") {
				return fmt.Errorf("%s: cluster not ok", s.Addr())
			}
		}
		return nil
	})
}

// StartRedisClusterShared starts a cluster that outlives t: it is torn
// down by Shutdown (testenv.Main), for tests of one binary that share it.
func StartRedisClusterShared(t testing.TB) *RedisCluster {
	t.Helper()
	c, err := newRedisCluster()
	if err != nil {
		skipOrFail(t, err)
		return nil
	}
	atShutdown(func() {
		for _, s := range c.Servers {
			s.destroy()
		}
	})
	return c
}

// MoveSlot moves slot, with its keys, from the primary that owns it to
// the primary at addr, the way redis-cli --cluster reshard does: the
// target imports, the source migrates its keys, then every primary is
// told the new owner.
func (c *RedisCluster) MoveSlot(slot int, addr string) error {
	prims := c.Primaries()
	id := func(s *RedisServer) (string, error) {
		r, err := s.Do("CLUSTER", "MYID")
		return fmt.Sprint(r), err
	}
	var src, dst *RedisServer
	for _, s := range prims {
		if s.Addr() == addr {
			dst = s
		}
		own, err := s.OwnsSlot(slot)
		if err == nil && own {
			src = s
		}
	}
	if src == nil || dst == nil {
		return fmt.Errorf("source or target of slot %d not found", slot)
	}
	if src == dst {
		return nil
	}
	srcID, err := id(src)
	if err != nil {
		return err
	}
	dstID, err := id(dst)
	if err != nil {
		return err
	}
	s := fmt.Sprint(slot)
	if _, err := dst.Do("CLUSTER", "SETSLOT", s, "IMPORTING", srcID); err != nil {
		return err
	}
	if _, err := src.Do("CLUSTER", "SETSLOT", s, "MIGRATING", dstID); err != nil {
		return err
	}
	for range 1000 {
		r, err := src.Do("CLUSTER", "GETKEYSINSLOT", s, "100")
		if err != nil {
			return err
		}
		keys, _ := r.([]any)
		if len(keys) == 0 {
			break
		}
		args := []string{"MIGRATE", "127.0.0.1", fmt.Sprint(dst.port), "", "0", "5000", "KEYS"}
		for _, k := range keys {
			args = append(args, fmt.Sprint(k))
		}
		if _, err := src.Do(args...); err != nil {
			return err
		}
	}
	for _, p := range prims {
		if _, err := p.Do("CLUSTER", "SETSLOT", s, "NODE", dstID); err != nil {
			return err
		}
	}
	return nil
}

// OwnsSlot reports whether s serves slot according to its CLUSTER SLOTS.
func (s *RedisServer) OwnsSlot(slot int) (bool, error) {
	r, err := s.Do("CLUSTER", "SLOTS")
	if err != nil {
		return false, err
	}
	ranges, _ := r.([]any)
	for _, rg := range ranges {
		l, _ := rg.([]any)
		if len(l) < 3 {
			continue
		}
		lo, _ := strconv.Atoi(fmt.Sprint(l[0]))
		hi, _ := strconv.Atoi(fmt.Sprint(l[1]))
		node, _ := l[2].([]any)
		if slot >= lo && slot <= hi && len(node) >= 2 && fmt.Sprint(node[1]) == fmt.Sprint(s.port) {
			return true, nil
		}
	}
	return false, nil
}
