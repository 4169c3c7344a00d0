//go:build linux

package main

// The worker: one process holding up to ~15,000 client sockets on a single
// epoll loop with raw non-blocking fds. Per connection it keeps a ~100-byte
// struct; read buffers are shared and only a partial frame is copied aside.
// It speaks the Phoenix V2 protocol as phoenix.js does: token in the query,
// vsn=2.0.0 last, lobby join, heartbeat on "phoenix" every --hb.

import (
	"bufio"
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/elchat/elchat/internal/rawsys"
	"github.com/elchat/elchat/pkg/auth"
)

type workerConfig struct {
	ID          int
	Scenario    string   // connect | chat
	Addrs       []string // node host:port; user u goes to Addrs[u%len]
	SrcIPs      []string
	Secret      string
	FirstUser   int64 // connect: users FirstUser..FirstUser+Count-1
	FirstPair   int64 // chat: pairs FirstPair..; pair p = users 2p+1, 2p+2
	Count       int   // connections (connect) or pairs (chat)
	Rate        float64
	MaxInflight int
	HB          time.Duration
	HBTimeout   time.Duration
	ConnTimeout time.Duration
	MsgRate     float64
	Duration    time.Duration
	BodySize    int
	Deadline    time.Time // the worker exits by then whatever happens
	// What the sockets say (connect). Empty means ElChat's defaults:
	// /socket/websocket, token=<auth.Mint with Secret>, user:{id}, {}.
	Host       string // Host header (a --target's host:port); default the dialled address
	Path       string // request path
	Query      string // extra query before the token and vsn
	TokenParam string // query parameter name of the token; "-" sends none
	TokenMode  string // "" (auth.Mint), "hs256" (ClaimsT signed with Secret), "file", "none"
	ClaimsT    string // hs256: JSON claims template
	TokensFile string // file: one token per line, line u-1 for user u
	TopicT     string // join topic template
	JoinT      string // join payload template (JSON)
}

const (
	stIdle = iota
	stConnecting
	stHandshake
	stLobby
	stChatJoin
	stReady
	stFailed
)

type conn struct {
	fd     int32
	state  uint8
	wantW  bool
	user   int64
	t0     int64
	hbSent int64
	hbNext int64
	rbuf   []byte
	wbuf   []byte
}

type pairState struct {
	acked []int64
	found []bool
	next  int64 // next "before" for verification; -1 when done
}

type report struct {
	K          string            `json:"k"` // p(rogress) | ramped | sent | verified | final
	W          int               `json:"w"`
	Target     int               `json:"target"`
	Started    int               `json:"started"`
	Up         int               `json:"up"`
	Fail       int               `json:"fail"`
	Drop       int               `json:"drop"`
	Inflight   int               `json:"inflight"`
	HBSent     uint64            `json:"hb_sent"`
	HBOK       uint64            `json:"hb_ok"`
	HBFail     uint64            `json:"hb_fail"`
	Sent       uint64            `json:"sent"`
	Skipped    uint64            `json:"skipped"`
	Acked      uint64            `json:"acked"`
	AckErr     uint64            `json:"ack_err"`
	Recv       uint64            `json:"recv"`
	VerChecked uint64            `json:"ver_checked"`
	VerMissing uint64            `json:"ver_missing"`
	VerPages   uint64            `json:"ver_pages"`
	VerErr     uint64            `json:"ver_err"`
	Reasons    map[string]int    `json:"reasons,omitempty"`
	Conn       [][2]uint64       `json:"conn_h,omitempty"`
	HBH        [][2]uint64       `json:"hb_h,omitempty"`
	Ack        [][2]uint64       `json:"ack_h,omitempty"`
	E2E        [][2]uint64       `json:"e2e_h,omitempty"`
	Extra      map[string]string `json:"extra,omitempty"`
}

type worker struct {
	cfg   workerConfig
	base  time.Time
	epfd  int
	epf   *os.File        // epfd in Go's network poller, where the loop parks
	eprc  syscall.RawConn // epf's
	conns []conn
	pairs []pairState
	toks  []string // TokensFile lines of this worker's users
	buf   []byte
	wtmp  []byte
	mask  uint32
	srcs  []syscall.SockaddrInet4
	dsts  []syscall.SockaddrInet4
	hosts []string
	out   *bufio.Writer
	cmds  chan string

	started, inflight, up, nfail, drop int
	hbSent, hbOK, hbFail               uint64
	sent, skipped, acked, ackErr, recv uint64
	verChecked, verMissing, verPages   uint64
	verErr                             uint64
	reasons                            map[string]int
	connH, hbH, ackH, e2eH             hist
	sendT                              []int64
	phase                              string
	sendStart                          int64
	lastScan, lastReport               int64
	scanPos                            int // next socket scan looks at
	verInflight, verNext               int
}

