//go:build linux

package main

// Starting what the bench measures: ElChat nodes (so their pids are known),
// and throwaway PostgreSQL / Redis servers like internal/testenv does.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func freePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func waitTCP(addr string, d time.Duration) error {
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("%s not listening after %v", addr, d)
}

type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) stop(d time.Duration) {
	if p == nil || p.cmd == nil || p.cmd.Process == nil {
		return
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(d):
		p.cmd.Process.Kill()
		<-p.done
	}
}

func (p *proc) alive() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

func startProc(name, logPath string, cred *syscall.Credential, env []string, bin string, args ...string) (*proc, error) {
	lf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, err
	}
	p := &proc{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() { cmd.Wait(); lf.Close(); close(p.done) }()
	return p, nil
}

func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// ---- PostgreSQL ----

type pgServer struct {
	proc *proc
	dir  string
	port int
}

func (p *pgServer) url() string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/elchat?sslmode=disable", p.port)
}

func findPGBin(name string) (string, error) {
	for _, g := range []string{"/usr/lib/postgresql/*/bin/" + name, "/usr/local/pgsql/bin/" + name} {
		m, _ := filepath.Glob(g)
		if len(m) > 0 {
			return m[len(m)-1], nil
		}
	}
	return exec.LookPath(name)
}

func startPostgres(tmp string) (*pgServer, error) {
	initdb, err := findPGBin("initdb")
	if err != nil {
		return nil, fmt.Errorf("initdb not found: %w", err)
	}
	if r, err := filepath.EvalSymlinks(initdb); err == nil {
		initdb = r
	}
	bindir := filepath.Dir(initdb)
	dir, err := os.MkdirTemp(tmp, "pg-")
	if err != nil {
		return nil, err
	}
	var cred *syscall.Credential
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, errors.New("running as root needs a postgres OS user")
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		os.Chown(dir, uid, gid)
		os.Chmod(tmp, 0o755)
	}
	data := filepath.Join(dir, "data")
	cmd := exec.Command(initdb, "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("initdb: %v: %s", err, out)
	}
	port := freePort()
	p, err := startProc("postgres", filepath.Join(tmp, "postgres.log"), cred, nil, filepath.Join(bindir, "postgres"),
		"-D", data, "-p", strconv.Itoa(port), "-k", dir, "-c", "listen_addresses=127.0.0.1",
		"-c", "max_connections=300", "-c", "shared_buffers=512MB", "-c", "fsync=on", "-c", "synchronous_commit=on")
	if err != nil {
		return nil, err
	}
	s := &pgServer{proc: p, dir: dir, port: port}
	if err := waitTCP(fmt.Sprintf("127.0.0.1:%d", port), 30*time.Second); err != nil {
		p.stop(5 * time.Second)
		return nil, fmt.Errorf("postgres: %v\n%s", err, tail(p.log, 20))
	}
	time.Sleep(500 * time.Millisecond)
	cd := exec.Command(filepath.Join(bindir, "createdb"), "-h", "127.0.0.1", "-p", strconv.Itoa(port), "-U", "postgres", "elchat")
	for i := 0; i < 20; i++ {
		out, err := cd.CombinedOutput()
		if err == nil {
			break
		}
		if i == 19 {
			return nil, fmt.Errorf("createdb: %v %s", err, out)
		}
		time.Sleep(300 * time.Millisecond)
		cd = exec.Command(cd.Path, cd.Args[1:]...)
	}
	return s, nil
}

// ---- Redis ----

func startRedis(tmp string) (*proc, string, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, "", fmt.Errorf("redis-server not found: %w", err)
	}
	port := freePort()
	p, err := startProc("redis", filepath.Join(tmp, "redis.log"), nil, nil, bin,
		"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--maxclients", "10000")
	if err != nil {
		return nil, "", err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	if err := waitTCP(addr, 15*time.Second); err != nil {
		p.stop(2 * time.Second)
		return nil, "", err
	}
	return p, "redis://" + addr + "/0", nil
}

// ---- ElChat nodes ----

type nodeOpts struct {
	pprof                                                 bool
	bin, secret, transport, dbURL, redisURL, dataDir, tmp string
	extraEnv                                              []string
}

type node struct {
	idx   int
	addr  string
	paddr string // net/http/pprof side port (--pprof), else ""
	proc  *proc  // nil for --target
	// extPid is the server's pid for --target (--target-pid), 0 if unknown.
	extPid int
	// noMetrics: no Prometheus /metrics to scrape (the floor, a --target).
	noMetrics bool
}

// pid is the server process to read from /proc, 0 when unknown.
func (n *node) pid() int {
	if n.proc != nil {
		return n.proc.pid()
	}
	return n.extPid
}

func (n *node) logPath() string {
	if n.proc != nil {
		return n.proc.log
	}
	return ""
}

