package testenv

import (
	"net"
	"sync"
	"sync/atomic"
	"testing"
)

// Proxy is a TCP proxy a test can cut silently: Freeze makes every
// connection open at that moment drop what it carries in both directions
// while staying open, as a dead peer behind a NAT or a stuck middlebox
// does; connections made afterwards pass. No error reaches either side.
type Proxy struct {
	ln     net.Listener
	target string

	mu    sync.Mutex
	pairs []*atomic.Bool // guarded by mu: the frozen flag of every connection
	conns []net.Conn     // guarded by mu: closed by the cleanup
}

// StartProxy listens on a free loopback port and forwards to target until
// t ends.
func StartProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("testenv: proxy: %v", err)
	}
	p := &Proxy{ln: ln, target: target}
	go p.accept()
	t.Cleanup(p.close)
	return p
}

// Addr is the proxy's host:port.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Freeze silences every connection open now.
func (p *Proxy) Freeze() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, f := range p.pairs {
		f.Store(true)
	}
}

func (p *Proxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		frozen := new(atomic.Bool)
		p.mu.Lock()
		p.pairs = append(p.pairs, frozen)
		p.conns = append(p.conns, c, s)
		p.mu.Unlock()
		go pipe(s, c, frozen)
		go pipe(c, s, frozen)
	}
}

// pipe copies from src to dst until either fails, dropping the bytes once
// frozen is set.
func pipe(dst, src net.Conn, frozen *atomic.Bool) {
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !frozen.Load() {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (p *Proxy) close() {
	p.ln.Close()
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
}