func (w *worker) now() int64 { return int64(time.Since(w.base)) }

func runWorker() error {
	var cfg workerConfig
	if err := json.Unmarshal([]byte(os.Getenv("ELCHAT_BENCH_WORKER")), &cfg); err != nil {
		return fmt.Errorf("worker config: %w", err)
	}
	w, err := newWorker(cfg, os.Stdout)
	if err != nil {
		return err
	}
	go func() {
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			w.cmds <- strings.TrimSpace(sc.Text())
		}
		w.cmds <- "quit" // coordinator gone
	}()
	w.run()
	return nil
}

// newWorker sets up a worker whose reports go to out; run drives it until
// "quit" arrives on its cmds or its deadline passes.
func newWorker(cfg workerConfig, out io.Writer) (*worker, error) {
	// Guards: a zero timeout would fail every socket still in its handshake.
	if cfg.ConnTimeout <= 0 {
		cfg.ConnTimeout = 20 * time.Second
	}
	if cfg.HBTimeout <= 0 {
		cfg.HBTimeout = cfg.HB
	}
	w := &worker{cfg: cfg, base: time.Now(), buf: make([]byte, 256<<10), reasons: map[string]int{},
		out: bufio.NewWriterSize(out, 64<<10), cmds: make(chan string, 8), mask: uint32(cfg.ID*7919 + 1)}
	n := cfg.Count
	if cfg.Scenario == "chat" {
		n = 2 * cfg.Count
		w.pairs = make([]pairState, cfg.Count)
		max := int(cfg.MsgRate*cfg.Duration.Seconds()*1.2) + 1000
		w.sendT = make([]int64, max)
	}
	w.conns = make([]conn, n)
	for i := range w.conns {
		c := &w.conns[i]
		c.fd = -1
		if cfg.Scenario == "chat" {
			p := cfg.FirstPair + int64(i/2)
			c.user = 2*p + 1 + int64(i%2)
		} else {
			c.user = cfg.FirstUser + int64(i)
		}
	}
	if cfg.TokenMode == "file" {
		b, err := os.ReadFile(cfg.TokensFile)
		if err != nil {
			return nil, fmt.Errorf("tokens file: %w", err)
		}
		lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
		lo := int(cfg.FirstUser) - 1
		if lo < 0 || lo+n > len(lines) {
			return nil, fmt.Errorf("tokens file %s has %d lines, users %d..%d need line %d", cfg.TokensFile, len(lines), cfg.FirstUser, cfg.FirstUser+int64(n)-1, lo+n)
		}
		for _, l := range lines[lo : lo+n] {
			w.toks = append(w.toks, strings.TrimSpace(l))
		}
	}
	for _, s := range cfg.SrcIPs {
		var sa syscall.SockaddrInet4
		copy(sa.Addr[:], net.ParseIP(s).To4())
		w.srcs = append(w.srcs, sa)
	}
	for _, a := range cfg.Addrs {
		h, p, _ := net.SplitHostPort(a)
		port, _ := strconv.Atoi(p)
		sa := syscall.SockaddrInet4{Port: port}
		copy(sa.Addr[:], net.ParseIP(h).To4())
		w.dsts = append(w.dsts, sa)
		w.hosts = append(w.hosts, a)
	}
	var err error
	w.epfd, err = syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	// The loop parks in the runtime's poller rather than in a blocking
	// epoll_wait, as the server's engine does (pkg/transport): a thread
	// blocked in a syscall keeps sysmon polling every 10 ms, and 67
	// workers of a big run waking it that often cost as much as a good
	// part of the heartbeats they measure.
	if err := syscall.SetNonblock(w.epfd, true); err != nil {
		return nil, err
	}
	w.epf = os.NewFile(uintptr(w.epfd), "epoll")
	if err := w.epf.SetReadDeadline(time.Time{}); err != nil {
		return nil, fmt.Errorf("epoll fd not pollable by the runtime: %w", err)
	}
	if w.eprc, err = w.epf.SyscallConn(); err != nil {
		return nil, err
	}
	w.phase = "ramp"
	return w, nil
}

