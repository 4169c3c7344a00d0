//go:build linux

// Command elchat-bench is ElChat's load generator and report writer.
//
//	elchat-bench connect  [flags]   N idle authenticated sockets on one node
//	elchat-bench chat     [flags]   P pairs chatting at a set total rate
//	elchat-bench cluster  [flags]   K nodes over Redis (+PostgreSQL): chat, or --big connect
//	elchat-bench baseline [flags]   connect and chat on epoll, then portable
//
// It starts the ElChat node(s) itself (--server, default ./bin/elchat) and,
// when needed, a throwaway PostgreSQL and Redis; clients run in worker
// processes (this binary re-executed) of at most --per-worker sockets each,
// bound to their own 127.0.0.x source addresses. See bench/README.md.
package main

import (
	"crypto/sha256"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"
)

const benchSecret = "elchat-bench-secret-0123456789abcdef"

type opts struct {
	scenario   string
	server     string
	outDir     string
	transport  string
	store      string
	dbURL      string
	conns      int
	pairs      int
	nodes      int
	big        bool
	rate       float64
	perWorker  int
	hb         time.Duration
	hold       time.Duration
	msgRate    float64
	duration   time.Duration
	bodySize   int
	connTO     time.Duration
	maxRun     time.Duration
	keepTmp    bool
	args       []string
	tmp        string
	started    time.Time
	noVerify   bool
	settle     time.Duration
	pprof      bool
	src        string
	resDir     string
	serverInfo string
	floorInfo  string
	commit     string

	// floor and --target
	floor      bool
	rounds     int
	target     string
	targetPid  int
	topic      string
	join       string
	secret     string
	claims     string
	tokensFile string
	tokenParam string
	tAddr      string // resolved ip:port of --target
	tHost      string
	tPath      string
	tQuery     string
	noBind     bool
	redis      *proc // sampled by runConnect when a scenario runs one
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "__worker" {
		if err := runWorker(); err != nil {
			fmt.Fprintln(os.Stderr, "worker:", err)
			os.Exit(1)
		}
		return
	}
	if len(os.Args) > 1 && os.Args[1] == "__floor" {
		if err := runFloor(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "floor:", err)
			os.Exit(1)
		}
		return
	}
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: elchat-bench connect|chat|cluster|baseline [flags]  (-h for flags)")
		os.Exit(2)
	}
	o := &opts{scenario: os.Args[1], args: os.Args, started: time.Now()}
	fs := flag.NewFlagSet(o.scenario, flag.ExitOnError)
	fs.StringVar(&o.server, "server", "./bin/elchat", "path to the elchat binary")
	fs.StringVar(&o.outDir, "out", "bench/results", "results root; each run writes <out>/<timestamp>-<scenario>/")
	fs.StringVar(&o.transport, "transport", "epoll", "ELCHAT_TRANSPORT of the node(s): epoll or portable (baseline runs both)")
	fs.StringVar(&o.store, "store", "", "sqlite (embedded, per node) or postgres (throwaway server); default: sqlite for connect, postgres otherwise")
	fs.StringVar(&o.dbURL, "database-url", "", "use this PostgreSQL instead of starting one")
	fs.IntVar(&o.conns, "conns", 19000, "connect/baseline/cluster --big: connections")
	fs.IntVar(&o.pairs, "pairs", 1000, "chat/cluster/baseline: user pairs (2 sockets each)")
	fs.IntVar(&o.nodes, "nodes", 3, "cluster: ElChat nodes (--big: default 12)")
	fs.BoolVar(&o.big, "big", false, "cluster: connect-only mode over many nodes (shared Redis and PostgreSQL)")
	fs.Float64Var(&o.rate, "rate", 2000, "connection ramp rate, connects+joins per second (total)")
	fs.IntVar(&o.perWorker, "per-worker", 15000, "max sockets per worker process (fd limit 20,000)")
	fs.DurationVar(&o.hb, "hb", 30*time.Second, "heartbeat interval (phoenix.js: 30s)")
	fs.DurationVar(&o.hold, "hold", 35*time.Second, "connect: idle hold after the ramp (heartbeats continue)")
	fs.Float64Var(&o.msgRate, "msg-rate", 5000, "chat: total messages per second offered")
	fs.DurationVar(&o.duration, "duration", 20*time.Second, "chat: sending period")
	fs.IntVar(&o.bodySize, "body", 64, "chat: message body bytes")
	fs.DurationVar(&o.connTO, "conn-timeout", 20*time.Second, "a connect+join slower than this is a failure")
	fs.DurationVar(&o.maxRun, "max-run", 15*time.Minute, "hard bound on the whole run")
	fs.DurationVar(&o.settle, "settle", 3*time.Second, "wait after the ramp before sampling the server")
	fs.BoolVar(&o.keepTmp, "keep-tmp", false, "keep server logs and data (bench/results/tmp)")
	fs.BoolVar(&o.noVerify, "no-verify", false, "chat: skip the history check of acknowledged ids")
	fs.BoolVar(&o.pprof, "pprof", false, "build the server from --src with bench/pprof overlaid (net/http/pprof on a side port) and take CPU/heap profiles")
	fs.StringVar(&o.src, "src", ".", "--pprof: module root to build cmd/elchat from")
	fs.IntVar(&o.rounds, "rounds", 1, "connect: run floor and server alternately this many times (fresh processes each round) and report each round's ratios and their median; the detailed tables show the median round")
	fs.BoolVar(&o.floor, "floor", true, "connect/baseline: run the same ramp and hold against the built-in floor server first (same upgrade, same epoll engine, no hub, no store) and report ElChat ÷ floor; default off with a non-loopback --target")
	fs.StringVar(&o.target, "target", "", "connect: drive this Phoenix Channels v2 server (ws://host:port/socket/websocket) instead of starting ElChat")
	fs.IntVar(&o.targetPid, "target-pid", 0, "--target: its server pid on this box, for RSS and CPU figures from /proc")
	fs.StringVar(&o.topic, "topic", "user:{id}", "topic each socket joins; {id} = the socket's user id")
	fs.StringVar(&o.join, "join", "{}", "join payload (JSON) template; {id}, {now}, {exp} as in --claims")
	fs.StringVar(&o.secret, "secret", "", "HS256 secret to mint tokens with --claims (default: ElChat's bench secret, tokens by pkg/auth.Mint)")
	fs.StringVar(&o.claims, "claims", "", `JWT claims template signed HS256 with --secret, e.g. '{"sub":"{id}","exp":{exp}}' ({id} user id, {now} Unix time, {exp} now+2h)`)
	fs.StringVar(&o.tokensFile, "tokens-file", "", "read tokens from this file, one per line (line u for user u, 1-based)")
	fs.StringVar(&o.tokenParam, "token-param", "token", `query parameter carrying the token ("-": send no token)`)
	fs.Parse(os.Args[2:])
	if err := parseTarget(o, fs); err != nil {
		fatal(err)
	}
	if o.big && !flagSet(fs, "nodes") {
		o.nodes = 12
	}
	if o.big && !flagSet(fs, "conns") {
		o.conns = 200000
	}
	if o.store == "" {
		o.store = "postgres"
		// cluster --big shares PostgreSQL: ElChat refuses Redis with the
		// embedded store (per-node message ids would collide).
		if o.scenario == "connect" {
			o.store = "sqlite"
		}
	}
	var err error
	o.tmp, err = os.MkdirTemp("", "elchat-bench-")
	if err != nil {
		fatal(err)
	}
	os.Chmod(o.tmp, 0o755)
	if !o.keepTmp {
		defer os.RemoveAll(o.tmp)
	}
	o.resDir = filepath.Join(o.outDir, o.started.UTC().Format("20060102-150405")+"-"+o.scenario)
	if err := os.MkdirAll(o.resDir, 0o755); err != nil {
		fatal(err)
	}
	if err := snapshotServer(o); err != nil {
		fatal(err)
	}
	if o.target != "" && o.scenario != "connect" {
		fatal(fmt.Errorf("--target works with the connect scenario only"))
	}
	var res *result
	switch o.scenario {
	case "connect":
		res, err = scenarioConnect(o)
	case "chat":
		res, err = scenarioChat(o)
	case "cluster":
		res, err = scenarioCluster(o)
	case "baseline":
		res, err = scenarioBaseline(o)
	default:
		err = fmt.Errorf("unknown scenario %q", o.scenario)
	}
	if res != nil {
		dir, werr := writeResults(o, res)
		if werr != nil {
			fmt.Fprintln(os.Stderr, "write results:", werr)
		} else {
			fmt.Println("results:", dir)
			b, _ := os.ReadFile(filepath.Join(dir, "summary.md"))
			fmt.Println(string(b))
		}
	}
	if err != nil {
		fatal(err)
	}
}

func flagSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) {
		if f.Name == name {
			set = true
		}
	})
	return set
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "elchat-bench:", err)
	os.Exit(1)
}

// ---- results ----

type result struct {
	Scenario string            `json:"scenario"`
	Sections []section         `json:"sections"`
	Notes    []string          `json:"notes"`
	Plots    map[string]string `json:"-"`
	Raw      map[string]any    `json:"raw"`
}

type section struct {
	Title string     `json:"title"`
	Rows  [][]string `json:"rows"` // first row is the header
}

func (r *result) note(f string, a ...any) { r.Notes = append(r.Notes, fmt.Sprintf(f, a...)) }

func machine() map[string]string {
	m := map[string]string{"nproc": fmt.Sprint(runtime.NumCPU()), "go": runtime.Version()}
	var u syscall.Utsname
	syscall.Uname(&u)
	b := make([]byte, 0, 65)
	for _, c := range u.Release {
		if c == 0 {
			break
		}
		b = append(b, byte(c))
	}
	m["kernel"] = string(b)
	var si syscall.Sysinfo_t
	syscall.Sysinfo(&si)
	m["memory"] = fmt.Sprintf("%.1f GiB", float64(si.Totalram)*float64(si.Unit)/(1<<30))
	if out, err := exec.Command("sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").Output(); err == nil {
		m["cpu"] = strings.TrimSpace(string(out))
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		f := strings.Fields(string(b))
		if len(f) >= 3 {
			m["loadavg"] = strings.Join(f[:3], " ")
		}
	}
	var rl syscall.Rlimit
	syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl)
	m["nofile"] = fmt.Sprintf("%d/%d", rl.Cur, rl.Max)
	return m
}

