//go:build linux

package main

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"
)

type timelinePt struct {
	Up     int     `json:"up"`
	RSSKiB int64   `json:"rss_delta_kib"`
	T      float64 `json:"t_s"`
}

type nodeFig struct {
	Node              int     `json:"node"`
	Conns             int     `json:"conns"`
	Before            sample  `json:"before"`
	After             sample  `json:"after_ramp"`
	End               sample  `json:"end"`
	RSSPerConnKiB     float64 `json:"rss_per_conn_kib"`
	RSSPerConnEndKiB  float64 `json:"rss_per_conn_end_kib"`
	HeapPerConnKiB    float64 `json:"heap_inuse_per_conn_kib"`
	GoroutinesPerConn float64 `json:"goroutines_per_conn"`
	CPUusPerConn      float64 `json:"cpu_us_per_connect_join"`
	// CPUusPerConnNet is CPUusPerConn less what the heartbeats answered
	// during the ramp cost at the hold's rate: over a long ramp the
	// sockets already up make much of a node's CPU, and that is an idle
	// socket's price, not a connect's.
	CPUusPerConnNet float64 `json:"cpu_us_per_connect_join_net_of_heartbeats"`
	SysUsPerConn    float64 `json:"cpu_sys_us_per_connect_join"`
	// CPU per heartbeat answered during the hold, the node's share of the
	// heartbeats being its share of the sockets: what an idle socket costs.
	HoldCPUusPerHB  float64          `json:"hold_cpu_us_per_heartbeat"`
	HoldSysUsPerHB  float64          `json:"hold_cpu_sys_us_per_heartbeat"`
	Smaps           map[string]int64 `json:"smaps_rollup_kib,omitempty"`
	Pprof           string           `json:"pprof,omitempty"`
	HeapFromGCTrace bool             `json:"heap_from_gctrace,omitempty"`
	liveHeap0       float64
	goroutines0     float64
}

type connectFig struct {
	Label            string         `json:"label"`
	Transport        string         `json:"transport"`
	Conns            int            `json:"conns"`
	Up               int            `json:"up_after_ramp"`
	UpEnd            int            `json:"up_end"`
	Fail             int            `json:"fail"`
	Drop             int            `json:"dropped_after_ramp"`
	HBSent           uint64         `json:"hb_sent"`
	HBOK             uint64         `json:"hb_ok"`
	HBFail           uint64         `json:"hb_unanswered"`
	RampS            float64        `json:"ramp_s"`
	Rate             float64        `json:"connect_rate_per_s"`
	Conn             latSummary     `json:"connect_join_latency"`
	HB               latSummary     `json:"heartbeat_latency"`
	SockMemPerConnKB float64        `json:"kernel_tcp_mem_per_pair_kib"`
	SlabPerConnKB    float64        `json:"kernel_slab_per_pair_kib"`
	Nodes            []nodeFig      `json:"nodes"`
	Reasons          map[string]int `json:"failure_reasons"`
	Timeline         []timelinePt   `json:"timeline"`
	// The per-socket memory budget, after the ramp (+ --settle).
	GenRSSKiB          int64   `json:"generator_rss_kib"`
	GenRSSPerConnKiB   float64 `json:"generator_rss_per_socket_kib"`
	RedisRSSPerConnKiB float64 `json:"redis_rss_per_socket_kib"`
	HasPid             bool    `json:"server_pid_known"`
	// The CPU budget of an idle socket: heartbeats answered during the
	// hold, and the generator's and the whole box's CPU per heartbeat.
	HoldHB         uint64  `json:"hold_heartbeats"`
	HoldGenUsPerHB float64 `json:"hold_generator_cpu_us_per_heartbeat"`
	HoldBoxUsPerHB float64 `json:"hold_box_cpu_us_per_heartbeat"`
	connH, hbH     *hist
}

type chatFig struct {
	Label      string         `json:"label"`
	Transport  string         `json:"transport"`
	Pairs      int            `json:"pairs"`
	Nodes      int            `json:"nodes"`
	Up         int            `json:"sockets_up"`
	Fail       int            `json:"connect_fail"`
	Drop       int            `json:"dropped"`
	Offered    float64        `json:"offered_msgs_per_s"`
	Sent       uint64         `json:"sent"`
	Skipped    uint64         `json:"skipped"`
	Acked      uint64         `json:"acked"`
	AckErr     uint64         `json:"ack_errors"`
	Recv       uint64         `json:"broadcasts_received_by_peer"`
	WindowS    float64        `json:"send_window_s"`
	StoredPerS float64        `json:"stored_msgs_per_s"`
	E2E        latSummary     `json:"e2e_latency"`
	Ack        latSummary     `json:"ack_latency"`
	VerChecked uint64         `json:"verify_checked"`
	VerMissing uint64         `json:"verify_missing"`
	VerPages   uint64         `json:"verify_pages"`
	VerErr     uint64         `json:"verify_errors"`
	HBFail     uint64         `json:"hb_unanswered"`
	CPUPerMsg  []float64      `json:"server_cpu_us_per_msg_per_node"`
	CPUPct     []float64      `json:"server_cpu_pct_per_node"`
	GenCPUPct  float64        `json:"generator_cpu_pct"`
	OtherCPU   float64        `json:"box_cpu_pct_other"`
	Reasons    map[string]int `json:"failure_reasons"`
	e2eH, ackH *hist
}

func (o *opts) deadline() time.Time { return o.started.Add(o.maxRun) }

func (o *opts) spec(scn string, addrs []string, total int) fleetSpec {
	return fleetSpec{scenario: scn, addrs: addrs, total: total, perWorker: o.perWorker, rate: o.rate, hb: o.hb,
		// phoenix.js closes the socket when a heartbeat is still unanswered at the next one
		hbTO: o.hb, connTO: o.connTO, msgRate: o.msgRate, duration: o.duration, bodySize: o.bodySize,
		deadline: o.deadline(), firstUser: 1, firstIPByte: 2, client: o.client(), secret: o.serverSecret(), noBind: o.noBind}
}

