//go:build linux

package main

// The coordinator side of the workers: spawn (re-exec with the worker
// flag), read their JSON-line reports, aggregate, drive phases, print a
// live progress line.

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

type wproc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	done  chan struct{}
	mu    sync.Mutex
	last  report
	seen  map[string]bool
}

type fleet struct {
	ws     []*wproc
	t0     time.Time
	tty    bool
	lastUp int
	lastT  time.Time
	label  string
}

type fleetSpec struct {
	scenario    string
	addrs       []string
	total       int // connections (connect) or pairs (chat)
	perWorker   int // max connections per worker
	rate        float64
	hb, hbTO    time.Duration
	connTO      time.Duration
	msgRate     float64
	duration    time.Duration
	bodySize    int
	deadline    time.Time
	firstUser   int64
	firstIPByte int
	// client carries the protocol fields of workerConfig (Host, Path,
	// Query, TokenParam, TokenMode, ClaimsT, TokensFile, TopicT, JoinT).
	client workerConfig
	secret string
	noBind bool // target is not on loopback: no 127.0.0.x source addresses
}

func spawnFleet(s fleetSpec, label string) (*fleet, error) {
	connsPerUnit := 1
	if s.scenario == "chat" {
		connsPerUnit = 2
	}
	w := (s.total*connsPerUnit + s.perWorker - 1) / s.perWorker
	if w < 1 {
		w = 1
	}
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	st, _ := os.Stdout.Stat()
	f := &fleet{t0: time.Now(), tty: st.Mode()&os.ModeCharDevice != 0, lastT: time.Now(), label: label}
	next := 0
	for i := 0; i < w; i++ {
		cnt := s.total / w
		if i < s.total%w {
			cnt++
		}
		ipb := s.firstIPByte + 2*i
		if ipb+1 > 254 {
			return nil, fmt.Errorf("too many workers for 127.0.0.x source addresses")
		}
		cfg := s.client
		cfg.ID, cfg.Scenario, cfg.Addrs, cfg.Secret = i, s.scenario, s.addrs, s.secret
		if cfg.Secret == "" {
			cfg.Secret = benchSecret
		}
		if !s.noBind {
			cfg.SrcIPs = []string{fmt.Sprintf("127.0.0.%d", ipb), fmt.Sprintf("127.0.0.%d", ipb+1)}
		}
		cfg.Count, cfg.Rate, cfg.MaxInflight, cfg.HB, cfg.HBTimeout = cnt, s.rate/float64(w), 1000, s.hb, s.hbTO
		cfg.ConnTimeout, cfg.MsgRate, cfg.Duration, cfg.BodySize = s.connTO, s.msgRate/float64(w), s.duration, s.bodySize
		cfg.Deadline = s.deadline
		if s.scenario == "chat" {
			cfg.FirstPair = int64(next)
		} else {
			cfg.FirstUser = s.firstUser + int64(next)
		}
		next += cnt
		b, _ := json.Marshal(cfg)
		cmd := exec.Command(exe, "__worker")
		cmd.Env = append(os.Environ(), "ELCHAT_BENCH_WORKER="+string(b), "GOMAXPROCS=1")
		cmd.Stderr = os.Stderr
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		in, _ := cmd.StdinPipe()
		out, _ := cmd.StdoutPipe()
		if err := cmd.Start(); err != nil {
			return nil, err
		}
		wp := &wproc{cmd: cmd, stdin: in, done: make(chan struct{}), seen: map[string]bool{}}
		go func() {
			sc := bufio.NewScanner(out)
			sc.Buffer(make([]byte, 1<<20), 64<<20)
			for sc.Scan() {
				var r report
				if json.Unmarshal(sc.Bytes(), &r) != nil {
					continue
				}
				wp.mu.Lock()
				wp.last = r
				wp.seen[r.K] = true
				wp.mu.Unlock()
			}
			cmd.Wait()
			close(wp.done)
		}()
		f.ws = append(f.ws, wp)
	}
	return f, nil
}

func (f *fleet) send(cmd string) {
	for _, w := range f.ws {
		io.WriteString(w.stdin, cmd+"\n")
	}
}

type agg struct {
	report
	conn, ack, e2e, hb *hist
	reasons            map[string]int
}

