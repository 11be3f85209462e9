package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pushcluster/push/bench/loadgen"
	"github.com/pushcluster/push/bench/report"
	"github.com/pushcluster/push/bench/sample"
	"github.com/pushcluster/push/pkg/client"
	"github.com/pushcluster/push/pkg/ring"
	"github.com/pushcluster/push/pkg/store"
)

// rig is one WebSocket server under test (an edge, or the gorilla
// baseline) with its gRPC Push endpoint and load-generator workers holding
// clients. The edge, unicast, fanout and baseline scenarios are sequences
// of its phases on one process set.
type rig struct {
	d                 *daemon
	metricsURL, gcURL string
	prefix            string
	wk                []*worker
	stride            int            // uid index distance between workers
	held              []int          // clients opened per worker
	sdk               *client.Client // publishers go through the Go SDK, as backends do
	st                store.Store
	dir               string
	// pad is appended to every broadcast's JSON payload (after its "b" and
	// "t" fields), to measure larger messages.
	pad string
	// publish and broadcast send one message the way a backend would:
	// through the Go SDK (sdk) for servers with a push.v1 gRPC endpoint,
	// through Centrifugo's server API for Centrifugo. broadcast returns the
	// connections the server says it wrote to, or -1 when it does not say.
	publish   func(ctx context.Context, uid string, payload []byte) error
	broadcast func(ctx context.Context, payload []byte) (int, error)
	// settle, when set, makes fanout measure each round's server CPU from
	// the call until settle after it, less the server's idle CPU over as
	// long, and count deliveries from what the clients got: for servers
	// whose call returns before the frames are written (Centrifugo), and
	// for every server that is compared with one.
	settle time.Duration
}

// newRig starts workers (each --first i*stride, plus wargs) against ws and
// dials grpcAddr through the Go SDK; with grpcAddr empty it dials nothing
// and the caller sets publish and broadcast.
func newRig(d *daemon, ws, grpcAddr, admin, prefix, sources string, workers, n int, wargs ...string) (*rig, error) {
	g := &rig{d: d, metricsURL: "http://" + admin + "/metrics", gcURL: "http://" + admin + "/debug/pprof/heap?gc=1",
		prefix: prefix, stride: n, held: make([]int, workers)}
	for i := 0; i < workers; i++ {
		w, err := startWorker(append([]string{"--target", ws, "--prefix", prefix, "--first", fmt.Sprint(i * g.stride), "--sources", sources}, wargs...))
		if err != nil {
			g.close()
			return nil, err
		}
		g.wk = append(g.wk, w)
	}
	if grpcAddr == "" {
		return g, nil
	}
	// A one-member ring in a file store, so the publishers use the SDK
	// exactly as a backend would (ring lookup, pooled connection, retries).
	dir, err := os.MkdirTemp("", "pushbench-ring-")
	if err != nil {
		g.close()
		return nil, err
	}
	g.dir = dir
	if g.st, err = store.Open("file:"+filepath.Join(dir, "ring.json"), slog.New(slog.NewTextHandler(io.Discard, nil))); err != nil {
		g.close()
		return nil, err
	}
	doc := &ring.Document{Version: 1, Members: []ring.Member{{ID: 1, Name: "target", WS: ws, GRPC: grpcAddr, Weight: 1}}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := g.st.CompareAndSwap(ctx, 0, doc, false); err != nil {
		g.close()
		return nil, err
	}
	if g.sdk, err = client.New(ctx, g.st, client.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil)))); err != nil {
		g.close()
		return nil, err
	}
	g.publish = func(ctx context.Context, uid string, payload []byte) error {
		_, err := g.sdk.Publish(ctx, uid, payload, 0)
		return err
	}
	g.broadcast = func(ctx context.Context, payload []byte) (int, error) {
		resp, err := g.sdk.Broadcast(ctx, payload)
		if err != nil {
			return 0, err
		}
		return int(resp.Connections), nil
	}
	return g, nil
}

func (g *rig) close() {
	for _, w := range g.wk {
		w.stop()
	}
	if g.sdk != nil {
		g.sdk.Close()
	}
	if g.st != nil {
		g.st.Close()
	}
	if g.dir != "" {
		os.RemoveAll(g.dir)
	}
}

