package transport

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gobwas/ws"
)

func engineKinds() []string {
	if runtime.GOOS == "linux" {
		return []string{"epoll", "portable"}
	}
	return []string{"portable"}
}

// rec is a Session that records what it gets and optionally echoes.
type rec struct {
	t      testing.TB
	c      *Conn
	echo   bool
	got    chan string
	closed atomic.Int32
	done   chan struct{}
	// pauseOn, when set, makes the handler pause reads on that message;
	// with resume set too, another goroutine resumes them at once.
	pauseOn atomic.Pointer[string]
	resume  atomic.Bool
}

func (r *rec) handle(kind string, d []byte) {
	if r.closed.Load() != 0 {
		r.t.Errorf("Handle%s after Closed", kind)
	}
	if p := r.pauseOn.Load(); p != nil && *p == string(d) {
		r.c.PauseReads()
		if r.resume.Load() {
			go r.c.ResumeReads() // races the end of the worker's turn
		}
	}
	if r.echo {
		// d is the engine's read buffer: the echo needs its own copy.
		if kind == "Text" {
			_ = r.c.Send(bytes.Clone(d))
		} else {
			_ = r.c.send(ws.OpBinary, bytes.Clone(d), false)
		}
	}
	select {
	case r.got <- kind + ":" + string(d):
	default:
	}
}

func (r *rec) HandleText(d []byte)   { r.handle("Text", d) }
func (r *rec) HandleBinary(d []byte) { r.handle("Binary", d) }
func (r *rec) Closed() {
	if r.closed.Add(1) == 1 {
		close(r.done)
	} else {
		r.t.Errorf("Closed called twice")
	}
}

func (r *rec) waitClosed(t testing.TB, d time.Duration) {
	t.Helper()
	select {
	case <-r.done:
	case <-time.After(d):
		t.Fatalf("Closed not called within %v", d)
	}
}

type testServer struct {
	eng  Engine
	addr string
	recs chan *rec
}

func startServer(t testing.TB, kind string, opts Options, echo bool) *testServer {
	t.Helper()
	eng, err := New(kind, opts)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &testServer{eng: eng, addr: ln.Addr().String(), recs: make(chan *rec, 4096)}
	go func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				if _, err := ws.Upgrade(nc); err != nil {
					nc.Close()
					return
				}
				_, err := eng.Add(nc, func(c *Conn) Session {
					r := &rec{t: t, c: c, echo: echo, got: make(chan string, 4096), done: make(chan struct{})}
					s.recs <- r
					return r
				})
				if err != nil {
					nc.Close()
				}
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		_ = eng.Shutdown(ctx)
	})
	return s
}

type client struct {
	net.Conn
	rd io.Reader
}

func (s *testServer) dial(t testing.TB) (*client, *rec) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	nc, br, _, err := ws.Dial(ctx, "ws://"+s.addr+"/")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	cl := &client{Conn: nc, rd: nc}
	if br != nil {
		cl.rd = io.MultiReader(br, nc)
	}
	select {
	case r := <-s.recs:
		return cl, r
	case <-time.After(5 * time.Second):
		t.Fatal("server did not add the connection")
	}
	return nil, nil
}

func (cl *client) write(t testing.TB, f ws.Frame) {
	t.Helper()
	if err := ws.WriteFrame(cl, ws.MaskFrame(f)); err != nil {
		t.Fatal(err)
	}
}

func (cl *client) read(t testing.TB) ws.Frame {
	t.Helper()
	_ = cl.SetReadDeadline(time.Now().Add(5 * time.Second))
	f, err := ws.ReadFrame(cl.rd)
	if err != nil {
		t.Fatalf("read frame: %v", err)
	}
	return f
}

// expectClose reads until a close frame and checks its code and reason.
func (cl *client) expectClose(t testing.TB, code int, reason string) {
	t.Helper()
	for {
		f := cl.read(t)
		if f.Header.OpCode != ws.OpClose {
			continue
		}
		gotCode, gotReason := ws.ParseCloseFrameData(f.Payload)
		if int(gotCode) != code || (reason != "" && gotReason != reason) {
			t.Fatalf("close = %d %q, want %d %q", gotCode, gotReason, code, reason)
		}
		return
	}
}

