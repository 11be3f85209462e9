package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/pushcluster/push/bench/report"
	"github.com/pushcluster/push/bench/sample"
	"github.com/pushcluster/push/pkg/auth"
	"github.com/pushcluster/push/pkg/flagenv"
	pushv1 "github.com/pushcluster/push/proto/push/v1"
)

// Ports of the compress scenario (apart from the other scenarios').
const czWS, czGRPC, czAdmin = "127.0.0.1:24180", "127.0.0.1:24190", "127.0.0.1:24200"

// jsonItems is the bulk of a realistic ~1 KB JSON message: a list of
// records with repeated keys, as pushed application events are.
func jsonItems() string {
	var items []string
	for i := 0; len(strings.Join(items, ",")) < 950; i++ {
		items = append(items, fmt.Sprintf(`{"id":%d,"name":"product number %d","price":%d.99,"tags":["sale","new"]}`, 1000+i, i, 9+i))
	}
	return `"items":[` + strings.Join(items, ",") + `]`
}

// runCompress measures permessage-deflate on one edge: bytes on the wire
// for a 1 KB JSON message with and without it, the idle cost of a
// connection that negotiated it, and edge CPU per broadcast delivery of
// that message to N clients that negotiated it against N that did not.
func runCompress(args []string) error {
	fs := flag.NewFlagSet("pushbench compress", flag.ContinueOnError)
	bin := fs.String("edge-bin", "bin/edge", "edge binary")
	n := fs.Int("n", 19000, "connections (each kind, on a fresh edge each; one edge process holds at most ~19,900 here)")
	base := fs.Int("base", 1000, "connections at the bottom of the idle-cost slope")
	workers := fs.Int("workers", 2, "load-generator processes")
	rate := fs.Int("rate", 4000, "upgrades per second")
	sources := fs.String("sources", "127.0.0.2-127.0.0.41", "client source addresses")
	rounds := fs.Int("broadcasts", 20, "broadcast rounds per kind (CPU is sampled in 10 ms ticks: more rounds, finer figures)")
	out := fs.String("out", "bench/results", "results directory")
	edgeArgs := fs.String("edge-args", "", "extra edge flags, space-separated")
	flagenv.SetUsage(fs, "PUSHBENCH", "pushbench compress [flags]", "permessage-deflate on one edge: wire bytes of a 1 KB JSON message, idle bytes per connection that negotiated it, CPU per compressed broadcast delivery.")
	if _, err := flagenv.Parse(fs, "PUSHBENCH", args, nil); err != nil {
		return err
	}
	if *n <= *base || *base < 1 {
		return fmt.Errorf("--n %d must exceed --base %d >= 1", *n, *base)
	}
	secret := newSecret()
	os.Setenv("PUSH_JWT_SECRET", secret)
	startEdge := func() (*daemon, error) {
		return startDaemon("edge", *bin, append([]string{"--listen", czWS, "--grpc", czGRPC, "--admin", czAdmin,
			"--max-conns", "200000", "--log-level", "warn", "--drain-period", "1s"}, strings.Fields(*edgeArgs)...), nil, czAdmin)
	}
	items := jsonItems()
	r := report.New("compress", map[string]any{"n": *n, "base": *base, "workers": *workers, "rate": *rate, "broadcasts": *rounds})

	// 1. Bytes on the wire: one client of each kind, one message each.
	e, err := startEdge()
	if err != nil {
		return err
	}
	cc, err := grpc.NewClient(czGRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		e.stop()
		return err
	}
	push := pushv1.NewPushClient(cc)
	data := `{"type":"cart.updated",` + items + `}`
	var frames [2]int
	for i, offer := range []string{"", "permessage-deflate; client_max_window_bits"} {
		frames[i], err = wireBytes(push, fmt.Sprintf("wire%d", i), secret, offer, data)
		if err != nil {
			break
		}
	}
	cc.Close()
	e.stop()
	if err != nil {
		return err
	}
	r.Add(fmt.Sprintf("1 KB JSON message (%d B payload): WebSocket frame on the wire, uncompressed", len(data)), float64(frames[0]), "B", "", 0, "")
	r.Add("the same message, permessage-deflate", float64(frames[1]), "B", "", 0,
		fmt.Sprintf("%.1f%% of uncompressed; TCP/IP headers (52-66 B per segment) come on top of both", 100*float64(frames[1])/float64(frames[0])))

	// 2. On a fresh edge each: N clients that did not offer compression,
	// then N that negotiated it: idle cost, then broadcasts of the same
	// ~1 KB JSON message.
	pad := "," + items
	type phase struct {
		ramp       rampResult
		fan        fanoutResult
		negotiated float64
	}
	run := func(prefix string, wargs ...string) (phase, error) {
		var ph phase
		e, err := startEdge()
		if err != nil {
			return ph, err
		}
		defer e.stop()
		g, err := newRig(e, czWS, czGRPC, czAdmin, prefix, *sources, *workers, *n, wargs...)
		if err != nil {
			return ph, err
		}
		defer g.close()
		g.pad = pad
		if ph.ramp, err = g.ramp(r, *base, *n, *rate, 2); err != nil {
			return ph, err
		}
		m, err := sample.Metrics("http://" + czAdmin + "/metrics")
		if err != nil {
			return ph, err
		}
		ph.negotiated = m["push_edge_deflate_upgrades_total"]
		ph.fan, err = g.fanout(*rounds)
		return ph, err
	}
	plain, err := run("p")
	if err != nil {
		return err
	}
	z, err := run("z", "--deflate")
	if err != nil {
		return err
	}
	fp, fz := plain.fan, z.fan
	r.Add(fmt.Sprintf("edge Go heap+stack per idle connection with permessage-deflate negotiated (slope %d→%d)", *base, *n), z.ramp.goSlope, "B", "<=", 512,
		fmt.Sprintf("%.0f upgrades negotiated it; RSS slope %.0f B", z.negotiated, z.ramp.rssSlope))
	r.Add("the same without permessage-deflate (another fresh edge)", plain.ramp.goSlope, "B", "", 0,
		fmt.Sprintf("%.0f upgrades negotiated it; RSS slope %.0f B", plain.negotiated, plain.ramp.rssSlope))
	msg := fmt.Sprintf("broadcast of a ~%d B JSON message to %d", len(pad)+30, *n)
	r.Add(msg+" that negotiated permessage-deflate: edge user CPU per delivery", fz.userPer, "µs", "", 0,
		fmt.Sprintf("kernel %.2f µs; %d of %d deliveries arrived compressed; last client after %.1f ms (median)", fz.sysPer, fz.compressed, *rounds**n, fz.median))
	r.Add(msg+" without it: edge user CPU per delivery", fp.userPer, "µs", "", 0,
		fmt.Sprintf("kernel %.2f µs; last client after %.1f ms (median)", fp.sysPer, fp.median))
	r.Add("edge CPU (user+kernel) per compressed delivery against uncompressed", (fz.userPer+fz.sysPer)/max(fp.userPer+fp.sysPer, 1e-9), "×", "", 0,
		"the message is compressed once per broadcast; the smaller frames cost less to write")
	r.Add("broadcast rounds reaching every client (compressed, uncompressed)", float64(fz.complete+fp.complete), "", ">=", float64(2**rounds), "")
	return finish(r, *out)
}