// open opens count more clients at rate over the workers (split as
// openAll splits) and fails on any failed handshake.
func (g *rig) open(count, rate int) error {
	opened, failed, lastErr, err := openAll(g.wk, count, rate)
	if err != nil || failed > 0 {
		return fmt.Errorf("open %d: opened %d failed %d (%s) %v", count, opened, failed, lastErr, err)
	}
	per := count / len(g.wk)
	for i := range g.wk {
		if i == len(g.wk)-1 {
			g.held[i] += count - per*(len(g.wk)-1)
		} else {
			g.held[i] += per
		}
	}
	return nil
}

func (g *rig) total() int {
	t := 0
	for _, h := range g.held {
		t += h
	}
	return t
}

// uids lists every connected user.
func (g *rig) uids() []string {
	var out []string
	for i, h := range g.held {
		for j := 0; j < h; j++ {
			out = append(out, loadgen.UID(g.prefix, i*g.stride+j))
		}
	}
	return out
}

// reports asks every worker for its stats (which resets them).
func (g *rig) reports() ([]loadgen.Event, error) {
	var out []loadgen.Event
	for _, w := range g.wk {
		w.send("report")
		ev, err := w.await("report", 30*time.Second)
		if err != nil {
			return nil, err
		}
		out = append(out, ev)
	}
	return out, nil
}

// memPoint is the server's memory at a number of connections.
type memPoint struct {
	Conns int   `json:"conns"`
	Go    int64 `json:"go_bytes"`
	RSS   int64 `json:"rss_bytes"`
}

// rampResult is the cost of idle connections and of upgrades.
type rampResult struct {
	base, n                                     int
	goSlope, rssSlope, fdSlope, kernSlope       float64
	cpuPerUpgrade, userPerUpgrade, upgradesPerS float64
	top                                         sample.Proc
	points                                      []memPoint
}

// ramp opens base clients, then ramps to n in steps at rate, sampling the
// server's memory (after a forced GC) at every step: the slope between base
// and n is the cost of one more idle connection, the steps draw the chart.
func (g *rig) ramp(r *report.Run, base, n, rate, steps int) (rampResult, error) {
	res := rampResult{base: base, n: n}
	progress("opening %d connections", base)
	if err := g.open(base, rate); err != nil {
		return res, err
	}
	time.Sleep(2 * time.Second)
	k1 := sample.ReadKernel()
	s1, err := sample.Read(g.d.pid(), g.metricsURL, g.gcURL)
	if err != nil {
		return res, err
	}
	res.points = append(res.points, memPoint{base, s1.GoBytes(), s1.RSS})
	var cpu, user float64
	var rampDur time.Duration
	at := base
	for s := 1; s <= steps; s++ {
		next := base + (n-base)*s/steps
		progress("opening %d more connections (to %d)", next-at, next)
		c0, _ := sample.Read(g.d.pid(), "", "")
		t0 := time.Now()
		if err := g.open(next-at, rate); err != nil {
			return res, err
		}
		rampDur += time.Since(t0)
		c1, _ := sample.Read(g.d.pid(), "", "")
		cpu += c1.CPU() - c0.CPU()
		user += c1.UserSec - c0.UserSec
		at = next
		if s < steps {
			time.Sleep(500 * time.Millisecond)
			sp, err := sample.Read(g.d.pid(), g.metricsURL, g.gcURL)
			if err != nil {
				return res, err
			}
			res.points = append(res.points, memPoint{at, sp.GoBytes(), sp.RSS})
		}
	}
	time.Sleep(2 * time.Second)
	k2 := sample.ReadKernel()
	s2, err := sample.Read(g.d.pid(), g.metricsURL, g.gcURL)
	if err != nil {
		return res, err
	}
	res.points = append(res.points, memPoint{n, s2.GoBytes(), s2.RSS})
	dn := float64(n - base)
	res.goSlope = float64(s2.GoBytes()-s1.GoBytes()) / dn
	res.rssSlope = float64(s2.RSS-s1.RSS) / dn
	res.fdSlope = float64(s2.FDs-s1.FDs) / dn
	// Both ends of every connection live on this host: two sockets each.
	res.kernSlope = float64(k2.SlabBytes-k1.SlabBytes+k2.TCPMemBytes-k1.TCPMemBytes) / (2 * dn)
	res.cpuPerUpgrade, res.userPerUpgrade = cpu/dn*1e6, user/dn*1e6
	res.upgradesPerS = dn / rampDur.Seconds()
	res.top = s2
	r.Raw[g.prefix+"sample_base"], r.Raw[g.prefix+"sample_top"] = s1, s2
	r.Raw[g.prefix+"kernel_base"], r.Raw[g.prefix+"kernel_top"] = k1, k2
	r.Raw[g.prefix+"memory_points"] = res.points
	return res, nil
}

