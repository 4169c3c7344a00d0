package transport

import (
	"bufio"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
)

// BenchmarkAssembleSmallText measures the frame assembler alone: one
// masked 64-byte text frame per op, read into scratch and delivered.
func BenchmarkAssembleSmallText(b *testing.B) {
	eng := &base{opts: Options{}.withDefaults()}
	c := &Conn{b: eng, sess: nopSession{}}
	frame, err := ws.CompileFrame(ws.MaskFrame(ws.NewTextFrame([]byte(strings.Repeat("m", 64)))))
	if err != nil {
		b.Fatal(err)
	}
	scratch := make([]byte, readBufSizeForBench)
	b.SetBytes(int64(len(frame)))
	b.ReportAllocs()
	for b.Loop() {
		n := copy(c.readBuf(scratch), frame)
		c.afterRead(scratch, n)
	}
	if c.partial != nil || eng.st.framesIn.Load() == 0 {
		b.Fatal("frames not consumed")
	}
}

const readBufSizeForBench = 16 << 10

// BenchmarkFanout sends one shared message to every connection per op, the
// way the hub delivers a broadcast; the clients drain their sockets in the
// background. allocs/recipient is what a fanout costs per connection on
// top of the message itself: with the epoll engine nothing, as the frame
// header lives on the stack and the write goes straight to the socket.
// (The portable engine queues every message for its writer goroutine, and
// an empty queue is given back, so it allocates when the writer keeps up.)
func BenchmarkFanout(b *testing.B) {
	for _, kind := range engineKinds() {
		for _, n := range []int{1, 100, 1000} {
			b.Run(fmt.Sprintf("%s/conns=%d", kind, n), func(b *testing.B) {
				eng, err := New(kind, Options{Workers: 4, MaxQueueFrames: 1 << 20, MaxQueueBytes: 1 << 30})
				if err != nil {
					b.Fatal(err)
				}
				defer eng.Shutdown(b.Context())
				servers, clients := pairs(b, n)
				conns := make([]*Conn, n)
				for i, sc := range servers {
					if conns[i], err = eng.Add(sc, func(*Conn) Session { return nopSession{} }); err != nil {
						b.Fatal(err)
					}
					go io.Copy(io.Discard, clients[i])
				}
				msg := []byte(`["1","7","room:lobby","new_msg",{"body":"` + strings.Repeat("x", 64) + `"}]`)
				for _, c := range conns { // warm the pools
					_ = c.Send(msg)
				}
				var m0, m1 runtime.MemStats
				runtime.ReadMemStats(&m0)
				b.ReportAllocs()
				b.ResetTimer()
				i := 0
				for b.Loop() {
					for _, c := range conns {
						if err := c.Send(msg); err != nil {
							b.Fatal(err)
						}
					}
					// Pace the producer to the network: otherwise the
					// queues just grow until they overflow.
					if i++; i%64 == 0 {
						for _, c := range conns {
							waitDrained(c)
						}
					}
				}
				b.StopTimer()
				runtime.ReadMemStats(&m1)
				recipients := float64(b.N * n)
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/recipients, "ns/recipient")
				b.ReportMetric(float64(m1.Mallocs-m0.Mallocs)/recipients, "allocs/recipient")
				for _, cl := range clients {
					cl.Close()
				}
			})
		}
	}
}

// BenchmarkIdleMemory opens idleConns server connections per engine and
// reports what each costs the server: Go heap (net.TCPConn, runtime poll
// descriptor bookkeeping and Conn), goroutine stacks, and process RSS.
// The clients are raw sockets so they add nothing to the Go heap. It is a
// measurement, not a timing: run it with -benchtime=1x.
func BenchmarkIdleMemory(b *testing.B) {
	n := 4000
	if s := os.Getenv("IDLE_CONNS"); s != "" {
		n, _ = strconv.Atoi(s)
	}
	for _, kind := range engineKinds() {
		b.Run(kind, func(b *testing.B) {
			for range b.N {
				heap, stack, rss := idleMemory(b, kind, n)
				b.ReportMetric(heap, "heapB/conn")
				b.ReportMetric(stack, "stackB/conn")
				b.ReportMetric(rss, "rssB/conn")
			}
		})
	}
}