func forEngines(t *testing.T, fn func(t *testing.T, kind string)) {
	for _, k := range engineKinds() {
		t.Run(k, func(t *testing.T) {
			t.Parallel()
			fn(t, k)
		})
	}
}

func TestEcho(t *testing.T) {
	forEngines(t, func(t *testing.T, kind string) {
		s := startServer(t, kind, Options{Workers: 4}, true)
		cl, r := s.dial(t)
		cl.write(t, ws.NewTextFrame([]byte("hello")))
		if f := cl.read(t); f.Header.OpCode != ws.OpText || string(f.Payload) != "hello" {
			t.Fatalf("got %v %q", f.Header.OpCode, f.Payload)
		}
		big := bytes.Repeat([]byte{7}, 100<<10) // several reads, grows a partial
		cl.write(t, ws.NewBinaryFrame(big))
		if f := cl.read(t); f.Header.OpCode != ws.OpBinary || !bytes.Equal(f.Payload, big) {
			t.Fatalf("binary echo mismatch: op %v len %d", f.Header.OpCode, len(f.Payload))
		}
		// The counters move right after the write syscall returns, which
		// can be just after the client has the bytes.
		eventually(t, func() bool {
			st := s.eng.Stats()
			return st.FramesIn == 2 && st.FramesOut == 2 && st.Conns == 1
		})
		_ = r
	})
}

func TestSendOrderConcurrent(t *testing.T) {
	forEngines(t, func(t *testing.T, kind string) {
		s := startServer(t, kind, Options{Workers: 4, MaxQueueFrames: 1 << 20, MaxQueueBytes: 64 << 20}, false)
		cl, r := s.dial(t)
		const senders, per = 8, 300
		var wg sync.WaitGroup
		for g := range senders {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range per {
					if err := r.c.Send(fmt.Appendf(nil, "%d:%d", g, i)); err != nil {
						t.Error(err)
						return
					}
				}
			}()
		}
		next := make([]int, senders)
		for range senders * per {
			f := cl.read(t)
			var g, i int
			if _, err := fmt.Sscanf(string(f.Payload), "%d:%d", &g, &i); err != nil {
				t.Fatalf("bad payload %q", f.Payload)
			}
			if i != next[g] {
				t.Fatalf("sender %d: got %d want %d", g, i, next[g])
			}
			next[g]++
		}
		wg.Wait()
	})
}

func TestFragmentsAndPing(t *testing.T) {
	forEngines(t, func(t *testing.T, kind string) {
		s := startServer(t, kind, Options{Workers: 4}, true)
		cl, r := s.dial(t)
		cl.write(t, ws.NewFrame(ws.OpText, false, []byte("hel")))
		cl.write(t, ws.NewPingFrame([]byte("p1")))
		cl.write(t, ws.NewFrame(ws.OpContinuation, false, []byte("lo ")))
		cl.write(t, ws.NewFrame(ws.OpContinuation, true, []byte("wörld")))
		f := cl.read(t)
		if f.Header.OpCode != ws.OpPong || string(f.Payload) != "p1" {
			t.Fatalf("want pong p1, got %v %q", f.Header.OpCode, f.Payload)
		}
		f = cl.read(t)
		if string(f.Payload) != "hello wörld" {
			t.Fatalf("reassembled %q", f.Payload)
		}
		if got := <-r.got; got != "Text:hello wörld" {
			t.Fatal(got)
		}
	})
}