func addrsOf(ns []*node) []string {
	var a []string
	for _, n := range ns {
		a = append(a, n.addr)
	}
	return a
}

func stopNodes(ns []*node) {
	for _, n := range ns {
		n.proc.stop(30 * time.Second)
	}
}

func startNodes(o *opts, k int, transport, dbURL, redisURL string) ([]*node, error) {
	var ns []*node
	var env []string
	if k > runtime.NumCPU() {
		// More nodes than cores (the file limit makes a big run use
		// dozens): with a P per core each, the Go schedulers of idle
		// nodes spin and wake each other's threads for every event, and
		// the box spends its CPU switching between them.
		env = append(env, "GOMAXPROCS=1")
	}
	for i := 0; i < k; i++ {
		n, err := startNode(nodeOpts{pprof: o.pprof, bin: o.server, secret: o.serverSecret(), transport: transport, dbURL: dbURL, redisURL: redisURL, tmp: o.tmp, extraEnv: env}, i)
		if err != nil {
			stopNodes(ns)
			return nil, err
		}
		ns = append(ns, n)
	}
	return ns, nil
}

func checkAlive(ns []*node) error {
	for _, n := range ns {
		if !n.alive() {
			return fmt.Errorf("node %d died:\n%s", n.idx, tail(n.logPath(), 30))
		}
	}
	return nil
}

func metric(s sample, k string) (float64, bool) {
	if s.Metrics == nil {
		return 0, false
	}
	v, ok := s.Metrics[k]
	return v, ok
}

// runConnect ramps n sockets (users 1..n, user u on node u%K), holds them,
// and measures every node.
func runConnect(o *opts, ns []*node, n int, label, transport string) (*connectFig, error) {
	t0 := time.Now()
	fig := &connectFig{Label: label, Transport: transport, Conns: n, HasPid: true, RedisRSSPerConnKiB: nan()}
	for _, nd := range ns {
		if nd.pid() <= 0 {
			fig.HasPid = false
		}
		h0, _ := liveHeapMB(nd.logPath())
		fig.Nodes = append(fig.Nodes, nodeFig{Node: nd.idx, Before: takeSample(nd, t0), liveHeap0: h0, goroutines0: goroutines(nd.paddr)})
	}
	for u := 1; u <= n; u++ {
		fig.Nodes[u%len(ns)].Conns++
	}
	_, memBefore := sockstat()
	slab0 := slabKiB()
	rss0 := int64(0)
	for _, nf := range fig.Nodes {
		rss0 += nf.Before.RSSKiB
	}
	redis0 := int64(-1)
	if o.redis != nil {
		redis0, _ = readStatus(o.redis.pid())
	}
	f, err := spawnFleet(o.spec("connect", addrsOf(ns), n), label)
	if err != nil {
		return nil, err
	}
	timeline := func() {
		if !fig.HasPid {
			return
		}
		var rss int64
		for _, nd := range ns {
			r, _ := readStatus(nd.pid())
			rss += r
		}
		a := f.aggregate()
		fig.Timeline = append(fig.Timeline, timelinePt{Up: a.Up, RSSKiB: rss - rss0, T: time.Since(t0).Seconds()})
	}
	rampStart := time.Now()
	profDone := cpuProfile(o, ns, label+"-ramp", time.Duration(float64(n)/o.rate*float64(time.Second)))
	ok := f.wait("ramped", o.maxRun/2, timeline)
	fig.RampS = time.Since(rampStart).Seconds()
	<-profDone
	a := f.aggregate()
	fig.Up = a.Up
	fig.Rate = float64(a.Up) / fig.RampS
	if !ok {
		f.finish()
		return fig, fmt.Errorf("ramp did not finish: up %d fail %d: %s", a.Up, a.Fail, a.reasonText())
	}
	time.Sleep(o.settle)
	timeline()
	_, memAfter := sockstat()
	fig.SockMemPerConnKB = float64(memAfter-memBefore) * 4096 / 1024 / float64(max(a.Up, 1))
	fig.SlabPerConnKB = float64(slabKiB()-slab0) / float64(max(a.Up, 1))
	fig.GenRSSKiB = f.rssKiB()
	fig.GenRSSPerConnKiB = float64(fig.GenRSSKiB) / float64(max(a.Up, 1))
	if redis0 > 0 {
		if r1, _ := readStatus(o.redis.pid()); r1 > 0 {
			fig.RedisRSSPerConnKiB = float64(r1-redis0) / float64(max(a.Up, 1))
		}
	}
	for i, nd := range ns {
		nf := &fig.Nodes[i]
		nf.After = takeSample(nd, t0)
		c := float64(max(nf.Conns, 1))
		nf.RSSPerConnKiB = float64(nf.After.RSSKiB-nf.Before.RSSKiB) / c
		nf.CPUusPerConn = float64(nf.After.CPUTicks-nf.Before.CPUTicks) * 1e4 / c
		nf.SysUsPerConn = float64(nf.After.SysTicks-nf.Before.SysTicks) * 1e4 / c
		if nd.pid() <= 0 {
			nf.RSSPerConnKiB, nf.CPUusPerConn, nf.SysUsPerConn = nan(), nan(), nan()
		}
		if h1, ok := metric(nf.After, "go_memstats_heap_inuse_bytes"); ok {
			h0, _ := metric(nf.Before, "go_memstats_heap_inuse_bytes")
			nf.HeapPerConnKiB = (h1 - h0) / 1024 / c
			g1, _ := metric(nf.After, "go_goroutines")
			g0, _ := metric(nf.Before, "go_goroutines")
			nf.GoroutinesPerConn = (g1 - g0) / c
		} else if h1, ok := liveHeapMB(nd.logPath()); ok {
			nf.HeapPerConnKiB = (h1 - nf.liveHeap0) * 1024 / c
			nf.GoroutinesPerConn = nan()
			nf.HeapFromGCTrace = true
		} else {
			nf.HeapPerConnKiB, nf.GoroutinesPerConn = nan(), nan()
		}
		nf.Smaps = smapsRollup(nd.pid())
		if len(ns) <= 3 {
			pp := filepath.Join(o.resDir, fmt.Sprintf("heap-%s-node%d.pprof", label, nd.idx))
			if err := fetchProfile(nd.paddr, "heap?gc=1", pp, 60*time.Second); err != nil {
				nf.Pprof = err.Error()
			} else {
				nf.Pprof = pp
			}
			if g := goroutines(nd.paddr); g >= 0 && nf.GoroutinesPerConn == naVal {
				nf.GoroutinesPerConn = (g - nf.goroutines0) / c
			}
		}
	}
	hb0, gen0, box0 := f.aggregate().HBOK, f.cpuTicks(), boxTicks()
	rampHB := float64(hb0) // the fleet is new: every heartbeat so far came in the ramp (and settle)
	hold0 := make([]sample, len(ns))
	for i, nd := range ns {
		hold0[i] = takeSample(nd, t0)
	}
	f.hold(o.hold, timeline)
	fig.HoldHB = f.aggregate().HBOK - hb0
	hbs := float64(max(fig.HoldHB, 1))
	fig.HoldGenUsPerHB = float64(f.cpuTicks()-gen0) * 1e4 / hbs
	fig.HoldBoxUsPerHB = float64(boxTicks()-box0) * 1e4 / hbs
	for i, nd := range ns {
		nf := &fig.Nodes[i]
		nf.End = takeSample(nd, t0)
		nf.RSSPerConnEndKiB = float64(nf.End.RSSKiB-nf.Before.RSSKiB) / float64(max(nf.Conns, 1))
		share := hbs * float64(nf.Conns) / float64(max(n, 1))
		nf.HoldCPUusPerHB = float64(nf.End.CPUTicks-hold0[i].CPUTicks) * 1e4 / share
		nf.HoldSysUsPerHB = float64(nf.End.SysTicks-hold0[i].SysTicks) * 1e4 / share
		if nd.pid() <= 0 {
			nf.RSSPerConnEndKiB, nf.HoldCPUusPerHB, nf.HoldSysUsPerHB = nan(), nan(), nan()
		}
		if fig.HoldHB == 0 {
			nf.HoldCPUusPerHB, nf.HoldSysUsPerHB = nan(), nan()
		}
		nf.CPUusPerConnNet = naVal
		if c := float64(max(nf.Conns, 1)); nf.CPUusPerConn != naVal && nf.HoldCPUusPerHB != naVal {
			hbs := rampHB * float64(nf.Conns) / float64(max(n, 1))
			nf.CPUusPerConnNet = (nf.CPUusPerConn*c - hbs*nf.HoldCPUusPerHB) / c
		}
	}
	if fig.HoldHB == 0 {
		fig.HoldGenUsPerHB, fig.HoldBoxUsPerHB = nan(), nan()
	}
	aliveErr := checkAlive(ns)
	a = f.finish()
	fig.UpEnd, fig.Fail, fig.Drop = a.Up, a.Fail, a.Drop
	fig.HBSent, fig.HBOK, fig.HBFail = a.HBSent, a.HBOK, a.HBFail
	fig.Conn, fig.HB, fig.Reasons, fig.connH, fig.hbH = a.conn.summary(), a.hb.summary(), a.reasons, a.conn, a.hb
	return fig, aliveErr
}

