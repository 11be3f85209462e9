package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/pushcluster/push/bench/baseline"
	"github.com/pushcluster/push/bench/report"
	"github.com/pushcluster/push/pkg/auth"
	"github.com/pushcluster/push/pkg/flagenv"
)

// runBaselineServer is the child process serving bench/baseline.
func runBaselineServer(args []string) error {
	fs := flag.NewFlagSet("baseline-server", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:18380", "WebSocket address")
	grpcAddr := fs.String("grpc", "127.0.0.1:19390", "gRPC push.v1.Push address")
	admin := fs.String("admin", "127.0.0.1:19400", "admin address (/readyz, /metrics, /debug/pprof)")
	if _, err := flagenv.Parse(fs, "PUSHBENCH", args, nil); err != nil {
		return err
	}
	secret, err := auth.LoadSecret("")
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return baseline.Serve(ctx, baseline.Config{Listen: *listen, GRPC: *grpcAddr, Admin: *admin, Secret: secret})
}

// runBaseline runs the same load against the edge and against the gorilla
// baseline (one goroutine per connection), one after the other in the same
// run, and prints the edge's figures as ratios of the baseline's.
func runBaseline(args []string) error {
	fs := flag.NewFlagSet("pushbench baseline", flag.ContinueOnError)
	bin := fs.String("edge-bin", "bin/edge", "edge binary")
	n := fs.Int("n", 10000, "idle connections at the top of the ramp, for each server")
	base := fs.Int("base", 1000, "connections at the bottom of the slope")
	steps := fs.Int("steps", 3, "ramp steps (memory chart points)")
	workers := fs.Int("workers", 2, "load-generator processes")
	rate := fs.Int("rate", 3000, "upgrades per second while ramping")
	sources := fs.String("sources", "127.0.0.2-127.0.0.41", "client source addresses")
	broadcasts := fs.Int("broadcasts", 5, "broadcast rounds")
	uniRate := fs.Int("unicast-rate", 5000, "unicast publishes per second")
	uniDur := fs.Duration("unicast-duration", 5*time.Second, "unicast phase length")
	publishers := fs.Int("publishers", 32, "concurrent gRPC publish streams")
	out := fs.String("out", "bench/results", "results directory")
	edgeArgs := fs.String("edge-args", "", "extra edge flags, space-separated")
	flagenv.SetUsage(fs, "PUSHBENCH", "pushbench baseline [flags]",
		"Runs the same ramp, broadcast and unicast load against one edge and then against bench/baseline (gorilla/websocket, one goroutine per connection) and prints edge/baseline ratios.")
	if _, err := flagenv.Parse(fs, "PUSHBENCH", args, nil); err != nil {
		return err
	}
	if *n <= *base || *base < 1 || *steps < 1 {
		return fmt.Errorf("--n %d must exceed --base %d >= 1, --steps >= 1", *n, *base)
	}
	os.Setenv("PUSH_JWT_SECRET", newSecret())
	self, err := os.Executable()
	if err != nil {
		return err
	}
	r := report.New("baseline", map[string]any{"n": *n, "base": *base, "workers": *workers, "rate": *rate,
		"broadcasts": *broadcasts, "unicast_rate": *uniRate, "unicast_duration": uniDur.String()})

	type result struct {
		ramp rampResult
		fo   fanoutResult
		uc   unicastResult
	}
	measure := func(who, prefix, ws, grpcAddr, admin string, d *daemon) (result, error) {
		var res result
		defer d.stop()
		g, err := newRig(d, ws, grpcAddr, admin, prefix, *sources, *workers, *n)
		if err != nil {
			return res, err
		}
		defer g.close()
		progress("%s: ramp", who)
		if res.ramp, err = g.ramp(r, *base, *n, *rate, *steps); err != nil {
			return res, fmt.Errorf("%s: %w", who, err)
		}
		if res.fo, err = g.fanout(*broadcasts); err != nil {
			return res, fmt.Errorf("%s: %w", who, err)
		}
		if res.uc, err = g.unicast(*uniRate, *uniDur, *publishers); err != nil {
			return res, fmt.Errorf("%s: %w", who, err)
		}
		return res, nil
	}

	const ews, egrpc, eadmin = "127.0.0.1:18280", "127.0.0.1:19290", "127.0.0.1:19300"
	e, err := startDaemon("edge", *bin, append([]string{"--listen", ews, "--grpc", egrpc, "--admin", eadmin,
		"--max-conns", "200000", "--log-level", "warn", "--drain-period", "1s"}, strings.Fields(*edgeArgs)...), nil, eadmin)
	if err != nil {
		return err
	}
	edge, err := measure("edge", "e", ews, egrpc, eadmin, e)
	if err != nil {
		return err
	}
	const bws, bgrpc, badmin = "127.0.0.1:18380", "127.0.0.1:19390", "127.0.0.1:19400"
	b, err := startDaemon("baseline", self, []string{"baseline-server", "--listen", bws, "--grpc", bgrpc, "--admin", badmin}, nil, badmin)
	if err != nil {
		return err
	}
	base2, err := measure("baseline", "g", bws, bgrpc, badmin, b)
	if err != nil {
		return err
	}

	ratio := func(a, b float64) float64 {
		if b == 0 {
			return 0
		}
		return a / b
	}
	ep99, bp99 := float64(edge.uc.hist.Quantile(0.99))/1e6, float64(base2.uc.hist.Quantile(0.99))/1e6
	ecpu, bcpu := edge.fo.userPer+edge.fo.sysPer, base2.fo.userPer+base2.fo.sysPer
	r.Add(fmt.Sprintf("Go heap+stack per idle connection: edge / gorilla (slope %d→%d)", *base, *n), ratio(edge.ramp.goSlope, base2.ramp.goSlope), "×", "<=", 0.04,
		fmt.Sprintf("edge %.0f B, gorilla %.0f B", edge.ramp.goSlope, base2.ramp.goSlope))
	r.Add("RSS per idle connection: edge / gorilla", ratio(edge.ramp.rssSlope, base2.ramp.rssSlope), "×", "", 0,
		fmt.Sprintf("edge %.0f B, gorilla %.0f B", edge.ramp.rssSlope, base2.ramp.rssSlope))
	r.Add("goroutines at the top: edge / gorilla", ratio(float64(edge.ramp.top.Goroutine), float64(base2.ramp.top.Goroutine)), "×", "", 0,
		fmt.Sprintf("edge %d, gorilla %d", edge.ramp.top.Goroutine, base2.ramp.top.Goroutine))
	r.Add("fds per connection: edge / gorilla", ratio(edge.ramp.fdSlope, base2.ramp.fdSlope), "×", "", 0,
		fmt.Sprintf("edge %.2f, gorilla %.2f", edge.ramp.fdSlope, base2.ramp.fdSlope))
	r.Add("CPU per upgrade: edge / gorilla", ratio(edge.ramp.cpuPerUpgrade, base2.ramp.cpuPerUpgrade), "×", "", 0,
		fmt.Sprintf("edge %.1f µs, gorilla %.1f µs", edge.ramp.cpuPerUpgrade, base2.ramp.cpuPerUpgrade))
	r.Add(fmt.Sprintf("fan-out CPU per delivery (user+sys, %d rounds to %d): edge / gorilla", *broadcasts, *n), ratio(ecpu, bcpu), "×", "", 0,
		fmt.Sprintf("edge %.2f µs (user %.2f), gorilla %.2f µs (user %.2f)", ecpu, edge.fo.userPer, bcpu, base2.fo.userPer))
	r.Add("fan-out user CPU per delivery: edge / gorilla", ratio(edge.fo.userPer, base2.fo.userPer), "×", "", 0, "")
	r.Add("broadcast time to the last client: edge / gorilla", ratio(edge.fo.median, base2.fo.median), "×", "", 0,
		fmt.Sprintf("edge %.1f ms, gorilla %.1f ms (medians)", edge.fo.median, base2.fo.median))
	r.Add(fmt.Sprintf("unicast p99 at %d msg/s: edge / gorilla", *uniRate), ratio(ep99, bp99), "×", "", 0,
		fmt.Sprintf("edge %.3f ms, gorilla %.3f ms; delivered %d/%d and %d/%d", ep99, bp99, edge.uc.hist.N, edge.uc.sent, base2.uc.hist.N, base2.uc.sent))
	r.Add("unicast CPU per message: edge / gorilla", ratio(edge.uc.cpuPerMsg, base2.uc.cpuPerMsg), "×", "", 0,
		fmt.Sprintf("edge %.1f µs, gorilla %.1f µs", edge.uc.cpuPerMsg, base2.uc.cpuPerMsg))
	r.AddChart(report.Chart{Name: "memory", Title: "memory against idle connections: edge vs gorilla", X: "connections", Y: "MiB",
		Series: append(memSeries("edge", edge.ramp.points), memSeries("gorilla", base2.ramp.points)...)})
	r.AddChart(report.Chart{Name: "latency-cdf", Title: fmt.Sprintf("unicast publish→receive at %d msg/s over %d connections", *uniRate, *n),
		X: "latency (ms, log)", Y: "fraction of messages", LogX: true, Series: []report.Series{edge.uc.series("edge"), base2.uc.series("gorilla")}})
	r.AddChart(report.Chart{Name: "deliveries", Title: fmt.Sprintf("broadcast to %d: deliveries per second", *n),
		X: "round", Y: "deliveries/s", Series: []report.Series{edge.fo.series("edge"), base2.fo.series("gorilla")}})
	return finish(r, *out)
}