func (w *worker) run() {
	w.loop()
	w.emit("final", true)
	w.out.Flush()
	for i := range w.conns {
		if w.conns[i].fd >= 0 {
			syscall.Close(int(w.conns[i].fd))
		}
	}
	w.epf.Close()
}

func (w *worker) loop() {
	events := make([]unix.EpollEvent, 1024)
	for {
		if time.Now().After(w.cfg.Deadline) {
			w.reasons["worker deadline"]++
			return
		}
		n, err := w.wait(events)
		if err != nil {
			w.reasons["epoll: "+err.Error()]++
			return
		}
		for i := 0; i < n; i++ {
			w.event(int(events[i].Fd), events[i].Events)
		}
		w.tick()
		select {
		case cmd := <-w.cmds:
			switch cmd {
			case "quit":
				return
			case "go":
				if w.cfg.Scenario == "chat" {
					w.phase = "send"
					w.sendStart = w.now()
				}
			case "verify":
				w.phase = "verify"
				w.startVerify()
			}
		default:
		}
	}
}

// wait returns the events ready now or, when there are none, parks until
// some are or waitMillis has passed (0 events then).
// The events, and the sockets' reads and writes, come from raw syscalls
// (internal/rawsys): none blocks, and the runtime's bookkeeping would wake
// a sleeping sysmon on each.
func (w *worker) wait(events []unix.EpollEvent) (int, error) {
	n, err := rawsys.EpollReady(w.epfd, events)
	if n != 0 || err != nil {
		return n, err
	}
	ms := w.waitMillis()
	if ms <= 0 {
		return 0, nil
	}
	_ = w.epf.SetReadDeadline(time.Now().Add(time.Duration(ms) * time.Millisecond))
	rerr := w.eprc.Read(func(fd uintptr) bool {
		n, err = rawsys.EpollReady(int(fd), events)
		return n != 0 || err != nil // false: park until the fd is readable
	})
	if rerr != nil && !errors.Is(rerr, os.ErrDeadlineExceeded) {
		return 0, rerr
	}
	return n, err
}

// waitMillis is how long the loop may sleep in epoll_wait: until the next
// connect of the ramp is due (at most 20 ms), 2 ms while sending chat
// messages, else until the next scan (heartbeats and timeouts, every
// 100 ms). A worker of a big run starts a connect every 100 ms or so;
// waking it every 2 ms regardless made 67 idle workers cost as much CPU
// as the nodes they measure, and waking a holding worker every 20 ms for
// a scan due every 100 ms was most of the generator's CPU per heartbeat.
func (w *worker) waitMillis() int {
	now := w.now()
	switch {
	case w.phase == "send":
		return 2
	case w.phase == "ramp" && w.started < len(w.conns) && w.inflight < w.cfg.MaxInflight && w.cfg.Rate > 0:
		due := int64(float64(w.started) / w.cfg.Rate * 1e9)
		ms := (due - now + 999_999) / 1_000_000
		return int(min(max(ms, 0), 20))
	case w.phase == "ramp":
		return 20
	}
	ms := (w.lastScan + int64(scanEvery) - now + 999_999) / 1_000_000
	return int(min(max(ms, 0), int64(scanEvery/time.Millisecond)))
}

// scanEvery is how often the loop scans a slice of its sockets.
const scanEvery = 100 * time.Millisecond

func (w *worker) reason(r string) { w.reasons[r]++ }

func (w *worker) startConn(i int) {
	c := &w.conns[i]
	c.t0 = w.now()
	w.started++
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		w.fail(c, "socket: "+err.Error())
		return
	}
	c.fd = int32(fd)
	w.inflight++
	_ = syscall.SetsockoptInt(fd, syscall.IPPROTO_IP, 24 /* IP_BIND_ADDRESS_NO_PORT */, 1)
	_ = syscall.SetsockoptInt(fd, syscall.IPPROTO_TCP, syscall.TCP_NODELAY, 1)
	if len(w.srcs) > 0 {
		src := w.srcs[i%len(w.srcs)]
		if err := syscall.Bind(fd, &src); err != nil {
			w.fail(c, "bind: "+err.Error())
			return
		}
	}
	dst := w.dsts[c.user%int64(len(w.dsts))]
	if err := syscall.Connect(fd, &dst); err != nil && err != syscall.EINPROGRESS {
		w.fail(c, "connect: "+err.Error())
		return
	}
	c.state = stConnecting
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLOUT | syscall.EPOLLRDHUP, Fd: int32(i)}
	if err := syscall.EpollCtl(w.epfd, syscall.EPOLL_CTL_ADD, fd, &ev); err != nil {
		w.fail(c, "epoll_ctl: "+err.Error())
	}
}