// cpuProfile profiles the first (up to 3) nodes for about d in the background.
func cpuProfile(o *opts, ns []*node, label string, d time.Duration) chan struct{} {
	done := make(chan struct{})
	if !o.pprof || len(ns) > 3 {
		close(done)
		return done
	}
	secs := int(math.Ceil(d.Seconds()))
	secs = min(max(secs, 1), 60)
	go func() {
		defer close(done)
		for _, nd := range ns[:1] {
			pp := filepath.Join(o.resDir, fmt.Sprintf("cpu-%s-node%d.pprof", label, nd.idx))
			fetchProfile(nd.paddr, fmt.Sprintf("profile?seconds=%d", secs), pp, time.Duration(secs+30)*time.Second)
		}
	}()
	return done
}

// nan marks a figure that could not be measured (JSON cannot carry NaN);
// f1/f2 print it as "n/a".
func nan() float64 { return naVal }

func runChat(o *opts, ns []*node, pairs int, label, transport string) (*chatFig, error) {
	t0 := time.Now()
	fig := &chatFig{Label: label, Transport: transport, Pairs: pairs, Nodes: len(ns), Offered: o.msgRate}
	f, err := spawnFleet(o.spec("chat", addrsOf(ns), pairs), label)
	if err != nil {
		return nil, err
	}
	if !f.wait("ramped", o.maxRun/3, nil) {
		a := f.finish()
		return fig, fmt.Errorf("chat ramp did not finish: up %d fail %d: %s", a.Up, a.Fail, a.reasonText())
	}
	before := make([]sample, len(ns))
	for i, nd := range ns {
		before[i] = takeSample(nd, t0)
	}
	gen0, box0 := f.cpuTicks(), boxTicks()
	goAt := time.Now()
	profDone := cpuProfile(o, ns, label+"-chat", o.duration)
	f.send("go")
	f.wait("sent", o.duration+time.Minute, nil)
	fig.WindowS = time.Since(goAt).Seconds()
	fig.GenCPUPct = float64(f.cpuTicks()-gen0) / fig.WindowS
	boxPct := float64(boxTicks()-box0) / fig.WindowS
	<-profDone
	a := f.aggregate()
	for i, nd := range ns {
		after := takeSample(nd, t0)
		us := float64(after.CPUTicks-before[i].CPUTicks) * 1e4
		fig.CPUPct = append(fig.CPUPct, us/1e6/fig.WindowS*100)
		fig.CPUPerMsg = append(fig.CPUPerMsg, us/float64(max(a.Acked, 1)))
	}
	fig.OtherCPU = boxPct - fig.GenCPUPct
	for _, v := range fig.CPUPct {
		fig.OtherCPU -= v
	}
	if !o.noVerify {
		f.send("verify")
		f.wait("verified", 5*time.Minute, nil)
	}
	aliveErr := checkAlive(ns)
	a = f.finish()
	fig.Up, fig.Fail, fig.Drop = a.Up, a.Fail, a.Drop
	fig.Sent, fig.Skipped, fig.Acked, fig.AckErr, fig.Recv = a.Sent, a.Skipped, a.Acked, a.AckErr, a.Recv
	fig.StoredPerS = float64(a.Acked) / fig.WindowS
	fig.E2E, fig.Ack, fig.e2eH, fig.ackH = a.e2e.summary(), a.ack.summary(), a.e2e, a.ack
	fig.VerChecked, fig.VerMissing, fig.VerPages, fig.VerErr = a.VerChecked, a.VerMissing, a.VerPages, a.VerErr
	fig.HBFail, fig.Reasons = a.HBFail, a.reasons
	return fig, aliveErr
}