func (n *node) alive() bool {
	if n.proc != nil {
		return n.proc.alive()
	}
	if n.extPid > 0 {
		_, err := os.Stat(fmt.Sprintf("/proc/%d", n.extPid))
		return err == nil
	}
	return true
}

// startFloor runs this binary's __floor server in a fresh process on a free
// port: same upgrade, same epoll engine, no hub and no store.
func startFloor(o *opts, idx int) (*node, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", freePort())
	p, err := startProc(fmt.Sprintf("floor-%d", idx), filepath.Join(o.tmp, fmt.Sprintf("floor-%d.log", idx)), nil,
		[]string{"GODEBUG=gctrace=1"}, exe, "__floor", "--addr", addr)
	if err != nil {
		return nil, err
	}
	if err := waitTCP(addr, 20*time.Second); err != nil {
		p.stop(2 * time.Second)
		return nil, fmt.Errorf("floor: %v\n%s", err, tail(p.log, 20))
	}
	return &node{idx: idx, addr: addr, proc: p, noMetrics: true}, nil
}

func startNode(o nodeOpts, idx int) (*node, error) {
	port := freePort()
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	env := []string{
		"ELCHAT_ADDR=" + addr,
		"ELCHAT_SECRET=" + o.secret,
		"ELCHAT_TRANSPORT=" + o.transport,
		"ELCHAT_UPGRADE_RATE=0",
		"ELCHAT_PUSH_RATE=100000",
		"ELCHAT_PUSH_BURST=100000",
		"ELCHAT_MAX_CONNS_PER_USER=0",
		"ELCHAT_MAX_HANDSHAKES=4096",
		"ELCHAT_LOG_LEVEL=warn",
		"ELCHAT_NODE_ID=bench-" + strconv.Itoa(idx),
		// gctrace lines give the live heap when /metrics is not served.
		"GODEBUG=gctrace=1",
	}
	if o.dbURL != "" {
		env = append(env, "ELCHAT_DATABASE_URL="+o.dbURL)
	} else {
		d := filepath.Join(o.tmp, fmt.Sprintf("data-%d", idx))
		os.MkdirAll(d, 0o755)
		env = append(env, "ELCHAT_DATA_DIR="+d)
	}
	if o.redisURL != "" {
		env = append(env, "ELCHAT_REDIS_URL="+o.redisURL)
	}
	paddr := ""
	if o.pprof {
		paddr = fmt.Sprintf("127.0.0.1:%d", freePort())
		env = append(env, "ELCHAT_BENCH_PPROF="+paddr)
	}
	env = append(env, o.extraEnv...)
	p, err := startProc(fmt.Sprintf("elchat-%d", idx), filepath.Join(o.tmp, fmt.Sprintf("elchat-%d.log", idx)), nil, env, o.bin, "serve")
	if err != nil {
		return nil, err
	}
	n := &node{idx: idx, addr: addr, paddr: paddr, proc: p}
	end := time.Now().Add(60 * time.Second)
	for time.Now().Before(end) {
		if !p.alive() {
			return nil, fmt.Errorf("elchat node %d exited:\n%s", idx, tail(p.log, 30))
		}
		resp, err := http.Get("http://" + addr + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return n, nil
			}
		}
		time.Sleep(150 * time.Millisecond)
	}
	p.stop(5 * time.Second)
	return nil, fmt.Errorf("elchat node %d not healthy:\n%s", idx, tail(p.log, 30))
}

func migrate(bin, dbURL, tmp string) error {
	cmd := exec.Command(bin, "migrate")
	cmd.Env = append(os.Environ(), "ELCHAT_DATABASE_URL="+dbURL)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("elchat migrate: %v: %s", err, out)
	}
	return nil
}

// ---- sampling a server process ----

type sample struct {
	At         float64            `json:"t_s"`
	RSSKiB     int64              `json:"rss_kib"`
	CPUTicks   int64              `json:"cpu_ticks"`
	SysTicks   int64              `json:"cpu_sys_ticks"` // stime alone (kernel: accept, epoll, TCP)
	Threads    int64              `json:"threads"`
	Metrics    map[string]float64 `json:"metrics,omitempty"`
	SockMemPgs int64              `json:"sockstat_tcp_mem_pages"`
	TCPInuse   int64              `json:"sockstat_tcp_inuse"`
}

func readStatus(pid int) (rss, threads int64) {
	if pid <= 0 {
		return -1, -1
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1, -1
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) >= 2 && f[0] == "VmRSS:" {
			rss, _ = strconv.ParseInt(f[1], 10, 64)
		}
		if len(f) >= 2 && f[0] == "Threads:" {
			threads, _ = strconv.ParseInt(f[1], 10, 64)
		}
	}
	return
}

