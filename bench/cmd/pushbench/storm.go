package main

import (
	"flag"
	"fmt"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/pushcluster/push/bench/report"
	"github.com/pushcluster/push/bench/sample"
	"github.com/pushcluster/push/pkg/flagenv"
)

// runStorm restarts an edge under N clients and times the reconnect storm:
// every client of the edge reconnects at once (within --retry-jitter) to
// the same address, retrying until the restarted edge takes it.
func runStorm(args []string) error {
	fs := flag.NewFlagSet("pushbench storm", flag.ContinueOnError)
	bin := fs.String("edge-bin", "bin/edge", "edge binary")
	n := fs.Int("n", 19000, "clients of the edge")
	workers := fs.Int("workers", 2, "load-generator processes")
	rate := fs.Int("rate", 4000, "upgrades per second while connecting before the restart")
	sources := fs.String("sources", "127.0.0.2-127.0.0.41", "client source addresses")
	jitter := fs.Duration("retry-jitter", 500*time.Millisecond, "each client reconnects after a random delay below this, again after every failure")
	mode := fs.String("mode", "kill", "how the edge goes away: kill (SIGKILL, the sockets reset at once, as in a crash or OOM kill) or term (SIGTERM, 1001 closes over --drain-period)")
	drain := fs.Duration("drain-period", time.Second, "the edge's --drain-period (mode term)")
	limit := fs.Duration("limit", 60*time.Second, "give up when the clients are not all back after this long")
	out := fs.String("out", "bench/results", "results directory")
	edgeArgs := fs.String("edge-args", "", "extra edge flags, space-separated")
	flagenv.SetUsage(fs, "PUSHBENCH", "pushbench storm [flags]",
		"Holds N clients on one edge, restarts the edge on the same port and measures the time until every client is back, failed connects and handshakes, and the edge's peak CPU.")
	if _, err := flagenv.Parse(fs, "PUSHBENCH", args, nil); err != nil {
		return err
	}
	if *mode != "kill" && *mode != "term" {
		return fmt.Errorf("--mode %q: kill or term", *mode)
	}
	os.Setenv("PUSH_JWT_SECRET", newSecret())
	const ws, grpcAddr, admin = "127.0.0.1:18180", "127.0.0.1:19190", "127.0.0.1:19200"
	edgeFlags := append([]string{"--listen", ws, "--grpc", grpcAddr, "--admin", admin,
		"--max-conns", "200000", "--log-level", "warn", "--drain-period", drain.String()}, strings.Fields(*edgeArgs)...)
	e, err := startDaemon("edge", *bin, edgeFlags, nil, admin)
	if err != nil {
		return err
	}
	defer func() { e.stop() }()
	var wk []*worker
	per := *n / *workers
	for i := 0; i < *workers; i++ {
		w, err := startWorker([]string{"--target", ws, "--reconnect", ws, "--retry-jitter", jitter.String(),
			"--prefix", "s", "--first", fmt.Sprint(i * per), "--sources", *sources})
		if err != nil {
			return err
		}
		defer w.stop()
		wk = append(wk, w)
	}
	r := report.New("storm", map[string]any{"n": *n, "workers": *workers, "rate": *rate, "retry_jitter": jitter.String(), "mode": *mode})
	progress("connecting %d clients", *n)
	if opened, failed, lastErr, err := openAll(wk, *n, *rate); err != nil || failed > 0 {
		return fmt.Errorf("connect: opened %d failed %d (%s) %v", opened, failed, lastErr, err)
	}
	var lastErr string
	status := func() (open, failed, retries int64, err error) {
		for _, w := range wk {
			w.send("status")
			ev, err := w.await("status", 10*time.Second)
			if err != nil {
				return 0, 0, 0, err
			}
			open += ev.Open
			failed += ev.Failed
			retries += ev.Moved
			if ev.Err != "" {
				lastErr = ev.Err
			}
		}
		return open, failed, retries, nil
	}
	_, failed0, retries0, err := status()
	if err != nil {
		return err
	}
	time.Sleep(time.Second)

	progress("restarting the edge (%s) under %d clients", *mode, *n)
	x0 := sample.TCPExt()
	t0 := time.Now()
	if *mode == "kill" {
		e.cmd.Process.Signal(syscall.SIGKILL)
	} else {
		e.cmd.Process.Signal(syscall.SIGTERM)
	}
	e.cmd.Wait()
	down := time.Since(t0)
	e, err = startDaemon("edge", *bin, edgeFlags, nil, admin)
	if err != nil {
		return err
	}
	ready := time.Since(t0)
	_, failedReady, _, err := status()
	if err != nil {
		return err
	}

	// Sample the new edge's CPU every 250 ms (USER_HZ is 100) until every
	// client is back.
	var peak, cpu0 float64
	first, _ := sample.Read(e.pid(), "", "")
	cpu0 = first.CPU()
	prev := first
	var back time.Duration
	var open int64
	for back == 0 {
		time.Sleep(250 * time.Millisecond)
		s, err := sample.Read(e.pid(), "", "")
		if err == nil {
			if c := (s.CPU() - prev.CPU()) / s.At.Sub(prev.At).Seconds(); c > peak {
				peak = c
			}
			prev = s
		}
		if open, _, _, err = status(); err != nil {
			return err
		}
		if open >= int64(*n) {
			back = time.Since(t0)
		} else if time.Since(t0) > *limit {
			break
		}
	}
	_, failed1, retries1, err := status()
	if err != nil {
		return err
	}
	spent := prev.CPU() - cpu0
	x1 := sample.TCPExt()
	dx := func(k string) int64 { return x1[k] - x0[k] }

	target := fmt.Sprintf("every one of %d clients back after the edge restart (%s), from the kill", *n, *mode)
	if back == 0 {
		r.Add(target, limit.Seconds(), "s", "<=", 10, fmt.Sprintf("NOT all back: %d of %d after %v", open, *n, *limit))
	} else {
		r.Add(target, back.Seconds(), "s", "<=", 10, fmt.Sprintf("old edge gone after %.2f s, new edge ready after %.2f s", down.Seconds(), ready.Seconds()))
	}
	r.Add("failed connects and handshakes during the storm", float64(failed1-failed0), "", "", 0,
		fmt.Sprintf("%d before the new edge was ready, %d after; %d reconnect attempts for %d clients, retry jitter %v; last error: %s",
			failedReady-failed0, failed1-failedReady, retries1-retries0, *n, *jitter, lastErr))
	r.Add("kernel: listen queue overflows during the storm (TcpExt ListenOverflows, machine-wide)", float64(dx("ListenOverflows")), "", "", 0,
		fmt.Sprintf("ListenDrops %d, SYN cookies sent %d (SYN queue full: net.ipv4.tcp_max_syn_backlog), TCP_DEFER_ACCEPT drops %d",
			dx("ListenDrops"), dx("SyncookiesSent"), dx("TCPDeferAcceptDrop")))
	r.Add("edge peak CPU while the clients came back (250 ms windows)", peak*100, "% of one core", "", 0, "")
	r.Add("edge CPU per reconnected client (user+sys, from ready to all back)", spent/float64(*n)*1e6, "µs", "", 0, "")
	return finish(r, *out)
}