func (w *worker) fail(c *conn, why string) {
	if c.state == stFailed {
		return
	}
	if c.state == stReady {
		w.drop++
		w.up--
		w.reason("dropped: " + why)
	} else {
		w.nfail++
		if c.fd >= 0 {
			w.inflight--
		}
		w.reason(why)
	}
	if c.fd >= 0 {
		syscall.Close(int(c.fd))
	}
	c.fd = -1
	c.state = stFailed
	c.rbuf, c.wbuf = nil, nil
}

func (w *worker) event(i int, ev uint32) {
	if i < 0 || i >= len(w.conns) {
		return
	}
	c := &w.conns[i]
	if c.fd < 0 {
		return
	}
	if c.state == stConnecting {
		if ev&(syscall.EPOLLOUT|syscall.EPOLLERR|syscall.EPOLLHUP) == 0 {
			return
		}
		e, err := syscall.GetsockoptInt(int(c.fd), syscall.SOL_SOCKET, syscall.SO_ERROR)
		if err != nil || e != 0 {
			w.fail(c, "connect: "+syscall.Errno(e).Error())
			return
		}
		mod := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP, Fd: int32(i)}
		syscall.EpollCtl(w.epfd, syscall.EPOLL_CTL_MOD, int(c.fd), &mod)
		c.state = stHandshake
		tok, err := w.token(i, c.user)
		if err != nil {
			w.fail(c, "mint: "+err.Error())
			return
		}
		w.rawWrite(i, c, []byte(w.request(c.user, tok)))
		return
	}
	if ev&syscall.EPOLLOUT != 0 && len(c.wbuf) > 0 {
		w.flush(i, c)
		if c.fd < 0 {
			return
		}
	}
	if ev&(syscall.EPOLLIN|syscall.EPOLLRDHUP|syscall.EPOLLHUP|syscall.EPOLLERR) != 0 {
		n, err := rawsys.Read(int(c.fd), w.buf)
		if err == syscall.EAGAIN {
			return
		}
		if err != nil {
			w.fail(c, "read: "+err.Error())
			return
		}
		if n == 0 {
			w.fail(c, "closed by server")
			return
		}
		data := w.buf[:n]
		if len(c.rbuf) > 0 {
			c.rbuf = append(c.rbuf, data...)
			data = c.rbuf
		}
		w.input(i, c, data)
	}
}

func (w *worker) input(i int, c *conn, data []byte) {
	if c.state == stHandshake {
		end := bytes.Index(data, []byte("\r\n\r\n"))
		if end < 0 {
			if len(data) > 8192 {
				w.fail(c, "handshake: header too long")
				return
			}
			w.keep(c, data)
			return
		}
		if !bytes.HasPrefix(data, []byte("HTTP/1.1 101")) {
			code := string(data[:min(len(data), 12)])
			w.fail(c, "handshake: "+strings.TrimSpace(code))
			return
		}
		data = data[end+4:]
		c.state = stLobby
		w.send(i, c, w.joinFrame(c.user))
		if c.fd < 0 {
			return
		}
	}
	for len(data) >= 2 {
		b0, b1 := data[0], data[1]
		l := int(b1 & 127)
		h := 2
		switch l {
		case 126:
			if len(data) < 4 {
				goto partial
			}
			l = int(data[2])<<8 | int(data[3])
			h = 4
		case 127:
			if len(data) < 10 {
				goto partial
			}
			l = 0
			for k := 2; k < 10; k++ {
				l = l<<8 | int(data[k])
			}
			h = 10
		}
		if b1&0x80 != 0 {
			h += 4 // masked server frame (not expected); the mask is ignored below
		}
		if len(data) < h+l {
			goto partial
		}
		payload := data[h : h+l]
		data = data[h+l:]
		switch b0 & 15 {
		case 1, 0:
			w.text(i, c, payload)
		case 8:
			code := 0
			if len(payload) >= 2 {
				code = int(payload[0])<<8 | int(payload[1])
			}
			w.fail(c, fmt.Sprintf("ws close %d", code))
		case 9:
			w.sendOp(i, c, 0x8A, payload)
		}
		if c.fd < 0 {
			return
		}
	}
partial:
	w.keep(c, data)
}

