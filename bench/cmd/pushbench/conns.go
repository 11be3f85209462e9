package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/pushcluster/push/bench/loadgen"
	"github.com/pushcluster/push/bench/report"
	"github.com/pushcluster/push/bench/sample"
	"github.com/pushcluster/push/pkg/flagenv"
	"github.com/pushcluster/push/pkg/ring"
	"github.com/pushcluster/push/pkg/store"
)

// Ports of the conns scenario, below the ephemeral range (32768+) so that
// other programs' listeners and connections never take them: routers share
// one port (SO_REUSEPORT); the i-th router and edge add i to their bases.
const (
	cnRouterWS                        = "127.0.0.1:21000"
	cnRouterGRPC, cnRouterAdmin       = 21100, 21200
	cnEdgeWS, cnEdgeGRPC, cnEdgeAdmin = 21300, 21400, 21500
)

// group is several processes of one kind whose figures are summed.
type group struct {
	kind  string
	procs []*daemon
}

// connsPoint is one sample of every process at a number of connections.
type connsPoint struct {
	Conns      int           `json:"conns"`
	Edge       []sample.Proc `json:"edges"`
	Router     []sample.Proc `json:"routers"`
	Kernel     sample.Kernel `json:"kernel"`
	EdgeGo     int64         `json:"edge_go_bytes"`
	RouterGo   int64         `json:"router_go_bytes"`
	EdgeRSS    int64         `json:"edge_rss_bytes"`
	RouterRSS  int64         `json:"router_rss_bytes"`
	EdgeFDs    int           `json:"edge_fds"`
	RouterFDs  int           `json:"router_fds"`
	MaxProcFDs int           `json:"max_process_fds"`
}

func (g *group) sample(gc bool) ([]sample.Proc, error) {
	var out []sample.Proc
	for _, d := range g.procs {
		m, c := "", ""
		if gc {
			m, c = "http://"+d.admin+"/metrics", "http://"+d.admin+"/debug/pprof/heap?gc=1"
		}
		s, err := sample.Read(d.pid(), m, c)
		if err != nil {
			return nil, fmt.Errorf("sample %s: %w", d.name, err)
		}
		out = append(out, s)
	}
	return out, nil
}

func (g *group) cpu() (user, total float64) {
	ss, _ := g.sample(false)
	for _, s := range ss {
		user += s.UserSec
		total += s.CPU()
	}
	return user, total
}

func (g *group) stop() {
	for _, d := range g.procs {
		d.stop()
	}
}

