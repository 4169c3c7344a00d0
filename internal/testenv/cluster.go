//go:build linux

package testenv

import (
	"fmt"
	"os/exec"
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
		s, err := newRedisServer("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
			"--cluster-node-timeout", "2000", "--cluster-require-full-coverage", "no")
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
