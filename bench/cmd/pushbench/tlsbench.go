package main

import (
	"bufio"
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
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

// Ports of the tls scenario, apart from every other scenario's.
const (
	tsEdgeWS, tsEdgeGRPC, tsEdgeAdmin                  = "127.0.0.1:28301", "127.0.0.1:28311", "127.0.0.1:28321"
	tsRouterWS, tsRouterTLS, tsRouterGRPC, tsRouterAdm = "127.0.0.1:28300", "127.0.0.1:28343", "127.0.0.1:28310", "127.0.0.1:28320"
	tsHAProxy                                          = "127.0.0.1:28344"
)

// tlsPhase is what one TLS terminator measured.
type tlsPhase struct {
	goSlope, rssSlope float64 // per idle TLS connection
	cpuPerConn        float64 // µs per new connection (handshake, head, dial, 101)
	cpuPerMsg         float64 // µs per delivered message
	p50, p99          float64 // publish→receive, ms
	delivered, sent   int64
}

func runTLS(args []string) error {
	fs := flag.NewFlagSet("pushbench tls", flag.ContinueOnError)
	edgeBin := fs.String("edge-bin", "bin/edge", "edge binary")
	routerBin := fs.String("router-bin", "bin/router", "router binary")
	haproxyBin := fs.String("haproxy-bin", "/usr/sbin/haproxy", "HAProxy binary")
	n := fs.Int("n", 3000, "idle TLS connections at the top of the slope")
	base := fs.Int("base", 500, "connections at the bottom of the slope")
	sources := fs.String("sources", "127.0.0.2-127.0.0.41", "client source addresses")
	msgRate := fs.Int("msg-rate", 2000, "publishes per second in the message phase")
	msgDur := fs.Duration("msg-duration", 5*time.Second, "message phase length")
	curves := fs.String("client-curves", "default", "key exchanges the clients offer: default (Go's: X25519MLKEM768 and X25519 key shares in the ClientHello, as current Chrome and Firefox send) or x25519 (a ClientHello of ~250 B)")
	out := fs.String("out", "bench/results", "results directory")
	flagenv.SetUsage(fs, "PUSHBENCH", "pushbench tls [flags]",
		"Terminates TLS with the router (its TLS listener) and with HAProxy (bind ... ssl, mode http, balance url_param uid) in turn in front of the same edge, with the same crypto/tls clients (ECDSA P-256 certificate, TLS 1.3, full handshakes): bytes per idle TLS connection, CPU per new connection and per message.")
	if _, err := flagenv.Parse(fs, "PUSHBENCH", args, nil); err != nil {
		return err
	}
	switch *curves {
	case "default":
	case "x25519":
		tlsCurves = []tls.CurveID{tls.X25519}
	default:
		return fmt.Errorf("--client-curves %q: want default or x25519", *curves)
	}
	if *n <= *base || *base < 1 || *n > 9000 {
		return fmt.Errorf("need 1 <= --base < --n <= 9000 (two descriptors per connection in each proxy)")
	}
	secret := newSecret()
	os.Setenv("PUSH_JWT_SECRET", secret)
	dir, err := os.MkdirTemp("", "pushbench-tls-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	ed, err := startDaemon("edge", *edgeBin, []string{"--id", "1", "--listen", tsEdgeWS, "--grpc", tsEdgeGRPC, "--admin", tsEdgeAdmin,
		"--max-conns", "200000", "--log-level", "warn", "--drain-period", "1s"}, nil, tsEdgeAdmin)
	if err != nil {
		return err
	}
	defer ed.stop()
	cc, err := grpc.NewClient(tsEdgeGRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer cc.Close()
	pc := pushv1.NewPushClient(cc)
	push := func(string) pushv1.PushClient { return pc }
	doc := &ring.Document{Version: 1, Algorithm: ring.AlgorithmHAProxy,
		Members: []ring.Member{{ID: 1, Name: "edge1", WS: tsEdgeWS, GRPC: tsEdgeGRPC, Weight: 1, State: ring.StateActive}}}
	js, _ := doc.Marshal()
	ringPath := filepath.Join(dir, "ring.json")
	if err := os.WriteFile(ringPath, js, 0o644); err != nil {
		return err
	}
	certPath, keyPath, err := selfSigned(dir)
	if err != nil {
		return err
	}
	src, err := loadgen.Sources(*sources)
	if err != nil {
		return err
	}
	r := report.New("tls", map[string]any{"n": *n, "base": *base, "msg_rate": *msgRate, "msg_duration": msgDur.String(), "client_curves": *curves})

	measure := func(name, target string, pid int, metricsURL, gcURL, prefix string) (tlsPhase, error) {
		var ph tlsPhase
		var conns []net.Conn
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		open := func(from, to int) error {
			var mu sync.Mutex
			var wg sync.WaitGroup
			var fail atomic.Value
			var next atomic.Int64
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
						c, err := tlsUpgrade(target, prefix+strconv.Itoa(i), src[i%len(src)], secret)
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
				return fmt.Errorf("%s: %w", name, err)
			}
			return nil
		}
		progress("%s: %d TLS connections", name, *base)
		if err := open(0, *base); err != nil {
			return ph, err
		}
		time.Sleep(2 * time.Second)
		s1, err := sample.Read(pid, metricsURL, gcURL)
		if err != nil {
			return ph, err
		}
		progress("%s: %d more", name, *n-*base)
		c0, _ := sample.Read(pid, "", "")
		if err := open(*base, *n); err != nil {
			return ph, err
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
		ph.cpuPerConn = (c1.CPU() - c0.CPU()) / dn * 1e6
		r.Raw[name+"_sample_base"], r.Raw[name+"_sample_top"] = s1, s2

		// Messages: every client reads now (a goroutine each, in this
		// process), publishes go to random users at msgRate.
		var hmu sync.Mutex
		hist := loadgen.NewHist()
		var got atomic.Int64
		for _, c := range conns {
			go readStamps(c, &got, &hmu, &hist)
		}
		uids := make([]string, *n)
		for i := range uids {
			uids[i] = prefix + strconv.Itoa(i)
		}
		time.Sleep(500 * time.Millisecond)
		progress("%s: %d msg/s for %v", name, *msgRate, *msgDur)
		m0, _ := sample.Read(pid, "", "")
		ph.sent = publishLoad(uids, push, *msgRate, *msgDur)
		deadline := time.Now().Add(5 * time.Second)
		for got.Load() < ph.sent && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		m1, _ := sample.Read(pid, "", "")
		ph.delivered = got.Load()
		ph.cpuPerMsg = (m1.CPU() - m0.CPU()) / float64(max(ph.delivered, 1)) * 1e6
		hmu.Lock()
		ph.p50, ph.p99 = float64(hist.Quantile(0.5))/1e6, float64(hist.Quantile(0.99))/1e6
		hmu.Unlock()
		progress("%s: delivered %d of %d", name, ph.delivered, ph.sent)
		return ph, nil
	}

	rt, err := startDaemon("router", *routerBin, []string{"--listen", tsRouterWS, "--grpc", tsRouterGRPC, "--admin", tsRouterAdm,
		"--ring", "file:" + ringPath, "--log-level", "warn", "--drain-period", "1s",
		"--tls-listen", tsRouterTLS, "--tls-cert", certPath, "--tls-key", keyPath}, nil, tsRouterAdm)
	if err != nil {
		return err
	}
	router, err := measure("router", tsRouterTLS, rt.pid(), "http://"+tsRouterAdm+"/metrics", "http://"+tsRouterAdm+"/debug/pprof/heap?gc=1", "rt")
	rt.stop()
	if err != nil {
		return err
	}
	hp, err := startHAProxyTLS(*haproxyBin, dir, certPath, keyPath, doc)
	if err != nil {
		return err
	}
	haproxy, err := measure("haproxy", tsHAProxy, hp.Process.Pid, "", "", "ht")
	hp.Process.Kill()
	hp.Wait()
	if err != nil {
		return err
	}

	ratio := func(a, b float64) float64 {
		if b == 0 {
			return 0
		}
		return a / b
	}
	slope := fmt.Sprintf("slope %d→%d", *base, *n)
	r.Add("router Go heap+stack per idle TLS connection ("+slope+")", router.goSlope, "B", "<=", 8192, "")
	r.Add("router RSS per idle TLS connection (slope)", router.rssSlope, "B", "", 0, "")
	r.Add("HAProxy RSS per idle TLS connection (slope)", haproxy.rssSlope, "B", "", 0, "")
	r.Add("bytes per idle TLS connection: router RSS / HAProxy RSS", ratio(router.rssSlope, haproxy.rssSlope), "×", "", 0, "")
	r.Add("CPU per new TLS connection (handshake, head, dial, 101): router / HAProxy", ratio(router.cpuPerConn, haproxy.cpuPerConn), "×", "", 0,
		fmt.Sprintf("router %.0f µs, HAProxy %.0f µs", router.cpuPerConn, haproxy.cpuPerConn))
	r.Add("CPU per message to a TLS client: router / HAProxy", ratio(router.cpuPerMsg, haproxy.cpuPerMsg), "×", "", 0,
		fmt.Sprintf("router %.2f µs, HAProxy %.2f µs; delivered %d/%d and %d/%d", router.cpuPerMsg, haproxy.cpuPerMsg,
			router.delivered, router.sent, haproxy.delivered, haproxy.sent))
	r.Add("publish→receive p50 through TLS: router / HAProxy", ratio(router.p50, haproxy.p50), "×", "", 0,
		fmt.Sprintf("router %.3f ms, HAProxy %.3f ms", router.p50, haproxy.p50))
	r.Add("publish→receive p99 through TLS: router / HAProxy", ratio(router.p99, haproxy.p99), "×", "", 0,
		fmt.Sprintf("router %.3f ms, HAProxy %.3f ms", router.p99, haproxy.p99))
	r.Raw["router"], r.Raw["haproxy"] = fmt.Sprintf("%+v", router), fmt.Sprintf("%+v", haproxy)
	r.Print(os.Stdout)
	path, err := r.Save(*out)
	if err != nil {
		return err
	}
	progress("results in %s", path)
	return nil
}

// tlsCurves is what the clients offer (nil: Go's default).
var tlsCurves []tls.CurveID

// tlsBenchConfig is the clients' TLS: full handshakes (no session cache),
// TLS 1.3. With Go's default curves the ClientHello carries an
// X25519MLKEM768 key share (~1.2 KB) beside X25519's: the router
// (crypto/tls) picks X25519MLKEM768, HAProxy 2.6 (OpenSSL 3.0, no ML-KEM)
// X25519.
func tlsBenchConfig() *tls.Config {
	return &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13, CurvePreferences: tlsCurves}
}

