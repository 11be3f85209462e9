package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/pushcluster/push/bench/report"
	"github.com/pushcluster/push/bench/sample"
	"github.com/pushcluster/push/pkg/flagenv"
	"github.com/pushcluster/push/pkg/ring"
	"github.com/pushcluster/push/pkg/store"
)

// runMigrate measures cluster control on real processes: how long a ring
// change takes to reach every router and edge (store write → each one's
// push_*_ring_version), and how long moving N users off a draining edge
// takes at the edges' default --migrate-rate, the clients reconnecting to
// the new owner with last_seq.
func runMigrate(args []string) error {
	fs := flag.NewFlagSet("pushbench migrate", flag.ContinueOnError)
	edgeBin := fs.String("edge-bin", "bin/edge", "edge binary")
	routerBin := fs.String("router-bin", "bin/router", "router binary")
	n := fs.Int("n", 19000, "users to move")
	workers := fs.Int("workers", 2, "load-generator processes")
	rate := fs.Int("rate", 4000, "upgrades per second while connecting")
	changes := fs.Int("changes", 100, "ring changes timed for the propagation delay")
	sources := fs.String("sources", "127.0.0.2-127.0.0.41", "client source addresses")
	out := fs.String("out", "bench/results", "results directory")
	flagenv.SetUsage(fs, "PUSHBENCH", "pushbench migrate [flags]", "Times ring propagation to a router and two edges (file store), then moves N users off a draining edge at the default migrate rate.")
	if _, err := flagenv.Parse(fs, "PUSHBENCH", args, nil); err != nil {
		return err
	}
	os.Setenv("PUSH_JWT_SECRET", newSecret())
	dir, err := os.MkdirTemp("", "pushbench-migrate-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	url := "file:" + filepath.Join(dir, "ring.json")
	st, err := store.Open(url, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		return err
	}
	defer st.Close()
	a := ring.Member{ID: 1, Name: "edge-a", WS: "127.0.0.1:18080", GRPC: "127.0.0.1:19090", Weight: 1}
	b := ring.Member{ID: 2, Name: "edge-b", WS: "127.0.0.1:18081", GRPC: "127.0.0.1:19091", Weight: 1}
	admins := map[string]string{"edge-a": "127.0.0.1:19100", "edge-b": "127.0.0.1:19101", "router": "127.0.0.1:19102"}
	ctx := context.Background()
	if err := st.CompareAndSwap(ctx, 0, &ring.Document{Version: 1, Members: []ring.Member{a, b}}, false); err != nil {
		return err
	}
	r := report.New("migrate", map[string]any{"n": *n, "changes": *changes, "workers": *workers})
	var procs []*daemon
	defer func() {
		for _, p := range procs {
			p.stop()
		}
	}()
	for _, m := range []ring.Member{a, b} {
		d, err := startDaemon(m.Name, *edgeBin, []string{"--id", fmt.Sprint(m.ID), "--listen", m.WS, "--grpc", m.GRPC,
			"--admin", admins[m.Name], "--ring", url, "--max-conns", "200000", "--log-level", "warn", "--drain-period", "1s"}, nil, admins[m.Name])
		if err != nil {
			return err
		}
		procs = append(procs, d)
	}
	rt, err := startDaemon("router", *routerBin, []string{"--listen", "127.0.0.1:18090", "--grpc", "127.0.0.1:19092",
		"--admin", admins["router"], "--ring", url, "--log-level", "warn"}, nil, admins["router"])
	if err != nil {
		return err
	}
	procs = append(procs, rt)

	gauge := map[string]string{"edge-a": "push_edge_ring_version", "edge-b": "push_edge_ring_version", "router": "push_router_ring_version"}
	version := func(name string) float64 {
		m, err := sample.Metrics("http://" + admins[name] + "/metrics")
		if err != nil {
			return -1
		}
		return m[gauge[name]]
	}
	// Propagation: toggle edge-b's weight; time until all three follow.
	progress("timing %d ring changes", *changes)
	var delays []time.Duration
	for i := 0; i < *changes; i++ {
		cur, err := st.Load(ctx)
		if err != nil {
			return err
		}
		next := *cur
		next.Members = append([]ring.Member(nil), cur.Members...)
		next.Members[1].Weight = 3 - cur.Members[1].Weight // 1 <-> 2
		next.Version = cur.Version + 1
		t0 := time.Now()
		if err := st.CompareAndSwap(ctx, cur.Version, &next, false); err != nil {
			return err
		}
		for _, name := range []string{"edge-a", "edge-b", "router"} {
			for version(name) < float64(next.Version) {
				if time.Since(t0) > 30*time.Second {
					return fmt.Errorf("%s did not follow ring version %d within 30s", name, next.Version)
				}
				time.Sleep(time.Millisecond)
			}
		}
		delays = append(delays, time.Since(t0))
		time.Sleep(50 * time.Millisecond)
	}
	sort.Slice(delays, func(i, j int) bool { return delays[i] < delays[j] })
	q := func(f float64) time.Duration { return delays[min(len(delays)-1, int(f*float64(len(delays))))] }
	r.Add("ring propagation, store write → every router and edge switched (file store, inotify), p50", float64(q(0.5).Microseconds())/1000, "ms", "", 0, "")
	r.Add(fmt.Sprintf("ring propagation p99 (%d changes, 2 edges + 1 router)", len(delays)), float64(q(0.99).Microseconds())/1000, "ms", "", 0,
		fmt.Sprintf("max %.1f ms; measured by polling /metrics every ~1 ms", float64(delays[len(delays)-1].Microseconds())/1000))

	// Migration: everyone on edge-a (edge-b draining), then swap the roles.
	setStates := func(sa, sb ring.State) (time.Time, error) {
		cur, err := st.Load(ctx)
		if err != nil {
			return time.Time{}, err
		}
		next := *cur
		next.Members = append([]ring.Member(nil), cur.Members...)
		next.Members[0].State, next.Members[1].State = sa, sb
		next.Version = cur.Version + 1
		t := time.Now()
		return t, st.CompareAndSwap(ctx, cur.Version, &next, false)
	}
	if _, err := setStates(ring.StateActive, ring.StateDraining); err != nil {
		return err
	}
	time.Sleep(500 * time.Millisecond)
	var wk []*worker
	per := *n / *workers
	for i := 0; i < *workers; i++ {
		w, err := startWorker([]string{"--target", a.WS, "--reconnect", b.WS, "--prefix", "m", "--first", fmt.Sprint(i * per), "--sources", *sources})
		if err != nil {
			return err
		}
		defer w.stop()
		wk = append(wk, w)
	}
	progress("connecting %d users to edge-a", *n)
	if opened, failed, lastErr, err := openAll(wk, *n, *rate); err != nil || failed > 0 {
		return fmt.Errorf("connect: opened %d failed %d (%s) %v", opened, failed, lastErr, err)
	}
	conns := func(name string) float64 {
		m, err := sample.Metrics("http://" + admins[name] + "/metrics")
		if err != nil {
			return -1
		}
		return m["push_edge_connections"]
	}
	progress("draining edge-a: moving %d users to edge-b", *n)
	t0, err := setStates(ring.StateDraining, ring.StateActive)
	if err != nil {
		return err
	}
	limit := time.Duration(*n/250+120) * time.Second
	var emptied, arrived time.Duration
	for emptied == 0 || arrived == 0 {
		if time.Since(t0) > limit {
			return fmt.Errorf("migration not done within %v: edge-a %v, edge-b %v connections", limit, conns("edge-a"), conns("edge-b"))
		}
		if emptied == 0 && conns("edge-a") == 0 {
			emptied = time.Since(t0)
		}
		if arrived == 0 && conns("edge-b") >= float64(*n) {
			arrived = time.Since(t0)
		}
		time.Sleep(20 * time.Millisecond)
	}
	var moved, failed int64
	for _, w := range wk {
		w.send("status")
		e, err := w.await("status", 30*time.Second)
		if err != nil {
			return err
		}
		moved += e.Moved
		failed += e.Failed
	}
	r.Add(fmt.Sprintf("time to migrate %d users off a draining edge (default --migrate-rate 500/s): edge emptied", *n), emptied.Seconds(), "s", "", 0,
		fmt.Sprintf("%.0f users/s", float64(*n)/emptied.Seconds()))
	r.Add("… every user connected to the new owner", arrived.Seconds(), "s", "", 0, "")
	r.Add("users closed with 4003 and resumed on the new owner", float64(moved), "", ">=", float64(*n), fmt.Sprintf("%d failed reconnects", failed))
	r.Print(os.Stdout)
	path, err := r.Save(*out)
	if err == nil {
		progress("results in %s", path)
	}
	return err
}