func TestClientClose(t *testing.T) {
	forEngines(t, func(t *testing.T, kind string) {
		s := startServer(t, kind, Options{Workers: 4}, true)
		cl, r := s.dial(t)
		cl.write(t, ws.NewCloseFrame(ws.NewCloseFrameBody(ws.StatusNormalClosure, "bye")))
		cl.expectClose(t, 1000, "")
		r.waitClosed(t, 3*time.Second)
		if err := r.c.Send([]byte("x")); !errors.Is(err, ErrClosed) {
			t.Fatalf("Send after close: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
		if n := r.closed.Load(); n != 1 {
			t.Fatalf("Closed called %d times", n)
		}
		if s.eng.Len() != 0 {
			t.Fatalf("Len %d", s.eng.Len())
		}
	})
}

func TestProtocolErrors(t *testing.T) {
	forEngines(t, func(t *testing.T, kind string) {
		cases := []struct {
			name  string
			send  func(t *testing.T, cl *client)
			code  int
			proto bool
		}{
			{"oversized", func(t *testing.T, cl *client) {
				cl.write(t, ws.NewTextFrame(bytes.Repeat([]byte("a"), 2000)))
			}, 1009, true},
			{"oversized-fragments", func(t *testing.T, cl *client) {
				cl.write(t, ws.NewFrame(ws.OpBinary, false, make([]byte, 800)))
				cl.write(t, ws.NewFrame(ws.OpContinuation, true, make([]byte, 800)))
			}, 1009, true},
			{"invalid-utf8", func(t *testing.T, cl *client) {
				cl.write(t, ws.NewTextFrame([]byte{'a', 0xff, 0xfe}))
			}, 1007, true},
			{"unmasked", func(t *testing.T, cl *client) {
				if err := ws.WriteFrame(cl, ws.NewTextFrame([]byte("x"))); err != nil {
					t.Fatal(err)
				}
			}, 1002, true},
			{"reserved-opcode", func(t *testing.T, cl *client) {
				cl.write(t, ws.NewFrame(ws.OpCode(3), true, nil))
			}, 1002, true},
			{"rsv-bits", func(t *testing.T, cl *client) {
				f := ws.NewTextFrame([]byte("x"))
				f.Header.Rsv = ws.Rsv(true, false, false)
				cl.write(t, f)
			}, 1002, true},
			{"stray-continuation", func(t *testing.T, cl *client) {
				cl.write(t, ws.NewFrame(ws.OpContinuation, true, []byte("x")))
			}, 1002, true},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				s := startServer(t, kind, Options{Workers: 2, MaxMessageSize: 1024}, true)
				cl, r := s.dial(t)
				tc.send(t, cl)
				cl.expectClose(t, tc.code, "")
				cl.Close()
				r.waitClosed(t, 3*time.Second)
				if got := s.eng.Stats().ProtocolErrorCloses; got != 1 {
					t.Fatalf("protocol error closes = %d", got)
				}
			})
		}
	})
}

func TestIdleTimeout(t *testing.T) {
	forEngines(t, func(t *testing.T, kind string) {
		s := startServer(t, kind, Options{Workers: 2, IdleTimeout: time.Second}, true)
		cl, r := s.dial(t)
		start := time.Now()
		cl.expectClose(t, 1001, "idle timeout")
		if el := time.Since(start); el < time.Second {
			t.Fatalf("idle close after %v", el)
		}
		// The server half-closed after its close frame: the client sees EOF.
		if _, err := ws.ReadFrame(cl.rd); err == nil {
			t.Fatal("expected EOF after the close frame")
		}
		cl.Close()
		r.waitClosed(t, 3*time.Second)
		if st := s.eng.Stats(); st.IdleCloses != 1 {
			t.Fatalf("stats %+v", st)
		}
	})
}

func TestSlowConsumer(t *testing.T) {
	forEngines(t, func(t *testing.T, kind string) {
		s := startServer(t, kind, Options{Workers: 2, MaxQueueBytes: 256 << 10}, false)
		_, r := s.dial(t)
		frame := make([]byte, 64<<10)
		var err error
		for i := 0; i < 20000 && err == nil; i++ {
			err = r.c.Send(frame)
			if i%64 == 63 {
				time.Sleep(time.Millisecond) // let the portable writer block
			}
		}
		if !errors.Is(err, ErrSlowConsumer) {
			t.Fatalf("Send error = %v", err)
		}
		r.waitClosed(t, 3*time.Second)
		r.c.mu.Lock()
		q, qb := r.c.queue, r.c.qbytes
		r.c.mu.Unlock()
		if q != nil || qb != 0 {
			t.Fatalf("queue not released: %d frames, %d bytes", len(q), qb)
		}
		if st := s.eng.Stats(); st.SlowConsumerCloses < 1 || st.Conns != 0 {
			t.Fatalf("stats %+v", st)
		}
	})
}