// tlsUpgrade opens a WebSocket for uid over TLS to target and reads the 101.
func tlsUpgrade(target, uid string, from net.IP, secret string) (net.Conn, error) {
	d := net.Dialer{Timeout: 10 * time.Second, LocalAddr: &net.TCPAddr{IP: from}}
	c, err := tls.DialWithDialer(&d, "tcp", target, tlsBenchConfig())
	if err != nil {
		return nil, err
	}
	tok, _ := auth.Mint([]byte(secret), uid, time.Hour, time.Time{})
	fmt.Fprintf(c, "GET /ws?uid=%s&token=%s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", uid, tok)
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	var head []byte
	one := make([]byte, 1)
	for len(head) < 4 || string(head[len(head)-4:]) != "\r\n\r\n" {
		if _, err := c.Read(one); err != nil {
			c.Close()
			return nil, fmt.Errorf("tls upgrade %s: %v (got %q)", uid, err, head)
		}
		head = append(head, one[0])
	}
	if string(head[:12]) != "HTTP/1.1 101" {
		c.Close()
		return nil, fmt.Errorf("tls upgrade %s: %q", uid, head)
	}
	c.SetReadDeadline(time.Time{})
	return c, nil
}

// readStamps reads server text frames from c until it closes, counting them
// and adding each message's publish→receive time (its "t" field, in ns) to
// hist.
func readStamps(c net.Conn, got *atomic.Int64, mu *sync.Mutex, hist *loadgen.Hist) {
	br := bufio.NewReaderSize(c, 4096)
	var h [4]byte
	buf := make([]byte, 0, 512)
	for {
		if _, err := io.ReadFull(br, h[:2]); err != nil {
			return
		}
		n := int(h[1] & 0x7f)
		if n == 126 {
			if _, err := io.ReadFull(br, h[2:4]); err != nil {
				return
			}
			n = int(h[2])<<8 | int(h[3])
		}
		buf = buf[:0]
		for len(buf) < n {
			b, err := br.ReadByte()
			if err != nil {
				return
			}
			buf = append(buf, b)
		}
		now := time.Now().UnixNano()
		if h[0]&0x0f != 1 {
			continue
		}
		if t, ok := stampOf(buf); ok {
			got.Add(1)
			mu.Lock()
			hist.Add(now - t)
			mu.Unlock()
		}
	}
}

