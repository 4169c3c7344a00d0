// Package fault holds ElChat's fault-injection suite: real PostgreSQL
// stopped under traffic, a real node binary killed and drained, slow and
// flooding clients, and a reconnect storm. Every test keeps other clients
// chatting and checks that every acknowledged message is stored exactly
// once and delivered (live or by catch-up with last_id).
package fault

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/elchat/elchat/internal/phxtest"
	"github.com/elchat/elchat/internal/testenv"
	"github.com/elchat/elchat/pkg/topic"
)

var (
	binPath string // the elchat binary built by TestMain
	// Suite-wide tallies for the report.
	faultsTried  atomic.Int64
	ackedChecked atomic.Int64
	lostTotal    atomic.Int64
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "elchat-fault-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binPath = filepath.Join(dir, "elchat")
	build := exec.Command("go", "build", "-o", binPath, "github.com/elchat/elchat/cmd/elchat")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build elchat:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	testenv.Shutdown()
	os.RemoveAll(dir)
	fmt.Printf("fault suite: faults injected %d, acknowledged messages checked %d, lost %d\n",
		faultsTried.Load(), ackedChecked.Load(), lostTotal.Load())
	os.Exit(code)
}

const wait = 15 * time.Second

// backoff is phoenix.js's reconnectAfterMs schedule.
func backoff(try int) time.Duration {
	s := []int{10, 50, 100, 150, 200, 250, 500, 1000, 2000}
	if try < len(s) {
		return time.Duration(s[try]) * time.Millisecond
	}
	return 5 * time.Second
}

// dialRetry connects as user to the first address that accepts, retrying
// like phoenix.js, at most tries times.
func dialRetry(addrs func() []string, user string, o phxtest.DialOptions, tries int) (*phxtest.Client, error) {
	tok, err := mint(user)
	if err != nil {
		return nil, err
	}
	o.Token = tok
	var last error
	for i := range tries {
		for _, a := range addrs() {
			c, err := phxtest.Dial(a, o)
			if err == nil {
				return c, nil
			}
			last = err
		}
		time.Sleep(backoff(i))
	}
	return nil, fmt.Errorf("connect %s: %d tries: %w", user, tries, last)
}

func mint(user string) (string, error) {
	return phxtest.TokenFor(user)
}

// ---------------------------------------------------------------- pairs

// pair is a sender and a receiver chatting in one room. The sender posts
// numbered messages with client ids, retrying each until acknowledged; the
// receiver reads in the background and rejoins with last_id whenever its
// socket dies.
type pair struct {
	name, sender, receiver, room string
	addrs                        func() []string
	recvAddrs                    func() []string // the receiver's, when not addrs
	resyncs                      atomic.Int64    // phx_error resyncs the receiver obeyed
	lastSeenAt                   time.Time       // guarded by mu: when the receiver last got a new id
	maxGap                       time.Duration   // guarded by mu: longest wait between new ids

	s *phxtest.Client // owned by the sending goroutine

	mu       sync.Mutex
	acked    map[string]int64 // client_id -> id
	seen     map[int64]bool   // ids the receiver got live or by catch-up
	maxSeen  int64
	rejoins  int
	early    int            // live new_message frames read before a join's reply
	errors   map[string]int // error reply reasons seen by the sender
	timeouts int            // sends with no reply before the deadline
	rc       *phxtest.Client
	stop     atomic.Bool
	done     chan struct{}
}

func newPair(name string, addrs func() []string) *pair {
	s, r := "s-"+name, "r-"+name
	return &pair{name: name, sender: s, receiver: r, room: topic.ChatName(s, r), addrs: addrs,
		acked: map[string]int64{}, seen: map[int64]bool{}, errors: map[string]int{}, done: make(chan struct{})}
}

// startReceiver joins and reads in the background until stopReceiver.
func (p *pair) startReceiver(t *testing.T) {
	t.Helper()
	if err := p.rejoin(); err != nil {
		t.Fatalf("%s: receiver: %v", p.name, err)
	}
	go func() {
		defer close(p.done)
		for !p.stop.Load() {
			p.mu.Lock()
			c := p.rc
			p.mu.Unlock()
			f, err := c.ReadFrame(2 * time.Minute)
			if err != nil {
				c.Close()
				if p.stop.Load() {
					return
				}
				if err := p.rejoin(); err != nil {
					return // reported by the final check
				}
				continue
			}
			if f.Event == "phx_error" && f.Topic == p.room {
				// The node asks for a rejoin (fanout may have lost
				// messages): rejoin with last_id, as phoenix.js does.
				p.resyncs.Add(1)
				c.Close()
				if err := p.rejoin(); err != nil {
					return
				}
				continue
			}
			if f.Event == "new_message" && f.Topic == p.room {
				var m phxtest.Message
				if json.Unmarshal(f.Payload, &m) == nil {
					p.markSeen(m.ID)
				}
			}
		}
	}()
}

