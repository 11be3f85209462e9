package main

import (
	crand "crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/pushcluster/push/bench/report"
	"github.com/pushcluster/push/pkg/flagenv"
)

func newSecret() string {
	b := make([]byte, 32)
	crand.Read(b)
	return hex.EncodeToString(b)
}

func runEdge(args []string) error    { return runEdgePhases("edge", true, true, args) }
func runUnicast(args []string) error { return runEdgePhases("unicast", false, true, args) }
func runFanout(args []string) error  { return runEdgePhases("fanout", true, false, args) }

// runEdgePhases starts one edge and load-generator processes, ramps to N
// idle connections (the per-connection cost) and then runs the broadcast
// and/or unicast phases on the same process set: `edge` runs both,
// `fanout` and `unicast` one each.
func runEdgePhases(name string, withFanout, withUnicast bool, args []string) error {
	fs := flag.NewFlagSet("pushbench "+name, flag.ContinueOnError)
	bin := fs.String("edge-bin", "bin/edge", "edge binary")
	n := fs.Int("n", 19000, "connections at the top of the ramp (one edge process holds at most ~19,900 here)")
	base := fs.Int("base", 1000, "connections at the bottom of the slope")
	steps := fs.Int("steps", 4, "ramp steps from --base to --n, memory sampled after each (the memory chart)")
	workers := fs.Int("workers", 2, "load-generator processes")
	rate := fs.Int("rate", 4000, "upgrades per second while ramping")
	sources := fs.String("sources", "127.0.0.2-127.0.0.41", "client source addresses")
	broadcasts := fs.Int("broadcasts", 10, "broadcast rounds")
	uniRate := fs.Int("unicast-rate", 10000, "unicast publishes per second")
	uniDur := fs.Duration("unicast-duration", 10*time.Second, "unicast phase length")
	publishers := fs.Int("publishers", 32, "concurrent gRPC publish streams")
	out := fs.String("out", "bench/results", "results directory")
	edgeArgs := fs.String("edge-args", "", "extra edge flags, space-separated (e.g. \"--broadcast-writers 1\")")
	flagenv.SetUsage(fs, "PUSHBENCH", "pushbench "+name+" [flags]", "Starts one edge process and load-generator processes on loopback and measures the edge's per-connection cost and delivery speed.")
	if _, err := flagenv.Parse(fs, "PUSHBENCH", args, nil); err != nil {
		return err
	}
	if *n <= *base || *base < 1 || *steps < 1 {
		return fmt.Errorf("--n %d must exceed --base %d >= 1, --steps >= 1", *n, *base)
	}
	os.Setenv("PUSH_JWT_SECRET", newSecret())
	const ws, grpcAddr, admin = "127.0.0.1:18080", "127.0.0.1:19090", "127.0.0.1:19100"
	e, err := startDaemon("edge", *bin, append([]string{"--listen", ws, "--grpc", grpcAddr, "--admin", admin,
		"--max-conns", "200000", "--log-level", "warn", "--drain-period", "1s"}, strings.Fields(*edgeArgs)...), nil, admin)
	if err != nil {
		return err
	}
	defer e.stop()
	g, err := newRig(e, ws, grpcAddr, admin, "u", *sources, *workers, *n)
	if err != nil {
		return err
	}
	defer g.close()
	params := map[string]any{"n": *n, "base": *base, "workers": *workers, "rate": *rate}
	if withFanout {
		params["broadcasts"] = *broadcasts
	}
	if withUnicast {
		params["unicast_rate"], params["unicast_duration"], params["publishers"] = *uniRate, uniDur.String(), *publishers
	}
	r := report.New(name, params)

	ramp, err := g.ramp(r, *base, *n, *rate, *steps)
	if err != nil {
		return err
	}
	ramp.add(r, "edge", true)
	r.AddChart(report.Chart{Name: "memory", Title: "edge memory against idle connections", X: "connections", Y: "MiB",
		Series: memSeries("edge", ramp.points)})
	if withFanout {
		fo, err := g.fanout(*broadcasts)
		if err != nil {
			return err
		}
		fo.add(r, "edge", true)
		r.AddChart(report.Chart{Name: "deliveries", Title: fmt.Sprintf("broadcast to %d: deliveries per second (send → last client)", *n),
			X: "round", Y: "deliveries/s", Series: []report.Series{fo.series("edge")}})
	}
	if withUnicast {
		uc, err := g.unicast(*uniRate, *uniDur, *publishers)
		if err != nil {
			return err
		}
		uc.add(r, "edge", true)
		r.AddChart(report.Chart{Name: "latency-cdf", Title: fmt.Sprintf("unicast publish→receive at %d msg/s over %d connections", *uniRate, *n),
			X: "latency (ms, log)", Y: "fraction of messages", LogX: true, Series: []report.Series{uc.series("edge")}})
	}
	return finish(r, *out)
}

// finish prints the table and saves the results with their charts.
func finish(r *report.Run, out string) error {
	path, err := r.Save(out)
	r.Print(os.Stdout)
	if err != nil {
		return err
	}
	progress("results in %s", path)
	return nil
}