// ---- tables ----

func connectRows(figs []*connectFig) [][]string {
	rows := [][]string{{"figure"}}
	for _, f := range figs {
		rows[0] = append(rows[0], f.Label)
	}
	add := func(name string, val func(*connectFig) string) {
		r := []string{name}
		for _, f := range figs {
			r = append(r, val(f))
		}
		rows = append(rows, r)
	}
	sum := func(f *connectFig, g func(nodeFig) float64) float64 {
		// connection-weighted mean over nodes
		var s, n float64
		for _, nf := range f.Nodes {
			s += g(nf) * float64(nf.Conns)
			n += float64(nf.Conns)
		}
		return s / n
	}
	add("nodes", func(f *connectFig) string { return fmt.Sprint(len(f.Nodes)) })
	add("connections up after ramp / target", func(f *connectFig) string { return fmt.Sprintf("%d / %d", f.Up, f.Conns) })
	add("failed connects", func(f *connectFig) string { return fmt.Sprint(f.Fail) })
	add("dropped after ramp", func(f *connectFig) string { return fmt.Sprint(f.Drop) })
	add("connect rate (connect+join /s)", func(f *connectFig) string { return f1(f.Rate) })
	add("connect+join latency p50 / p99 (ms)", func(f *connectFig) string { return f1(f.Conn.P50) + " / " + f1(f.Conn.P99) })
	add("heartbeats answered / sent (unanswered)", func(f *connectFig) string {
		return fmt.Sprintf("%d / %d (%d)", f.HBOK, f.HBSent, f.HBFail)
	})
	add("heartbeat reply latency p50 / p99 / max (ms)", func(f *connectFig) string {
		return f1(f.HB.P50) + " / " + f1(f.HB.P99) + " / " + f1(f.HB.Max)
	})
	add("server RSS per connection, after ramp (KiB)", func(f *connectFig) string {
		return f2(sum(f, func(n nodeFig) float64 { return n.RSSPerConnKiB }))
	})
	add("server RSS per connection, end of hold (KiB)", func(f *connectFig) string {
		return f2(sum(f, func(n nodeFig) float64 { return n.RSSPerConnEndKiB }))
	})
	add("Go heap in use per connection (KiB)", func(f *connectFig) string {
		return f2(sum(f, func(n nodeFig) float64 { return n.HeapPerConnKiB }))
	})
	add("goroutines per connection", func(f *connectFig) string {
		return f2(sum(f, func(n nodeFig) float64 { return n.GoroutinesPerConn }))
	})
	add("server CPU per connect+join (µs)", func(f *connectFig) string {
		return f1(sum(f, func(n nodeFig) float64 { return n.CPUusPerConn }))
	})
	add("of which kernel time, stime (µs)", func(f *connectFig) string {
		return f1(sum(f, func(n nodeFig) float64 { return n.SysUsPerConn }))
	})
	add("the same, less the ramp's heartbeats at the hold's CPU per heartbeat (µs)", func(f *connectFig) string {
		return f1(meanNodes(f, func(n nodeFig) float64 { return n.CPUusPerConnNet }))
	})
	add("heartbeats answered during the hold", func(f *connectFig) string { return fmt.Sprint(f.HoldHB) })
	add("server CPU per heartbeat during the hold (µs; of which kernel)", func(f *connectFig) string {
		return f1(meanNodes(f, func(n nodeFig) float64 { return n.HoldCPUusPerHB })) + " (" +
			f1(meanNodes(f, func(n nodeFig) float64 { return n.HoldSysUsPerHB })) + ")"
	})
	add("generator CPU per heartbeat during the hold (µs)", func(f *connectFig) string { return f1(f.HoldGenUsPerHB) })
	add("whole box's CPU per heartbeat during the hold (µs; everything running)", func(f *connectFig) string { return f1(f.HoldBoxUsPerHB) })
	add("kernel TCP buffer memory per connection pair (KiB, sockstat mem)", func(f *connectFig) string { return f2(f.SockMemPerConnKB) })
	add("kernel slab per connection pair (KiB, meminfo Slab; box-wide)", func(f *connectFig) string { return f2(f.SlabPerConnKB) })
	return rows
}

func nodeRows(f *connectFig) [][]string {
	rows := [][]string{{"node", "conns", "RSS before (MiB)", "RSS after ramp (MiB)", "RSS/conn (KiB)", "heap/conn (KiB)", "goroutines/conn", "CPU µs/connect", "threads"}}
	for _, n := range f.Nodes {
		rows = append(rows, []string{fmt.Sprint(n.Node), fmt.Sprint(n.Conns), f1(float64(n.Before.RSSKiB) / 1024),
			f1(float64(n.After.RSSKiB) / 1024), f2(n.RSSPerConnKiB), f2(n.HeapPerConnKiB), f2(n.GoroutinesPerConn),
			f1(n.CPUusPerConn), fmt.Sprint(n.After.Threads)})
	}
	return rows
}