// runConns holds N idle connections through routers to edges, spread over
// as many processes of each kind as the 20,000-descriptor limit needs, and
// reports per-connection costs of each kind as slopes.
func runConns(args []string) error {
	fs := flag.NewFlagSet("pushbench conns", flag.ContinueOnError)
	edgeBin := fs.String("edge-bin", "bin/edge", "edge binary")
	routerBin := fs.String("router-bin", "bin/router", "router binary")
	n := fs.Int("n", 50000, "idle connections through the routers at the top (200,000 fits this machine)")
	base := fs.Int("base", 0, "connections at the bottom of the slope (default n/10)")
	steps := fs.Int("steps", 4, "ramp steps, every process sampled after each (the memory chart)")
	rate := fs.Int("rate", 3000, "upgrades per second asked of the load generators while ramping")
	perEdge := fs.Int("per-edge", 17000, "connections planned per edge process (one descriptor each)")
	perRouter := fs.Int("per-router", 8500, "connections planned per router process (two descriptors each)")
	perWorker := fs.Int("per-worker", 18000, "clients per load-generator process")
	sources := fs.String("sources", "127.0.0.2-127.0.0.81", "client source addresses")
	routerSources := fs.String("router-sources", "127.0.1.2-127.0.1.41", "the routers' --source-addr for edge connections")
	rest := fs.Duration("rest", 10*time.Second, "idle period over which CPU at rest is measured")
	out := fs.String("out", "bench/results", "results directory")
	flagenv.SetUsage(fs, "PUSHBENCH", "pushbench conns [flags]",
		"Holds N idle WebSocket connections through SO_REUSEPORT routers to edges on a file-store ring (as many processes of each kind as the descriptor limit needs) and reports upgrades/s, bytes per connection on edges and routers (slopes), kernel memory per connection and CPU at rest.")
	if _, err := flagenv.Parse(fs, "PUSHBENCH", args, nil); err != nil {
		return err
	}
	if *base == 0 {
		*base = *n / 10
	}
	if *n <= *base || *base < 1 || *steps < 1 {
		return fmt.Errorf("--n %d must exceed --base %d >= 1", *n, *base)
	}
	nEdges := (*n + *perEdge - 1) / *perEdge
	nRouters := (*n + *perRouter - 1) / *perRouter
	nWorkers := (*n + *perWorker - 1) / *perWorker
	if nEdges > 90 || nRouters > 90 {
		return fmt.Errorf("%d edges and %d routers: too many for the port plan", nEdges, nRouters)
	}
	os.Setenv("PUSH_JWT_SECRET", newSecret())
	dir, err := os.MkdirTemp("", "pushbench-conns-")
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
	doc := &ring.Document{Version: 1}
	for i := 0; i < nEdges; i++ {
		doc.Members = append(doc.Members, ring.Member{ID: uint32(i + 1), Name: fmt.Sprintf("edge-%d", i+1),
			WS: fmt.Sprintf("127.0.0.1:%d", cnEdgeWS+i), GRPC: fmt.Sprintf("127.0.0.1:%d", cnEdgeGRPC+i), Weight: 1, State: ring.StateActive})
	}
	if err := st.CompareAndSwap(context.Background(), 0, doc, false); err != nil {
		return err
	}
	r := report.New("conns", map[string]any{"n": *n, "base": *base, "rate": *rate, "edges": nEdges, "routers": nRouters, "workers": nWorkers})

	edges, routers := &group{kind: "edge"}, &group{kind: "router"}
	defer edges.stop()
	defer routers.stop()
	progress("starting %d edges, %d routers, %d load generators for %d connections", nEdges, nRouters, nWorkers, *n)
	for i, m := range doc.Members {
		adm := fmt.Sprintf("127.0.0.1:%d", cnEdgeAdmin+i)
		d, err := startDaemon(m.Name, *edgeBin, []string{"--id", fmt.Sprint(m.ID), "--listen", m.WS, "--grpc", m.GRPC, "--admin", adm,
			"--ring", url, "--max-conns", "19800", "--log-level", "warn", "--drain-period", "1s"}, nil, adm)
		if err != nil {
			return err
		}
		edges.procs = append(edges.procs, d)
	}
	rsrc, err := loadgen.Sources(*routerSources)
	if err != nil {
		return err
	}
	var rs []string
	for _, a := range rsrc {
		rs = append(rs, a.String())
	}
	for i := 0; i < nRouters; i++ {
		adm := fmt.Sprintf("127.0.0.1:%d", cnRouterAdmin+i)
		d, err := startDaemon(fmt.Sprintf("router-%d", i+1), *routerBin, []string{"--listen", cnRouterWS, "--reuseport",
			"--grpc", fmt.Sprintf("127.0.0.1:%d", cnRouterGRPC+i), "--admin", adm, "--ring", url,
			"--source-addr", strings.Join(rs, ","), "--log-level", "warn", "--drain-period", "1s"}, nil, adm)
		if err != nil {
			return err
		}
		routers.procs = append(routers.procs, d)
	}
	var wk []*worker
	for i := 0; i < nWorkers; i++ {
		w, err := startWorker([]string{"--target", cnRouterWS, "--prefix", "c", "--first", fmt.Sprint(i * *n), "--sources", *sources})
		if err != nil {
			return err
		}
		defer w.stop()
		wk = append(wk, w)
	}

	point := func(conns int) (connsPoint, error) {
		p := connsPoint{Conns: conns, Kernel: sample.ReadKernel()}
		var err error
		if p.Edge, err = edges.sample(true); err != nil {
			return p, err
		}
		if p.Router, err = routers.sample(true); err != nil {
			return p, err
		}
		for _, s := range p.Edge {
			p.EdgeGo += s.GoBytes()
			p.EdgeRSS += s.RSS
			p.EdgeFDs += s.FDs
			p.MaxProcFDs = max(p.MaxProcFDs, s.FDs)
		}
		for _, s := range p.Router {
			p.RouterGo += s.GoBytes()
			p.RouterRSS += s.RSS
			p.RouterFDs += s.FDs
			p.MaxProcFDs = max(p.MaxProcFDs, s.FDs)
		}
		progress("%d connections: edges %.1f MiB Go, routers %.1f MiB Go, busiest process %d fds", conns,
			float64(p.EdgeGo)/(1<<20), float64(p.RouterGo)/(1<<20), p.MaxProcFDs)
		return p, nil
	}

	progress("opening %d connections", *base)
	if _, failed, lastErr, err := openAll(wk, *base, *rate); err != nil || failed > 0 {
		return fmt.Errorf("ramp to %d: failed %d (%s) %v", *base, failed, lastErr, err)
	}
	time.Sleep(2 * time.Second)
	p0, err := point(*base)
	if err != nil {
		return err
	}
	points := []connsPoint{p0}
	var edgeCPU, edgeUser, routerCPU, routerUser float64
	var rampDur time.Duration
	at := *base
	for s := 1; s <= *steps; s++ {
		next := *base + (*n-*base)*s / *steps
		progress("opening %d more connections (to %d) at %d/s", next-at, next, *rate)
		eu0, e0 := edges.cpu()
		ru0, r0 := routers.cpu()
		t0 := time.Now()
		opened, failed, lastErr, err := openAll(wk, next-at, *rate)
		rampDur += time.Since(t0)
		if err != nil || failed > 0 {
			return fmt.Errorf("ramp to %d: opened %d failed %d (%s) %v", next, opened, failed, lastErr, err)
		}
		eu1, e1 := edges.cpu()
		ru1, r1 := routers.cpu()
		edgeCPU, edgeUser = edgeCPU+e1-e0, edgeUser+eu1-eu0
		routerCPU, routerUser = routerCPU+r1-r0, routerUser+ru1-ru0
		at = next
		time.Sleep(2 * time.Second)
		p, err := point(at)
		if err != nil {
			return err
		}
		points = append(points, p)
	}
	top := points[len(points)-1]

	// CPU at rest: nothing but the edges' pings (--ping-interval) and the
	// clients' pongs.
	progress("measuring CPU at rest for %v", *rest)
	eu0, e0 := edges.cpu()
	ru0, r0 := routers.cpu()
	time.Sleep(*rest)
	eu1, e1 := edges.cpu()
	ru1, r1 := routers.cpu()
	var held int64
	for _, w := range wk {
		w.send("status")
		ev, err := w.await("status", 30*time.Second)
		if err != nil {
			return err
		}
		held += ev.Open
	}

	dn := float64(*n - *base)
	slope := func(a, b int64) float64 { return float64(b-a) / dn }
	rng := fmt.Sprintf("slope %d→%d", *base, *n)
	r.Add(fmt.Sprintf("connections held through %d routers to %d edges (%d load generators)", nRouters, nEdges, nWorkers), float64(held), "", ">=", float64(*n), "")
	r.Add("upgrades per second through the routers (ramp, paced by the load generators)", dn/rampDur.Seconds(), "/s", "", 0, fmt.Sprintf("asked %d/s", *rate))
	r.Add("edge Go heap+stack per idle connection ("+rng+", all edges)", slope(p0.EdgeGo, top.EdgeGo), "B", "<=", 512, "")
	r.Add("edge RSS per idle connection (slope)", slope(p0.EdgeRSS, top.EdgeRSS), "B", "", 0, "")
	r.Add("edge fds per connection (slope)", slope(int64(p0.EdgeFDs), int64(top.EdgeFDs)), "fd", "<=", 1, "")
	r.Add("router Go heap+stack per idle relayed connection ("+rng+", all routers)", slope(p0.RouterGo, top.RouterGo), "B", "", 0, "")
	r.Add("router RSS per idle relayed connection (slope)", slope(p0.RouterRSS, top.RouterRSS), "B", "", 0, "")
	r.Add("router fds per relayed connection (slope)", slope(int64(p0.RouterFDs), int64(top.RouterFDs)), "fd", "<=", 2, "")
	kern := slope(p0.Kernel.SlabBytes+p0.Kernel.TCPMemBytes, top.Kernel.SlabBytes+top.Kernel.TCPMemBytes)
	r.Add("kernel memory per client connection (slab + tcp mem, slope; 4 sockets: client, router ×2, edge)", kern, "B", "", 0,
		fmt.Sprintf("%.0f B per socket", kern/4))
	r.Add("edge CPU per upgrade incl. JWT (user+sys, all edges)", edgeCPU/dn*1e6, "µs", "<=", 20, fmt.Sprintf("user %.1f µs", edgeUser/dn*1e6))
	r.Add("router CPU per relayed upgrade (user+sys, all routers)", routerCPU/dn*1e6, "µs", "", 0, fmt.Sprintf("user %.1f µs", routerUser/dn*1e6))
	restSec := rest.Seconds()
	r.Add(fmt.Sprintf("CPU at rest with %d idle connections: edges", *n), (e1-e0)/restSec*100, "% of one core", "", 0,
		fmt.Sprintf("user %.2f%%; %.2f µs per connection per second", (eu1-eu0)/restSec*100, (e1-e0)/restSec/float64(*n)*1e6))
	r.Add("CPU at rest: routers", (r1-r0)/restSec*100, "% of one core", "", 0,
		fmt.Sprintf("user %.2f%%; %.2f µs per connection per second", (ru1-ru0)/restSec*100, (r1-r0)/restSec/float64(*n)*1e6))
	r.Add("busiest process's descriptors at the top", float64(top.MaxProcFDs), "fd", "<=", 20000, "")
	r.Raw["points"] = points

	var eg, rg, er, rr, kk report.Series
	eg.Name, rg.Name, er.Name, rr.Name, kk.Name = "edges Go heap+stack", "routers Go heap+stack", "edges RSS", "routers RSS", "kernel slab + tcp mem (delta)"
	for _, p := range points {
		x := float64(p.Conns)
		eg.Points = append(eg.Points, [2]float64{x, float64(p.EdgeGo) / (1 << 20)})
		rg.Points = append(rg.Points, [2]float64{x, float64(p.RouterGo) / (1 << 20)})
		er.Points = append(er.Points, [2]float64{x, float64(p.EdgeRSS) / (1 << 20)})
		rr.Points = append(rr.Points, [2]float64{x, float64(p.RouterRSS) / (1 << 20)})
		kk.Points = append(kk.Points, [2]float64{x, float64(p.Kernel.SlabBytes+p.Kernel.TCPMemBytes-p0.Kernel.SlabBytes-p0.Kernel.TCPMemBytes) / (1 << 20)})
	}
	r.AddChart(report.Chart{Name: "memory", Title: fmt.Sprintf("memory against idle connections (%d edges, %d routers)", nEdges, nRouters),
		X: "connections", Y: "MiB (all processes of a kind)", Series: []report.Series{eg, rg, er, rr, kk}})
	return finish(r, *out)
}
