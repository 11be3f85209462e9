package main

import (
	"flag"
	"fmt"
	"os"
	"sort"
	"time"

	"github.com/pushcluster/push/bench/report"
	"github.com/pushcluster/push/pkg/flagenv"
)

// sweepBroadcast is one audience size of the broadcast sweep.
type sweepBroadcast struct {
	Conns    int     `json:"conns"`
	Median   float64 `json:"median_ms"`
	Worst    float64 `json:"worst_ms"`
	Complete int     `json:"complete_rounds"`
	Rounds   int     `json:"rounds"`
	CPUPer   float64 `json:"cpu_us_per_delivery"`
	UserPer  float64 `json:"user_us_per_delivery"`
}

// sweepResult is what `sweep` measured on one server.
type sweepResult struct {
	Broadcast []sweepBroadcast `json:"broadcast"`
	Unicast   saturation       `json:"unicast"`
}

// runSweep measures how cost and latency grow with load on the edge and
// on Centrifugo: broadcast to growing audiences on one process set, then a
// unicast rate sweep over the largest audience up to saturation.
func runSweep(args []string) error {
	fs := flag.NewFlagSet("pushbench sweep", flag.ContinueOnError)
	servers := fs.String("servers", "edge,centrifugo", "servers to measure, in order (edge, centrifugo, gorilla)")
	edgeBin := fs.String("edge-bin", "bin/edge", "edge binary")
	cfBin := fs.String("centrifugo-bin", "bin/centrifugo", "Centrifugo binary (scripts/centrifugo.sh installs v6.9.1 there)")
	sizes := fs.String("sizes", "5000,10000,19000", "broadcast audiences, ascending (connections; the last is also the unicast audience)")
	n := fs.Int("n", 0, "when set, the largest audience: --sizes above it are dropped (make bench SCENARIO=sweep N=…)")
	workers := fs.Int("workers", 2, "load-generator processes")
	rate := fs.Int("rate", 3000, "upgrades per second while ramping")
	sources := fs.String("sources", "127.0.0.2-127.0.0.41", "client source addresses")
	broadcasts := fs.Int("broadcasts", 3, "broadcast rounds per audience")
	settle := fs.Duration("settle", time.Second, "broadcast CPU is taken from the call until this long after it, less the server's CPU at rest")
	uniRates := fs.String("unicast-rates", "1000,5000,10000,20000", "unicast rates (msg/s) measured on every server, then stepped up by --factor while they hold")
	uniDur := fs.Duration("unicast-duration", 4*time.Second, "length of each unicast step")
	publishers := fs.Int("publishers", 64, "concurrent publisher goroutines (SDK calls or HTTP API requests in flight)")
	factor := fs.Float64("factor", 1.4, "beyond the listed rates: next rate = rate × this while it holds")
	maxP99 := fs.Duration("max-p99", 50*time.Millisecond, "a step fails (saturation) when p99 exceeds this, the rate is not kept, any publish fails, or messages are missing a second after the last publish")
	limit := fs.Int("max-limit", 200000, "highest rate tried")
	bisect := fs.Int("bisect", 2, "bisection steps between the last rate held and the first that failed")
	out := fs.String("out", "bench/results", "results directory")
	edgeArgs := fs.String("edge-args", "", "extra edge flags, space-separated")
	flagenv.SetUsage(fs, "PUSHBENCH", "pushbench sweep [flags]",
		"Sweeps broadcast audience and unicast rate on the edge and on Centrifugo v6 (bin/centrifugo from scripts/centrifugo.sh) and plots CPU per message and latency against load.")
	if _, err := flagenv.Parse(fs, "PUSHBENCH", args, nil); err != nil {
		return err
	}
	audiences, err := parseRates(*sizes)
	if err != nil {
		return fmt.Errorf("--sizes: %w", err)
	}
	if *n > 0 {
		var keep []int
		for _, a := range audiences {
			if a < *n {
				keep = append(keep, a)
			}
		}
		audiences = append(keep, *n)
	}
	if !sort.IntsAreSorted(audiences) {
		return fmt.Errorf("--sizes %v must ascend", audiences)
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
	top := audiences[len(audiences)-1]
	os.Setenv("PUSH_JWT_SECRET", newSecret())
	o := peerOpts{edgeBin: *edgeBin, edgeArgs: *edgeArgs, centrifugoBin: *cfBin, sources: *sources, workers: *workers, stride: top, settle: *settle}
	rules := satRules{dur: *uniDur, publishers: *publishers, maxP99: *maxP99, factor: *factor, limit: *limit, bisect: *bisect}
	r := report.New("sweep", map[string]any{"servers": names, "sizes": audiences, "workers": *workers, "rate": *rate,
		"broadcasts": *broadcasts, "settle": settle.String(), "unicast_rates": rates, "unicast_duration": uniDur.String(),
		"publishers": *publishers, "factor": *factor, "max_p99": maxP99.String(), "bisect": *bisect, "centrifugo": centrifugoVersion(*cfBin)})

	res := map[string]*sweepResult{}
	for _, name := range names {
		t0 := time.Now()
		p, err := startPeer(name, o)
		if err != nil {
			return err
		}
		sr, err := measureSweep(p, audiences, *rate, *broadcasts, rates, rules)
		p.close()
		if err != nil {
			return err
		}
		res[name] = sr
		r.Raw[name] = sr
		progress("%s swept in %.0f s", p.label, time.Since(t0).Seconds())
	}
	addSweepFigures(r, names, res, audiences, rates, top, *maxP99)
	return finish(r, *out)
}

func measureSweep(p *peer, audiences []int, rate, rounds int, rates []int, rules satRules) (*sweepResult, error) {
	sr := &sweepResult{}
	for _, size := range audiences {
		progress("%s: opening connections to %d", p.label, size)
		if err := p.open(size-p.g.total(), rate); err != nil {
			return nil, err
		}
		time.Sleep(time.Second)
		fo, err := p.g.fanout(rounds)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p.label, err)
		}
		progress("%s: broadcast to %d: last client after %.1f ms (median), %.2f µs CPU per delivery", p.label, size, fo.median, fo.userPer+fo.sysPer)
		sr.Broadcast = append(sr.Broadcast, sweepBroadcast{Conns: size, Median: fo.median, Worst: fo.worst, Complete: fo.complete,
			Rounds: fo.rounds, CPUPer: fo.userPer + fo.sysPer, UserPer: fo.userPer})
	}
	var err error
	if sr.Unicast, err = rules.saturate(func(rate int) (rateStep, error) { return rules.step(p, rate) }, rates, true); err != nil {
		return nil, err
	}
	return sr, nil
}