func writeResults(o *opts, r *result) (string, error) {
	dir := o.resDir
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	mach := machine()
	var b strings.Builder
	fmt.Fprintf(&b, "# elchat-bench %s — %s\n\n", o.scenario, o.started.UTC().Format(time.RFC3339))
	fmt.Fprintf(&b, "Command: `%s`\n\n", strings.Join(o.args, " "))
	fmt.Fprintf(&b, "- **Server**: %s\n", o.serverInfo)
	if o.floorInfo != "" {
		fmt.Fprintf(&b, "- **Floor**: %s\n", o.floorInfo)
	}
	fmt.Fprintf(&b, "- **Commit** (git HEAD of %s): %s\n", o.src, o.commit)
	fmt.Fprintf(&b, "- **Box**: %s, %s cores, kernel %s, memory %s, %s, nofile %s, load average at start %s\n",
		mach["cpu"], mach["nproc"], mach["kernel"], mach["memory"], mach["go"], mach["nofile"], mach["loadavg"])
	fmt.Fprintf(&b, "- Run took %.0f s.\n\n", time.Since(o.started).Seconds())
	for _, s := range r.Sections {
		fmt.Fprintf(&b, "## %s\n\n", s.Title)
		for i, row := range s.Rows {
			fmt.Fprintf(&b, "| %s |\n", strings.Join(row, " | "))
			if i == 0 {
				fmt.Fprintf(&b, "|%s\n", strings.Repeat("---|", len(row)))
			}
		}
		b.WriteString("\n")
	}
	if len(r.Notes) > 0 {
		b.WriteString("## Notes\n\n")
		for _, n := range r.Notes {
			fmt.Fprintf(&b, "- %s\n", n)
		}
		b.WriteString("\n")
	}
	profs, _ := filepath.Glob(filepath.Join(dir, "*.pprof"))
	if len(profs) > 0 {
		b.WriteString("## Profiles (server built with the bench/pprof overlay)\n\n")
		for _, p := range profs {
			if strings.HasPrefix(filepath.Base(p), "heap-") {
				pprofTop(o.server, p, "-sample_index=inuse_space")
			} else {
				pprofTop(o.server, p, "-cum")
			}
			t := strings.TrimSuffix(filepath.Base(p), ".pprof") + ".top.txt"
			fmt.Fprintf(&b, "- `%s` → [%s](%s)\n", filepath.Base(p), t, t)
		}
		b.WriteString("\n")
	}
	if len(r.Plots) > 0 {
		b.WriteString("## Plots\n\n")
		for _, name := range sortedKeys(r.Plots) {
			os.WriteFile(filepath.Join(dir, name), []byte(r.Plots[name]), 0o644)
			fmt.Fprintf(&b, "![%s](%s)\n\n", name, name)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "summary.md"), []byte(b.String()), 0o644); err != nil {
		return "", err
	}
	raw := map[string]any{"server": o.serverInfo, "scenario": r.Scenario, "command": o.args, "machine": mach, "sections": r.Sections, "notes": r.Notes, "data": r.Raw}
	jb, err := json.MarshalIndent(raw, "", "  ")
	if err != nil {
		jb = []byte(fmt.Sprintf("{\"error\": %q}", err.Error()))
	}
	return dir, os.WriteFile(filepath.Join(dir, "figures.json"), jb, 0o644)
}