// stampOf finds "t":<ns> in a message.
func stampOf(p []byte) (int64, bool) {
	const key = `"t":`
	for i := 0; i+len(key) < len(p); i++ {
		if string(p[i:i+len(key)]) != key {
			continue
		}
		j := i + len(key)
		k := j
		for k < len(p) && p[k] >= '0' && p[k] <= '9' {
			k++
		}
		v, err := strconv.ParseInt(string(p[j:k]), 10, 64)
		return v, err == nil
	}
	return 0, false
}

// startHAProxyTLS runs HAProxy terminating TLS with the same certificate
// (bind ... ssl crt) in front of the edges of doc, routing like the
// router (balance url_param uid, hash-type consistent).
func startHAProxyTLS(bin, dir, certPath, keyPath string, doc *ring.Document) (*exec.Cmd, error) {
	cert, err := os.ReadFile(certPath)
	if err != nil {
		return nil, err
	}
	key, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, err
	}
	pem := filepath.Join(dir, "haproxy.pem")
	if err := os.WriteFile(pem, append(cert, key...), 0o600); err != nil {
		return nil, err
	}
	cfg := fmt.Sprintf(`global
    maxconn 9000
    ssl-default-bind-options ssl-min-ver TLSv1.3
defaults
    mode http
    timeout connect 3s
    timeout client 1h
    timeout server 1h
    timeout tunnel 1h
    timeout http-request 5s
frontend fe
    bind %s ssl crt %s
    default_backend be
backend be
    balance url_param uid
    hash-type consistent
`, tsHAProxy, pem)
	for _, m := range doc.Members {
		cfg += fmt.Sprintf("    server %s %s id %d weight %d\n", m.Name, m.WS, m.ID, m.Weight)
	}
	path := filepath.Join(dir, "haproxy-tls.cfg")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		return nil, err
	}
	logf, err := os.CreateTemp("", "pushbench-haproxy-tls-*.log")
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "-db", "-f", path)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start haproxy: %w", err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.Dial("tcp", tsHAProxy); err == nil {
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
