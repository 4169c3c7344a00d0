//go:build linux

package main

// The floor server (`elchat-bench __floor --addr HOST:PORT`): the least a
// Phoenix socket server built on ElChat's own parts can do. It accepts TCP,
// upgrades with the same gobwas/ws Upgrader on the raw connection (the
// "phoenix" subprotocol echoed when offered, no auth), parks the socket on
// the same epoll engine (pkg/transport) with the node's default options,
// and answers every Phoenix frame that carries a ref with an ok reply. No
// hub, no store, no presence, no limits. What ElChat spends above this, in
// the same run on the same box, is what its features cost.

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/elchat/elchat/internal/gopool"
	"github.com/elchat/elchat/pkg/phx"
	"github.com/elchat/elchat/pkg/transport"
	"github.com/gobwas/ws"
)

// floorEngine mirrors pkg/node.DefaultConfig().Engine (not imported: that
// would link the whole node into the generator and its workers).
var floorEngine = transport.Options{
	Workers:        256,
	MaxMessageSize: 64 << 10,
	IdleTimeout:    60 * time.Second,
	MaxQueueBytes:  1 << 20,
	MaxQueueFrames: 1024,
	WriteTimeout:   10 * time.Second,
}

type floorSession struct{ c *transport.Conn }

func (s *floorSession) HandleText(data []byte) {
	f, err := phx.Decode(data)
	if err != nil || f.Ref == "" {
		return
	}
	// Send keeps msg until written: a fresh slice per reply.
	s.c.Send(phx.AppendReply(make([]byte, 0, 64+len(f.Topic)), f.JoinRef, f.Ref, f.Topic, "ok", nil)) //nolint:errcheck
}
func (s *floorSession) HandleBinary([]byte) {}
func (s *floorSession) Closed()             {}

var floorReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 16<<10) }}

func runFloor(args []string) error {
	fs := flag.NewFlagSet("__floor", flag.ExitOnError)
	addr := fs.String("addr", "127.0.0.1:0", "listen address")
	kind := fs.String("transport", "epoll", "engine: epoll or portable")
	fs.Parse(args)
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	opts := floorEngine
	opts.Logger = logger
	eng, err := transport.New(*kind, opts)
	if err != nil {
		return err
	}
	// As pkg/node.Listen: no TCP keepalive on accepted connections.
	lc := net.ListenConfig{KeepAlive: -1}
	ln, err := lc.Listen(context.Background(), "tcp", *addr)
	if err != nil {
		return err
	}
	fmt.Fprintln(os.Stderr, "floor listening on", ln.Addr())
	go func() {
		ch := make(chan os.Signal, 1)
		signal.Notify(ch, syscall.SIGTERM, syscall.SIGINT)
		<-ch
		ln.Close()
	}()
	serveFloor(ln, eng)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return eng.Shutdown(ctx)
}

// serveFloor accepts until ln is closed; each upgrade runs on a kept
// goroutine as in pkg/server (at most 4096 at once, as
// ELCHAT_MAX_HANDSHAKES in the bench), the upgraded socket then lives on
// eng.
func serveFloor(ln net.Listener, eng transport.Engine) {
	shakers := gopool.New(4096, 5*time.Second)
	for {
		nc, err := ln.Accept()
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				continue
			}
			break
		}
		if !shakers.Go(func() { floorUpgrade(eng, nc) }) {
			nc.Close()
		}
	}
}

// floorUpgrade is pkg/server's upgrade without authorization: the request
// head is read through a pooled reader and handed to ws.Upgrader exactly.
func floorUpgrade(eng transport.Engine, nc net.Conn) {
	_ = nc.SetDeadline(time.Now().Add(10 * time.Second))
	br := floorReaders.Get().(*bufio.Reader)
	br.Reset(nc)
	defer func() { br.Reset(nil); floorReaders.Put(br) }()
	headLen, err := floorHead(br)
	if err != nil {
		nc.Close()
		return
	}
	u := ws.Upgrader{
		ProtocolCustom: func(v []byte) (string, bool) {
			for _, p := range strings.Split(string(v), ",") {
				if strings.TrimSpace(p) == "phoenix" {
					return "phoenix", true
				}
			}
			return "", false
		},
	}
	_, err = u.Upgrade(struct {
		io.Reader
		io.Writer
	}{io.LimitReader(br, int64(headLen)), nc})
	if err != nil || br.Buffered() > 0 {
		nc.Close()
		return
	}
	_ = nc.SetDeadline(time.Time{})
	if _, err := eng.Add(nc, func(c *transport.Conn) transport.Session { return &floorSession{c: c} }); err != nil {
		nc.Close()
	}
}

// floorHead returns the length of the request head without consuming it.
func floorHead(br *bufio.Reader) (int, error) {
	for n := 1; ; n = br.Buffered() + 1 {
		if n > br.Size() {
			return 0, fmt.Errorf("request head too large")
		}
		if _, err := br.Peek(n); err != nil {
			return 0, err
		}
		b, _ := br.Peek(br.Buffered())
		if end := bytes.Index(b, []byte("\r\n\r\n")); end >= 0 {
			return end + 4, nil
		}
	}
}