func (p *pair) markSeen(id int64) {
	p.mu.Lock()
	if !p.seen[id] {
		now := time.Now()
		if !p.lastSeenAt.IsZero() {
			p.maxGap = max(p.maxGap, now.Sub(p.lastSeenAt))
		}
		p.lastSeenAt = now
	}
	p.seen[id] = true
	p.maxSeen = max(p.maxSeen, id)
	p.mu.Unlock()
}

// rejoin connects the receiver and joins with last_id = the newest id it
// has seen, adding the catch-up to what it saw.
func (p *pair) rejoin() error {
	addrs := p.addrs
	if p.recvAddrs != nil {
		addrs = p.recvAddrs
	}
	c, err := dialRetry(addrs, p.receiver, phxtest.DialOptions{}, 40)
	if err != nil {
		return err
	}
	for try := 0; try < 40; try++ {
		p.mu.Lock()
		last := p.maxSeen
		p.mu.Unlock()
		r, err := c.Join(p.room, map[string]int64{"last_id": last}, wait)
		if err != nil {
			c.Close()
			if c, err = dialRetry(addrs, p.receiver, phxtest.DialOptions{}, 40); err != nil {
				return err
			}
			continue
		}
		if r.Status != "ok" { // e.g. store unavailable: retry
			time.Sleep(backoff(try))
			continue
		}
		page, err := phxtest.ParsePage(r)
		if err != nil {
			return err
		}
		for _, m := range page.Messages {
			p.markSeen(m.ID)
		}
		// The node sends the room's live messages from the moment it
		// subscribes this socket, so some arrive before the join reply
		// (phoenix.js hands them to the channel too); a resync asked
		// for meanwhile means joining again.
		resync := false
		for _, f := range c.Pushes {
			if f.Topic != p.room {
				continue
			}
			switch f.Event {
			case "new_message":
				var m phxtest.Message
				if json.Unmarshal(f.Payload, &m) == nil {
					p.markSeen(m.ID)
					p.mu.Lock()
					p.early++
					p.mu.Unlock()
				}
			case "phx_error":
				resync = true
			}
		}
		c.Pushes = c.Pushes[:0]
		if resync {
			p.resyncs.Add(1)
			c.Close()
			if c, err = dialRetry(addrs, p.receiver, phxtest.DialOptions{}, 40); err != nil {
				return err
			}
			continue
		}
		p.mu.Lock()
		p.rc = c
		p.rejoins++
		p.mu.Unlock()
		return nil
	}
	c.Close()
	return errors.New("rejoin: no ok join")
}

func (p *pair) stopReceiver() {
	p.stop.Store(true)
	p.mu.Lock()
	if p.rc != nil {
		p.rc.Close()
	}
	p.mu.Unlock()
	<-p.done
}

// send posts message i, retrying with the same client id until it is
// acknowledged or the budget runs out. It returns whether it was acked.
func (p *pair) send(i int, budget time.Duration) bool {
	cid := fmt.Sprintf("%s-%d", p.name, i)
	body := "message " + cid
	deadline := time.Now().Add(budget)
	for try := 0; time.Now().Before(deadline); try++ {
		if p.s == nil {
			c, err := dialRetry(p.addrs, p.sender, phxtest.DialOptions{}, 3)
			if err != nil {
				continue
			}
			if r, err := c.Join(p.room, nil, wait); err != nil || r.Status != "ok" {
				c.Close()
				time.Sleep(backoff(try))
				continue
			}
			p.s = c
		}
		m, reason, err := p.s.Send(p.room, body, cid, wait)
		p.s.Pushes = p.s.Pushes[:0]
		switch {
		case err == nil && reason == "":
			p.mu.Lock()
			p.acked[cid] = m.ID
			p.mu.Unlock()
			return true
		case err == nil:
			p.mu.Lock()
			p.errors[reason]++
			p.mu.Unlock()
			time.Sleep(backoff(min(try, 6)))
		default:
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				p.mu.Lock()
				p.timeouts++
				p.mu.Unlock()
			}
			p.s.Close()
			p.s = nil
			time.Sleep(backoff(min(try, 6)))
		}
	}
	return false
}