// add records the ramp's figures, named for who ("edge").
func (res rampResult) add(r *report.Run, who string, withTargets bool) {
	tgt := func(cmp string) string {
		if withTargets {
			return cmp
		}
		return ""
	}
	r.Add(fmt.Sprintf("%s Go heap+stack per idle connection (slope %d→%d)", who, res.base, res.n), res.goSlope, "B", tgt("<="), 512, "")
	r.Add(who+" RSS per idle connection (slope)", res.rssSlope, "B", "", 0, "")
	r.Add(who+" fds per connection (slope)", res.fdSlope, "fd", tgt("<="), 1.0, "")
	r.Add("kernel memory per TCP socket (slab + tcp mem, slope)", res.kernSlope, "B", "", 0, "")
	r.Add(who+" CPU per upgrade incl. JWT (user+sys)", res.cpuPerUpgrade, "µs", tgt("<="), 20, fmt.Sprintf("user %.1f µs", res.userPerUpgrade))
	r.Add("upgrades per second (ramp, paced by the load generator)", res.upgradesPerS, "/s", "", 0, "")
	r.Add(fmt.Sprintf("%s OS threads at %d", who, res.n), float64(res.top.Threads), "", "", 0, "")
	r.Add(fmt.Sprintf("%s goroutines at %d", who, res.n), float64(res.top.Goroutine), "", "", 0, "")
}

// memSeries is a chart series of Go heap+stack and RSS (MiB) against
// connections.
func memSeries(who string, pts []memPoint) []report.Series {
	g, rss := report.Series{Name: who + " Go heap+stack"}, report.Series{Name: who + " RSS"}
	for _, p := range pts {
		g.Points = append(g.Points, [2]float64{float64(p.Conns), float64(p.Go) / (1 << 20)})
		rss.Points = append(rss.Points, [2]float64{float64(p.Conns), float64(p.RSS) / (1 << 20)})
	}
	return []report.Series{g, rss}
}

// fanoutResult is what the broadcast rounds measured.
type fanoutResult struct {
	n, rounds, complete    int
	median, worst          float64 // ms until the last client had it
	userPer, sysPer        float64 // µs of server CPU per delivery
	deliveriesPerS         []float64
	deliveredPerSecondMean float64
	compressed             int64 // messages the clients got compressed (over the whole run so far)
}

// fanout broadcasts rounds times to everybody connected; each round's
// payload carries its send time, each client records its arrival.
func (g *rig) fanout(rounds int) (fanoutResult, error) {
	res, err := g.fanoutRun(rounds)
	if err == nil {
		err = g.d.exited()
	}
	return res, err
}

