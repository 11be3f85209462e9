package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	crand "crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"flag"
	"fmt"
	"math/big"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/pushcluster/push/bench/loadgen"
	"github.com/pushcluster/push/bench/report"
	"github.com/pushcluster/push/bench/sample"
	"github.com/pushcluster/push/pkg/auth"
	"github.com/pushcluster/push/pkg/flagenv"
	"github.com/pushcluster/push/pkg/ring"
	pushv1 "github.com/pushcluster/push/proto/push/v1"
)

// Ports of the proxy scenario, away from the other scenarios' so that runs
// by other people on the same machine do not collide.
const (
	pxRouterWS, pxRouterTLS, pxRouterGRPC, pxRouterAdmin = "127.0.0.1:28000", "127.0.0.1:28443", "127.0.0.1:28010", "127.0.0.1:28011"
	pxHAProxy                                            = "127.0.0.1:28200"
)

// proxyPhase is what one proxy (or none: direct) measured.
type proxyPhase struct {
	goSlope, rssSlope, fdSlope float64 // per idle relayed connection
	cpuPerConn                 float64 // µs per upgrade during the paced ramp
	connRate                   float64 // upgrades/s of an unpaced burst
	cpuPerMsg                  float64 // µs per delivered message
	p50, p99                   float64 // publish→receive, ms
	delivered                  int64
}