// cpuTicks is utime+stime in clock ticks (USER_HZ = 100 on Linux).
func cpuTicks(pid int) int64 {
	if pid <= 0 {
		return -1
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return -1
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	f := strings.Fields(s[i+2:])
	// fields after ")" start at field 3 (state); utime is 14, stime 15.
	u, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return u + st
}

// sysTicks is stime alone, in clock ticks.
func sysTicks(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return -1
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return st
}

func sockstat() (inuse, mem int64) {
	b, _ := os.ReadFile("/proc/net/sockstat")
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "TCP:") {
			f := strings.Fields(l)
			for k := 1; k+1 < len(f); k += 2 {
				v, _ := strconv.ParseInt(f[k+1], 10, 64)
				switch f[k] {
				case "inuse":
					inuse = v
				case "mem":
					mem = v
				}
			}
		}
	}
	return
}

var wantMetrics = []string{"go_memstats_heap_inuse_bytes", "go_goroutines", "process_resident_memory_bytes",
	"process_cpu_seconds_total", "go_memstats_stack_inuse_bytes", "go_memstats_sys_bytes", "go_threads"}

func scrape(addr string) map[string]float64 {
	cl := http.Client{Timeout: 3 * time.Second}
	resp, err := cl.Get("http://" + addr + "/metrics")
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		io.Copy(io.Discard, resp.Body)
		return nil
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		l := sc.Text()
		if strings.HasPrefix(l, "#") {
			continue
		}
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		for _, m := range wantMetrics {
			if f[0] == m {
				v, _ := strconv.ParseFloat(f[1], 64)
				out[m] = v
			}
		}
		if strings.HasPrefix(f[0], "elchat_") && !strings.Contains(f[0], "bucket") {
			v, _ := strconv.ParseFloat(f[len(f)-1], 64)
			out[f[0]] = v
		}
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

func takeSample(n *node, t0 time.Time) sample {
	in, mem := sockstat()
	s := sample{At: time.Since(t0).Seconds(), RSSKiB: -1, CPUTicks: -1, Threads: -1, SockMemPgs: mem, TCPInuse: in}
	if pid := n.pid(); pid > 0 {
		s.RSSKiB, s.Threads = readStatus(pid)
		s.CPUTicks = cpuTicks(pid)
		s.SysTicks = sysTicks(pid)
	}
	if !n.noMetrics {
		s.Metrics = scrape(n.addr)
	}
	return s
}

func smapsRollup(pid int) map[string]int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return nil
	}
	out := map[string]int64{}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) == 3 && f[2] == "kB" {
			v, _ := strconv.ParseInt(f[1], 10, 64)
			out[strings.TrimSuffix(f[0], ":")] = v
		}
	}
	return out
}

var gcLine = regexp.MustCompile(`gc \d+ @[0-9.]+s .*?(\d+)->(\d+)->(\d+) MB`)

// liveHeapMB is the live heap after the last GC, from a gctrace=1 log.
func liveHeapMB(logPath string) (float64, bool) {
	b, err := os.ReadFile(logPath)
	if err != nil {
		return 0, false
	}
	m := gcLine.FindAllSubmatch(b, -1)
	if len(m) == 0 {
		return 0, false
	}
	v, _ := strconv.ParseFloat(string(m[len(m)-1][3]), 64)
	return v, true
}

// fetchProfile saves http://addr/debug/pprof/<what> to path.
func fetchProfile(addr, what, path string, timeout time.Duration) error {
	if addr == "" {
		return errors.New("no pprof endpoint (run with --pprof)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+addr+"/debug/pprof/"+what, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("GET /debug/pprof/%s: %s", what, resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(f, resp.Body)
	return err
}

// pprofTop writes `go tool pprof -top` of a profile next to it.
func pprofTop(bin, prof string, extra ...string) {
	args := append([]string{"tool", "pprof", "-top", "-nodecount=30"}, extra...)
	args = append(args, bin, prof)
	out, err := exec.Command("go", args...).CombinedOutput()
	if err != nil {
		out = append(out, []byte("\n"+err.Error())...)
	}
	name := strings.TrimSuffix(prof, ".pprof")
	os.WriteFile(name+".top.txt", out, 0o644)
}

// goroutines reads the total from /debug/pprof/goroutine?debug=1.
func goroutines(addr string) float64 {
	if addr == "" {
		return -1
	}
	cl := http.Client{Timeout: 10 * time.Second}
	resp, err := cl.Get("http://" + addr + "/debug/pprof/goroutine?debug=1")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	l, _ := br.ReadString('\n')
	var n float64
	if _, err := fmt.Sscanf(l, "goroutine profile: total %g", &n); err != nil {
		return -1
	}
	return n
}

// slabKiB is the kernel slab total (socket, inode, epitem objects live there).
func slabKiB() int64 {
	b, _ := os.ReadFile("/proc/meminfo")
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) >= 2 && f[0] == "Slab:" {
			v, _ := strconv.ParseInt(f[1], 10, 64)
			return v
		}
	}
	return 0
}