func (w *worker) keep(c *conn, data []byte) {
	if len(data) == 0 {
		if cap(c.rbuf) > 4096 {
			c.rbuf = nil
		} else {
			c.rbuf = c.rbuf[:0]
		}
		return
	}
	nb := make([]byte, len(data), max(len(data), 512))
	copy(nb, data)
	c.rbuf = nb
}

func unq(r json.RawMessage) string {
	if len(r) >= 2 && r[0] == '"' {
		return string(r[1 : len(r)-1])
	}
	return ""
}

// fastFrame splits a server V2 frame without a JSON decoder: the first four
// elements are null or escape-free strings (refs, topics and event names the
// server writes), the payload is the rest. ok is false for anything else,
// which then goes through encoding/json.
func fastFrame(d []byte) (f [4][]byte, payload []byte, ok bool) {
	if len(d) < 2 || d[0] != '[' || d[len(d)-1] != ']' {
		return f, nil, false
	}
	p := 1
	for k := 0; k < 4; k++ {
		switch {
		case bytes.HasPrefix(d[p:], []byte("null")):
			p += 4
		case p < len(d) && d[p] == '"':
			e := bytes.IndexByte(d[p+1:], '"')
			if e < 0 {
				return f, nil, false
			}
			f[k] = d[p+1 : p+1+e]
			if bytes.IndexByte(f[k], '\\') >= 0 {
				return f, nil, false
			}
			p += e + 2
		default:
			return f, nil, false
		}
		if p >= len(d) || d[p] != ',' {
			return f, nil, false
		}
		p++
	}
	return f, d[p : len(d)-1], true
}

// field returns the raw value after "key": in a JSON object (first match;
// good enough for the flat shapes the server sends).
func field(obj []byte, key string) []byte {
	i := bytes.Index(obj, []byte(`"`+key+`":`))
	if i < 0 {
		return nil
	}
	v := obj[i+len(key)+3:]
	if len(v) > 0 && v[0] == '"' {
		e := bytes.IndexByte(v[1:], '"')
		if e < 0 {
			return nil
		}
		return v[1 : 1+e]
	}
	e := bytes.IndexAny(v, ",}]")
	if e < 0 {
		return v
	}
	return v[:e]
}

func (w *worker) text(i int, c *conn, data []byte) {
	hdr, payload, ok := fastFrame(data)
	if !ok {
		var f []json.RawMessage
		if err := json.Unmarshal(data, &f); err != nil || len(f) < 5 {
			w.reason("bad frame")
			return
		}
		for k := 0; k < 4; k++ {
			hdr[k] = []byte(unq(f[k]))
		}
		payload = f[4]
	}
	now := w.now()
	ref, event := hdr[1], string(hdr[3])
	switch event {
	case "phx_reply":
		if len(ref) == 0 {
			return
		}
		status := string(field(payload, "status"))
		resp := payload
		if k := bytes.Index(payload, []byte(`"response":`)); k >= 0 {
			resp = payload[k+11 : len(payload)-1]
		}
		switch ref[0] {
		case 'h':
			if c.hbSent != 0 {
				w.hbH.add(now - c.hbSent)
				c.hbSent = 0
			}
			w.hbOK++
		case 'L':
			if status != "ok" {
				w.fail(c, "lobby join: "+status+" "+string(resp))
				return
			}
			if w.cfg.Scenario == "chat" {
				a, b := c.user, c.user+1
				if i%2 == 1 {
					a, b = c.user-1, c.user
				}
				c.state = stChatJoin
				w.send(i, c, []byte(fmt.Sprintf(`["C","C","chat:%d:%d","phx_join",{}]`, a, b)))
				return
			}
			w.ready(c, now)
		case 'C':
			if status != "ok" {
				w.fail(c, "chat join: "+status+" "+string(resp))
				return
			}
			w.ready(c, now)
		case 'p':
			seq, _ := strconv.Atoi(string(ref[1:]))
			if status != "ok" {
				w.ackErr++
				w.reason("push: " + status + " " + string(resp))
				return
			}
			id, _ := strconv.ParseInt(string(field(resp, "id")), 10, 64)
			w.acked++
			if seq >= 0 && seq < len(w.sendT) && w.sendT[seq] != 0 {
				w.ackH.add(now - w.sendT[seq])
			}
			p := &w.pairs[i/2]
			p.acked = append(p.acked, id)
		case 'v':
			w.verifyReply(i, status, resp)
		}
	case "new_message":
		if string(field(payload, "user_id")) == strconv.FormatInt(c.user, 10) {
			return // our own echo
		}
		w.recv++
		cid := field(payload, "client_id")
		pre := "w" + strconv.Itoa(w.cfg.ID) + "-"
		if bytes.HasPrefix(cid, []byte(pre)) {
			seq, err := strconv.Atoi(string(cid[len(pre):]))
			if err == nil && seq >= 0 && seq < len(w.sendT) && w.sendT[seq] != 0 {
				w.e2eH.add(now - w.sendT[seq])
			}
		}
	case "phx_error", "phx_close":
		w.reason("server " + event + " on " + string(hdr[2]))
	}
}