func runProxy(args []string) error {
	fs := flag.NewFlagSet("pushbench proxy", flag.ContinueOnError)
	edgeBin := fs.String("edge-bin", "bin/edge", "edge binary")
	routerBin := fs.String("router-bin", "bin/router", "router binary")
	haproxyBin := fs.String("haproxy-bin", "/usr/sbin/haproxy", "HAProxy binary")
	n := fs.Int("n", 7000, "idle connections through each proxy at the top of the slope (the router holds two descriptors each; 20,000 per process here)")
	base := fs.Int("base", 1000, "connections at the bottom of the slope")
	burst := fs.Int("burst", 2000, "connections opened unpaced after the slope, for connections per second")
	rate := fs.Int("rate", 2000, "upgrades per second while ramping")
	workers := fs.Int("workers", 2, "load-generator processes")
	sources := fs.String("sources", "127.0.0.2-127.0.0.41", "client source addresses")
	routerSources := fs.String("router-sources", "127.0.1.2-127.0.1.21", "the router's --source-addr for edge connections")
	msgRate := fs.Int("msg-rate", 4000, "publishes per second in the message phase")
	msgDur := fs.Duration("msg-duration", 5*time.Second, "message phase length")
	direct := fs.Int("direct", 2000, "clients connected straight to the edges for the latency baseline")
	tlsN := fs.Int("tls", 1000, "TLS-terminated idle connections (slope over this many)")
	out := fs.String("out", "bench/results", "results directory")
	flagenv.SetUsage(fs, "PUSHBENCH", "pushbench proxy [flags]",
		"Runs the router and HAProxy (mode http, balance url_param uid, hash-type consistent) in turn in front of the same two edges with the same load, and prints the router's costs as ratios of HAProxy's.")
	if _, err := flagenv.Parse(fs, "PUSHBENCH", args, nil); err != nil {
		return err
	}
	if *n <= *base || *base < 1 || *n+*burst > 9800 {
		return fmt.Errorf("need 1 <= --base < --n and --n + --burst <= 9800 (two descriptors per connection, 20,000 per process)")
	}
	secret := newSecret()
	os.Setenv("PUSH_JWT_SECRET", secret)
	dir, err := os.MkdirTemp("", "pushbench-proxy-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	// Two edges and the ring document both proxies follow.
	type edgeProc struct {
		id            uint32
		ws, grpc, adm string
		d             *daemon
		cc            *grpc.ClientConn
		push          pushv1.PushClient
	}
	var edges []*edgeProc
	doc := &ring.Document{Version: 1, Algorithm: ring.AlgorithmHAProxy}
	for i := 1; i <= 2; i++ {
		e := &edgeProc{id: uint32(i), ws: fmt.Sprintf("127.0.0.1:2808%d", i), grpc: fmt.Sprintf("127.0.0.1:2809%d", i), adm: fmt.Sprintf("127.0.0.1:2810%d", i)}
		e.d, err = startDaemon(fmt.Sprintf("edge%d", i), *edgeBin, []string{"--id", fmt.Sprint(i), "--listen", e.ws, "--grpc", e.grpc, "--admin", e.adm,
			"--max-conns", "200000", "--log-level", "warn", "--drain-period", "1s"}, nil, e.adm)
		if err != nil {
			return err
		}
		defer e.d.stop()
		if e.cc, err = grpc.NewClient(e.grpc, grpc.WithTransportCredentials(insecure.NewCredentials())); err != nil {
			return err
		}
		defer e.cc.Close()
		e.push = pushv1.NewPushClient(e.cc)
		edges = append(edges, e)
		doc.Members = append(doc.Members, ring.Member{ID: e.id, Name: fmt.Sprintf("edge%d", i), WS: e.ws, GRPC: e.grpc, Weight: 1, State: ring.StateActive})
	}
	rg, err := ring.New(doc)
	if err != nil {
		return err
	}
	js, _ := doc.Marshal()
	ringPath := filepath.Join(dir, "ring.json")
	if err := os.WriteFile(ringPath, js, 0o644); err != nil {
		return err
	}
	certPath, keyPath, err := selfSigned(dir)
	if err != nil {
		return err
	}
	rsrc, err := loadgen.Sources(*routerSources)
	if err != nil {
		return err
	}
	var rs []string
	for _, a := range rsrc {
		rs = append(rs, a.String())
	}
	push := func(uid string) pushv1.PushClient { return edges[rg.LookupString(uid)-1].push }

	r := report.New("proxy", map[string]any{"n": *n, "base": *base, "burst": *burst, "rate": *rate, "workers": *workers,
		"msg_rate": *msgRate, "msg_duration": msgDur.String(), "direct": *direct, "tls": *tlsN})

	// measure runs the same load through target and samples pid.
	measure := func(name, target string, pid int, metricsURL, gcURL, prefix string) (proxyPhase, error) {
		var ph proxyPhase
		var wk []*worker
		per := (*n + *burst) / *workers
		for i := 0; i < *workers; i++ {
			w, err := startWorker([]string{"--target", target, "--prefix", prefix, "--first", fmt.Sprint(i * per), "--sources", *sources})
			if err != nil {
				return ph, err
			}
			wk = append(wk, w)
		}
		defer func() {
			for _, w := range wk {
				w.stop()
			}
		}()
		progress("%s: opening %d connections", name, *base)
		if _, failed, lastErr, err := openAll(wk, *base, *rate); err != nil || failed > 0 {
			return ph, fmt.Errorf("%s: ramp to %d: failed %d (%s) %v", name, *base, failed, lastErr, err)
		}
		time.Sleep(2 * time.Second)
		s1, err := sample.Read(pid, metricsURL, gcURL)
		if err != nil {
			return ph, err
		}
		progress("%s: opening %d more at %d/s", name, *n-*base, *rate)
		c0, _ := sample.Read(pid, "", "")
		if _, failed, lastErr, err := openAll(wk, *n-*base, *rate); err != nil || failed > 0 {
			return ph, fmt.Errorf("%s: ramp to %d: failed %d (%s) %v", name, *n, failed, lastErr, err)
		}
		c1, _ := sample.Read(pid, "", "")
		time.Sleep(2 * time.Second)
		s2, err := sample.Read(pid, metricsURL, gcURL)
		if err != nil {
			return ph, err
		}
		dn := float64(*n - *base)
		ph.goSlope = float64(s2.GoBytes()-s1.GoBytes()) / dn
		ph.rssSlope = float64(s2.RSS-s1.RSS) / dn
		ph.fdSlope = float64(s2.FDs-s1.FDs) / dn
		ph.cpuPerConn = (c1.CPU() - c0.CPU()) / dn * 1e6
		r.Raw[name+"_sample_base"], r.Raw[name+"_sample_top"] = s1, s2

		progress("%s: %d connections unpaced", name, *burst)
		t0 := time.Now()
		if _, failed, lastErr, err := openAll(wk, *burst, 0); err != nil || failed > 0 {
			return ph, fmt.Errorf("%s: burst: failed %d (%s) %v", name, failed, lastErr, err)
		}
		ph.connRate = float64(*burst) / time.Since(t0).Seconds()

		var uids []string
		for i := 0; i < *workers; i++ {
			cnt := per
			if i == *workers-1 {
				cnt = *n + *burst - per*(*workers-1)
			}
			for j := 0; j < cnt; j++ {
				uids = append(uids, loadgen.UID(prefix, i*per+j))
			}
		}
		time.Sleep(time.Second)
		for _, w := range wk { // reset the histograms
			w.send("report")
			if _, err := w.await("report", 30*time.Second); err != nil {
				return ph, err
			}
		}
		progress("%s: %d msg/s for %v", name, *msgRate, *msgDur)
		m0, _ := sample.Read(pid, "", "")
		sent := publishLoad(uids, push, *msgRate, *msgDur)
		time.Sleep(time.Second)
		m1, _ := sample.Read(pid, "", "")
		hist := loadgen.NewHist()
		for _, w := range wk {
			w.send("report")
			ev, err := w.await("report", 30*time.Second)
			if err != nil {
				return ph, err
			}
			if ev.Hist != nil {
				hist.Merge(*ev.Hist)
			}
		}
		ph.delivered = hist.N
		ph.cpuPerMsg = (m1.CPU() - m0.CPU()) / float64(max(hist.N, 1)) * 1e6
		ph.p50, ph.p99 = float64(hist.Quantile(0.5))/1e6, float64(hist.Quantile(0.99))/1e6
		progress("%s: delivered %d of %d", name, hist.N, sent)
		return ph, nil
	}

	// 1. The router (plaintext, then TLS-terminated idle connections).
	rt, err := startDaemon("router", *routerBin, []string{"--listen", pxRouterWS, "--grpc", pxRouterGRPC, "--admin", pxRouterAdmin,
		"--ring", "file:" + ringPath, "--source-addr", strings.Join(rs, ","), "--log-level", "warn", "--drain-period", "1s",
		"--tls-listen", pxRouterTLS, "--tls-cert", certPath, "--tls-key", keyPath}, nil, pxRouterAdmin)
	if err != nil {
		return err
	}
	rMetrics, rGC := "http://"+pxRouterAdmin+"/metrics", "http://"+pxRouterAdmin+"/debug/pprof/heap?gc=1"
	router, err := measure("router", pxRouterWS, rt.pid(), rMetrics, rGC, "r")
	if err != nil {
		rt.stop()
		return err
	}
	waitIdle(rMetrics)
	progress("router: %d TLS connections", *tlsN)
	tlsGo, tlsRSS, err := measureTLS(rt.pid(), rMetrics, rGC, *tlsN, *sources, secret)
	rt.stop()
	if err != nil {
		return err
	}

	// 2. HAProxy with the same edges, ids and weights.
	hp, err := startHAProxy(*haproxyBin, dir, doc)
	if err != nil {
		return err
	}
	haproxy, err := measure("haproxy", pxHAProxy, hp.Process.Pid, "", "", "h")
	hp.Process.Kill()
	hp.Wait()
	if err != nil {
		return err
	}

	// 3. Direct to the edges: the latency baseline.
	var wk []*worker
	for i, e := range edges {
		w, err := startWorker([]string{"--target", e.ws, "--prefix", fmt.Sprintf("d%d-", i+1), "--sources", *sources})
		if err != nil {
			return err
		}
		defer w.stop()
		wk = append(wk, w)
	}
	// Each worker connects consecutive uids to one edge; publishes go only
	// to the users that edge owns (the others would be stored, not sent).
	var duids []string
	progress("direct: %d connections", *direct)
	for _, w := range wk {
		w.send("open %d %d", *direct/2, *rate/2)
	}
	for _, w := range wk {
		if _, err := w.await("opened", 120*time.Second); err != nil {
			return err
		}
	}
	for i, e := range edges {
		for j := 0; j < *direct/2; j++ {
			if uid := loadgen.UID(fmt.Sprintf("d%d-", i+1), j); rg.LookupString(uid) == e.id {
				duids = append(duids, uid)
			}
		}
	}
	time.Sleep(time.Second)
	for _, w := range wk {
		w.send("report")
		w.await("report", 30*time.Second)
	}
	publishLoad(duids, push, *msgRate, *msgDur)
	time.Sleep(time.Second)
	dh := loadgen.NewHist()
	for _, w := range wk {
		w.send("report")
		ev, err := w.await("report", 30*time.Second)
		if err != nil {
			return err
		}
		if ev.Hist != nil {
			dh.Merge(*ev.Hist)
		}
	}
	d50, d99 := float64(dh.Quantile(0.5))/1e6, float64(dh.Quantile(0.99))/1e6

	ratio := func(a, b float64) float64 {
		if b == 0 {
			return 0
		}
		return a / b
	}
	slope := fmt.Sprintf("slope %d→%d", *base, *n)
	r.Add("router Go heap+stack per idle relayed connection ("+slope+")", router.goSlope, "B", "", 0, "")
	r.Add("router RSS per idle relayed connection (slope)", router.rssSlope, "B", "", 0, "")
	r.Add("HAProxy RSS per idle relayed connection (slope)", haproxy.rssSlope, "B", "", 0, "")
	r.Add("user-space bytes per idle connection: router Go / HAProxy RSS", ratio(router.goSlope, haproxy.rssSlope), "×", "<=", 0.5, "")
	r.Add("user-space bytes per idle connection: router RSS / HAProxy RSS", ratio(router.rssSlope, haproxy.rssSlope), "×", "", 0, "")
	r.Add("router fds per relayed connection (slope)", router.fdSlope, "fd", "<=", 2.0, fmt.Sprintf("HAProxy %.2f", haproxy.fdSlope))
	r.Add("CPU per new upgraded connection: router / HAProxy", ratio(router.cpuPerConn, haproxy.cpuPerConn), "×", "<=", 1.0,
		fmt.Sprintf("router %.1f µs, HAProxy %.1f µs", router.cpuPerConn, haproxy.cpuPerConn))
	r.Add("CPU per forwarded message: router / HAProxy", ratio(router.cpuPerMsg, haproxy.cpuPerMsg), "×", "<=", 1.0,
		fmt.Sprintf("router %.2f µs, HAProxy %.2f µs; delivered %d / %d", router.cpuPerMsg, haproxy.cpuPerMsg, router.delivered, haproxy.delivered))
	r.Add("added latency p50 (publish→receive minus direct): router / HAProxy", ratio(router.p50-d50, haproxy.p50-d50), "×", "<=", 1.0,
		fmt.Sprintf("router +%.3f ms, HAProxy +%.3f ms, direct %.3f ms", router.p50-d50, haproxy.p50-d50, d50))
	r.Add("added latency p99: router / HAProxy", ratio(router.p99-d99, haproxy.p99-d99), "×", "<=", 1.0,
		fmt.Sprintf("router +%.3f ms, HAProxy +%.3f ms, direct %.3f ms", router.p99-d99, haproxy.p99-d99, d99))
	r.Add("new connections per second (unpaced burst): router / HAProxy", ratio(router.connRate, haproxy.connRate), "×", ">=", 1.0,
		fmt.Sprintf("router %.0f/s, HAProxy %.0f/s", router.connRate, haproxy.connRate))
	r.Add(fmt.Sprintf("router Go heap+stack per idle TLS-terminated connection (slope over %d)", *tlsN), tlsGo, "B", "", 0,
		fmt.Sprintf("RSS %.0f B", tlsRSS))
	r.Raw["router"], r.Raw["haproxy"] = fmt.Sprintf("%+v", router), fmt.Sprintf("%+v", haproxy)
	r.Raw["direct_p50_ms"], r.Raw["direct_p99_ms"] = d50, d99

	r.Print(os.Stdout)
	path, err := r.Save(*out)
	if err != nil {
		return err
	}
	progress("results in %s", path)
	return nil
}

// publishLoad publishes {"t":now} to random users of uids at rate for dur,
// straight to the owning edge, and returns how many were accepted.
func publishLoad(uids []string, push func(string) pushv1.PushClient, rate int, dur time.Duration) int64 {
	const publishers = 16
	var sent atomic.Int64
	total := int(float64(rate) * dur.Seconds())
	interval := time.Duration(float64(time.Second) / float64(rate))
	start := time.Now().Add(50 * time.Millisecond)
	var wg sync.WaitGroup
	for p := 0; p < publishers; p++ {
		wg.Add(1)
		go func(p int) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(p), 11))
			for i := p; i < total; i += publishers {
				if d := time.Until(start.Add(time.Duration(i) * interval)); d > 0 {
					time.Sleep(d)
				}
				uid := uids[rng.IntN(len(uids))]
				payload := fmt.Sprintf(`{"t":%d}`, time.Now().UnixNano())
				resp, err := push(uid).Publish(context.Background(), &pushv1.PublishRequest{UserId: uid, Data: []byte(payload)})
				if err == nil && resp.Outcome == pushv1.Outcome_OUTCOME_DELIVERED {
					sent.Add(1)
				}
			}
		}(p)
	}
	wg.Wait()
	return sent.Load()
}