func (p *pair) closeSender() {
	if p.s != nil {
		p.s.Close()
		p.s = nil
	}
}

// verify checks every acknowledged message of pairs: stored exactly once
// (by client id) in db, and seen by its receiver live or by catch-up. A
// final rejoin with last_id first lets each receiver catch up.
func verify(t *testing.T, db string, pairs []*pair) {
	t.Helper()
	for _, p := range pairs {
		p.stopReceiver()
		p.closeSender()
		p.stop.Store(false)
		if err := p.rejoin(); err != nil {
			t.Errorf("%s: final rejoin: %v", p.name, err)
		}
		p.mu.Lock()
		if p.rc != nil {
			p.rc.Close()
		}
		p.mu.Unlock()
	}
	var ids []string
	for _, p := range pairs {
		for cid := range p.acked {
			ids = append(ids, cid)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	counts, err := phxtest.CountByClientID(ctx, db, ids)
	if err != nil {
		t.Fatalf("count stored messages: %v", err)
	}
	lost, dup, undelivered := 0, 0, 0
	for _, p := range pairs {
		for cid, id := range p.acked {
			switch n := counts[cid]; {
			case n == 0:
				lost++
				t.Errorf("%s: acknowledged message %s (id %d) not stored", p.name, cid, id)
			case n > 1:
				dup++
				t.Errorf("%s: message %s stored %d times", p.name, cid, n)
			}
			if !p.seen[id] {
				undelivered++
				t.Errorf("%s: acknowledged message %s (id %d) never delivered to the receiver", p.name, cid, id)
			}
		}
	}
	ackedChecked.Add(int64(len(ids)))
	lostTotal.Add(int64(lost))
	t.Logf("verified %d acknowledged messages over %d pairs: lost %d, duplicated %d, undelivered %d",
		len(ids), len(pairs), lost, dup, undelivered)
}

func (p *pair) summary() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	keys := make([]string, 0, len(p.errors))
	for k := range p.errors {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b bytes.Buffer
	for _, k := range keys {
		fmt.Fprintf(&b, "%q×%d ", k, p.errors[k])
	}
	return fmt.Sprintf("%s: acked %d, error replies [%s], reply timeouts %d, receiver joins %d (live messages before a join reply: %d)",
		p.name, len(p.acked), b.String(), p.timeouts, p.rejoins, p.early)
}

// ---------------------------------------------------------------- binary node

// proc is an elchat binary serving on addr.
type proc struct {
	cmd  *exec.Cmd
	addr string
	out  *syncBuf
	exit chan error
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.b.Bytes()
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// startProc runs the binary on addr against db and waits for /readyz.
func startProc(t *testing.T, addr, db string, extra ...string) *proc {
	t.Helper()
	args := append([]string{"serve", "--addr", addr, "--secret", string(phxtest.Secret), "--database-url", db,
		"--migrate", "--idle-timeout", "5m", "--log-level", "warn"}, extra...)
	p := &proc{cmd: exec.Command(binPath, args...), addr: addr, out: &syncBuf{}, exit: make(chan error, 1)}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.exit <- p.cmd.Wait() }()
	t.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			p.cmd.Process.Kill() //nolint:errcheck
			select {
			case <-p.exit:
			case <-time.After(wait):
			}
		}
		if t.Failed() {
			t.Logf("node %s output:\n%s", addr, p.out.String())
			if dir := os.Getenv("ELCHAT_FAULT_LOGS"); dir != "" {
				p.out.mu.Lock()
				os.WriteFile(filepath.Join(dir, "node-"+strings.ReplaceAll(addr, ":", "-")+".log"), p.out.b.Bytes(), 0o644) //nolint:errcheck
				p.out.mu.Unlock()
			}
		}
	})
	ok := phxtest.WaitFor(30*time.Second, func() bool {
		resp, err := (&http.Client{Timeout: time.Second}).Get("http://" + addr + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	if !ok {
		t.Fatalf("node %s not ready:\n%s", addr, p.out.String())
	}
	return p
}

func (p *proc) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
}

// waitExit waits for the process to end.
func (p *proc) waitExit(t *testing.T, d time.Duration) {
	t.Helper()
	select {
	case <-p.exit:
	case <-time.After(d):
		t.Fatalf("node %s did not exit within %v:\n%s", p.addr, d, p.out.String())
	}
}