func (w *worker) ready(c *conn, now int64) {
	c.state = stReady
	w.up++
	w.inflight--
	w.connH.add(now - c.t0)
	c.hbNext = now + int64(w.cfg.HB)
}

// send writes one masked text frame.
func (w *worker) send(i int, c *conn, payload []byte) { w.sendOp(i, c, 0x81, payload) }

func (w *worker) sendOp(i int, c *conn, op byte, payload []byte) {
	b := w.wtmp[:0]
	b = append(b, op)
	switch l := len(payload); {
	case l < 126:
		b = append(b, 0x80|byte(l))
	case l < 65536:
		b = append(b, 0x80|126, byte(l>>8), byte(l))
	default:
		b = append(b, 0x80|127, 0, 0, 0, 0, byte(l>>24), byte(l>>16), byte(l>>8), byte(l))
	}
	w.mask = w.mask*1664525 + 1013904223
	m := [4]byte{byte(w.mask >> 24), byte(w.mask >> 16), byte(w.mask >> 8), byte(w.mask)}
	b = append(b, m[:]...)
	for k, x := range payload {
		b = append(b, x^m[k&3])
	}
	w.wtmp = b
	w.rawWrite(i, c, b)
}

func (w *worker) rawWrite(i int, c *conn, b []byte) {
	if len(c.wbuf) > 0 {
		c.wbuf = append(c.wbuf, b...)
		return
	}
	n, err := rawsys.Write(int(c.fd), b)
	if err == syscall.EAGAIN {
		n, err = 0, nil
	}
	if err != nil {
		w.fail(c, "write: "+err.Error())
		return
	}
	if n < len(b) {
		c.wbuf = append([]byte(nil), b[n:]...)
		c.wantW = true
		ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLOUT | syscall.EPOLLRDHUP, Fd: int32(i)}
		syscall.EpollCtl(w.epfd, syscall.EPOLL_CTL_MOD, int(c.fd), &ev)
	}
}

func (w *worker) flush(i int, c *conn) {
	n, err := rawsys.Write(int(c.fd), c.wbuf)
	if err == syscall.EAGAIN {
		return
	}
	if err != nil {
		w.fail(c, "write: "+err.Error())
		return
	}
	c.wbuf = c.wbuf[n:]
	if len(c.wbuf) == 0 {
		c.wbuf = nil
		c.wantW = false
		ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP, Fd: int32(i)}
		syscall.EpollCtl(w.epfd, syscall.EPOLL_CTL_MOD, int(c.fd), &ev)
	}
}

func (w *worker) tick() {
	now := w.now()
	if w.phase == "ramp" {
		allowed := int(w.cfg.Rate*time.Duration(now).Seconds()) + 1 - w.started
		for allowed > 0 && w.started < len(w.conns) && w.inflight < w.cfg.MaxInflight {
			w.startConn(w.started)
			allowed--
		}
		if w.started == len(w.conns) && w.inflight == 0 {
			w.phase = "hold"
			w.emit("ramped", false)
		}
	}
	if w.phase == "send" {
		w.chatSend(now)
	}
	if w.phase == "drain" && (w.acked+w.ackErr >= w.sent-w.skipped || now-w.sendStart > int64(w.cfg.Duration+15*time.Second)) {
		w.phase = "hold"
		w.emit("sent", false)
	}
	if now-w.lastScan >= int64(scanEvery) {
		w.lastScan = now
		w.scan(now)
	}
	if now-w.lastReport >= int64(500*time.Millisecond) {
		w.lastReport = now
		w.emit("p", false)
	}
}

// scanSlices is how many scans it takes to visit every socket once: each
// is looked at every second (10 scans 100 ms apart), ample for 30 s
// heartbeats and a 20 s connect timeout, at a tenth of the CPU of visiting
// all of them on every scan.
const scanSlices = 10