func (g *rig) fanoutRun(rounds int) (fanoutResult, error) {
	n := g.total()
	res := fanoutResult{n: n, rounds: rounds}
	progress("broadcasting %d rounds to %d connections", rounds, n)
	var bUser, bSys float64
	var delivered int64
	var idleUser, idleSys float64 // server CPU seconds per second at rest (settle mode)
	if g.settle > 0 {
		time.Sleep(time.Second)
		i0, _ := sample.Read(g.d.pid(), "", "")
		t0 := time.Now()
		time.Sleep(g.settle)
		i1, _ := sample.Read(g.d.pid(), "", "")
		el := time.Since(t0).Seconds()
		idleUser, idleSys = (i1.UserSec-i0.UserSec)/el, (i1.SysSec-i0.SysSec)/el
	}
	for i := 1; i <= rounds; i++ {
		time.Sleep(time.Second) // let the previous round's clients finish reading
		b0, _ := sample.Read(g.d.pid(), "", "")
		t0 := time.Now()
		payload := fmt.Sprintf(`{"b":%d,"t":%d%s}`, i, time.Now().UnixNano(), g.pad)
		conns, err := g.broadcast(context.Background(), []byte(payload))
		if err != nil {
			return res, fmt.Errorf("broadcast: %w", err)
		}
		if g.settle > 0 {
			// The frames may still be on their way: take the CPU until
			// settle after the call, less what the server spends at rest.
			time.Sleep(time.Until(t0.Add(g.settle)))
		}
		// Without settle the call returns when every frame is written:
		// the CPU between the two samples is the fan-out's.
		b1, _ := sample.Read(g.d.pid(), "", "")
		el := time.Since(t0).Seconds()
		delivered += int64(conns)
		if g.settle > 0 {
			bUser += max(b1.UserSec-b0.UserSec-idleUser*el, 0)
			bSys += max(b1.SysSec-b0.SysSec-idleSys*el, 0)
		} else {
			bUser += b1.UserSec - b0.UserSec
			bSys += b1.SysSec - b0.SysSec
		}
	}
	time.Sleep(time.Second)
	evs, err := g.reports()
	if err != nil {
		return res, err
	}
	arrivals := map[int64]*loadgen.Arrival{}
	for _, ev := range evs {
		res.compressed += ev.Compressed
		for id, a := range ev.Bcast {
			x := arrivals[id]
			if x == nil {
				arrivals[id] = a
				continue
			}
			x.Count += a.Count
			x.Last = max(x.Last, a.Last)
		}
	}
	lasts := loadgen.NewHist()
	ids := make([]int64, 0, len(arrivals))
	for id := range arrivals {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	var sum float64
	for _, id := range ids {
		a := arrivals[id]
		if a.Count == int64(n) {
			res.complete++
		}
		lasts.Add(a.Last - a.Sent)
		dps := float64(a.Count) / (float64(a.Last-a.Sent) / 1e9)
		res.deliveriesPerS = append(res.deliveriesPerS, dps)
		sum += dps
	}
	res.deliveredPerSecondMean = sum / float64(max(len(ids), 1))
	if g.settle > 0 {
		delivered = 0
		for _, a := range arrivals {
			delivered += a.Count
		}
	}
	res.median, res.worst = float64(lasts.Quantile(0.5))/1e6, float64(lasts.Max)/1e6
	res.userPer = bUser / float64(max(delivered, 1)) * 1e6
	res.sysPer = bSys / float64(max(delivered, 1)) * 1e6
	return res, nil
}

func (res fanoutResult) add(r *report.Run, who string, withTargets bool) {
	tgt := func(cmp string) string {
		if withTargets {
			return cmp
		}
		return ""
	}
	r.Add(fmt.Sprintf("broadcast to %d: time until the last client has it (median of %d)", res.n, res.rounds),
		res.median, "ms", tgt("<="), 100, fmt.Sprintf("worst %.1f ms", res.worst))
	r.Add("broadcast rounds reaching every client", float64(res.complete), "", ">=", float64(res.rounds), "")
	r.Add("deliveries per second (mean over rounds, send → last client)", res.deliveredPerSecondMean, "/s", "", 0, "")
	r.Add(who+" user CPU per broadcast delivery", res.userPer, "µs", tgt("<="), 0.3, "")
	r.Add(who+" kernel CPU per broadcast delivery (loopback write)", res.sysPer, "µs", "", 0, "")
}

func (res fanoutResult) series(who string) report.Series {
	s := report.Series{Name: who}
	for i, v := range res.deliveriesPerS {
		s.Points = append(s.Points, [2]float64{float64(i + 1), v})
	}
	return s
}

// unicastResult is what the unicast phase measured.
type unicastResult struct {
	rate, n         int
	hist            loadgen.Hist
	sent, errs      int64
	achieved        float64
	cpuPerMsg       float64 // µs of server CPU per delivered message
	userPerMsg      float64
	publishers      int
	duration        time.Duration
	deliveredOfSent float64
	// Cores busy over the phase (CPU seconds per second, 1 = one core):
	// the server, this process (the publishers) and the load-generator
	// workers, which all share the machine.
	serverCores, publisherCores, clientCores float64
}

// workersCPU is the user+system CPU seconds of all load-generator workers.
func (g *rig) workersCPU() float64 {
	var t float64
	for _, w := range g.wk {
		if s, err := sample.Read(w.cmd.Process.Pid, "", ""); err == nil {
			t += s.CPU()
		}
	}
	return t
}

// unicast publishes at rate for dur to random connected users, each
// payload carrying its send time; the workers' histograms are merged.
func (g *rig) unicast(rate int, dur time.Duration, publishers int) (unicastResult, error) {
	res, err := g.unicastRun(rate, dur, publishers)
	if err == nil {
		// A server that died mid-step leaves figures of nothing: say so
		// instead of reporting them as measurements.
		err = g.d.exited()
	}
	return res, err
}

func (g *rig) unicastRun(rate int, dur time.Duration, publishers int) (unicastResult, error) {
	uids := g.uids()
	res := unicastResult{rate: rate, n: len(uids), publishers: publishers, duration: dur}
	if _, err := g.reports(); err != nil { // reset
		return res, err
	}
	progress("unicast %d msg/s for %v", rate, dur)
	var sent, errs atomic.Int64
	total := int(float64(rate) * dur.Seconds())
	interval := time.Duration(float64(time.Second) / float64(rate))
	var idleUser, idleCPU float64 // server CPU seconds per second at rest (settle mode)
	if g.settle > 0 {
		i0, _ := sample.Read(g.d.pid(), "", "")
		t0 := time.Now()
		time.Sleep(g.settle)
		i1, _ := sample.Read(g.d.pid(), "", "")
		el := time.Since(t0).Seconds()
		idleUser, idleCPU = (i1.UserSec-i0.UserSec)/el, (i1.CPU()-i0.CPU())/el
	}
	c0, _ := sample.Read(g.d.pid(), "", "")
	p0, _ := sample.Read(os.Getpid(), "", "")
	w0 := g.workersCPU()
	t0 := time.Now()
	start := time.Now().Add(50 * time.Millisecond)
	var wg sync.WaitGroup
	for p := 0; p < publishers; p++ {
		wg.Add(1)
		go func(p int) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(p), 7))
			for i := p; i < total; i += publishers {
				if d := time.Until(start.Add(time.Duration(i) * interval)); d > 0 {
					time.Sleep(d)
				}
				payload := fmt.Sprintf(`{"t":%d}`, time.Now().UnixNano())
				if err := g.publish(context.Background(), uids[rng.IntN(len(uids))], []byte(payload)); err != nil {
					errs.Add(1)
					continue
				}
				sent.Add(1)
			}
		}(p)
	}
	wg.Wait()
	res.achieved = float64(sent.Load()) / time.Since(start).Seconds()
	time.Sleep(time.Second)
	c1, _ := sample.Read(g.d.pid(), "", "")
	p1, _ := sample.Read(os.Getpid(), "", "")
	w1 := g.workersCPU()
	el := time.Since(t0).Seconds()
	res.serverCores, res.publisherCores, res.clientCores = (c1.CPU()-c0.CPU())/el, (p1.CPU()-p0.CPU())/el, (w1-w0)/el
	evs, err := g.reports()
	if err != nil {
		return res, err
	}
	res.hist = loadgen.NewHist()
	for _, ev := range evs {
		if ev.Hist != nil {
			res.hist.Merge(*ev.Hist)
		}
	}
	res.sent, res.errs = sent.Load(), errs.Load()
	// In settle mode what the server spends at rest over the phase is not
	// the messages' (it dominates at low rates).
	res.cpuPerMsg = max(c1.CPU()-c0.CPU()-idleCPU*el, 0) / float64(max(res.hist.N, 1)) * 1e6
	res.userPerMsg = max(c1.UserSec-c0.UserSec-idleUser*el, 0) / float64(max(res.hist.N, 1)) * 1e6
	res.deliveredOfSent = float64(res.hist.N) / float64(max(res.sent, 1))
	return res, nil
}

