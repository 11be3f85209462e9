package main

import (
	"context"
	"flag"
	"fmt"
	"math"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/pushcluster/push/bench/report"
	"github.com/pushcluster/push/pkg/flagenv"
)

// peerNames are the servers `peers` and `sweep` know, with the label their
// figures carry.
var peerNames = map[string]string{"edge": "edge", "centrifugo": "Centrifugo", "gorilla": "gorilla"}

// peerOpts says how to start any of the peers and their load generators.
type peerOpts struct {
	edgeBin, edgeArgs, centrifugoBin string
	sources                          string
	workers, stride                  int
	settle                           time.Duration
}

// peer is one server under test with its rig.
type peer struct {
	name, label string
	g           *rig
	api         *centrifugoAPI // Centrifugo only
}

func (p *peer) close() {
	p.g.close()
	if p.api != nil {
		p.api.close()
	}
	p.g.d.stop()
}

// startPeer starts the named server on its fixed ports and the load
// generators for it. Every peer is loaded the same way: the same worker
// processes and source addresses, the same publisher goroutines; the edge
// and the gorilla baseline are published to through the Go SDK
// (pkg/client, push.v1 gRPC), Centrifugo through its server HTTP API.
func startPeer(name string, o peerOpts) (*peer, error) {
	p := &peer{name: name, label: peerNames[name]}
	switch name {
	case "edge":
		const ws, grpcAddr, admin = "127.0.0.1:18080", "127.0.0.1:19090", "127.0.0.1:19100"
		d, err := startDaemon("edge", o.edgeBin, append([]string{"--listen", ws, "--grpc", grpcAddr, "--admin", admin,
			"--max-conns", "200000", "--log-level", "warn", "--drain-period", "1s"}, strings.Fields(o.edgeArgs)...), nil, admin)
		if err != nil {
			return nil, err
		}
		if p.g, err = newRig(d, ws, grpcAddr, admin, "e", o.sources, o.workers, o.stride); err != nil {
			d.stop()
			return nil, err
		}
	case "gorilla":
		self, err := os.Executable()
		if err != nil {
			return nil, err
		}
		const ws, grpcAddr, admin = "127.0.0.1:18380", "127.0.0.1:19390", "127.0.0.1:19400"
		d, err := startDaemon("baseline", self, []string{"baseline-server", "--listen", ws, "--grpc", grpcAddr, "--admin", admin}, nil, admin)
		if err != nil {
			return nil, err
		}
		if p.g, err = newRig(d, ws, grpcAddr, admin, "g", o.sources, o.workers, o.stride); err != nil {
			d.stop()
			return nil, err
		}
	case "centrifugo":
		d, api, err := startCentrifugo(o.centrifugoBin, os.Getenv("PUSH_JWT_SECRET"))
		if err != nil {
			return nil, err
		}
		if p.g, err = newRig(d, centrifugoWS, "", centrifugoAdmin, "c", o.sources, o.workers, o.stride, "--centrifugo"); err != nil {
			api.close()
			d.stop()
			return nil, err
		}
		p.api = api
		p.g.publish = func(ctx context.Context, uid string, payload []byte) error { return api.publish(ctx, "#"+uid, payload) }
		p.g.broadcast = func(ctx context.Context, payload []byte) (int, error) {
			return -1, api.publish(ctx, centrifugoAll, payload)
		}
	default:
		return nil, fmt.Errorf("unknown server %q (edge, centrifugo, gorilla)", name)
	}
	p.g.settle = o.settle
	return p, nil
}

// open opens count more clients at rate and, for Centrifugo, waits until
// the node counts every one as connected (a refused connect request
// closes the socket after the upgrade, which the load generator alone
// would not notice).
func (p *peer) open(count, rate int) error {
	if err := p.g.open(count, rate); err != nil {
		return fmt.Errorf("%s: %w", p.label, err)
	}
	return p.settled()
}