func (w *worker) scan(now int64) {
	n := (len(w.conns) + scanSlices - 1) / scanSlices
	for k := 0; k < n && len(w.conns) > 0; k++ {
		if w.scanPos >= len(w.conns) {
			w.scanPos = 0
		}
		i := w.scanPos
		w.scanPos++
		c := &w.conns[i]
		switch c.state {
		case stConnecting, stHandshake, stLobby, stChatJoin:
			if now-c.t0 > int64(w.cfg.ConnTimeout) {
				w.fail(c, "timeout in state "+strconv.Itoa(int(c.state)))
			}
		case stReady:
			if c.hbSent != 0 && now-c.hbSent > int64(w.cfg.HBTimeout) {
				w.hbFail++
				w.reason("heartbeat unanswered")
				c.hbSent = 0
			}
			if now >= c.hbNext {
				c.hbNext += int64(w.cfg.HB)
				if c.hbSent == 0 {
					c.hbSent = now
				}
				w.hbSent++
				w.send(i, c, []byte(`[null,"h","phoenix","heartbeat",{}]`))
			}
		}
	}
}

func (w *worker) chatSend(now int64) {
	el := now - w.sendStart
	if el >= int64(w.cfg.Duration) {
		w.phase = "drain"
		return
	}
	due := int64(w.cfg.MsgRate*time.Duration(el).Seconds()) + 1 - int64(w.sent)
	if due > 2000 {
		due = 2000
	}
	np := uint64(len(w.pairs))
	body := strings.Repeat("x", max(w.cfg.BodySize, 1))
	for ; due > 0; due-- {
		seq := int(w.sent)
		if seq >= len(w.sendT) {
			w.phase = "drain"
			return
		}
		pi := w.sent % np
		side := (w.sent / np) % 2
		ci := int(pi)*2 + int(side)
		c := &w.conns[ci]
		w.sent++
		if c.state != stReady {
			w.skipped++
			continue
		}
		a := c.user
		if side == 1 {
			a = c.user - 1
		}
		msg := `["C","p` + strconv.Itoa(seq) + `","chat:` + strconv.FormatInt(a, 10) + ":" + strconv.FormatInt(a+1, 10) +
			`","new_message",{"body":"` + body + `","client_id":"w` + strconv.Itoa(w.cfg.ID) + "-" + strconv.Itoa(seq) + `"}]`
		w.sendT[seq] = w.now()
		w.send(ci, c, []byte(msg))
	}
}

// Verification: for every pair, page back through history from the newest
// acknowledged id and tick off every acknowledged id seen.
func (w *worker) startVerify() {
	for pi := range w.pairs {
		p := &w.pairs[pi]
		sort.Slice(p.acked, func(a, b int) bool { return p.acked[a] < p.acked[b] })
		p.found = make([]bool, len(p.acked))
		if len(p.acked) == 0 {
			p.next = -1
		} else {
			p.next = p.acked[len(p.acked)-1] + 1
		}
	}
	w.verNext = 0
	w.pumpVerify()
}

func (w *worker) pumpVerify() {
	for w.verInflight < 64 && w.verNext < len(w.pairs) {
		pi := w.verNext
		w.verNext++
		if w.pairs[pi].next < 0 {
			continue
		}
		w.requestPage(pi)
	}
	if w.verInflight == 0 && w.verNext >= len(w.pairs) && w.phase == "verify" {
		for pi := range w.pairs {
			for _, f := range w.pairs[pi].found {
				w.verChecked++
				if !f {
					w.verMissing++
				}
			}
		}
		w.phase = "hold"
		w.emit("verified", false)
	}
}

func (w *worker) requestPage(pi int) {
	ci := pi * 2
	c := &w.conns[ci]
	if c.state != stReady {
		w.verErr++
		w.pairs[pi].next = -1
		return
	}
	w.verInflight++
	w.verPages++
	msg := fmt.Sprintf(`["C","v","chat:%d:%d","history",{"before":%d}]`, c.user, c.user+1, w.pairs[pi].next)
	w.send(ci, c, []byte(msg))
}

func (w *worker) verifyReply(ci int, status string, resp json.RawMessage) {
	w.verInflight--
	pi := ci / 2
	p := &w.pairs[pi]
	var page struct {
		Messages []struct {
			ID int64 `json:"id"`
		} `json:"messages"`
		HasMore bool `json:"has_more"`
	}
	if status != "ok" || json.Unmarshal(resp, &page) != nil {
		w.verErr++
		w.reason("history: " + status + " " + string(resp))
		p.next = -1
		w.pumpVerify()
		return
	}
	minID := p.next
	for _, m := range page.Messages {
		k := sort.Search(len(p.acked), func(x int) bool { return p.acked[x] >= m.ID })
		if k < len(p.acked) && p.acked[k] == m.ID {
			p.found[k] = true
		}
		if m.ID < minID {
			minID = m.ID
		}
	}
	if !page.HasMore || len(page.Messages) == 0 || minID <= p.acked[0] || minID >= p.next {
		p.next = -1
		w.pumpVerify()
		return
	}
	p.next = minID
	w.requestPage(pi)
}