func chatRows(figs []*chatFig) [][]string {
	rows := [][]string{{"figure"}}
	for _, f := range figs {
		rows[0] = append(rows[0], f.Label)
	}
	add := func(name string, val func(*chatFig) string) {
		r := []string{name}
		for _, f := range figs {
			r = append(r, val(f))
		}
		rows = append(rows, r)
	}
	add("nodes / pairs", func(f *chatFig) string { return fmt.Sprintf("%d / %d", f.Nodes, f.Pairs) })
	add("sockets up / failed / dropped", func(f *chatFig) string { return fmt.Sprintf("%d / %d / %d", f.Up, f.Fail, f.Drop) })
	add("offered msgs/s", func(f *chatFig) string { return f1(f.Offered) })
	add("sent / acked / ack errors / skipped", func(f *chatFig) string {
		return fmt.Sprintf("%d / %d / %d / %d", f.Sent, f.Acked, f.AckErr, f.Skipped)
	})
	add("stored msgs/s (acked ÷ send window incl. drain)", func(f *chatFig) string { return f1(f.StoredPerS) })
	add("e2e latency p50 / p99 / p99.9 (ms)", func(f *chatFig) string {
		return f2(f.E2E.P50) + " / " + f2(f.E2E.P99) + " / " + f2(f.E2E.P999)
	})
	add("ack latency p50 / p99 / p99.9 (ms)", func(f *chatFig) string {
		return f2(f.Ack.P50) + " / " + f2(f.Ack.P99) + " / " + f2(f.Ack.P999)
	})
	add("broadcasts received by the peer", func(f *chatFig) string { return fmt.Sprint(f.Recv) })
	add("verified in history: checked / missing / errors", func(f *chatFig) string {
		return fmt.Sprintf("%d / %d / %d", f.VerChecked, f.VerMissing, f.VerErr)
	})
	add("server CPU per stored msg (µs, per node)", func(f *chatFig) string {
		var s []string
		for _, v := range f.CPUPerMsg {
			s = append(s, f1(v))
		}
		return strings.Join(s, ", ")
	})
	add("server CPU % during send (per node)", func(f *chatFig) string {
		var s []string
		for _, v := range f.CPUPct {
			s = append(s, f1(v))
		}
		return strings.Join(s, ", ")
	})
	add("generator CPU % / rest of the box (PostgreSQL, Redis, other processes) CPU %", func(f *chatFig) string {
		return f1(f.GenCPUPct) + " / " + f1(f.OtherCPU)
	})
	return rows
}

func memPlot(figs []*connectFig) string {
	var ss []series
	for _, f := range figs {
		if !f.HasPid {
			continue
		}
		s := series{Name: f.Label}
		for _, p := range f.Timeline {
			// skip the first few sockets, whose RSS delta is mostly the
			// runtime warming up, not the sockets
			if p.Up >= max(1, min(500, f.Conns/20)) {
				s.X = append(s.X, float64(p.Up))
				s.Y = append(s.Y, float64(p.RSSKiB)/float64(p.Up))
			}
		}
		ss = append(ss, s)
	}
	if len(ss) == 0 {
		return ""
	}
	return linePlot("Server RSS per socket during the ramp (sampled every second)", "connections up", "KiB per socket (RSS delta / up)", ss, false)
}

func cdfPlot(title string, names []string, hs []*hist) string {
	var ss []series
	for i, h := range hs {
		if h == nil {
			continue
		}
		x, y := h.cdf()
		for k := range x {
			if x[k] <= 0 {
				x[k] = 0.001
			}
		}
		ss = append(ss, series{Name: names[i], X: x, Y: y})
	}
	return linePlot(title, "latency (ms, log scale)", "fraction ≤ x", ss, true)
}

func addNotes(r *result, o *opts, figs []*connectFig) {
	for _, f := range figs {
		for _, n := range f.Nodes {
			if n.After.Metrics == nil && f.Transport == "floor" {
				r.note("floor: serves no /metrics by design: goroutines per socket n/a; Go heap per socket from its GODEBUG=gctrace=1 log (MB resolution; n/a when it did not collect)")
			} else if n.After.Metrics == nil && f.Transport == "target" {
				r.note("target: not scraped (no pid or metrics of a foreign server are assumed): heap and goroutines per socket n/a%s", map[bool]string{true: "", false: "; no --target-pid, so server RSS and CPU are n/a too"}[f.HasPid])
			} else if n.After.Metrics == nil {
				r.note("%s node %d: /metrics not served (404 or error): goroutines per connection n/a; Go heap per connection is the live heap after the last GC from GODEBUG=gctrace=1 (MB resolution)", f.Label, n.Node)
			}
			if n.Pprof != "" && !strings.HasSuffix(n.Pprof, ".pprof") && (o.pprof || (f.Transport != "floor" && f.Transport != "target")) {
				r.note("%s node %d: no heap profile: %s", f.Label, n.Node, n.Pprof)
			}
			if n.Smaps != nil {
				r.note("%s node %d smaps_rollup after ramp (KiB): Rss %d, Anonymous %d, Pss_File %d, Private_Dirty %d",
					f.Label, n.Node, n.Smaps["Rss"], n.Smaps["Anonymous"], n.Smaps["Pss_File"], n.Smaps["Private_Dirty"])
			}
			break
		}
		if len(f.Reasons) > 0 {
			var p []string
			for _, k := range sortedKeys(f.Reasons) {
				p = append(p, fmt.Sprintf("%s ×%d", k, f.Reasons[k]))
			}
			r.note("%s failures: %s", f.Label, strings.Join(p, "; "))
		}
	}
}

// ---- scenarios ----

func withStore(o *opts) (dbURL string, cleanup func(), err error) {
	cleanup = func() {}
	if o.store != "postgres" {
		return "", cleanup, nil
	}
	if o.dbURL != "" {
		return o.dbURL, cleanup, migrate(o.server, o.dbURL, o.tmp)
	}
	pg, err := startPostgres(o.tmp)
	if err != nil {
		return "", cleanup, err
	}
	cleanup = func() { pg.proc.stop(20 * time.Second) }
	if err := migrate(o.server, pg.url(), o.tmp); err != nil {
		cleanup()
		return "", func() {}, err
	}
	return pg.url(), cleanup, nil
}