func (res unicastResult) add(r *report.Run, who string, withTargets bool) {
	tgt := func(cmp string) string {
		if withTargets {
			return cmp
		}
		return ""
	}
	h := res.hist
	r.Add("unicast publish→receive p50", float64(h.Quantile(0.5))/1e6, "ms", "", 0, "")
	r.Add(fmt.Sprintf("unicast publish→receive p99 at %d msg/s over %d connections", res.rate, res.n), float64(h.Quantile(0.99))/1e6, "ms", tgt("<="), 2, "")
	r.Add("unicast publish→receive p99.9", float64(h.Quantile(0.999))/1e6, "ms", "", 0, "")
	r.Add("unicast publish→receive max", float64(h.Max)/1e6, "ms", "", 0, "")
	r.Add("unicast achieved publish rate", res.achieved, "/s", ">=", float64(res.rate)*0.98, "")
	r.Add("unicast delivered / sent", res.deliveredOfSent, "", ">=", 1, fmt.Sprintf("%d/%d, %d publish errors", h.N, res.sent, res.errs))
	r.Add(who+" CPU per unicast message (user+sys)", res.cpuPerMsg, "µs", "", 0, fmt.Sprintf("user %.2f µs", res.userPerMsg))
}

func (res unicastResult) series(who string) report.Series {
	return report.Series{Name: who, Points: res.hist.CDF()}
}