func TestServerClose(t *testing.T) {
	forEngines(t, func(t *testing.T, kind string) {
		s := startServer(t, kind, Options{Workers: 2}, true)
		cl, r := s.dial(t)
		_ = r.c.Send([]byte("before"))
		r.c.Close(1012, "restart")
		r.c.Close(1000, "again") // idempotent
		if f := cl.read(t); string(f.Payload) != "before" {
			t.Fatalf("got %q", f.Payload)
		}
		cl.expectClose(t, 1012, "restart")
		cl.write(t, ws.NewCloseFrame(ws.NewCloseFrameBody(1012, "")))
		r.waitClosed(t, 3*time.Second)
	})
}

func TestShutdownClosesAll(t *testing.T) {
	forEngines(t, func(t *testing.T, kind string) {
		eng, err := New(kind, Options{Workers: 2})
		if err != nil {
			t.Fatal(err)
		}
		var recs []*rec
		for range 5 {
			a, b := tcpPair(t)
			defer b.Close()
			r := &rec{t: t, got: make(chan string, 1), done: make(chan struct{})}
			if _, err := eng.Add(a, func(c *Conn) Session { r.c = c; return r }); err != nil {
				t.Fatal(err)
			}
			recs = append(recs, r)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		_ = eng.Shutdown(ctx) // peers never answer: the deadline kills them
		for _, r := range recs {
			r.waitClosed(t, time.Second)
		}
		if eng.Len() != 0 {
			t.Fatalf("Len %d", eng.Len())
		}
	})
}

func tcpPair(t testing.TB) (server, client net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server, err = ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	return server, client
}

func TestFrameHeaders(t *testing.T) {
	for _, n := range []int{0, 1, 125, 126, 65535, 65536, 70000} {
		p := bytes.Repeat([]byte("x"), n)
		want, err := ws.CompileFrame(ws.NewTextFrame(p))
		if err != nil {
			t.Fatal(err)
		}
		e := frameOf(ws.OpText, p)
		if got := append(e.hdr[:e.hlen:e.hlen], e.p...); !bytes.Equal(got, want) {
			t.Fatalf("frameOf(%d) mismatch", n)
		}
		if e.size() != len(want) {
			t.Fatalf("size(%d) = %d, want %d", n, e.size(), len(want))
		}
	}
	f, err := ws.ReadFrame(bytes.NewReader(CloseFrame(1012, strings.Repeat("r", 200))))
	if err != nil || f.Header.OpCode != ws.OpClose || len(f.Payload) != 125 {
		t.Fatalf("CloseFrame: %v %+v", err, f.Header)
	}
	if got := CloseFrame(0, ""); !bytes.Equal(got, []byte{0x88, 0}) {
		t.Fatalf("empty CloseFrame % x", got)
	}
}

// Partial writes can end anywhere, in a header too: writing the queue in
// random small pieces through unsentLocked and consumeWrittenLocked must
// put exactly the frames' bytes on the wire, each shared payload intact.
func TestQueuePartialWrites(t *testing.T) {
	c := &Conn{b: &base{opts: Options{}.withDefaults()}}
	shared := bytes.Repeat([]byte("s"), 300)
	var want []byte
	for i := range 200 {
		var p []byte
		switch i % 4 {
		case 0:
			p = shared
		case 1:
			p = fmt.Appendf(nil, "m%d", i)
		case 2:
			p = nil
		default:
			p = bytes.Repeat([]byte{'a' + byte(i%26)}, 126+i*7)
		}
		e := frameOf(ws.OpText, p)
		c.enqueueLocked(e)
		want = append(want, e.hdr[:e.hlen]...)
		want = append(want, p...)
	}
	rnd := uint32(1)
	var got []byte
	for c.pendingLocked() > 0 {
		rnd = rnd*1664525 + 1013904223
		budget := 1 + int(rnd>>24)%13 // 1..13 bytes: splits headers often
		n := 0
		for i := 0; i < c.pendingLocked() && n < budget; i++ {
			h, p := c.unsentLocked(i)
			for _, b := range [][]byte{h, p} {
				k := min(len(b), budget-n)
				got = append(got, b[:k]...)
				n += k
			}
		}
		c.consumeWrittenLocked(n)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("wire bytes differ: got %d bytes, want %d", len(got), len(want))
	}
	if c.queue != nil || c.qbytes != 0 || c.qoff != 0 {
		t.Fatalf("drained queue kept: %d entries, %d bytes, off %d", len(c.queue), c.qbytes, c.qoff)
	}
	if !bytes.Equal(shared, bytes.Repeat([]byte("s"), 300)) {
		t.Fatal("shared payload modified")
	}
	if fr := c.b.st.framesOut.Load(); fr != 200 {
		t.Fatalf("framesOut %d", fr)
	}
}

func eventually(t testing.TB, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(2 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 2s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func pairs(t testing.TB, n int) (servers, clients []net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	for range n {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		servers, clients = append(servers, s), append(clients, c)
	}
	return servers, clients
}

type nopSession struct{ closed chan struct{} }

func (nopSession) HandleText([]byte)   {}
func (nopSession) HandleBinary([]byte) {}
func (s nopSession) Closed() {
	if s.closed != nil {
		s.closed <- struct{}{}
	}
}

// expectNone checks that the session got nothing for a while.
func (r *rec) expectNone(t testing.TB, d time.Duration) {
	t.Helper()
	select {
	case got := <-r.got:
		t.Fatalf("delivered while paused: %q", got)
	case <-time.After(d):
	}
}

func (r *rec) expect(t testing.TB, want string) {
	t.Helper()
	select {
	case got := <-r.got:
		if got != want {
			t.Fatalf("got %q, want %q", got, want)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("%q not delivered", want)
	}
}

// writeAll sends frames in one write, so that they arrive in one read.
func (cl *client) writeAll(t testing.TB, msgs ...string) {
	t.Helper()
	var buf bytes.Buffer
	for _, m := range msgs {
		if err := ws.WriteFrame(&buf, ws.MaskFrame(ws.NewTextFrame([]byte(m)))); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := cl.Write(buf.Bytes()); err != nil {
		t.Fatal(err)
	}
}

// A paused connection delivers nothing, not even frames already read,
// while writes go on; on resume everything arrives in order.
func TestPauseReads(t *testing.T) {
	forEngines(t, func(t *testing.T, kind string) {
		s := startServer(t, kind, Options{Workers: 2}, false)
		cl, r := s.dial(t)
		r.c.PauseReads()
		r.c.PauseReads() // idempotent
		for i := range 20 {
			cl.write(t, ws.NewTextFrame(fmt.Appendf(nil, "m%d", i)))
		}
		r.expectNone(t, 200*time.Millisecond)

		// Writes flow while paused, a large one through EPOLLOUT too.
		big := bytes.Repeat([]byte("b"), 512<<10)
		if err := r.c.Send([]byte("out")); err != nil {
			t.Fatal(err)
		}
		if err := r.c.Send(big); err != nil {
			t.Fatal(err)
		}
		if f := cl.read(t); string(f.Payload) != "out" {
			t.Fatalf("got %q", f.Payload)
		}
		if f := cl.read(t); !bytes.Equal(f.Payload, big) {
			t.Fatalf("big message: %d bytes", len(f.Payload))
		}
		r.expectNone(t, 50*time.Millisecond)

		r.c.ResumeReads()
		r.c.ResumeReads() // idempotent
		for i := range 20 {
			r.expect(t, fmt.Sprintf("Text:m%d", i))
		}
		cl.write(t, ws.NewTextFrame([]byte("after")))
		r.expect(t, "Text:after")
	})
}

// Pausing from the handler stops delivery right after that message, even
// with more frames in the same read; the rest arrives on resume although
// the socket has nothing new to report.
func TestPauseFromHandler(t *testing.T) {
	forEngines(t, func(t *testing.T, kind string) {
		s := startServer(t, kind, Options{Workers: 2}, false)
		cl, r := s.dial(t)
		p := "pause"
		r.pauseOn.Store(&p)
		cl.writeAll(t, "a", "pause", "b", "c")
		r.expect(t, "Text:a")
		r.expect(t, "Text:pause")
		r.expectNone(t, 200*time.Millisecond)
		r.c.ResumeReads()
		r.expect(t, "Text:b")
		r.expect(t, "Text:c")
	})
}

// A resume that races the end of the turn that paused loses nothing.
func TestPauseResumeRace(t *testing.T) {
	forEngines(t, func(t *testing.T, kind string) {
		s := startServer(t, kind, Options{Workers: 2}, false)
		cl, r := s.dial(t)
		p := "p"
		r.pauseOn.Store(&p)
		r.resume.Store(true)
		const rounds = 200
		for i := range rounds {
			cl.writeAll(t, "p", fmt.Sprint(i), "x")
		}
		for i := range rounds {
			r.expect(t, "Text:p")
			r.expect(t, fmt.Sprintf("Text:%d", i))
			r.expect(t, "Text:x")
		}
	})
}

// Close and kill still tear a paused connection down, with Closed called
// once.
func TestClosePaused(t *testing.T) {
	forEngines(t, func(t *testing.T, kind string) {
		t.Run("handshake", func(t *testing.T) {
			s := startServer(t, kind, Options{Workers: 2}, false)
			cl, r := s.dial(t)
			r.c.PauseReads()
			r.c.Close(1012, "restart")
			cl.expectClose(t, 1012, "restart")
			// The peer's answer must be read although reads were paused.
			cl.write(t, ws.NewCloseFrame(ws.NewCloseFrameBody(1012, "")))
			r.waitClosed(t, 3*time.Second)
		})
		t.Run("kill", func(t *testing.T) {
			s := startServer(t, kind, Options{Workers: 2, MaxQueueFrames: 4}, false)
			_, r := s.dial(t)
			r.c.PauseReads()
			var err error
			for i := 0; i < 100 && err == nil; i++ {
				err = r.c.Send(make([]byte, 1<<20))
			}
			if !errors.Is(err, ErrSlowConsumer) {
				t.Fatalf("Send: %v", err)
			}
			r.waitClosed(t, 3*time.Second)
			time.Sleep(50 * time.Millisecond)
			if n := r.closed.Load(); n != 1 {
				t.Fatalf("Closed called %d times", n)
			}
		})
		t.Run("shutdown", func(t *testing.T) {
			eng, err := New(kind, Options{Workers: 2})
			if err != nil {
				t.Fatal(err)
			}
			a, b := tcpPair(t)
			defer b.Close()
			r := &rec{t: t, got: make(chan string, 1), done: make(chan struct{})}
			c, err := eng.Add(a, func(c *Conn) Session { r.c = c; return r })
			if err != nil {
				t.Fatal(err)
			}
			c.PauseReads()
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			_ = eng.Shutdown(ctx) // the peer never answers: the deadline kills it
			r.waitClosed(t, time.Second)
		})
	})
}

// The reaper leaves a paused connection alone, and a resume restarts its
// idle clock.
func TestPausedNotIdleReaped(t *testing.T) {
	forEngines(t, func(t *testing.T, kind string) {
		s := startServer(t, kind, Options{Workers: 2, IdleTimeout: time.Second}, false)
		cl, r := s.dial(t)
		r.c.PauseReads()
		_ = cl.SetReadDeadline(time.Now().Add(3 * time.Second))
		if f, err := ws.ReadFrame(cl.rd); err == nil {
			t.Fatalf("paused connection got %v", f.Header.OpCode)
		}
		r.c.ResumeReads()
		resumed := time.Now()
		cl.expectClose(t, 1001, "idle timeout")
		// The reaper's clock is coarse (whole seconds, advanced every
		// tick), so the idle time counts from a clock reading up to one
		// tick older than the resume.
		if el := time.Since(resumed); el < time.Second-300*time.Millisecond {
			t.Fatalf("idle close %v after the resume", el)
		}
		if st := s.eng.Stats(); st.IdleCloses != 1 {
			t.Fatalf("stats %+v", st)
		}
	})
}

// A session may send and pause from newSession, before the engine has
// registered the connection.
func TestPauseAndSendFromNewSession(t *testing.T) {
	forEngines(t, func(t *testing.T, kind string) {
		eng, err := New(kind, Options{Workers: 2})
		if err != nil {
			t.Fatal(err)
		}
		defer eng.Shutdown(t.Context()) //nolint:errcheck
		srv, cli := tcpPair(t)
		defer cli.Close()
		r := &rec{t: t, got: make(chan string, 16), done: make(chan struct{})}
		c, err := eng.Add(srv, func(c *Conn) Session {
			r.c = c
			c.PauseReads()
			_ = c.Send([]byte("hello"))
			_ = c.SendLater([]byte("later"))
			return r
		})
		if err != nil {
			t.Fatal(err)
		}
		_ = cli.SetReadDeadline(time.Now().Add(5 * time.Second))
		for _, want := range []string{"hello", "later"} {
			f, err := ws.ReadFrame(cli)
			if err != nil || string(f.Payload) != want {
				t.Fatalf("got %q %v, want %q", f.Payload, err, want)
			}
		}
		if err := ws.WriteFrame(cli, ws.MaskFrame(ws.NewTextFrame([]byte("in")))); err != nil {
			t.Fatal(err)
		}
		r.expectNone(t, 100*time.Millisecond)
		c.ResumeReads()
		r.expect(t, "Text:in")
	})
}

// TestShutdownDuringAdd races Shutdown against an Add whose newSession is
// still running. Shutdown must wait for that Add, then close its
// connection like any other: nothing may be torn down before it has a
// session, and nothing may outlive the engine.
func TestShutdownDuringAdd(t *testing.T) {
	forEngines(t, func(t *testing.T, kind string) {
		eng, err := New(kind, Options{Workers: 2})
		if err != nil {
			t.Fatal(err)
		}
		a, b := tcpPair(t)
		defer b.Close()
		inside, release := make(chan struct{}), make(chan struct{})
		var releaseOnce sync.Once
		let := func() { releaseOnce.Do(func() { close(release) }) }
		t.Cleanup(let) // a failed check below must not leave Add blocked
		r := &rec{t: t, got: make(chan string, 1), done: make(chan struct{})}
		added := make(chan error, 1)
		go func() {
			_, err := eng.Add(a, func(c *Conn) Session {
				close(inside)
				<-release
				r.c = c
				return r
			})
			added <- err
		}()
		<-inside
		shut := make(chan error, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
			defer cancel()
			shut <- eng.Shutdown(ctx) // the peer never answers: the deadline kills it
		}()
		select {
		case <-shut:
			t.Fatal("Shutdown returned while an Add was still setting up its connection")
		case <-time.After(1500 * time.Millisecond): // past drain's deadline and its second of grace
		}
		let()
		if err := <-added; err != nil {
			t.Fatalf("Add that began before Shutdown: %v", err)
		}
		select {
		case <-shut:
		case <-time.After(5 * time.Second):
			t.Fatal("Shutdown did not return after the Add")
		}
		r.waitClosed(t, time.Second)
		if eng.Len() != 0 {
			t.Fatalf("Len %d after Shutdown", eng.Len())
		}
		if _, err := eng.Add(a, func(c *Conn) Session { return r }); !errors.Is(err, ErrEngineClosed) {
			t.Fatalf("Add after Shutdown: %v, want ErrEngineClosed", err)
		}
	})
}