// oneNode starts the store o asks for and one node on it; stop undoes both.
func oneNode(o *opts) (ns []*node, stop func(), err error) {
	db, cleanup, err := withStore(o)
	if err != nil {
		return nil, nil, err
	}
	ns, err = startNodes(o, 1, o.transport, db, "")
	if err != nil {
		cleanup()
		return nil, nil, err
	}
	return ns, func() { stopNodes(ns); cleanup() }, nil
}

// runFloor runs the connect ramp and hold against a fresh floor process.
func runFloorConnect(o *opts) (*connectFig, error) {
	fl, err := startFloor(o, 0)
	if err != nil {
		return nil, err
	}
	defer fl.proc.stop(10 * time.Second)
	return runConnect(o, []*node{fl}, o.conns, "floor", "floor")
}

func scenarioConnect(o *opts) (*result, error) {
	r := &result{Scenario: "connect", Raw: map[string]any{}, Plots: map[string]string{}}
	var figs []*connectFig
	var firstErr error
	keep := func(err error) {
		if err != nil {
			r.note("ERROR: %v", err)
			if firstErr == nil {
				firstErr = err
			}
		}
	}
	label := o.transport
	if o.target != "" {
		label = "target"
	}
	// One round is the floor, then the server, each in a fresh process.
	// On a shared box one round's ratio moves by a fifth from run to run,
	// mostly with the floor's small figure; --rounds alternates them and
	// reports the median.
	type round struct {
		Floor *connectFig `json:"floor"`
		Fig   *connectFig `json:"server"`
	}
	var rounds []round
	for i := range max(o.rounds, 1) {
		var rd round
		if o.floor {
			fig, err := runFloorConnect(o)
			keep(err)
			rd.Floor = fig
		}
		if o.target != "" {
			nd := &node{addr: o.tAddr, extPid: o.targetPid, noMetrics: true}
			fig, err := runConnect(o, []*node{nd}, o.conns, label, "target")
			keep(err)
			rd.Fig = fig
		} else if ns, stop, err := oneNode(o); err != nil {
			keep(err)
		} else {
			fig, err := runConnect(o, ns, o.conns, label, o.transport)
			stop()
			keep(err)
			rd.Fig = fig
		}
		if firstErr != nil {
			break
		}
		rounds = append(rounds, rd)
		if o.rounds > 1 {
			fmt.Fprintf(os.Stderr, "round %d of %d done\n", i+1, o.rounds)
		}
	}
	pick := 0
	if len(rounds) > 1 && o.floor {
		cpu := func(n nodeFig) float64 { return n.CPUusPerConn }
		rss := func(n nodeFig) float64 { return n.RSSPerConnKiB }
		rows := [][]string{{"round", "CPU per connect+join, " + label + " / floor (µs)", "÷ floor", "RSS per socket after ramp, " + label + " / floor (KiB)", "÷ floor"}}
		var ratios []float64
		var which []int // round of each ratio
		for i, rd := range rounds {
			if rd.Fig == nil || rd.Floor == nil {
				continue
			}
			a, b := meanNodes(rd.Fig, cpu), meanNodes(rd.Floor, cpu)
			ra, rb := meanNodes(rd.Fig, rss), meanNodes(rd.Floor, rss)
			ratios, which = append(ratios, a/b), append(which, i)
			rows = append(rows, []string{fmt.Sprint(i + 1), f1(a) + " / " + f1(b), ratio(a, b), f2(ra) + " / " + f2(rb), ratio(ra, rb)})
		}
		if len(ratios) > 0 {
			sorted := slices.Clone(ratios)
			slices.Sort(sorted)
			med := sorted[len(sorted)/2]
			pick = which[slices.Index(ratios, med)]
			rows = append(rows, []string{"median", "", fmt.Sprintf("%.2f×", med), "", ""})
			r.Sections = append(r.Sections, section{fmt.Sprintf("Rounds: floor and %s alternated %d times (the tables below show round %d, the median CPU ratio)", label, len(ratios), pick+1), rows})
		}
		r.Raw["rounds"] = rounds
	}
	var fig *connectFig
	if len(rounds) > 0 {
		if fl := rounds[pick].Floor; fl != nil {
			r.Raw["floor"] = fl
			figs = append(figs, fl)
		}
		fig = rounds[pick].Fig
	}
	r.Raw["connect"] = fig
	if fig != nil {
		figs = append(figs, fig)
	}
	if len(figs) == 0 {
		return r, firstErr
	}
	rows := connectRows(figs)
	title := "Idle authenticated connections (lobby joined)"
	if o.target != "" {
		title = "Idle sockets joined on " + o.target
	}
	if len(figs) == 2 && figs[0].Label == "floor" {
		addRatioCol(rows, figs[1].Label+" ÷ floor", 1, 2)
		title += ", against the floor server in the same run"
		r.Sections = append(r.Sections, section{"Against the floor (same run, same box)", floorRows(figs[1], figs[0])})
	}
	r.Sections = append(r.Sections, section{title, rows})
	r.Sections = append(r.Sections, section{"Memory budget per socket (after the ramp)", budgetRows(figs)})
	addPlots(r, figs)
	addNotes(r, o, figs)
	return r, firstErr
}

// addPlots draws RSS per socket over the ramp and the connect+join and
// heartbeat latency CDFs.
func addPlots(r *result, figs []*connectFig) {
	if p := memPlot(figs); p != "" {
		r.Plots["memory-per-connection.svg"] = p
	}
	var names, hbNames []string
	var hs, hbs []*hist
	for _, f := range figs {
		names, hs = append(names, f.Label), append(hs, f.connH)
	}
	r.Plots["connect-latency-cdf.svg"] = cdfPlot("connect+join latency CDF", names, hs)
	for _, f := range figs {
		if f.HBOK > 0 {
			hbNames, hbs = append(hbNames, f.Label), append(hbs, f.hbH)
		}
	}
	if len(hbs) > 0 { // none when --hold is shorter than --hb
		r.Plots["heartbeat-latency-cdf.svg"] = cdfPlot("heartbeat reply latency CDF", hbNames, hbs)
	}
}

