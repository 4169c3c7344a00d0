package transport

import (
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/gobwas/ws"
)

// laterEcho answers each message with three frames through SendLater, as
// the hub answers a chat message (reply, then broadcasts).
type laterEcho struct {
	c      *Conn
	closed chan struct{}
}

func (l *laterEcho) HandleText(d []byte) {
	for i := range 3 {
		_ = l.c.SendLater(fmt.Appendf(nil, "%s-%d", d, i))
	}
}
func (l *laterEcho) HandleBinary([]byte) {}
func (l *laterEcho) Closed()             { close(l.closed) }

// Frames queued with SendLater during a handler's turn all arrive, in
// order, once the turn ends; and interleave correctly with Send from other
// goroutines.
func TestSendLater(t *testing.T) {
	forEngines(t, func(t *testing.T, kind string) {
		eng, err := New(kind, Options{Workers: 2})
		if err != nil {
			t.Fatal(err)
		}
		defer eng.Shutdown(t.Context()) //nolint:errcheck
		srv, cli := tcpPair(t)
		defer cli.Close() // before Shutdown: it waits for the peer's close
		up := make(chan error, 1)
		go func() { _, err := ws.Upgrade(srv); up <- err }()
		if _, _, err := ws.DefaultDialer.Upgrade(cli, mustURL(t, "ws://"+srv.LocalAddr().String()+"/")); err != nil {
			t.Fatal(err)
		}
		if err := <-up; err != nil {
			t.Fatal(err)
		}
		var conn *Conn
		if _, err := eng.Add(srv, func(c *Conn) Session {
			conn = c
			return &laterEcho{c: c, closed: make(chan struct{})}
		}); err != nil {
			t.Fatal(err)
		}
		for round := range 50 {
			msg := fmt.Sprint("m", round)
			if err := ws.WriteFrame(cli, ws.MaskFrame(ws.NewTextFrame([]byte(msg)))); err != nil {
				t.Fatal(err)
			}
			if round%10 == 0 {
				_ = conn.SendLater([]byte("outside")) // not in the handler: written at once
			}
			_ = cli.SetReadDeadline(time.Now().Add(5 * time.Second))
			var got []string
			for len(got) < 3 {
				f, err := ws.ReadFrame(cli)
				if err != nil {
					t.Fatalf("round %d: %v after %v", round, err, got)
				}
				if p := string(f.Payload); p != "outside" {
					got = append(got, p)
				}
			}
			for i, p := range got {
				if want := fmt.Sprintf("%s-%d", msg, i); p != want {
					t.Fatalf("round %d: frame %d = %q, want %q", round, i, p, want)
				}
			}
		}
	})
}

func mustURL(t testing.TB, s string) *url.URL {
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// slowReply answers after Close was called from elsewhere mid-turn.
type slowReply struct {
	c       *Conn
	inside  chan struct{}
	proceed chan struct{}
}

func (s *slowReply) HandleText(d []byte) {
	close(s.inside)
	<-s.proceed
	_ = s.c.SendLater(append([]byte("ack:"), d...))
}
func (s *slowReply) HandleBinary([]byte) {}
func (s *slowReply) Closed()             {}

// A close requested while the epoll worker handles a frame waits for the
// end of the turn: the reply to that frame still reaches the client.
func TestCloseWaitsForTurn(t *testing.T) {
	eng, err := New("epoll", Options{Workers: 2})
	if err != nil {
		t.Skip(err)
	}
	defer eng.Shutdown(t.Context()) //nolint:errcheck
	srv, cli := tcpPair(t)
	defer cli.Close()
	up := make(chan error, 1)
	go func() { _, err := ws.Upgrade(srv); up <- err }()
	if _, _, err := ws.DefaultDialer.Upgrade(cli, mustURL(t, "ws://"+srv.LocalAddr().String()+"/")); err != nil {
		t.Fatal(err)
	}
	if err := <-up; err != nil {
		t.Fatal(err)
	}
	sess := &slowReply{inside: make(chan struct{}), proceed: make(chan struct{})}
	conn, err := eng.Add(srv, func(c *Conn) Session { sess.c = c; return sess })
	if err != nil {
		t.Fatal(err)
	}
	if err := ws.WriteFrame(cli, ws.MaskFrame(ws.NewTextFrame([]byte("m1")))); err != nil {
		t.Fatal(err)
	}
	<-sess.inside
	conn.Close(1012, "restart")
	close(sess.proceed)
	_ = cli.SetReadDeadline(time.Now().Add(5 * time.Second))
	f, err := ws.ReadFrame(cli)
	if err != nil || string(f.Payload) != "ack:m1" {
		t.Fatalf("first frame %q %v, want the reply", f.Payload, err)
	}
	f, err = ws.ReadFrame(cli)
	if err != nil || f.Header.OpCode != ws.OpClose {
		t.Fatalf("second frame %v %v, want the close", f.Header.OpCode, err)
	}
	if code, reason := ws.ParseCloseFrameData(f.Payload); code != 1012 || reason != "restart" {
		t.Fatalf("close %d %q", code, reason)
	}
}

func TestCloseFrameReasonStaysUTF8(t *testing.T) {
	f := CloseFrame(1008, strings.Repeat("é", 100)) // 200 bytes
	code, reason := ws.ParseCloseFrameData(f[2:])
	if code != 1008 || len(reason) > 123 || !utf8.ValidString(reason) {
		t.Fatalf("close %d, reason of %d bytes, valid UTF-8 %v", code, len(reason), utf8.ValidString(reason))
	}
}

// Between Hold and Release, SendLater queues and writes nothing; Release
// writes the held frames in order; a Send meanwhile takes them along.
func TestHoldRelease(t *testing.T) {
	forEngines(t, func(t *testing.T, kind string) {
		eng, err := New(kind, Options{Workers: 2})
		if err != nil {
			t.Fatal(err)
		}
		defer eng.Shutdown(t.Context()) //nolint:errcheck
		srv, cli := tcpPair(t)
		defer cli.Close()
		up := make(chan error, 1)
		go func() { _, err := ws.Upgrade(srv); up <- err }()
		if _, _, err := ws.DefaultDialer.Upgrade(cli, mustURL(t, "ws://"+srv.LocalAddr().String()+"/")); err != nil {
			t.Fatal(err)
		}
		if err := <-up; err != nil {
			t.Fatal(err)
		}
		conn, err := eng.Add(srv, func(c *Conn) Session { return &laterEcho{c: c, closed: make(chan struct{})} })
		if err != nil {
			t.Fatal(err)
		}
		read := func(timeout time.Duration) (string, error) {
			_ = cli.SetReadDeadline(time.Now().Add(timeout))
			f, err := ws.ReadFrame(cli)
			return string(f.Payload), err
		}
		conn.Hold()
		_ = conn.SendLater([]byte("a"))
		_ = conn.SendLater([]byte("b"))
		if p, err := read(200 * time.Millisecond); err == nil {
			t.Fatalf("held frame %q written before Release", p)
		}
		conn.Release()
		for _, want := range []string{"a", "b"} {
			if p, err := read(5 * time.Second); err != nil || p != want {
				t.Fatalf("after Release: %q, %v; want %q", p, err, want)
			}
		}
		conn.Hold()
		_ = conn.SendLater([]byte("c"))
		_ = conn.Send([]byte("d")) // another producer: writes at once, held frames first
		for _, want := range []string{"c", "d"} {
			if p, err := read(5 * time.Second); err != nil || p != want {
				t.Fatalf("Send during Hold: %q, %v; want %q", p, err, want)
			}
		}
		conn.Release()
	})
}