func (w *worker) emit(kind string, full bool) {
	r := report{K: kind, W: w.cfg.ID, Target: len(w.conns), Started: w.started, Up: w.up, Fail: w.nfail, Drop: w.drop,
		Inflight: w.inflight, HBSent: w.hbSent, HBOK: w.hbOK, HBFail: w.hbFail, Sent: w.sent, Skipped: w.skipped,
		Acked: w.acked, AckErr: w.ackErr, Recv: w.recv, VerChecked: w.verChecked, VerMissing: w.verMissing,
		VerPages: w.verPages, VerErr: w.verErr, Reasons: w.reasons}
	// Histograms are cumulative; shipped on every line (sparse, small).
	r.Conn = w.connH.sparse()
	r.E2E = w.e2eH.sparse()
	r.Ack = w.ackH.sparse()
	if full {
		r.HBH = w.hbH.sparse()
	}
	b, _ := json.Marshal(r)
	w.out.Write(b)
	w.out.WriteByte('\n')
	w.out.Flush()
}

// token is what user u presents: minted by ElChat's own auth.Mint, a
// --claims template signed HS256, or line u-1 of --tokens-file.
func (w *worker) token(i int, u int64) (string, error) {
	id := strconv.FormatInt(u, 10)
	switch w.cfg.TokenMode {
	case "none":
		return "", nil
	case "file":
		return w.toks[i], nil
	case "hs256":
		return signHS256([]byte(w.cfg.Secret), fillTemplate(w.cfg.ClaimsT, id))
	}
	return auth.Mint([]byte(w.cfg.Secret), id, "u"+id, 2*time.Hour)
}

// request is the upgrade request phoenix.js sends: token (if any) in the
// query and vsn=2.0.0 last.
func (w *worker) request(u int64, tok string) string {
	path := w.cfg.Path
	if path == "" {
		path = "/socket/websocket"
	}
	host := w.cfg.Host
	if host == "" {
		host = w.hosts[u%int64(len(w.hosts))]
	}
	param := w.cfg.TokenParam
	if param == "" {
		param = "token"
	}
	q := w.cfg.Query
	if q != "" {
		q += "&"
	}
	if tok != "" && param != "-" {
		q += url.QueryEscape(param) + "=" + url.QueryEscape(tok) + "&"
	}
	return "GET " + path + "?" + q + "vsn=2.0.0 HTTP/1.1\r\nHost: " + host +
		"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ZWxjaGF0LWJlbmNoLWtleQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
}

// joinFrame is ["L","L",topic,"phx_join",payload] from the templates.
func (w *worker) joinFrame(u int64) []byte {
	id := strconv.FormatInt(u, 10)
	topic, join := "user:"+id, "{}"
	if w.cfg.TopicT != "" {
		topic = fillTemplate(w.cfg.TopicT, id)
	}
	if w.cfg.JoinT != "" {
		join = fillTemplate(w.cfg.JoinT, id)
	}
	tq, _ := json.Marshal(topic)
	return []byte(`["L","L",` + string(tq) + `,"phx_join",` + join + `]`)
}

// fillTemplate replaces {id} with the user id, {now} with the Unix time
// and {exp} with the Unix time two hours from now.
func fillTemplate(t, id string) string {
	if !strings.Contains(t, "{") {
		return t
	}
	now := time.Now().Unix()
	return strings.NewReplacer("{id}", id, "{now}", strconv.FormatInt(now, 10), "{exp}", strconv.FormatInt(now+7200, 10)).Replace(t)
}

// signHS256 makes a compact JWS (JWT) of the claims JSON with HMAC-SHA256.
func signHS256(secret []byte, claims string) (string, error) {
	if !json.Valid([]byte(claims)) {
		return "", fmt.Errorf("claims are not valid JSON: %s", claims)
	}
	enc := base64.RawURLEncoding
	msg := enc.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT"}`)) + "." + enc.EncodeToString([]byte(claims))
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(msg))
	return msg + "." + enc.EncodeToString(m.Sum(nil)), nil
}