func (f *fleet) aggregate() agg {
	a := agg{conn: &hist{}, ack: &hist{}, e2e: &hist{}, hb: &hist{}, reasons: map[string]int{}}
	for _, w := range f.ws {
		w.mu.Lock()
		r := w.last
		w.mu.Unlock()
		a.Target += r.Target
		a.Started += r.Started
		a.Up += r.Up
		a.Fail += r.Fail
		a.Drop += r.Drop
		a.Inflight += r.Inflight
		a.HBSent += r.HBSent
		a.HBOK += r.HBOK
		a.HBFail += r.HBFail
		a.Sent += r.Sent
		a.Skipped += r.Skipped
		a.Acked += r.Acked
		a.AckErr += r.AckErr
		a.Recv += r.Recv
		a.VerChecked += r.VerChecked
		a.VerMissing += r.VerMissing
		a.VerPages += r.VerPages
		a.VerErr += r.VerErr
		for k, v := range r.Reasons {
			a.reasons[k] += v
		}
		a.conn.merge(histFromSparse(r.Conn))
		a.ack.merge(histFromSparse(r.Ack))
		a.e2e.merge(histFromSparse(r.E2E))
		a.hb.merge(histFromSparse(r.HBH))
	}
	return a
}

func (f *fleet) progress() {
	a := f.aggregate()
	now := time.Now()
	dt := now.Sub(f.lastT).Seconds()
	rate := 0.0
	if dt > 0 {
		rate = float64(a.Up-f.lastUp) / dt
	}
	f.lastUp, f.lastT = a.Up, now
	line := fmt.Sprintf("[%s %5.0fs] up %d/%d fail %d drop %d inflight %d rate %.0f/s conn p50 %.1fms p99 %.1fms | hb %d/%d fail %d",
		f.label, now.Sub(f.t0).Seconds(), a.Up, a.Target, a.Fail, a.Drop, a.Inflight, rate, a.conn.q(0.5), a.conn.q(0.99), a.HBOK, a.HBSent, a.HBFail)
	if a.Sent > 0 {
		line += fmt.Sprintf(" | msgs sent %d acked %d e2e p50 %.1fms p99 %.1fms", a.Sent, a.Acked, a.e2e.q(0.5), a.e2e.q(0.99))
	}
	if f.tty {
		fmt.Fprintf(os.Stdout, "\r\033[K%s", line)
	} else {
		fmt.Fprintln(os.Stdout, line)
	}
}

// wait blocks until every worker reported kind, or d passes; every
// second it prints progress and calls tick.
func (f *fleet) wait(kind string, d time.Duration, tick func()) bool {
	end := time.Now().Add(d)
	lastP, lastTick := time.Time{}, time.Time{}
	interval := time.Second
	if !f.tty {
		interval = 5 * time.Second
	}
	for time.Now().Before(end) {
		all := true
		for _, w := range f.ws {
			w.mu.Lock()
			ok := w.seen[kind]
			w.mu.Unlock()
			select {
			case <-w.done:
				if !ok {
					f.progress()
					fmt.Println()
					return false
				}
			default:
			}
			if !ok {
				all = false
			}
		}
		if time.Since(lastP) >= interval {
			lastP = time.Now()
			f.progress()
		}
		if tick != nil && time.Since(lastTick) >= time.Second {
			lastTick = time.Now()
			tick()
		}
		if all && kind != "" {
			f.progress()
			if f.tty {
				fmt.Println()
			}
			return true
		}
		time.Sleep(100 * time.Millisecond)
	}
	if f.tty {
		fmt.Println()
	}
	return kind == ""
}

// hold runs for d, printing progress and calling tick.
func (f *fleet) hold(d time.Duration, tick func()) { f.wait("", d, tick) }

// finish asks workers to quit and collects their final reports.
func (f *fleet) finish() agg {
	f.send("quit")
	deadline := time.After(60 * time.Second)
	for _, w := range f.ws {
		select {
		case <-w.done:
		case <-deadline:
			w.cmd.Process.Kill()
			<-w.done
		}
	}
	return f.aggregate()
}

func (a agg) reasonText() string {
	if len(a.reasons) == 0 {
		return "none"
	}
	var parts []string
	for _, k := range sortedKeys(a.reasons) {
		parts = append(parts, fmt.Sprintf("%s ×%d", k, a.reasons[k]))
	}
	return strings.Join(parts, "; ")
}

// cpuTicks sums utime+stime of the worker processes.
func (f *fleet) cpuTicks() int64 {
	var t int64
	for _, w := range f.ws {
		if v := cpuTicks(w.cmd.Process.Pid); v > 0 {
			t += v
		}
	}
	return t
}

// boxTicks is the busy time of all CPUs (/proc/stat), in ticks.
func boxTicks() int64 {
	b, _ := os.ReadFile("/proc/stat")
	l := strings.SplitN(string(b), "\n", 2)[0]
	f := strings.Fields(l)
	var t int64
	for k, v := range f[1:] {
		if k == 3 || k == 4 { // idle, iowait
			continue
		}
		var x int64
		fmt.Sscan(v, &x)
		t += x
	}
	return t
}

// rssKiB sums VmRSS of the worker processes.
func (f *fleet) rssKiB() int64 {
	var t int64
	for _, w := range f.ws {
		if v, _ := readStatus(w.cmd.Process.Pid); v > 0 {
			t += v
		}
	}
	return t
}
