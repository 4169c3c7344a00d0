package main

import (
	"bytes"
	"errors"
	"flag"
	"io"
	"reflect"
	"testing"

	"github.com/elchat/elchat/pkg/node"
)

// TestFlagDefaults: every flag's default is node.DefaultConfig's.
func TestFlagDefaults(t *testing.T) {
	var c config
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	c.flags(fs)
	if err := fs.Parse(nil); err != nil {
		t.Fatal(err)
	}
	if d := node.DefaultConfig(); !reflect.DeepEqual(c.node, d) {
		t.Fatalf("flag defaults differ from node.DefaultConfig:\n%+v\n%+v", c.node, d)
	}
	if c.node.Engine.MaxMessageSize != 64<<10 {
		t.Fatalf("--max-frame default %d", c.node.Engine.MaxMessageSize)
	}
}

// TestServeRefuses: serve stops at start-up on a configuration that loses
// data or leaks access, with the node's error.
func TestServeRefuses(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		args []string
		want error
	}{
		{[]string{"--secret", "0123456789abcdef0123", "--data-dir", dir, "--redis-url", "redis://127.0.0.1:1/0"}, node.ErrRedisWithoutDatabase},
		{[]string{"--dev", "--secret", "0123456789abcdef0123", "--data-dir", dir}, node.ErrDevWithSecret},
		{[]string{"--secret", "0123456789abcdef0123", "--data-dir", dir, "--redis-sentinels", "127.0.0.1:1"}, node.ErrSentinelWithoutMaster},
		{[]string{"--secret", "0123456789abcdef0123", "--data-dir", dir, "--redis-master", "m"}, node.ErrMasterWithoutSentinel},
		{[]string{"--secret", "0123456789abcdef0123", "--data-dir", dir, "--redis-sentinels", "127.0.0.1:1", "--redis-master", "m", "--redis-cluster", "127.0.0.1:2"}, node.ErrSentinelAndCluster},
		{[]string{"--secret", "0123456789abcdef0123", "--data-dir", dir, "--redis-cluster", "127.0.0.1:2"}, node.ErrRedisWithoutDatabase},
		{[]string{"--secret", "0123456789abcdef0123", "--data-dir", dir, "--redis-sentinels", "127.0.0.1:1", "--redis-master", "m"}, node.ErrRedisWithoutDatabase},
	} {
		var stderr bytes.Buffer
		err := run(append([]string{"serve", "--addr", "127.0.0.1:0"}, tc.args...), io.Discard, &stderr)
		if !errors.Is(err, tc.want) {
			t.Errorf("serve %v: %v, want %v", tc.args, err, tc.want)
		}
	}
}