func idleMemory(b *testing.B, kind string, n int) (heap, stack, rss float64) {
	eng, err := New(kind, Options{Workers: 16})
	if err != nil {
		b.Fatal(err)
	}
	defer eng.Shutdown(b.Context())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	addr := ln.Addr().(*net.TCPAddr)
	clients := make([]int, 0, n)
	defer func() {
		for _, fd := range clients {
			rawClose(fd)
		}
	}()
	servers := make([]net.Conn, 0, n)
	h0, s0, r0 := memNow()
	for range n {
		fd, err := rawDial(addr)
		if err != nil {
			b.Skip(err)
		}
		clients = append(clients, fd)
		sc, err := ln.Accept()
		if err != nil {
			b.Fatal(err)
		}
		if _, err := eng.Add(sc, func(*Conn) Session { return nopSession{} }); err != nil {
			b.Fatal(err)
		}
		servers = append(servers, sc)
	}
	time.Sleep(100 * time.Millisecond) // let reader goroutines park
	h1, s1, r1 := memNow()
	runtime.KeepAlive(servers)
	f := float64(n)
	return float64(h1-h0) / f, float64(s1-s0) / f, float64(r1-r0) / f
}

func memNow() (heap, stack, rss int64) {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapAlloc), int64(ms.StackInuse), rssBytes()
}

func rssBytes() int64 {
	f, err := os.Open("/proc/self/statm")
	if err != nil {
		return 0
	}
	defer f.Close()
	line, _ := bufio.NewReader(f).ReadString('\n')
	fields := strings.Fields(line)
	if len(fields) < 2 {
		return 0
	}
	pages, _ := strconv.ParseInt(fields[1], 10, 64)
	return pages * int64(os.Getpagesize())
}

func waitDrained(c *Conn) {
	for {
		c.mu.Lock()
		n := c.pendingLocked()
		c.mu.Unlock()
		if n == 0 {
			return
		}
		runtime.Gosched()
	}
}

// BenchmarkReaperScan measures one reaper pass over scanConns live,
// quiet connections: the price every idle socket pays each tick. The
// Conns are allocated between other objects, as a node allocates them
// between a handshake's buffers and the hub's state, and the caches are
// flushed before each pass, since a node's second-long tick finds none
// of them cached: what the pass costs is the cache lines it touches.
func BenchmarkReaperScan(b *testing.B) {
	const scanConns = 20000
	var bs base
	bs.opts = Options{IdleTimeout: 60 * time.Second, WriteTimeout: 10 * time.Second}
	bs.clock.Store(time.Now().Unix())
	keep := make([][]byte, 0, scanConns)
	conns := make([]*Conn, 0, scanConns)
	for range scanConns {
		conns = append(conns, &Conn{})
		keep = append(keep, make([]byte, 1024))
	}
	// Slots are reused in any order as sockets come and go, so the
	// registry's order is not the heap's: no prefetcher can guess the
	// next Conn.
	rand.New(rand.NewPCG(1, 2)).Shuffle(len(conns), func(i, j int) { conns[i], conns[j] = conns[j], conns[i] })
	for _, c := range conns {
		bs.register(c)
	}
	var idle, slow, kill []*Conn
	now := bs.now()
	flush := make([]byte, 64<<20) // larger than the last-level cache
	var sink byte
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		for i := 0; i < len(flush); i += 64 {
			flush[i]++
		}
		sink += flush[len(flush)/2]
		b.StartTimer()
		idle, slow, kill = bs.scan(now, idle[:0], slow[:0], kill[:0])
	}
	b.StopTimer()
	runtime.KeepAlive(sink)
	if len(idle)+len(slow)+len(kill) != 0 {
		b.Fatalf("quiet connections reaped: %d idle, %d slow, %d kill", len(idle), len(slow), len(kill))
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/scanConns, "ns/conn")
	runtime.KeepAlive(keep)
}