// wireBytes publishes data to a client that made the given offer and
// returns the size of the frame it received (header included).
func wireBytes(push pushv1.PushClient, uid, secret, offer, data string) (int, error) {
	c, ext, err := wireClient(czWS, uid, secret, offer)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	if (ext != "") != (offer != "") {
		return 0, fmt.Errorf("offer %q answered %q", offer, ext)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := push.Publish(ctx, &pushv1.PublishRequest{UserId: uid, Data: []byte(data)}); err != nil {
		return 0, err
	}
	b0, size, err := readFrameSize(c)
	if err != nil {
		return 0, err
	}
	if (b0&0x40 != 0) != (offer != "") {
		return 0, fmt.Errorf("frame %#x with offer %q", b0, offer)
	}
	return size, nil
}

// wireClient upgrades with the given Sec-WebSocket-Extensions offer and
// returns the connection and the extension the edge accepted.
func wireClient(target, uid, secret, offer string) (net.Conn, string, error) {
	tok, err := auth.Mint([]byte(secret), uid, time.Hour, time.Time{})
	if err != nil {
		return nil, "", err
	}
	c, err := net.DialTimeout("tcp", target, 10*time.Second)
	if err != nil {
		return nil, "", err
	}
	ext := ""
	if offer != "" {
		ext = "Sec-WebSocket-Extensions: " + offer + "\r\n"
	}
	fmt.Fprintf(c, "GET /ws?uid=%s&token=%s HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n%s\r\n", uid, tok, ext)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 101 {
		c.Close()
		return nil, "", fmt.Errorf("%s: upgrade: %v %v", uid, resp, err)
	}
	return &bufConn{Conn: c, r: br}, resp.Header.Get("Sec-WebSocket-Extensions"), nil
}

type bufConn struct {
	net.Conn
	r *bufio.Reader
}

func (b *bufConn) Read(p []byte) (int, error) { return b.r.Read(p) }

// readFrameSize reads one server frame and returns its first byte and its
// size on the wire (header included).
func readFrameSize(c net.Conn) (byte, int, error) {
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	h := make([]byte, 10)
	if _, err := io.ReadFull(c, h[:2]); err != nil {
		return 0, 0, err
	}
	n, hl := int(h[1]&0x7f), 2
	switch n {
	case 126:
		if _, err := io.ReadFull(c, h[2:4]); err != nil {
			return 0, 0, err
		}
		n, hl = int(binary.BigEndian.Uint16(h[2:4])), 4
	case 127:
		if _, err := io.ReadFull(c, h[2:10]); err != nil {
			return 0, 0, err
		}
		n, hl = int(binary.BigEndian.Uint64(h[2:10])), 10
	}
	if _, err := io.CopyN(io.Discard, c, int64(n)); err != nil {
		return 0, 0, err
	}
	return h[0], hl + n, nil
}

// waitConns waits (bounded) until the edge reports at most n connections.
func waitConns(admin string, n float64) {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if m, err := sample.Metrics("http://" + admin + "/metrics"); err == nil && m["push_edge_connections"] <= n {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
}