func (p *peer) settled() error {
	if p.name != "centrifugo" {
		return nil
	}
	want := p.g.total()
	deadline := time.Now().Add(15 * time.Second)
	for {
		n, err := centrifugoClients()
		if err == nil && n == want {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("Centrifugo counts %d connected clients, want %d (err %v)", n, want, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// rateStep is one unicast rate tried while looking for saturation.
type rateStep struct {
	Rate       int     `json:"rate"`
	Achieved   float64 `json:"achieved"`
	Delivered  float64 `json:"delivered_of_sent"`
	Errors     int64   `json:"errors"`
	P50        float64 `json:"p50_ms"`
	P99        float64 `json:"p99_ms"`
	CPUPerMsg  float64 `json:"cpu_us_per_msg"`
	UserPerMsg float64 `json:"user_us_per_msg"`
	OK         bool    `json:"ok"`
	Why        string  `json:"why,omitempty"`
	// Cores busy during the step: the server, the publishing process and
	// the load generators (they share the machine's cores).
	ServerCores    float64 `json:"server_cores"`
	PublisherCores float64 `json:"publisher_cores"`
	ClientCores    float64 `json:"client_cores"`
}

// cores says where the machine's CPU went during the step.
func (st rateStep) cores() string {
	return fmt.Sprintf("cores busy: server %.2f, publisher %.2f, clients %.2f", st.ServerCores, st.PublisherCores, st.ClientCores)
}

// saturation is the highest unicast rate a server sustained.
type saturation struct {
	Best      int        `json:"best"`       // highest rate that passed (0: none)
	FirstFail int        `json:"first_fail"` // lowest rate that failed (0: none up to the limit)
	Steps     []rateStep `json:"steps"`
}

// satRules decide when a step fails: the publishers could not keep the
// rate (the server answered too slowly), messages were still missing a
// second after the last publish (delivery fell behind), any publish
// failed, or p99 passed maxP99.
type satRules struct {
	dur        time.Duration
	publishers int
	maxP99     time.Duration
	factor     float64
	limit      int
	bisect     int
}

func (s satRules) judge(st *rateStep) {
	switch {
	case st.Achieved < 0.95*float64(st.Rate):
		st.Why = fmt.Sprintf("publishers reached %.0f/s", st.Achieved)
	case st.Delivered < 0.999:
		st.Why = fmt.Sprintf("delivered %.4f of sent a second after the last publish", st.Delivered)
	case st.Errors > 0:
		st.Why = fmt.Sprintf("%d publish errors", st.Errors)
	case st.P99 > float64(s.maxP99)/1e6:
		st.Why = fmt.Sprintf("p99 %.1f ms > %v", st.P99, s.maxP99)
	default:
		st.OK = true
	}
}

// step publishes at rate for s.dur to p and judges it.
func (s satRules) step(p *peer, rate int) (rateStep, error) {
	uc, err := p.g.unicast(rate, s.dur, s.publishers)
	if err != nil {
		return rateStep{}, fmt.Errorf("%s: unicast %d/s: %w", p.label, rate, err)
	}
	st := rateStep{Rate: rate, Achieved: uc.achieved, Delivered: uc.deliveredOfSent, Errors: uc.errs,
		P50: float64(uc.hist.Quantile(0.5)) / 1e6, P99: float64(uc.hist.Quantile(0.99)) / 1e6,
		CPUPerMsg: uc.cpuPerMsg, UserPerMsg: uc.userPerMsg,
		ServerCores: uc.serverCores, PublisherCores: uc.publisherCores, ClientCores: uc.clientCores}
	s.judge(&st)
	verdict := "ok"
	if !st.OK {
		verdict = "falls behind: " + st.Why
	}
	progress("%s: %d msg/s: p50 %.2f ms, p99 %.2f ms, %.1f µs CPU/msg, %s; %s", p.label, rate, st.P50, st.P99, st.CPUPerMsg, st.cores(), verdict)
	return st, nil
}

// saturate tries the rates in order (stopping at the first that fails,
// unless all is set: a sweep draws every listed rate), then, while they all
// pass, keeps multiplying the last by s.factor up to s.limit; finally it
// bisects s.bisect times between the best passing rate below the first
// failing one and that one.
// measure runs and judges one step (satRules.step on a peer; a fake in
// tests).
func (s satRules) saturate(measure func(rate int) (rateStep, error), rates []int, all bool) (saturation, error) {
	var sat saturation
	try := func(rate int) (bool, error) {
		st, err := measure(rate)
		if err != nil {
			return false, err
		}
		sat.Steps = append(sat.Steps, st)
		if !st.OK && (sat.FirstFail == 0 || rate < sat.FirstFail) {
			sat.FirstFail = rate
		}
		return st.OK, nil
	}
	last := 0
	for _, r := range rates {
		ok, err := try(r)
		if err != nil {
			return sat, err
		}
		if !ok && !all {
			break
		}
		if ok && sat.FirstFail == 0 {
			last = r
		}
	}
	if sat.FirstFail == 0 && last > 0 {
		for r := int(float64(last) * s.factor); r <= s.limit; r = int(float64(r) * s.factor) {
			ok, err := try(r)
			if err != nil {
				return sat, err
			}
			if !ok {
				break
			}
		}
	}
	// Best below the first failure: with all, a later listed rate may
	// have passed by luck after an earlier one failed.
	below := func() int {
		b := 0
		for _, st := range sat.Steps {
			if st.OK && st.Rate < sat.FirstFail {
				b = max(b, st.Rate)
			}
		}
		return b
	}
	for i := 0; i < s.bisect && sat.FirstFail > 0 && sat.FirstFail-below() > sat.FirstFail/20; i++ {
		mid := (below() + sat.FirstFail) / 2
		if _, err := try(mid); err != nil {
			return sat, err
		}
	}
	sat.Best = below()
	if sat.FirstFail == 0 {
		for _, st := range sat.Steps {
			sat.Best = max(sat.Best, st.Rate)
		}
	}
	return sat, nil
}

// peerResult is everything `peers` measured on one server.
type peerResult struct {
	ramp rampResult
	fo   fanoutResult
	uc   []unicastResult
	sat  saturation
}

func parseRates(s string) ([]int, error) {
	var out []int
	for _, f := range splitList(s) {
		v, err := strconv.Atoi(f)
		if err != nil || v <= 0 {
			return nil, fmt.Errorf("bad rate %q", f)
		}
		out = append(out, v)
	}
	return out, nil
}

// runPeers runs the same load against each server in turn, in one run:
// ramp (bytes per idle connection, CPU per upgrade), broadcasts, unicast at
// fixed rates, then the highest sustained unicast rate; it prints every
// figure per server and the edge/Centrifugo ratios.
func runPeers(args []string) error {
	fs := flag.NewFlagSet("pushbench peers", flag.ContinueOnError)
	servers := fs.String("servers", "edge,centrifugo,gorilla", "servers to measure, in order (edge, centrifugo, gorilla)")
	edgeBin := fs.String("edge-bin", "bin/edge", "edge binary")
	cfBin := fs.String("centrifugo-bin", "bin/centrifugo", "Centrifugo binary (scripts/centrifugo.sh installs v6.9.1 there)")
	n := fs.Int("n", 19000, "idle connections at the top of the ramp, for each server (one process holds at most ~19,900 here)")
	base := fs.Int("base", 1000, "connections at the bottom of the slope")
	steps := fs.Int("steps", 3, "ramp steps (memory chart points)")
	workers := fs.Int("workers", 2, "load-generator processes")
	rate := fs.Int("rate", 3000, "upgrades per second while ramping")
	sources := fs.String("sources", "127.0.0.2-127.0.0.41", "client source addresses")
	broadcasts := fs.Int("broadcasts", 5, "broadcast rounds to everybody")
	settle := fs.Duration("settle", time.Second, "broadcast CPU is taken from the call until this long after it, less the server's CPU at rest (Centrifugo's call returns before the frames are written)")
	uniRates := fs.String("unicast-rates", "1000,10000", "fixed unicast rates (msg/s) for p50/p99 and CPU per message")
	uniDur := fs.Duration("unicast-duration", 5*time.Second, "length of each fixed-rate phase")
	publishers := fs.Int("publishers", 64, "concurrent publisher goroutines (SDK calls or HTTP API requests in flight)")
	maxStart := fs.Int("max-start", 10000, "first rate of the saturation search (msg/s)")
	maxFactor := fs.Float64("max-factor", 1.4, "saturation search: next rate = rate × this while it holds")
	maxDur := fs.Duration("max-duration", 3*time.Second, "length of each saturation step")
	maxP99 := fs.Duration("max-p99", 50*time.Millisecond, "a saturation step fails when p99 exceeds this (or the rate is not kept, or delivery falls behind)")
	maxLimit := fs.Int("max-limit", 200000, "highest rate the saturation search tries")
	out := fs.String("out", "bench/results", "results directory")
	edgeArgs := fs.String("edge-args", "", "extra edge flags, space-separated")
	flagenv.SetUsage(fs, "PUSHBENCH", "pushbench peers [flags]",
		"Runs the same ramp, broadcast and unicast load against the edge, Centrifugo v6 (memory engine, uni_websocket, personal channel per user; bin/centrifugo from scripts/centrifugo.sh) and the gorilla baseline, one after the other, and prints each figure per server and edge/Centrifugo ratios.")
	if _, err := flagenv.Parse(fs, "PUSHBENCH", args, nil); err != nil {
		return err
	}
	if *n <= *base || *base < 1 || *steps < 1 {
		return fmt.Errorf("--n %d must exceed --base %d >= 1, --steps >= 1", *n, *base)
	}
	rates, err := parseRates(*uniRates)
	if err != nil {
		return err
	}
	names := splitList(*servers)
	for _, s := range names {
		if peerNames[s] == "" {
			return fmt.Errorf("unknown server %q (edge, centrifugo, gorilla)", s)
		}
	}
	os.Setenv("PUSH_JWT_SECRET", newSecret())
	o := peerOpts{edgeBin: *edgeBin, edgeArgs: *edgeArgs, centrifugoBin: *cfBin, sources: *sources, workers: *workers, stride: *n, settle: *settle}
	rules := satRules{dur: *maxDur, publishers: *publishers, maxP99: *maxP99, factor: *maxFactor, limit: *maxLimit, bisect: 2}
	r := report.New("peers", map[string]any{"servers": names, "n": *n, "base": *base, "workers": *workers, "rate": *rate,
		"broadcasts": *broadcasts, "settle": settle.String(), "unicast_rates": rates, "unicast_duration": uniDur.String(), "publishers": *publishers,
		"max_start": *maxStart, "max_factor": *maxFactor, "max_duration": maxDur.String(), "max_p99": maxP99.String(),
		"centrifugo": centrifugoVersion(*cfBin)})

	res := map[string]*peerResult{}
	for _, name := range names {
		t0 := time.Now()
		p, err := startPeer(name, o)
		if err != nil {
			return err
		}
		pr, err := measurePeer(p, r, *base, *n, *rate, *steps, *broadcasts, rates, *uniDur, *publishers, rules, *maxStart)
		p.close()
		if err != nil {
			return err
		}
		res[name] = pr
		progress("%s measured in %.0f s", p.label, time.Since(t0).Seconds())
	}
	addPeerFigures(r, names, res, *base, *n, rates)
	return finish(r, *out)
}

// measurePeer runs the peers phases on one server.
func measurePeer(p *peer, r *report.Run, base, n, rate, steps, broadcasts int, rates []int, dur time.Duration, publishers int, rules satRules, maxStart int) (*peerResult, error) {
	pr := &peerResult{}
	var err error
	progress("%s: ramp", p.label)
	// ramp opens through the rig; Centrifugo's count is checked after.
	if pr.ramp, err = p.g.ramp(r, base, n, rate, steps); err != nil {
		return nil, fmt.Errorf("%s: %w", p.label, err)
	}
	if err := p.settled(); err != nil {
		return nil, err
	}
	if pr.fo, err = p.g.fanout(broadcasts); err != nil {
		return nil, fmt.Errorf("%s: %w", p.label, err)
	}
	for _, rt := range rates {
		uc, err := p.g.unicast(rt, dur, publishers)
		if err != nil {
			return nil, fmt.Errorf("%s: unicast %d/s: %w", p.label, rt, err)
		}
		progress("%s: %d msg/s: p50 %.2f ms, p99 %.2f ms, delivered %d/%d, %.1f µs CPU/msg", p.label, rt,
			float64(uc.hist.Quantile(0.5))/1e6, float64(uc.hist.Quantile(0.99))/1e6, uc.hist.N, uc.sent, uc.cpuPerMsg)
		pr.uc = append(pr.uc, uc)
	}
	progress("%s: looking for the highest sustained unicast rate", p.label)
	if pr.sat, err = rules.saturate(func(rate int) (rateStep, error) { return rules.step(p, rate) }, []int{maxStart}, false); err != nil {
		return nil, err
	}
	r.Raw[p.name+"_saturation"] = pr.sat
	return pr, nil
}

// addPeerFigures records one figure per server and measure, the
// edge/Centrifugo ratio of each, a side-by-side table and the charts.
func addPeerFigures(r *report.Run, names []string, res map[string]*peerResult, base, n int, rates []int) {
	cols := []string{"figure"}
	for _, nm := range names {
		cols = append(cols, peerNames[nm])
	}
	_, haveE := res["edge"]
	_, haveC := res["centrifugo"]
	if haveE && haveC {
		cols = append(cols, "edge / Centrifugo")
	}
	tbl := report.Table{Title: fmt.Sprintf("Side by side (%d connections each; ratios below 1: the edge is cheaper or faster)", n), Columns: cols}
	row := func(label, unit string, val func(*peerResult) float64, note func(*peerResult) string) {
		cells := []string{label}
		for _, nm := range names {
			v := val(res[nm])
			nt := ""
			if note != nil {
				nt = note(res[nm])
			}
			r.Add(label+": "+peerNames[nm], v, unit, "", 0, nt)
			c := fmtVal(v, unit)
			if nt != "" {
				c += " (" + nt + ")"
			}
			cells = append(cells, c)
		}
		if haveE && haveC {
			e, c := val(res["edge"]), val(res["centrifugo"])
			ratio := 0.0
			if c != 0 {
				ratio = e / c
			}
			r.Add(label+": edge / Centrifugo", ratio, "×", "", 0, "")
			cells = append(cells, fmtVal(ratio, "×"))
		}
		tbl.Rows = append(tbl.Rows, cells)
	}
	row(fmt.Sprintf("Go heap+stack per idle connection (slope %d→%d)", base, n), "B", func(p *peerResult) float64 { return p.ramp.goSlope }, nil)
	row("RSS per idle connection (slope)", "B", func(p *peerResult) float64 { return p.ramp.rssSlope }, nil)
	row(fmt.Sprintf("goroutines at %d", n), "", func(p *peerResult) float64 { return float64(p.ramp.top.Goroutine) }, nil)
	row(fmt.Sprintf("OS threads at %d", n), "", func(p *peerResult) float64 { return float64(p.ramp.top.Threads) }, nil)
	row("CPU per upgrade (user+sys)", "µs", func(p *peerResult) float64 { return p.ramp.cpuPerUpgrade },
		func(p *peerResult) string { return fmt.Sprintf("user %.1f", p.ramp.userPerUpgrade) })
	row(fmt.Sprintf("broadcast to %d: time to the last client (median)", n), "ms", func(p *peerResult) float64 { return p.fo.median },
		func(p *peerResult) string {
			return fmt.Sprintf("worst %.1f, %d/%d rounds complete", p.fo.worst, p.fo.complete, p.fo.rounds)
		})
	row("CPU per broadcast delivery (user+sys)", "µs", func(p *peerResult) float64 { return p.fo.userPer + p.fo.sysPer },
		func(p *peerResult) string { return fmt.Sprintf("user %.2f", p.fo.userPer) })
	for i, rt := range rates {
		i := i
		row(fmt.Sprintf("unicast p50 at %d msg/s", rt), "ms", func(p *peerResult) float64 { return float64(p.uc[i].hist.Quantile(0.5)) / 1e6 }, nil)
		row(fmt.Sprintf("unicast p99 at %d msg/s", rt), "ms", func(p *peerResult) float64 { return float64(p.uc[i].hist.Quantile(0.99)) / 1e6 },
			func(p *peerResult) string {
				return fmt.Sprintf("delivered %d/%d, %d errors", p.uc[i].hist.N, p.uc[i].sent, p.uc[i].errs)
			})
		row(fmt.Sprintf("CPU per unicast message at %d msg/s (user+sys)", rt), "µs", func(p *peerResult) float64 { return p.uc[i].cpuPerMsg },
			func(p *peerResult) string { return fmt.Sprintf("user %.2f", p.uc[i].userPerMsg) })
	}
	row("maximum sustained unicast rate", "/s", func(p *peerResult) float64 { return float64(p.sat.Best) },
		func(p *peerResult) string {
			if p.sat.FirstFail == 0 {
				return "no step failed up to the search limit"
			}
			for _, st := range p.sat.Steps {
				if st.Rate == p.sat.FirstFail {
					return fmt.Sprintf("%d/s fell behind: %s; %s", st.Rate, st.Why, st.cores())
				}
			}
			return ""
		})
	r.AddTable(tbl)

	var mem, cdf, cpu, p99 []report.Series
	top := len(rates) - 1
	for _, nm := range names {
		p := res[nm]
		mem = append(mem, memSeries(peerNames[nm], p.ramp.points)...)
		if top >= 0 {
			cdf = append(cdf, p.uc[top].series(peerNames[nm]))
		}
		c, l := report.Series{Name: peerNames[nm]}, report.Series{Name: peerNames[nm]}
		for _, st := range sortedSteps(p.sat.Steps) {
			c.Points = append(c.Points, [2]float64{float64(st.Rate), st.CPUPerMsg})
			l.Points = append(l.Points, [2]float64{float64(st.Rate), st.P99})
		}
		cpu, p99 = append(cpu, c), append(p99, l)
	}
	r.AddChart(report.Chart{Name: "memory", Title: "memory against idle connections", X: "connections", Y: "MiB", Series: mem})
	if top >= 0 {
		r.AddChart(report.Chart{Name: "latency-cdf", Title: fmt.Sprintf("unicast publish→receive at %d msg/s over %d connections", rates[top], n),
			X: "latency (ms, log)", Y: "fraction of messages", LogX: true, Series: cdf})
	}
	r.AddChart(report.Chart{Name: "cpu-per-message", Title: "server CPU per unicast message against rate (saturation search)", X: "msg/s", Y: "µs per message", Series: cpu, LegendRight: true})
	r.AddChart(report.Chart{Name: "p99", Title: "unicast p99 against rate (saturation search)", X: "msg/s", Y: "p99 (ms, log)", LogY: true, Series: p99})
}

// sortedSteps orders saturation steps by rate (bisection adds them out of
// order).
func sortedSteps(in []rateStep) []rateStep {
	out := append([]rateStep(nil), in...)
	for i := 1; i < len(out); i++ {
		for j := i; j > 0 && out[j].Rate < out[j-1].Rate; j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out
}

// fmtVal prints v the way the figure table does.
func fmtVal(v float64, unit string) string {
	var s string
	switch {
	case v == math.Trunc(v) || math.Abs(v) >= 100:
		s = strconv.FormatFloat(v, 'f', 0, 64)
	case math.Abs(v) >= 1:
		s = strconv.FormatFloat(v, 'f', 2, 64)
	default:
		s = strconv.FormatFloat(v, 'f', 3, 64)
	}
	if unit != "" {
		s += " " + unit
	}
	return s
}

// centrifugoVersion is what `centrifugo version` prints, for the record.
func centrifugoVersion(bin string) string {
	out, err := exec.Command(bin, "version").Output()
	if err != nil {
		return "unknown: " + err.Error()
	}
	return strings.TrimSpace(string(out))
}