// waitIdle waits until the router relays no connection any more.
func waitIdle(metricsURL string) {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		m, err := sample.Metrics(metricsURL)
		if err == nil && m["push_router_connections"] == 0 {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// measureTLS opens idle TLS-terminated WebSockets through the router (from
// this process: crypto/tls clients, nothing read after the upgrade) and
// returns the router's Go heap+stack and RSS slope per connection.
func measureTLS(pid int, metricsURL, gcURL string, n int, sources, secret string) (float64, float64, error) {
	src, err := loadgen.Sources(sources)
	if err != nil {
		return 0, 0, err
	}
	var mu sync.Mutex
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	open := func(from, to int) error {
		var wg sync.WaitGroup
		var fail atomic.Value
		next := atomic.Int64{}
		next.Store(int64(from))
		for g := 0; g < 8; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					i := int(next.Add(1) - 1)
					if i >= to {
						return
					}
					c, err := tlsClient(i, src, secret)
					if err != nil {
						fail.Store(err)
						return
					}
					mu.Lock()
					conns = append(conns, c)
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		if err, ok := fail.Load().(error); ok {
			return err
		}
		return nil
	}
	base := max(n/5, 1)
	if err := open(0, base); err != nil {
		return 0, 0, err
	}
	time.Sleep(2 * time.Second)
	s1, err := sample.Read(pid, metricsURL, gcURL)
	if err != nil {
		return 0, 0, err
	}
	if err := open(base, base+n); err != nil {
		return 0, 0, err
	}
	time.Sleep(2 * time.Second)
	s2, err := sample.Read(pid, metricsURL, gcURL)
	if err != nil {
		return 0, 0, err
	}
	return float64(s2.GoBytes()-s1.GoBytes()) / float64(n), float64(s2.RSS-s1.RSS) / float64(n), nil
}

func tlsClient(i int, src []net.IP, secret string) (net.Conn, error) {
	d := net.Dialer{Timeout: 10 * time.Second}
	if len(src) > 0 {
		d.LocalAddr = &net.TCPAddr{IP: src[i%len(src)]}
	}
	c, err := tls.DialWithDialer(&d, "tcp", pxRouterTLS, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		return nil, err
	}
	uid := fmt.Sprintf("tls%d", i)
	tok, _ := auth.Mint([]byte(secret), uid, time.Hour, time.Time{})
	fmt.Fprintf(c, "GET /ws?uid=%s&token=%s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", uid, tok)
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "HTTP/1.1 101") {
		c.Close()
		return nil, fmt.Errorf("tls upgrade: %q %v", line, err)
	}
	return c, nil
}

func selfSigned(dir string) (string, string, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), crand.Reader)
	if err != nil {
		return "", "", err
	}
	tmpl := x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "pushbench"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(crand.Reader, &tmpl, &tmpl, &key.PublicKey, key)
	if err != nil {
		return "", "", err
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return "", "", err
	}
	cert, keyPath := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		return "", "", err
	}
	return cert, keyPath, os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
}