// ratioRows are the rows that get a ratio column: per-socket costs and
// latencies, not counts.
func ratioRow(name string) bool {
	for _, k := range []string{"RSS", "heap", "CPU", "latency", "kernel"} {
		if strings.Contains(name, k) {
			return true
		}
	}
	return false
}

// addRatioCol appends column title = col b ÷ col a (1-based after the name).
func addRatioCol(rows [][]string, title string, a, b int) {
	rows[0] = append(rows[0], title)
	for i := 1; i < len(rows); i++ {
		v := ""
		if ratioRow(rows[i][0]) {
			v = ratioCell(rows[i][a], rows[i][b])
		}
		rows[i] = append(rows[i], v)
	}
}

func meanNodes(f *connectFig, g func(nodeFig) float64) float64 {
	var s, n float64
	for _, nf := range f.Nodes {
		v := g(nf)
		if v == naVal {
			return naVal
		}
		s += v * float64(nf.Conns)
		n += float64(nf.Conns)
	}
	if n == 0 {
		return naVal
	}
	return s / n
}

// floorRows are the two headline ratios of issue 14: what a socket costs
// the server above the floor in the same run.
func floorRows(f, fl *connectFig) [][]string {
	rows := [][]string{{"figure", f.Label, "floor", f.Label + " ÷ floor"}}
	add := func(name string, a, b float64, fmtf func(float64) string) {
		rows = append(rows, []string{name, fmtf(a), fmtf(b), ratio(a, b)})
	}
	rss := func(n nodeFig) float64 { return n.RSSPerConnKiB }
	rssEnd := func(n nodeFig) float64 { return n.RSSPerConnEndKiB }
	cpu := func(n nodeFig) float64 { return n.CPUusPerConn }
	add("server RSS per socket, after ramp (KiB)", meanNodes(f, rss), meanNodes(fl, rss), f2)
	add("server RSS per socket, end of hold (KiB)", meanNodes(f, rssEnd), meanNodes(fl, rssEnd), f2)
	add("server CPU per connect+join (µs)", meanNodes(f, cpu), meanNodes(fl, cpu), f1)
	sys := func(n nodeFig) float64 { return n.SysUsPerConn }
	add("of which kernel time, stime (µs)", meanNodes(f, sys), meanNodes(fl, sys), f1)
	hb := func(n nodeFig) float64 { return n.HoldCPUusPerHB }
	add("server CPU per heartbeat during the hold (µs)", meanNodes(f, hb), meanNodes(fl, hb), f1)
	add("connect+join latency p50 (ms)", f.Conn.P50, fl.Conn.P50, f2)
	add("connect+join latency p99 (ms)", f.Conn.P99, fl.Conn.P99, f2)
	return rows
}

// budgetRows: where the memory of one socket goes, box-wide.
func budgetRows(figs []*connectFig) [][]string {
	rows := [][]string{{"KiB per socket"}}
	for _, f := range figs {
		rows[0] = append(rows[0], f.Label)
	}
	add := func(name string, g func(*connectFig) float64) {
		r := []string{name}
		for _, f := range figs {
			r = append(r, f2(g(f)))
		}
		rows = append(rows, r)
	}
	srv := func(f *connectFig) float64 {
		return meanNodes(f, func(n nodeFig) float64 { return n.RSSPerConnKiB })
	}
	add("server RSS (delta ÷ sockets on the node)", srv)
	add("kernel TCP buffers (sockstat TCP mem delta ÷ sockets; both ends)", func(f *connectFig) float64 { return f.SockMemPerConnKB })
	add("kernel slab (meminfo Slab delta ÷ sockets; box-wide, both ends)", func(f *connectFig) float64 { return f.SlabPerConnKB })
	add("generator RSS (all workers ÷ sockets, incl. runtime and binary)", func(f *connectFig) float64 { return f.GenRSSPerConnKiB })
	add("Redis RSS (delta ÷ sockets; n/a when the scenario runs no Redis)", func(f *connectFig) float64 { return f.RedisRSSPerConnKiB })
	add("total (server + kernel TCP + slab + Redis)", func(f *connectFig) float64 {
		t := srv(f)
		if t == naVal {
			return naVal
		}
		t += max(f.SockMemPerConnKB, 0) + max(f.SlabPerConnKB, 0)
		if f.RedisRSSPerConnKiB != naVal {
			t += f.RedisRSSPerConnKiB
		}
		return t
	})
	return rows
}

func scenarioChat(o *opts) (*result, error) {
	ns, stop, err := oneNode(o)
	if err != nil {
		return nil, err
	}
	defer stop()
	fig, err := runChat(o, ns, o.pairs, o.transport, o.transport)
	r := &result{Scenario: "chat", Raw: map[string]any{"chat": fig}, Plots: map[string]string{}}
	if fig != nil {
		r.Sections = append(r.Sections, section{"Chat (" + o.store + ")", chatRows([]*chatFig{fig})})
		r.Plots["latency-cdf.svg"] = cdfPlot("chat latency CDF", []string{"e2e (push → peer broadcast)", "ack (push → ok reply)"}, []*hist{fig.e2eH, fig.ackH})
		if len(fig.Reasons) > 0 {
			r.note("failures/errors: %v", fig.Reasons)
		}
	}
	if err != nil {
		r.note("ERROR: %v", err)
	}
	return r, err
}

