package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/pushcluster/push/bench/report"
	"github.com/pushcluster/push/bench/sample"
	"github.com/pushcluster/push/pkg/auth"
	"github.com/pushcluster/push/pkg/flagenv"
	"github.com/pushcluster/push/pkg/ring"
	pushv1 "github.com/pushcluster/push/proto/push/v1"
)

// Ports of the backpressure scenario (apart from the other scenarios').
const (
	bpEdgeWS, bpEdgeGRPC, bpEdgeAdmin = "127.0.0.1:24080", "127.0.0.1:24090", "127.0.0.1:24100"
	bpRouterWS, bpRouterAdmin         = "127.0.0.1:24000", "127.0.0.1:24002"
	bpRouterGRPC                      = "127.0.0.1:24001"
)

// runBackpressure measures what a client that never reads costs on its
// way to the edge's slow-consumer rule (1008): directly, through the
// router with its bounded relay buffers, and through a router with the
// kernel's autotuned buffers (--relay-buffer -1, the old behaviour).
func runBackpressure(args []string) error {
	fs := flag.NewFlagSet("pushbench backpressure", flag.ContinueOnError)
	edgeBin := fs.String("edge-bin", "bin/edge", "edge binary")
	routerBin := fs.String("router-bin", "bin/router", "router binary")
	n := fs.Int("n", 8, "stalled clients per path (one at a time, each kept open until the path is done)")
	size := fs.Int("size", 1024, "payload bytes per message")
	relayBuf := fs.Int("relay-buffer", 0, "the router's --relay-buffer (0: its default)")
	out := fs.String("out", "bench/results", "results directory")
	flagenv.SetUsage(fs, "PUSHBENCH", "pushbench backpressure [flags]", "Clients that never read, directly and through the router: bytes the edge counts as delivered before it cuts them (1008) and bytes the router holds for each, kernel buffers included.")
	if _, err := flagenv.Parse(fs, "PUSHBENCH", args, nil); err != nil {
		return err
	}
	if *n < 1 || *size < 1 {
		return fmt.Errorf("--n and --size must be >= 1")
	}
	secret := newSecret()
	os.Setenv("PUSH_JWT_SECRET", secret)
	dir, err := os.MkdirTemp("", "pushbench-backpressure-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	ed, err := startDaemon("edge", *edgeBin, []string{"--listen", bpEdgeWS, "--grpc", bpEdgeGRPC, "--admin", bpEdgeAdmin,
		"--log-level", "warn", "--drain-period", "1s"}, nil, bpEdgeAdmin)
	if err != nil {
		return err
	}
	defer ed.stop()
	cc, err := grpc.NewClient(bpEdgeGRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer cc.Close()
	push := pushv1.NewPushClient(cc)
	doc := &ring.Document{Version: 1, Algorithm: ring.AlgorithmHAProxy,
		Members: []ring.Member{{ID: 1, Name: "edge1", WS: bpEdgeWS, GRPC: bpEdgeGRPC, Weight: 1, State: ring.StateActive}}}
	js, _ := doc.Marshal()
	ringPath := filepath.Join(dir, "ring.json")
	if err := os.WriteFile(ringPath, js, 0o644); err != nil {
		return err
	}
	payload := []byte(`{"pad":"` + strings.Repeat("x", max(*size-10, 0)) + `"}`)

	r := report.New("backpressure", map[string]any{"n": *n, "size": len(payload), "relay_buffer": *relayBuf})
	type path struct {
		name, label string
		target      string
		routerArgs  []string
	}
	bounded := []string{}
	if *relayBuf != 0 {
		bounded = []string{"--relay-buffer", strconv.Itoa(*relayBuf)}
	}
	paths := []path{
		{"direct", "direct to the edge", bpEdgeWS, nil},
		{"router", "through the router", bpRouterWS, bounded},
		{"router-autotuned", "through a router with --relay-buffer -1 (kernel autotuning, as before this bound)", bpRouterWS, []string{"--relay-buffer", "-1"}},
	}
	edgeMetrics := "http://" + bpEdgeAdmin + "/metrics"
	var directDelivered float64
	for pi, p := range paths {
		var rt *daemon
		if p.routerArgs != nil {
			rt, err = startDaemon("router-"+p.name, *routerBin, append([]string{"--listen", bpRouterWS, "--grpc", bpRouterGRPC, "--admin", bpRouterAdmin,
				"--ring", "file:" + ringPath, "--check", "none", "--log-level", "warn", "--drain-period", "1s"}, p.routerArgs...), nil, bpRouterAdmin)
			if err != nil {
				return err
			}
		}
		m0, err := sample.Metrics(edgeMetrics)
		if err != nil {
			return err
		}
		var delivered, held, inflight []float64
		var conns []net.Conn
		for i := 0; i < *n; i++ {
			uid := fmt.Sprintf("bp%d-%d", pi, i)
			before := peersOf(bpEdgeWS)
			c, err := stalledWS(p.target, uid, secret)
			if err != nil {
				return err
			}
			conns = append(conns, c)
			var f0 float64
			if rt != nil {
				rm, err := sample.Metrics("http://" + bpRouterAdmin + "/metrics")
				if err != nil {
					return err
				}
				f0 = rm["push_router_inflight_bytes"]
			}
			bytesOut := 0
			for {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				resp, err := push.Publish(ctx, &pushv1.PublishRequest{UserId: uid, Data: payload})
				cancel()
				if err != nil {
					return fmt.Errorf("%s: publish: %w", p.name, err)
				}
				if resp.Outcome != pushv1.Outcome_OUTCOME_DELIVERED {
					break
				}
				bytesOut += 4 + len(`{"seq":,"epoch":"","data":}`) + len(strconv.FormatUint(resp.Seq, 10)) + len(resp.Epoch) + len(payload)
				if bytesOut > 256<<20 {
					return fmt.Errorf("%s: 256 MiB delivered to a client that reads nothing and it was never cut off", p.name)
				}
			}
			delivered = append(delivered, float64(bytesOut))
			if rt != nil {
				// The router's two sockets of this client: the one it
				// accepted (peer: the client) and its new one to the edge.
				cq := queueOf(portOf(bpRouterWS), c.LocalAddr().(*net.TCPAddr).Port)
				var eq tcpQ
				for port, q := range peersOf(bpEdgeWS) {
					if _, old := before[port]; !old {
						eq = q
					}
				}
				rm, err := sample.Metrics("http://" + bpRouterAdmin + "/metrics")
				if err != nil {
					return err
				}
				fl := rm["push_router_inflight_bytes"] - f0
				held = append(held, float64(cq.tx+eq.rx)+fl)
				inflight = append(inflight, fl)
			}
		}
		m1, err := sample.Metrics(edgeMetrics)
		if err != nil {
			return err
		}
		cuts := m1[`push_edge_closes_total{code="1008"}`] - m0[`push_edge_closes_total{code="1008"}`]
		for _, c := range conns {
			c.Close()
		}
		if rt != nil {
			rt.stop()
		}
		med := median(delivered)
		r.Add(fmt.Sprintf("%s: edge 1008 closes for %d stalled clients", p.label, *n), cuts, "", ">=", float64(*n), "")
		r.Add(fmt.Sprintf("%s: bytes the edge counted as delivered before 1008 (median)", p.label), med, "B", "", 0,
			fmt.Sprintf("min %.0f, max %.0f", minOf(delivered), maxOf(delivered)))
		if p.name == "direct" {
			directDelivered = med
			continue
		}
		r.Add(fmt.Sprintf("%s: delivered before 1008 against direct", p.label), med/directDelivered, "×", "", 0, "")
		note := fmt.Sprintf("max %.0f; in flight (pipe or copy) max %.0f; client socket send queue + edge socket receive queue + in flight, from /proc/net/tcp and push_router_inflight_bytes", maxOf(held), maxOf(inflight))
		if p.name == "router" {
			r.Add(fmt.Sprintf("%s: bytes held per stalled client (median)", p.label), median(held), "B", "<=", 256<<10, note)
		} else {
			r.Add(fmt.Sprintf("%s: bytes held per stalled client (median)", p.label), median(held), "B", "", 0, note)
		}
		r.Raw[p.name+"_held"] = held
		r.Raw[p.name+"_delivered"] = delivered
	}
	return finish(r, *out)
}

