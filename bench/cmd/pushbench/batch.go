package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/pushcluster/push/bench/loadgen"
	"github.com/pushcluster/push/bench/report"
	"github.com/pushcluster/push/bench/sample"
	"github.com/pushcluster/push/pkg/client"
	"github.com/pushcluster/push/pkg/flagenv"
)

// runBatch measures batched publishing (issue 12, section 2): one edge
// ramped to N idle clients, then unicast at R msg/s through the SDK,
// which coalesces the publishes into PublishBatchStream batches (--linger,
// --batch-size), then PublishMulti to --multi-users users; then the
// unicast load again under a CPU profile of the edge (a phase of its own,
// so the profiler's cost stays out of the figures).
func runBatch(args []string) error {
	fs := flag.NewFlagSet("pushbench batch", flag.ContinueOnError)
	bin := fs.String("edge-bin", "bin/edge", "edge binary")
	n := fs.Int("n", 19000, "connections (one edge process holds at most ~19,900 here)")
	workers := fs.Int("workers", 2, "load-generator processes")
	rate := fs.Int("rate", 4000, "upgrades per second while ramping")
	sources := fs.String("sources", "127.0.0.2-127.0.0.41", "client source addresses")
	uniRate := fs.Int("unicast-rate", 10000, "unicast publishes per second")
	uniDur := fs.Duration("unicast-duration", 10*time.Second, "unicast phase length")
	publishers := fs.Int("publishers", 64, "concurrent publishing goroutines (each waits for its answer)")
	linger := fs.Duration("linger", client.DefaultBatchLinger, "SDK batch linger (client.WithBatchLinger; 0: natural batching)")
	batchSize := fs.Int("batch-size", client.DefaultBatchSize, "SDK batch size (client.WithBatchSize)")
	multiUsers := fs.Int("multi-users", 1000, "users per PublishMulti")
	multiRounds := fs.Int("multi-rounds", 100, "PublishMulti calls (one at a time)")
	profile := fs.Duration("profile", 8*time.Second, "length of the profiled unicast phase (0: none)")
	out := fs.String("out", "bench/results", "results directory")
	edgeArgs := fs.String("edge-args", "", "extra edge flags, space-separated")
	flagenv.SetUsage(fs, "PUSHBENCH", "pushbench batch [flags]",
		"Starts one edge and load-generator processes on loopback, ramps to N idle clients, and measures edge CPU per unicast message (total and user) and publish→receive latency with the SDK batching publishes, edge user CPU per PublishMulti recipient, and a CPU profile of the edge under the unicast load.")
	if _, err := flagenv.Parse(fs, "PUSHBENCH", args, nil); err != nil {
		return err
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
	// The publishers' SDK with the batching under test.
	g.sdk.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	g.sdk, err = client.New(ctx, g.st, client.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))),
		client.WithBatchLinger(*linger), client.WithBatchSize(*batchSize))
	cancel()
	if err != nil {
		return err
	}
	r := report.New("batch", map[string]any{"n": *n, "workers": *workers, "unicast_rate": *uniRate, "unicast_duration": uniDur.String(),
		"publishers": *publishers, "linger": linger.String(), "batch_size": *batchSize, "multi_users": *multiUsers, "multi_rounds": *multiRounds})
	if _, err := g.ramp(r, min(1000, *n/2), *n, *rate, 1); err != nil {
		return err
	}
	uc, err := g.unicast(*uniRate, *uniDur, *publishers)
	if err != nil {
		return err
	}
	uc.add(r, "edge", true)
	r.Add("edge CPU per unicast message (user+sys), target", uc.cpuPerMsg, "µs", "<=", 15, "")
	r.Add("edge user CPU per unicast message", uc.userPerMsg, "µs", "<=", 5, "")
	r.AddChart(report.Chart{Name: "latency-cdf", Title: fmt.Sprintf("batched unicast publish→receive at %d msg/s over %d connections (linger %v)", *uniRate, *n, *linger),
		X: "latency (ms, log)", Y: "fraction of messages", LogX: true, Series: []report.Series{uc.series("edge")}})

	mu, err := g.multi(*multiUsers, *multiRounds)
	if err != nil {
		return err
	}
	r.Add(fmt.Sprintf("edge user CPU per PublishMulti recipient (%d users a call)", *multiUsers), mu.userPer, "µs", "<=", 1, fmt.Sprintf("user+sys %.2f µs", mu.cpuPer))
	r.Add("PublishMulti deliveries / recipients", mu.deliveredOf, "", ">=", 1, fmt.Sprintf("%d calls", *multiRounds))
	r.Add("PublishMulti publish→receive p99", float64(mu.hist.Quantile(0.99))/1e6, "ms", "", 0, "")

	if *profile > 0 {
		path, err := g.profiled(*profile, *uniRate, *publishers, *out, *bin)
		if err != nil {
			return err
		}
		r.Raw["profile"] = path
	}
	return finish(r, *out)
}