func scenarioCluster(o *opts) (*result, error) {
	rp, redisURL, err := startRedis(o.tmp)
	if err != nil {
		return nil, err
	}
	defer rp.stop(5 * time.Second)
	o.redis = rp
	db, cleanup, err := withStore(o)
	if err != nil {
		return nil, err
	}
	defer cleanup()
	if o.dbURL == "" && o.nodes > 12 {
		// The throwaway server takes 300 connections; the nodes' default
		// pools (16 each) would exceed that past 18 nodes.
		db += fmt.Sprintf("&pool_max_conns=%d", max(4, 280/o.nodes))
	}
	ns, err := startNodes(o, o.nodes, o.transport, db, redisURL)
	if err != nil {
		return nil, err
	}
	defer stopNodes(ns)
	r := &result{Scenario: "cluster", Raw: map[string]any{}, Plots: map[string]string{}}
	if o.big {
		fig, err := runConnect(o, ns, o.conns, fmt.Sprintf("%d nodes", o.nodes), o.transport)
		r.Raw["connect"] = fig
		if fig != nil {
			r.Sections = append(r.Sections, section{"Concurrent authenticated sockets over the cluster", connectRows([]*connectFig{fig})})
			r.Sections = append(r.Sections, section{"Per node", nodeRows(fig)})
			r.Sections = append(r.Sections, section{"Memory budget per socket (after the ramp)", budgetRows([]*connectFig{fig})})
			addPlots(r, []*connectFig{fig})
			var labels []string
			var vals []float64
			for _, n := range fig.Nodes {
				labels = append(labels, fmt.Sprint(n.Node))
				vals = append(vals, n.RSSPerConnKiB)
			}
			r.Plots["rss-per-conn-per-node.svg"] = barPlot("RSS per connection per node (KiB)", "KiB", labels, vals)
			addNotes(r, o, []*connectFig{fig})
			r.note("peak: %d sockets held by the generator, %d failed connects, %d dropped after the ramp, %d heartbeats unanswered",
				fig.Up, fig.Fail, fig.Drop, fig.HBFail)
		}
		if err != nil {
			r.note("ERROR: %v", err)
		}
		return r, err
	}
	fig, err := runChat(o, ns, o.pairs, fmt.Sprintf("%d nodes", o.nodes), o.transport)
	r.Raw["chat"] = fig
	if fig != nil {
		r.Sections = append(r.Sections, section{"Cross-node chat (user 2p+1 and 2p+2 on different nodes)", chatRows([]*chatFig{fig})})
		r.Plots["latency-cdf.svg"] = cdfPlot("cross-node chat latency CDF", []string{"e2e", "ack"}, []*hist{fig.e2eH, fig.ackH})
		if len(fig.Reasons) > 0 {
			r.note("failures/errors: %v", fig.Reasons)
		}
	}
	if err != nil {
		r.note("ERROR: %v", err)
	}
	return r, err
}

func scenarioBaseline(o *opts) (*result, error) {
	r := &result{Scenario: "baseline", Raw: map[string]any{}, Plots: map[string]string{}}
	var cfs []*connectFig
	var chs []*chatFig
	var firstErr error
	keep := func(err error) {
		if err != nil {
			r.note("ERROR: %v", err)
			if firstErr == nil {
				firstErr = err
			}
		}
	}
	if o.floor {
		fig, err := runFloorConnect(o)
		keep(err)
		if fig != nil {
			cfs = append(cfs, fig)
		}
	}
	for _, tr := range []string{"epoll", "portable"} {
		// connect: embedded store, as in the connect scenario
		o2 := *o
		o2.store = "sqlite"
		ns, err := startNodes(&o2, 1, tr, "", "")
		if err != nil {
			keep(err)
			continue
		}
		fig, err := runConnect(&o2, ns, o.conns, tr, tr)
		stopNodes(ns)
		keep(err)
		if fig != nil {
			cfs = append(cfs, fig)
		}
	}
	o.store = "postgres"
	db, cleanup, err := withStore(o)
	if err != nil {
		keep(err)
	} else {
		for _, tr := range []string{"epoll", "portable"} {
			ns, err := startNodes(o, 1, tr, db, "")
			if err != nil {
				keep(err)
				continue
			}
			fig, err := runChat(o, ns, o.pairs, tr, tr)
			stopNodes(ns)
			keep(err)
			if fig != nil {
				chs = append(chs, fig)
			}
		}
		cleanup()
	}
	r.Raw["connect"], r.Raw["chat"] = cfs, chs
	if len(cfs) > 0 {
		rows := connectRows(cfs)
		col := map[string]int{}
		for i, f := range cfs {
			col[f.Label] = i + 1
		}
		if col["floor"] > 0 && col["epoll"] > 0 {
			r.Sections = append(r.Sections, section{"Against the floor (same run, same box)", floorRows(cfs[col["epoll"]-1], cfs[col["floor"]-1])})
		}
		for _, tr := range []string{"epoll", "portable"} {
			if col["floor"] > 0 && col[tr] > 0 {
				addRatioCol(rows, tr+" ÷ floor", col["floor"], col[tr])
			}
		}
		if col["epoll"] > 0 && col["portable"] > 0 {
			addRatioCol(rows, "portable ÷ epoll", col["epoll"], col["portable"])
		}
		r.Sections = append(r.Sections, section{"connect: idle authenticated sockets, floor, epoll and portable (baseline)", rows})
		r.Sections = append(r.Sections, section{"Memory budget per socket (after the ramp)", budgetRows(cfs)})
		addPlots(r, cfs)
		addNotes(r, o, cfs)
	}
	if len(chs) > 0 {
		rows := chatRows(chs)
		if len(chs) == 2 {
			rows[0] = append(rows[0], "portable ÷ epoll")
			for i := 1; i < len(rows); i++ {
				rows[i] = append(rows[i], ratioCell(rows[i][1], rows[i][2]))
			}
		}
		r.Sections = append(r.Sections, section{"chat on PostgreSQL, epoll vs portable (baseline)", rows})
		var names []string
		var hs []*hist
		for _, f := range chs {
			names, hs = append(names, f.Label+" e2e", f.Label+" ack"), append(hs, f.e2eH, f.ackH)
		}
		r.Plots["chat-latency-cdf.svg"] = cdfPlot("chat latency CDF", names, hs)
	}
	return r, firstErr
}

// ratioCell divides the first numbers of two cells ("1.2 / 3" → 1.2).
func ratioCell(a, b string) string {
	var x, y float64
	if _, err := fmt.Sscanf(a, "%g", &x); err != nil {
		return ""
	}
	if _, err := fmt.Sscanf(b, "%g", &y); err != nil {
		return ""
	}
	if x <= 0 || y < 0 {
		return "" // a delta at or below zero (box-wide noise) has no ratio
	}
	return ratio(y, x)
}

var _ = os.Getpid
