//go:build linux

package transport

import (
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
)

func maskedFrame(t testing.TB, f ws.Frame) []byte {
	t.Helper()
	b, err := ws.CompileFrame(ws.MaskFrame(f))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// One worker must still serve everyone when some peers stall mid-frame or
// trickle bytes: nothing ever waits for input on a worker.
func TestEpollStalledPeersDoNotBlockWorker(t *testing.T) {
	t.Parallel()
	s := startServer(t, "epoll", Options{Workers: 1}, true)

	half, _ := s.dial(t)
	hf := maskedFrame(t, ws.NewTextFrame([]byte("never finished")))
	if _, err := half.Write(hf[:len(hf)/2]); err != nil {
		t.Fatal(err)
	}

	trickle, trickleRec := s.dial(t)
	tf := maskedFrame(t, ws.NewTextFrame([]byte("trickled one byte at a time")))
	trickleDone := make(chan error, 1)
	go func() {
		for i := range tf {
			if _, err := trickle.Write(tf[i : i+1]); err != nil {
				trickleDone <- err
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
		trickleDone <- nil
	}()

	fast, _ := s.dial(t)
	time.Sleep(30 * time.Millisecond)
	var worst time.Duration
	for i := range 20 {
		start := time.Now()
		fast.write(t, ws.NewTextFrame([]byte{'a' + byte(i)}))
		_ = fast.SetReadDeadline(time.Now().Add(time.Second))
		f, err := ws.ReadFrame(fast.rd)
		if err != nil || f.Payload[0] != 'a'+byte(i) {
			t.Fatalf("round trip %d: %v %q", i, err, f.Payload)
		}
		worst = max(worst, time.Since(start))
		time.Sleep(10 * time.Millisecond)
	}
	if worst > 200*time.Millisecond {
		t.Fatalf("slowest round trip %v while peers stall", worst)
	}
	if err := <-trickleDone; err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-trickleRec.got:
		if got != "Text:trickled one byte at a time" {
			t.Fatalf("trickled message %q", got)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("trickled message not delivered")
	}
	if p := trickleRec.c; p == nil {
		t.Fatal("no conn")
	}
}

func TestEpollIdleConnsOwnNoGoroutines(t *testing.T) {
	eng, err := New("epoll", Options{Workers: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Shutdown(t.Context())
	const n = 1000
	servers, clients := pairs(t, n)
	runtime.GC()
	before := runtime.NumGoroutine()
	closed := make(chan struct{}, n)
	conns := make([]*Conn, 0, n)
	for _, sc := range servers {
		c, err := eng.Add(sc, func(*Conn) Session { return nopSession{closed} })
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	// Half a frame on every connection: still no goroutine and only the
	// few leftover bytes are kept.
	for _, cl := range clients {
		if _, err := cl.Write([]byte{0x81, 0x85, 1, 2}); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, func() bool { return eng.Stats().BytesIn == 4*n })
	if after := runtime.NumGoroutine(); after > before+2 {
		t.Fatalf("goroutines: %d before, %d with %d idle connections", before, after, n)
	}
	for _, c := range conns {
		c.mu.Lock() // orders the worker's writes to partial before our read
		p := c.partial
		c.mu.Unlock()
		if len(p) != 4 || cap(p) > 8 {
			t.Fatalf("partial len %d cap %d", len(p), cap(p))
		}
	}
	if eng.Len() != n {
		t.Fatalf("Len %d", eng.Len())
	}
	for _, cl := range clients {
		cl.Close()
	}
	for range n {
		select {
		case <-closed:
		case <-time.After(5 * time.Second):
			t.Fatalf("only some connections closed; Len %d", eng.Len())
		}
	}
}

// A paused connection whose peer resets is torn down: epoll reports the
// hang-up although EPOLLIN is off, and re-arming would only report it
// again and again.
func TestEpollPausedPeerReset(t *testing.T) {
	t.Parallel()
	s := startServer(t, "epoll", Options{Workers: 1}, false)
	cl, r := s.dial(t)
	r.c.PauseReads()
	cl.write(t, ws.NewTextFrame([]byte("unread")))
	time.Sleep(20 * time.Millisecond)
	if err := cl.Conn.(*net.TCPConn).SetLinger(0); err != nil {
		t.Fatal(err)
	}
	cl.Close() // RST: unread data on our side too
	r.waitClosed(t, 3*time.Second)
	select {
	case got := <-r.got:
		t.Fatalf("delivered while paused: %q", got)
	default:
	}
}

// An idle engine keeps no thread blocked in epoll_wait on its own epoll
// instance: the poller parks in Go's network poller, so a quiet node's
// wake-ups cost no thread hand-offs. /proc/self/task/*/syscall shows each
// thread's current syscall and its first argument, the epoll fd.
func TestEpollPollerHoldsNoThread(t *testing.T) {
	waits := map[string][]int{"amd64": {232, 281, 441}, "arm64": {22, 441}}[runtime.GOARCH]
	if waits == nil {
		t.Skip("epoll_wait syscall numbers not known for", runtime.GOARCH)
	}
	eng, err := New("epoll", Options{Workers: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Shutdown(t.Context())
	epfd := uint64(eng.(*epollEngine).epfd)
	servers, clients := pairs(t, 10)
	defer func() { // before Shutdown, so that it need not wait out the close grace
		for _, c := range clients {
			c.Close()
		}
	}()
	for _, sc := range servers {
		if _, err := eng.Add(sc, func(*Conn) Session { return nopSession{} }); err != nil {
			t.Fatal(err)
		}
	}
	for range 20 { // the poller settles within a few milliseconds
		time.Sleep(10 * time.Millisecond)
		tasks, err := filepath.Glob("/proc/self/task/*/syscall")
		if err != nil || len(tasks) == 0 {
			t.Skip("no /proc/self/task/*/syscall:", err)
		}
		for _, p := range tasks {
			b, err := os.ReadFile(p)
			if err != nil {
				continue // the thread is gone
			}
			f := strings.Fields(string(b))
			if len(f) < 2 {
				continue // "running"
			}
			nr, _ := strconv.Atoi(f[0])
			arg, _ := strconv.ParseUint(strings.TrimPrefix(f[1], "0x"), 16, 64)
			if slices.Contains(waits, nr) && arg == epfd {
				t.Fatalf("thread %s is blocked in syscall %d on the engine's epoll fd %d", p, nr, epfd)
			}
		}
	}
}