// stalledWS upgrades a WebSocket, reads the 101 answer and nothing after.
func stalledWS(target, uid, secret string) (net.Conn, error) {
	tok, err := auth.Mint([]byte(secret), uid, time.Hour, time.Time{})
	if err != nil {
		return nil, err
	}
	c, err := net.DialTimeout("tcp", target, 10*time.Second)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(c, "GET /ws?uid=%s&token=%s HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", uid, tok)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var head []byte
	one := make([]byte, 1)
	for !bytes.HasSuffix(head, []byte("\r\n\r\n")) {
		if _, err := c.Read(one); err != nil {
			c.Close()
			return nil, fmt.Errorf("%s: read the 101: %w (got %q)", uid, err, head)
		}
		head = append(head, one[0])
	}
	if !bytes.HasPrefix(head, []byte("HTTP/1.1 101")) {
		c.Close()
		return nil, fmt.Errorf("%s: upgrade answered %q", uid, head)
	}
	return c, nil
}

// tcpQ is a socket's queues in /proc/net/tcp: written and not acknowledged
// (tx), arrived and not read (rx).
type tcpQ struct{ tx, rx int }

type tcpRow struct {
	lport, rport int
	q            tcpQ
}

// tcpRows reads the IPv4 sockets that are established or closing with
// bytes still queued.
func tcpRows() []tcpRow {
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		return nil
	}
	port := func(addr string) int {
		_, p, _ := strings.Cut(addr, ":")
		v, _ := strconv.ParseUint(p, 16, 16)
		return int(v)
	}
	var rows []tcpRow
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 5 || (f[3] != "01" && f[3] != "04") {
			continue
		}
		tx, rx, _ := strings.Cut(f[4], ":")
		a, _ := strconv.ParseUint(tx, 16, 32)
		c, _ := strconv.ParseUint(rx, 16, 32)
		rows = append(rows, tcpRow{lport: port(f[1]), rport: port(f[2]), q: tcpQ{tx: int(a), rx: int(c)}})
	}
	return rows
}

// queueOf is the socket bound to lport whose peer port is rport.
func queueOf(lport, rport int) tcpQ {
	for _, r := range tcpRows() {
		if r.lport == lport && r.rport == rport {
			return r.q
		}
	}
	return tcpQ{}
}

// peersOf returns, by local port, the sockets connected to addr's port
// (the router's connections to the edge).
func peersOf(addr string) map[int]tcpQ {
	p := portOf(addr)
	out := map[int]tcpQ{}
	for _, r := range tcpRows() {
		if r.rport == p && r.lport != p {
			out[r.lport] = r.q
		}
	}
	return out
}

func portOf(addr string) int {
	_, p, _ := net.SplitHostPort(addr)
	v, _ := strconv.Atoi(p)
	return v
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[len(s)/2]
}

func minOf(v []float64) float64 {
	m := 0.0
	for i, x := range v {
		if i == 0 || x < m {
			m = x
		}
	}
	return m
}

func maxOf(v []float64) float64 {
	m := 0.0
	for _, x := range v {
		m = max(m, x)
	}
	return m
}
