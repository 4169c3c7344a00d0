//go:build linux

package main

import (
	"context"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/elchat/elchat/pkg/auth"
	"github.com/elchat/elchat/pkg/transport"
	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
)

func startTestFloor(t *testing.T) string {
	t.Helper()
	eng, err := transport.New("epoll", floorEngine)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go serveFloor(ln, eng)
	t.Cleanup(func() {
		ln.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		eng.Shutdown(ctx)
	})
	return ln.Addr().String()
}

// The floor answers the worker's join and heartbeat with ok replies and
// echoes the phoenix subprotocol.
func TestFloorAnswersPhoenixFrames(t *testing.T) {
	addr := startTestFloor(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	d := ws.Dialer{Protocols: []string{"phoenix"}}
	nc, _, hs, err := d.Dial(ctx, "ws://"+addr+"/socket/websocket?token=x&vsn=2.0.0")
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if hs.Protocol != "phoenix" {
		t.Fatalf("subprotocol %q, want phoenix", hs.Protocol)
	}
	nc.SetDeadline(time.Now().Add(5 * time.Second))
	for _, c := range []struct{ in, want string }{
		{`["L","L","user:7","phx_join",{}]`, `["L","L","user:7","phx_reply",{"status":"ok","response":{}}]`},
		{`[null,"h","phoenix","heartbeat",{}]`, `[null,"h","phoenix","phx_reply",{"status":"ok","response":{}}]`},
	} {
		if err := wsutil.WriteClientText(nc, []byte(c.in)); err != nil {
			t.Fatal(err)
		}
		got, err := wsutil.ReadServerText(nc)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != c.want {
			t.Fatalf("reply to %s:\n got %s\nwant %s", c.in, got, c.want)
		}
	}
}

// --claims tokens are JWTs ElChat's verifier accepts.
func TestSignHS256VerifiesWithElChat(t *testing.T) {
	secret := []byte("target-secret-0123456789")
	tok, err := signHS256(secret, fillTemplate(`{"sub":"{id}","name":"u{id}","exp":{exp}}`, "42"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := auth.NewVerifier(secret).Verify(tok)
	if err != nil {
		t.Fatal(err)
	}
	if c.UserID != "42" || c.Name != "u42" {
		t.Fatalf("claims %+v", c)
	}
	if _, err := auth.NewVerifier([]byte("another-secret-0123456789")).Verify(tok); err == nil {
		t.Fatal("verified with the wrong secret")
	}
}

func TestWorkerRequestAndJoin(t *testing.T) {
	w := &worker{hosts: []string{"127.0.0.1:4000"}}
	if got := w.request(5, "T.O.K"); !strings.HasPrefix(got, "GET /socket/websocket?token=T.O.K&vsn=2.0.0 HTTP/1.1\r\nHost: 127.0.0.1:4000\r\n") {
		t.Fatalf("default request: %q", got)
	}
	if got := string(w.joinFrame(5)); got != `["L","L","user:5","phx_join",{}]` {
		t.Fatalf("default join: %s", got)
	}
	w.cfg = workerConfig{Host: "chat.example:80", Path: "/ws/websocket", Query: "a=1", TokenParam: "jwt",
		TopicT: `room:{id}`, JoinT: `{"u":"{id}"}`}
	if got := w.request(5, "tok"); !strings.HasPrefix(got, "GET /ws/websocket?a=1&jwt=tok&vsn=2.0.0 HTTP/1.1\r\nHost: chat.example:80\r\n") {
		t.Fatalf("target request: %q", got)
	}
	if got := w.request(5, ""); !strings.HasPrefix(got, "GET /ws/websocket?a=1&vsn=2.0.0 ") {
		t.Fatalf("no token: %q", got)
	}
	if got := string(w.joinFrame(5)); got != `["L","L","room:5","phx_join",{"u":"5"}]` {
		t.Fatalf("templated join: %s", got)
	}
}

// A worker connects, joins and heartbeats against the floor through its
// own loop: the epoll instance parked in the runtime's poller, the raw
// reads and writes, and the deadline that wakes it for its scans.
func TestWorkerHoldsSocketsAgainstTheFloor(t *testing.T) {
	addr := startTestFloor(t)
	const n = 200
	w, err := newWorker(workerConfig{
		Scenario: "connect", Addrs: []string{addr}, Secret: "x", FirstUser: 1, Count: n,
		Rate: 2000, MaxInflight: 100, HB: 300 * time.Millisecond, HBTimeout: 2 * time.Second,
		ConnTimeout: 5 * time.Second, Deadline: time.Now().Add(30 * time.Second),
	}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { w.run(); close(done) }()
	// Ramp (0.1 s), a heartbeat period, and a second of scans: every socket
	// is visited once a second, so each sends at least one heartbeat.
	time.Sleep(2500 * time.Millisecond)
	w.cmds <- "quit"
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("worker did not quit")
	}
	if w.up != n || w.nfail != 0 || w.drop != 0 {
		t.Fatalf("up %d, failed %d, dropped %d of %d; reasons %v", w.up, w.nfail, w.drop, n, w.reasons)
	}
	if w.hbOK < n || w.hbFail != 0 || w.hbSent-w.hbOK > n {
		t.Fatalf("heartbeats sent %d, answered %d, unanswered %d", w.hbSent, w.hbOK, w.hbFail)
	}
}