const naVal = -1

func f1(v float64) string {
	if v == naVal || math.IsNaN(v) || math.IsInf(v, 0) {
		return "n/a"
	}
	return fmt.Sprintf("%.1f", v)
}
func f2(v float64) string {
	if v == naVal || math.IsNaN(v) || math.IsInf(v, 0) {
		return "n/a"
	}
	return fmt.Sprintf("%.2f", v)
}

func ratio(a, b float64) string {
	if b == 0 || a == naVal || b == naVal || math.IsNaN(a) || math.IsNaN(b) {
		return "n/a"
	}
	return fmt.Sprintf("%.2f×", a/b)
}

// snapshotServer copies (or, with --pprof, builds) the server binary into
// the run's temp dir, so that rebuilding bin/elchat during a run
// cannot change what is measured; its sha256 goes into the summary.
func snapshotServer(o *opts) error {
	rev, _ := exec.Command("git", "-C", o.src, "log", "-1", "--format=%H %s").Output()
	o.commit = strings.TrimSpace(string(rev))
	if st, _ := exec.Command("git", "-C", o.src, "status", "--porcelain", "--untracked-files=no").Output(); len(st) > 0 {
		o.commit += " (work tree has uncommitted changes)"
	}
	if o.floor {
		if exe, err := os.Executable(); err == nil {
			b, _ := os.ReadFile(exe)
			sum := sha256.Sum256(b)
			o.floorInfo = fmt.Sprintf("`elchat-bench __floor` (this binary, sha256 %x): gobwas/ws upgrade + pkg/transport epoll engine, ok reply to every frame, no auth/hub/store", sum[:6])
		}
	}
	if o.target != "" {
		o.serverInfo = "target " + o.target
		if o.targetPid > 0 {
			exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", o.targetPid))
			o.serverInfo += fmt.Sprintf(" (pid %d, %s)", o.targetPid, exe)
		} else {
			o.serverInfo += " (no --target-pid: server RSS/CPU figures omitted)"
		}
		return nil
	}
	dst := filepath.Join(o.tmp, "elchat")
	if o.pprof {
		src, _ := filepath.Abs(o.src)
		ov := map[string]any{"Replace": map[string]string{
			filepath.Join(src, "cmd/elchat/zz_bench_pprof.go"): filepath.Join(src, "bench/pprof/pprof.go.txt")}}
		ob, _ := json.Marshal(ov)
		ovf := filepath.Join(o.tmp, "overlay.json")
		os.WriteFile(ovf, ob, 0o644)
		cmd := exec.Command("go", "build", "-overlay", ovf, "-o", dst, "./cmd/elchat")
		cmd.Dir = src
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("build server with pprof overlay: %v: %s", err, out)
		}
	} else {
		b, err := os.ReadFile(o.server)
		if err != nil {
			return err
		}
		if err := os.WriteFile(dst, b, 0o755); err != nil {
			return err
		}
	}
	b, _ := os.ReadFile(dst)
	sum := sha256.Sum256(b)
	o.serverInfo = fmt.Sprintf("%s (sha256 %x, pprof overlay %v)", o.server, sum[:6], o.pprof)
	o.server = dst
	return nil
}