// startHAProxy runs HAProxy in front of the ring's members with the same
// ids and weights (balance url_param uid, hash-type consistent: the ring's
// "haproxy" algorithm picks the same server) and waits for its port.
func startHAProxy(bin, dir string, doc *ring.Document) (*exec.Cmd, error) {
	var b bytes.Buffer
	fmt.Fprintf(&b, `global
    maxconn 9800
defaults
    mode http
    timeout connect 3s
    timeout client 1h
    timeout server 1h
    timeout tunnel 1h
    timeout http-request 5s
frontend fe
    bind %s
    default_backend be
backend be
    balance url_param uid
    hash-type consistent
`, pxHAProxy)
	for _, m := range doc.Members {
		fmt.Fprintf(&b, "    server %s %s id %d weight %d\n", m.Name, m.WS, m.ID, m.Weight)
	}
	cfg := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(cfg, b.Bytes(), 0o644); err != nil {
		return nil, err
	}
	logf, err := os.CreateTemp("", "pushbench-haproxy-*.log")
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "-db", "-f", cfg)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start haproxy: %w", err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.Dial("tcp", pxHAProxy); err == nil {
			c.Close()
			progress("haproxy up (pid %d, log %s)", cmd.Process.Pid, logf.Name())
			return cmd, nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	cmd.Process.Kill()
	cmd.Wait()
	log, _ := os.ReadFile(logf.Name())
	return nil, fmt.Errorf("haproxy did not listen; log:\n%s", log)
}
