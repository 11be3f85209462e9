package main

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/pushcluster/push/bench/loadgen"
	"github.com/pushcluster/push/bench/report"
	"github.com/pushcluster/push/bench/sample"
	"github.com/pushcluster/push/pkg/flagenv"
	pushv1 "github.com/pushcluster/push/proto/push/v1"
)

func newSecret() string {
	b := make([]byte, 32)
	crand.Read(b)
	return hex.EncodeToString(b)
}

func runEdge(args []string) error {
	fs := flag.NewFlagSet("pushbench edge", flag.ContinueOnError)
	bin := fs.String("edge-bin", "bin/edge", "edge binary")
	n := fs.Int("n", 19000, "connections at the top of the ramp (one edge process holds at most ~19,900 here)")
	base := fs.Int("base", 1000, "connections at the bottom of the slope")
	workers := fs.Int("workers", 2, "load-generator processes")
	rate := fs.Int("rate", 4000, "upgrades per second while ramping")
	sources := fs.String("sources", "127.0.0.2-127.0.0.41", "client source addresses")
	broadcasts := fs.Int("broadcasts", 10, "broadcast rounds")
	uniRate := fs.Int("unicast-rate", 10000, "unicast publishes per second")
	uniDur := fs.Duration("unicast-duration", 10*time.Second, "unicast phase length")
	publishers := fs.Int("publishers", 32, "concurrent gRPC publish streams")
	out := fs.String("out", "bench/results", "results directory")
	edgeArgs := fs.String("edge-args", "", "extra edge flags, space-separated (e.g. \"--broadcast-writers 1\")")
	flagenv.SetUsage(fs, "PUSHBENCH", "pushbench edge [flags]", "Starts one edge process and load-generator processes on loopback and measures the edge's per-connection cost and delivery speed.")
	if _, err := flagenv.Parse(fs, "PUSHBENCH", args, nil); err != nil {
		return err
	}
	if *n <= *base || *base < 1 {
		return fmt.Errorf("--n %d must exceed --base %d >= 1", *n, *base)
	}
	secret := newSecret()
	os.Setenv("PUSH_JWT_SECRET", secret)
	const ws, grpcAddr, admin = "127.0.0.1:18080", "127.0.0.1:19090", "127.0.0.1:19100"
	e, err := startDaemon("edge", *bin, append([]string{"--listen", ws, "--grpc", grpcAddr, "--admin", admin,
		"--max-conns", "200000", "--log-level", "warn", "--drain-period", "1s"}, strings.Fields(*edgeArgs)...), nil, admin)
	if err != nil {
		return err
	}
	defer e.stop()
	metricsURL, gcURL := "http://"+admin+"/metrics", "http://"+admin+"/debug/pprof/heap?gc=1"

	var wk []*worker
	per := *n / *workers
	for i := 0; i < *workers; i++ {
		w, err := startWorker([]string{"--target", ws, "--prefix", "u", "--first", fmt.Sprint(i * per), "--sources", *sources})
		if err != nil {
			return err
		}
		defer w.stop()
		wk = append(wk, w)
	}
	r := report.New("edge", map[string]any{"n": *n, "base": *base, "workers": *workers, "rate": *rate,
		"broadcasts": *broadcasts, "unicast_rate": *uniRate, "unicast_duration": uniDur.String()})

	// Ramp to the base, sample, ramp to n, sample: the slope is the cost of
	// one more idle connection.
	progress("opening %d connections", *base)
	if _, failed, lastErr, err := openAll(wk, *base, *rate); err != nil || failed > 0 {
		return fmt.Errorf("ramp to %d: failed %d (%s) %v", *base, failed, lastErr, err)
	}
	time.Sleep(2 * time.Second)
	k1 := sample.ReadKernel()
	s1, err := sample.Read(e.pid(), metricsURL, gcURL)
	if err != nil {
		return err
	}
	progress("opening %d more connections", *n-*base)
	t0 := time.Now()
	c0, _ := sample.Read(e.pid(), "", "")
	opened, failed, lastErr, err := openAll(wk, *n-*base, *rate)
	rampDur := time.Since(t0)
	c1, _ := sample.Read(e.pid(), "", "")
	if err != nil || failed > 0 {
		return fmt.Errorf("ramp to %d: opened %d failed %d (%s) %v", *n, opened, failed, lastErr, err)
	}
	time.Sleep(2 * time.Second)
	k2 := sample.ReadKernel()
	s2, err := sample.Read(e.pid(), metricsURL, gcURL)
	if err != nil {
		return err
	}
	dn := float64(*n - *base)
	goSlope := float64(s2.GoBytes()-s1.GoBytes()) / dn
	rssSlope := float64(s2.RSS-s1.RSS) / dn
	fdSlope := float64(s2.FDs-s1.FDs) / dn
	// Both ends of every connection live on this host: two sockets each.
	kernSlope := float64(k2.SlabBytes-k1.SlabBytes+k2.TCPMemBytes-k1.TCPMemBytes) / (2 * dn)
	upgradeCPU := (c1.CPU() - c0.CPU()) / dn * 1e6
	r.Add("edge Go heap+stack per idle connection (slope "+fmt.Sprint(*base)+"→"+fmt.Sprint(*n)+")", goSlope, "B", "<=", 512, "")
	r.Add("edge RSS per idle connection (slope)", rssSlope, "B", "", 0, "")
	r.Add("edge fds per connection (slope)", fdSlope, "fd", "<=", 1.0, "")
	r.Add("kernel memory per TCP socket (slab + tcp mem, slope)", kernSlope, "B", "", 0, "")
	r.Add("edge CPU per upgrade incl. JWT (user+sys)", upgradeCPU, "µs", "<=", 20, fmt.Sprintf("user %.1f µs", (c1.UserSec-c0.UserSec)/dn*1e6))
	r.Add("upgrades per second (ramp, paced by the load generator)", dn/rampDur.Seconds(), "/s", "", 0, "")
	r.Add("edge OS threads at "+fmt.Sprint(*n), float64(s2.Threads), "", "", 0, "")
	r.Add("edge goroutines at "+fmt.Sprint(*n), float64(s2.Goroutine), "", "", 0, "")
	r.Raw["sample_base"], r.Raw["sample_top"] = s1, s2
	r.Raw["kernel_base"], r.Raw["kernel_top"] = k1, k2

	cc, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer cc.Close()
	push := pushv1.NewPushClient(cc)

	// Broadcast rounds.
	progress("broadcasting %d rounds to %d connections", *broadcasts, *n)
	var bUser, bSys float64
	var delivered int64
	for i := 1; i <= *broadcasts; i++ {
		time.Sleep(time.Second) // let the previous round's clients finish reading
		b0, _ := sample.Read(e.pid(), "", "")
		payload := fmt.Sprintf(`{"b":%d,"t":%d}`, i, time.Now().UnixNano())
		resp, err := push.Broadcast(context.Background(), &pushv1.BroadcastRequest{Data: []byte(payload)})
		if err != nil {
			return fmt.Errorf("broadcast: %w", err)
		}
		// The call returns when every frame is written: the CPU between the
		// two samples is the fan-out's.
		b1, _ := sample.Read(e.pid(), "", "")
		delivered += int64(resp.Connections)
		bUser += b1.UserSec - b0.UserSec
		bSys += b1.SysSec - b0.SysSec
	}
	arrivals := map[int64]*loadgen.Arrival{}
	for _, w := range wk {
		w.send("report")
		ev, err := w.await("report", 30*time.Second)
		if err != nil {
			return err
		}
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
	complete := 0
	for _, a := range arrivals {
		if a.Count == int64(*n) {
			complete++
		}
		lasts.Add(a.Last - a.Sent)
	}
	r.Add(fmt.Sprintf("broadcast to %d: time until the last client has it (median of %d)", *n, *broadcasts),
		float64(lasts.Quantile(0.5))/1e6, "ms", "<=", 100, fmt.Sprintf("worst %.1f ms", float64(lasts.Max)/1e6))
	r.Add("broadcast rounds reaching every client", float64(complete), "", ">=", float64(*broadcasts), "")
	r.Add("edge user CPU per broadcast delivery", bUser/float64(max(delivered, 1))*1e6, "µs", "<=", 0.3, "")
	r.Add("edge kernel CPU per broadcast delivery (loopback write)", bSys/float64(max(delivered, 1))*1e6, "µs", "", 0, "")

	// Unicast at a fixed rate to random connected users.
	progress("unicast %d msg/s for %v", *uniRate, *uniDur)
	uids := make([]string, 0, *n)
	for i := 0; i < *workers; i++ {
		cnt := per
		if i == *workers-1 {
			cnt = *n - per*(*workers-1)
		}
		for j := 0; j < cnt; j++ {
			uids = append(uids, loadgen.UID("u", i*per+j))
		}
	}
	var sent, errs atomic.Int64
	total := int(float64(*uniRate) * uniDur.Seconds())
	interval := time.Duration(float64(time.Second) / float64(*uniRate))
	start := time.Now().Add(50 * time.Millisecond)
	var wg sync.WaitGroup
	for p := 0; p < *publishers; p++ {
		wg.Add(1)
		go func(p int) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(p), 7))
			for i := p; i < total; i += *publishers {
				if d := time.Until(start.Add(time.Duration(i) * interval)); d > 0 {
					time.Sleep(d)
				}
				payload := fmt.Sprintf(`{"t":%d}`, time.Now().UnixNano())
				_, err := push.Publish(context.Background(), &pushv1.PublishRequest{UserId: uids[rng.IntN(len(uids))], Data: []byte(payload)})
				if err != nil {
					errs.Add(1)
					continue
				}
				sent.Add(1)
			}
		}(p)
	}
	wg.Wait()
	achieved := float64(sent.Load()) / time.Since(start).Seconds()
	time.Sleep(time.Second)
	hist := loadgen.NewHist()
	for _, w := range wk {
		w.send("report")
		ev, err := w.await("report", 30*time.Second)
		if err != nil {
			return err
		}
		if ev.Hist != nil {
			hist.Merge(*ev.Hist)
		}
	}
	r.Add("unicast publish→receive p50", float64(hist.Quantile(0.5))/1e6, "ms", "", 0, "")
	r.Add(fmt.Sprintf("unicast publish→receive p99 at %d msg/s over %d connections", *uniRate, *n), float64(hist.Quantile(0.99))/1e6, "ms", "<=", 2, "")
	r.Add("unicast publish→receive p99.9", float64(hist.Quantile(0.999))/1e6, "ms", "", 0, "")
	r.Add("unicast publish→receive max", float64(hist.Max)/1e6, "ms", "", 0, "")
	r.Add("unicast achieved publish rate", achieved, "/s", ">=", float64(*uniRate)*0.98, "")
	r.Add("unicast delivered / sent", float64(hist.N)/float64(max(sent.Load(), 1)), "", ">=", 1, fmt.Sprintf("%d/%d, %d publish errors", hist.N, sent.Load(), errs.Load()))

	r.Print(os.Stdout)
	path, err := r.Save(*out)
	if err != nil {
		return err
	}
	progress("results in %s", path)
	return nil
}