// parseTarget checks --target and the client templates and resolves the
// target to the IPv4 address the workers dial.
func parseTarget(o *opts, fs *flag.FlagSet) error {
	if o.tokensFile != "" && o.scenario != "connect" {
		return fmt.Errorf("--tokens-file works with the connect scenario only (line u for user u)")
	}
	if o.tokensFile != "" && o.claims != "" {
		return fmt.Errorf("--tokens-file and --claims exclude each other")
	}
	if !json.Valid([]byte(fillTemplate(o.join, "1"))) {
		return fmt.Errorf("--join is not JSON once filled in: %s", o.join)
	}
	if o.claims != "" && !json.Valid([]byte(fillTemplate(o.claims, "1"))) {
		return fmt.Errorf("--claims is not JSON once filled in: %s", o.claims)
	}
	if o.claims != "" && o.target != "" && o.secret == "" {
		return fmt.Errorf("--claims needs --secret with --target")
	}
	if o.target == "" {
		return nil
	}
	u, err := url.Parse(o.target)
	if err != nil {
		return fmt.Errorf("--target: %w", err)
	}
	if u.Scheme != "ws" {
		return fmt.Errorf("--target: only ws:// (the workers speak plain TCP), got %q", u.Scheme)
	}
	port := u.Port()
	if port == "" {
		port = "80"
	}
	ips, err := net.LookupIP(u.Hostname())
	if err != nil {
		return fmt.Errorf("--target: %w", err)
	}
	var ip net.IP
	for _, x := range ips {
		if x.To4() != nil {
			ip = x.To4()
			break
		}
	}
	if ip == nil {
		return fmt.Errorf("--target: %s has no IPv4 address", u.Hostname())
	}
	o.tAddr = net.JoinHostPort(ip.String(), port)
	o.tHost, o.tPath, o.tQuery = u.Host, u.Path, u.RawQuery
	if o.tPath == "" {
		o.tPath = "/socket/websocket"
	}
	o.noBind = !ip.IsLoopback()
	if o.noBind && !flagSet(fs, "floor") {
		o.floor = false // a floor on this box is no reference for another box
	}
	return nil
}

// client is the protocol part of the workers' config.
func (o *opts) client() workerConfig {
	c := workerConfig{Host: o.tHost, Path: o.tPath, Query: o.tQuery, TokenParam: o.tokenParam, TopicT: o.topic, JoinT: o.join}
	switch {
	case o.tokensFile != "":
		c.TokenMode, c.TokensFile = "file", o.tokensFile
		if abs, err := filepath.Abs(o.tokensFile); err == nil {
			c.TokensFile = abs
		}
	case o.claims != "":
		c.TokenMode, c.ClaimsT = "hs256", o.claims
	case o.target != "" && o.secret == "":
		c.TokenMode = "none"
	}
	if c.TopicT == "user:{id}" {
		c.TopicT = ""
	}
	if c.JoinT == "{}" {
		c.JoinT = ""
	}
	return c
}

// serverSecret is what the started nodes verify tokens with.
func (o *opts) serverSecret() string {
	if o.secret != "" {
		return o.secret
	}
	return benchSecret
}