func addSweepFigures(r *report.Run, names []string, res map[string]*sweepResult, audiences, rates []int, top int, maxP99 time.Duration) {
	_, haveE := res["edge"]
	_, haveC := res["centrifugo"]
	both := haveE && haveC
	ratio := func(a, b float64) float64 {
		if b == 0 {
			return 0
		}
		return a / b
	}

	// Unicast: one row per rate tried by any server.
	seen := map[int]bool{}
	var all []int
	for _, nm := range names {
		for _, st := range res[nm].Unicast.Steps {
			if !seen[st.Rate] {
				seen[st.Rate] = true
				all = append(all, st.Rate)
			}
		}
	}
	sort.Ints(all)
	cols := []string{"msg/s"}
	for _, nm := range names {
		cols = append(cols, peerNames[nm]+" p50 / p99 ms", peerNames[nm]+" CPU µs/msg (user)")
	}
	if both {
		cols = append(cols, "edge / Centrifugo CPU per message")
	}
	ut := report.Table{Title: fmt.Sprintf("Unicast over %d connections (a step fails when the rate is not kept, a publish fails, messages are missing a second after the last publish, or p99 > %v)", top, maxP99), Columns: cols}
	step := func(nm string, rate int) *rateStep {
		for i, st := range res[nm].Unicast.Steps {
			if st.Rate == rate {
				return &res[nm].Unicast.Steps[i]
			}
		}
		return nil
	}
	for _, rt := range all {
		cells := []string{fmt.Sprint(rt)}
		for _, nm := range names {
			st := step(nm, rt)
			if st == nil {
				cells = append(cells, "–", "–")
				continue
			}
			lat := fmt.Sprintf("%.2f / %.2f", st.P50, st.P99)
			if !st.OK {
				lat += " **falls behind**: " + st.Why
			}
			cells = append(cells, lat, fmt.Sprintf("%.1f (%.1f)", st.CPUPerMsg, st.UserPerMsg))
			r.Add(fmt.Sprintf("unicast %d msg/s over %d: %s p99", rt, top, peerNames[nm]), st.P99, "ms", "", 0,
				fmt.Sprintf("p50 %.2f ms, achieved %.0f/s, delivered %.4f of sent, %d errors; %s%s", st.P50, st.Achieved, st.Delivered, st.Errors, st.cores(), failNote(st)))
			r.Add(fmt.Sprintf("unicast %d msg/s over %d: %s CPU per message (user+sys)", rt, top, peerNames[nm]), st.CPUPerMsg, "µs", "", 0,
				fmt.Sprintf("user %.2f µs", st.UserPerMsg))
		}
		if both {
			e, c := step("edge", rt), step("centrifugo", rt)
			if e != nil && c != nil {
				v := ratio(e.CPUPerMsg, c.CPUPerMsg)
				cells = append(cells, fmtVal(v, "×"))
				r.Add(fmt.Sprintf("unicast %d msg/s: CPU per message, edge / Centrifugo", rt), v, "×", "", 0, "")
			} else {
				cells = append(cells, "–")
			}
		}
		ut.Rows = append(ut.Rows, cells)
	}
	satRow := []string{"**saturation**"}
	for _, nm := range names {
		s := res[nm].Unicast
		note := fmt.Sprintf("%d msg/s held", s.Best)
		if s.FirstFail > 0 {
			note += fmt.Sprintf(", %d fell behind", s.FirstFail)
			if st := step(nm, s.FirstFail); st != nil {
				note += " (" + st.cores() + ")"
			}
		}
		satRow = append(satRow, note, "")
		ff := "none up to the search limit"
		if s.FirstFail > 0 {
			ff = fmt.Sprint(s.FirstFail)
		}
		r.Add(fmt.Sprintf("highest unicast rate held over %d: %s", top, peerNames[nm]), float64(s.Best), "/s", "", 0,
			"first rate that fell behind: "+ff)
	}
	if both {
		v := ratio(float64(res["edge"].Unicast.Best), float64(res["centrifugo"].Unicast.Best))
		satRow = append(satRow, fmtVal(v, "× (rate)"))
		r.Add("highest unicast rate held: edge / Centrifugo", v, "×", "", 0, "")
	}
	ut.Rows = append(ut.Rows, satRow)

	// Broadcast: one row per audience.
	cols = []string{"connections"}
	for _, nm := range names {
		cols = append(cols, peerNames[nm]+" last client ms (worst)", peerNames[nm]+" CPU µs/delivery (user)")
	}
	if both {
		cols = append(cols, "edge / Centrifugo time", "edge / Centrifugo CPU")
	}
	bt := report.Table{Title: "Broadcast to everybody (median of the rounds; CPU from the call until --settle after it, less the server's CPU at rest)", Columns: cols}
	for i, size := range audiences {
		cells := []string{fmt.Sprint(size)}
		for _, nm := range names {
			b := res[nm].Broadcast[i]
			cells = append(cells, fmt.Sprintf("%.1f (%.1f)", b.Median, b.Worst), fmt.Sprintf("%.2f (%.2f)", b.CPUPer, b.UserPer))
			cmp := ""
			if nm == "edge" && size >= 19000 {
				cmp = "<="
			}
			r.Add(fmt.Sprintf("broadcast to %d: %s time to the last client (median)", size, peerNames[nm]), b.Median, "ms", cmp, 100,
				fmt.Sprintf("worst %.1f ms, %d/%d rounds reached everybody", b.Worst, b.Complete, b.Rounds))
			r.Add(fmt.Sprintf("broadcast to %d: %s CPU per delivery (user+sys)", size, peerNames[nm]), b.CPUPer, "µs", "", 0, fmt.Sprintf("user %.2f µs", b.UserPer))
		}
		if both {
			e, c := res["edge"].Broadcast[i], res["centrifugo"].Broadcast[i]
			cells = append(cells, fmtVal(ratio(e.Median, c.Median), "×"), fmtVal(ratio(e.CPUPer, c.CPUPer), "×"))
			r.Add(fmt.Sprintf("broadcast to %d: time to the last client, edge / Centrifugo", size), ratio(e.Median, c.Median), "×", "", 0, "")
			r.Add(fmt.Sprintf("broadcast to %d: CPU per delivery, edge / Centrifugo", size), ratio(e.CPUPer, c.CPUPer), "×", "", 0, "")
		}
		bt.Rows = append(bt.Rows, cells)
	}
	r.AddTable(ut)
	r.AddTable(bt)

	var cpu, lat, bTime, bCPU []report.Series
	for _, nm := range names {
		lb := peerNames[nm]
		c, p50, p99 := report.Series{Name: lb}, report.Series{Name: lb + " p50"}, report.Series{Name: lb + " p99"}
		for _, st := range sortedSteps(res[nm].Unicast.Steps) {
			c.Points = append(c.Points, [2]float64{float64(st.Rate), st.CPUPerMsg})
			p50.Points = append(p50.Points, [2]float64{float64(st.Rate), st.P50})
			p99.Points = append(p99.Points, [2]float64{float64(st.Rate), st.P99})
		}
		cpu, lat = append(cpu, c), append(lat, p50, p99)
		t, u := report.Series{Name: lb}, report.Series{Name: lb}
		for _, b := range res[nm].Broadcast {
			t.Points = append(t.Points, [2]float64{float64(b.Conns), b.Median})
			u.Points = append(u.Points, [2]float64{float64(b.Conns), b.CPUPer})
		}
		bTime, bCPU = append(bTime, t), append(bCPU, u)
	}
	r.AddChart(report.Chart{Name: "unicast-cpu", Title: fmt.Sprintf("server CPU per unicast message against rate (%d connections)", top), X: "msg/s", Y: "µs per message (user+sys)", Series: cpu, LegendRight: true})
	r.AddChart(report.Chart{Name: "unicast-latency", Title: fmt.Sprintf("unicast publish→receive against rate (%d connections)", top), X: "msg/s", Y: "ms (log)", LogY: true, Series: lat})
	r.AddChart(report.Chart{Name: "broadcast-time", Title: "broadcast: time to the last client against audience (median)", X: "connections", Y: "ms", Series: bTime})
	r.AddChart(report.Chart{Name: "broadcast-cpu", Title: "broadcast: server CPU per delivery against audience", X: "connections", Y: "µs per delivery (user+sys)", Series: bCPU})
}

func failNote(st *rateStep) string {
	if st.OK {
		return ""
	}
	return "; falls behind: " + st.Why
}