// multiResult is what the PublishMulti phase measured.
type multiResult struct {
	userPer, cpuPer float64 // µs of edge CPU per delivered recipient
	deliveredOf     float64
	hist            loadgen.Hist
}

// multi sends rounds PublishMulti calls, one after another, each to users
// random connected users, and charges the edge's CPU to the deliveries.
func (g *rig) multi(users, rounds int) (multiResult, error) {
	var res multiResult
	uids := g.uids()
	users = min(users, len(uids))
	if _, err := g.reports(); err != nil { // reset
		return res, err
	}
	progress("PublishMulti to %d users, %d calls", users, rounds)
	rng := rand.New(rand.NewPCG(3, 5))
	c0, _ := sample.Read(g.d.pid(), "", "")
	for i := 0; i < rounds; i++ {
		pick := make([]string, users)
		for k, j := range rng.Perm(len(uids))[:users] {
			pick[k] = uids[j]
		}
		payload := fmt.Sprintf(`{"t":%d}`, time.Now().UnixNano())
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := g.sdk.PublishMulti(ctx, pick, []byte(payload), 0)
		cancel()
		if err != nil {
			return res, err
		}
	}
	time.Sleep(time.Second)
	c1, _ := sample.Read(g.d.pid(), "", "")
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
	d := float64(max(res.hist.N, 1))
	res.userPer = (c1.UserSec - c0.UserSec) / d * 1e6
	res.cpuPer = (c1.CPU() - c0.CPU()) / d * 1e6
	res.deliveredOf = float64(res.hist.N) / float64(users*rounds)
	return res, nil
}

// profiled runs the unicast load for dur while the edge's admin port
// takes a CPU profile of it, saves the profile beside the results and
// prints its top functions (go tool pprof -top).
func (g *rig) profiled(dur time.Duration, rate, publishers int, out, bin string) (string, error) {
	if err := os.MkdirAll(out, 0o755); err != nil {
		return "", err
	}
	path := filepath.Join(out, time.Now().Format("2006-01-02")+"-batch-edge-cpu.pprof")
	done := make(chan error, 1)
	go func() {
		url := fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", strings.TrimSuffix(g.metricsURL, "/metrics"), int(dur.Seconds()))
		resp, err := http.Get(url)
		if err != nil {
			done <- err
			return
		}
		defer resp.Body.Close()
		f, err := os.Create(path)
		if err != nil {
			done <- err
			return
		}
		_, err = io.Copy(f, resp.Body)
		f.Close()
		done <- err
	}()
	time.Sleep(100 * time.Millisecond)
	uc, err := g.unicast(rate, dur+time.Second, publishers)
	if err != nil {
		return "", err
	}
	progress("profiled phase: edge CPU %.2f µs per message (user %.2f µs), p99 %.2f ms", uc.cpuPerMsg, uc.userPerMsg, float64(uc.hist.Quantile(0.99))/1e6)
	if err := <-done; err != nil {
		return "", fmt.Errorf("edge CPU profile: %w", err)
	}
	top, err := exec.Command("go", "tool", "pprof", "-top", "-nodecount=40", bin, path).CombinedOutput()
	if err != nil {
		return path, fmt.Errorf("go tool pprof: %v: %s", err, top)
	}
	progress("edge CPU profile under the unicast load (%s):\n%s", path, top)
	return path, nil
}
