package router

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/pushcluster/push/pkg/auth"
	"github.com/pushcluster/push/pkg/edge"
	"github.com/pushcluster/push/pkg/edge/edgetest"
	"github.com/pushcluster/push/pkg/proxyproto"
	"github.com/pushcluster/push/pkg/ring"
	"github.com/pushcluster/push/pkg/store"
	pushv1 "github.com/pushcluster/push/proto/push/v1"
)

const secret = "router-test-secret-router-test-secret"

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// waitFor polls cond with a generous bound: the machine is busy, so no test
// asserts a duration.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func value(c prometheus.Collector) float64 {
	ch := make(chan prometheus.Metric, 16)
	c.Collect(ch)
	close(ch)
	sum := 0.0
	for m := range ch {
		var d dto.Metric
		m.Write(&d)
		if d.Counter != nil {
			sum += d.Counter.GetValue()
		}
		if d.Gauge != nil {
			sum += d.Gauge.GetValue()
		}
	}
	return sum
}

// testEdge is a real edge (edgetest) with a push client on its gRPC port.
type testEdge struct {
	*edgetest.Edge
	id   uint32
	srv  *edge.Server
	cc   *grpc.ClientConn
	push pushv1.PushClient
}

func startEdge(t *testing.T, id uint32) *testEdge {
	t.Helper()
	return startEdgeWith(t, edge.Config{ID: id, DrainPeriod: time.Millisecond, Loops: 1})
}

// startEdgeWith starts an edge with cfg (cfg.ID is its member id).
func startEdgeWith(t *testing.T, cfg edge.Config) *testEdge {
	t.Helper()
	id := cfg.ID
	ed := edgetest.Start(t, []byte(secret), cfg)
	cc, err := grpc.NewClient(ed.GRPCAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return &testEdge{Edge: ed, id: id, srv: ed.Srv, cc: cc, push: pushv1.NewPushClient(cc)}
}

func (e *testEdge) stop() { e.Stop() }

func (e *testEdge) member() ring.Member {
	m := e.Member(e.id, 1)
	m.State = ""
	return m
}

func newRing(t *testing.T, version uint64, members ...ring.Member) *ring.Ring {
	t.Helper()
	rg, err := ring.New(&ring.Document{Version: version, Algorithm: ring.AlgorithmHAProxy, Members: members})
	if err != nil {
		t.Fatal(err)
	}
	return rg
}

// startRouter starts a router on rg with every member live (SetRing).
func startRouter(t *testing.T, cfg Config, rg *ring.Ring) *Router {
	t.Helper()
	return startRouterWith(t, cfg, func(r *Router) {
		if err := r.SetRing(rg); err != nil {
			t.Fatal(err)
		}
	})
}

// startRouterWith starts a router that set gives its views (SetRing,
// SetView or Follow) before Start.
func startRouterWith(t *testing.T, cfg Config, set func(*Router)) *Router {
	t.Helper()
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	cfg.Logger = quiet
	cfg.Metrics = prometheus.NewRegistry()
	if cfg.CheckInterval == 0 {
		cfg.CheckInterval = 100 * time.Millisecond
	}
	cfg.Rise, cfg.Fall = 1, 2
	cfg.Loops, cfg.Tick = 2, 20*time.Millisecond
	r, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	set(r)
	if err := r.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		r.Shutdown(ctx)
	})
	return r
}

func cluster(t *testing.T, cfg Config) (*Router, map[uint32]*testEdge) {
	edges := map[uint32]*testEdge{}
	var ms []ring.Member
	for id := uint32(1); id <= 3; id++ {
		e := startEdge(t, id)
		edges[id] = e
		ms = append(ms, e.member())
	}
	return startRouter(t, cfg, newRing(t, 1, ms...)), edges
}

func token(uid string) string {
	tok, _ := auth.Mint([]byte(secret), uid, time.Hour, time.Time{})
	return tok
}

func dialWS(t *testing.T, r *Router, uid string, hdr http.Header) *websocket.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws://"+r.Addr().String()+"/ws?uid="+uid+"&token="+token(uid), &websocket.DialOptions{HTTPHeader: hdr})
	if err != nil {
		t.Fatalf("dial %s: %v", uid, err)
	}
	t.Cleanup(func() { c.CloseNow() })
	return c
}

// publishAndReceive publishes through the edge's gRPC and reads the frame
// through the router.
func publishAndReceive(t *testing.T, e *testEdge, c *websocket.Conn, uid, payload string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := e.push.Publish(ctx, &pushv1.PublishRequest{UserId: uid, Data: []byte(payload)})
	if err != nil || resp.Outcome != pushv1.Outcome_OUTCOME_DELIVERED {
		t.Fatalf("publish to %s on edge %d: %v %v", uid, e.id, resp, err)
	}
	_, data, err := c.Read(ctx)
	if err != nil {
		t.Fatalf("read %s: %v", uid, err)
	}
	var msg struct {
		Data json.RawMessage `json:"data"`
	}
	if json.Unmarshal(data, &msg) != nil || string(msg.Data) != payload {
		t.Fatalf("%s got %s, want data %s", uid, data, payload)
	}
}

func TestUsersLandOnTheRingOwner(t *testing.T) {
	r, edges := cluster(t, Config{})
	rg := r.Ring()
	seen := map[uint32]int{}
	for i := 0; i < 24; i++ {
		uid := fmt.Sprintf("user-%d", i)
		owner := edges[rg.LookupString(uid)]
		seen[owner.id]++
		c := dialWS(t, r, uid, nil)
		waitFor(t, uid+" on its owner", func() bool { return owner.srv.Presence(uid) == 1 })
		publishAndReceive(t, owner, c, uid, fmt.Sprintf(`{"n":%d}`, i))
	}
	if len(seen) != 3 {
		t.Fatalf("24 users landed on %d edges, want all 3: %v", len(seen), seen)
	}
	if got := value(r.m.routed); got != 24 {
		t.Fatalf("routed = %v, want 24", got)
	}
}

func TestHeaderAndCookieKeys(t *testing.T) {
	for _, kind := range []string{"hdr", "cookie"} {
		t.Run(kind, func(t *testing.T) {
			hk := "hdr:X-User-Id"
			if kind == "cookie" {
				hk = "cookie:uid"
			}
			r, edges := cluster(t, Config{HashKey: hk})
			rg := r.Ring()
			moved := 0
			for i := 0; i < 12; i++ {
				uid := fmt.Sprintf("u%d", i)
				key := fmt.Sprintf("key-%d", i) // routed by this, not by uid
				if rg.LookupString(key) != rg.LookupString(uid) {
					moved++
				}
				h := http.Header{}
				if kind == "hdr" {
					h.Set("X-User-Id", " "+key+" , other")
				} else {
					h.Set("Cookie", "a=1; uid="+key+"; b=2")
				}
				c := dialWS(t, r, uid, h)
				owner := edges[rg.LookupString(key)]
				waitFor(t, uid+" on the owner of "+key, func() bool { return owner.srv.Presence(uid) == 1 })
				publishAndReceive(t, owner, c, uid, `"x"`)
			}
			if moved == 0 {
				t.Fatal("no key had a different owner than its uid: the test proves nothing")
			}
		})
	}
}

// rawRequest writes req and returns everything the router answers until
// it closes the connection.
func rawRequest(t *testing.T, addr string, req []byte) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := c.Write(req); err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(c)
	return string(b)
}

func TestRejects(t *testing.T) {
	r, _ := cluster(t, Config{HeadTimeout: 300 * time.Millisecond, Check: CheckNone})
	addr := r.Addr().String()
	if got := rawRequest(t, addr, []byte("GET /ws?token=x HTTP/1.1\r\nHost: a\r\n\r\n")); !strings.HasPrefix(got, "HTTP/1.1 400 ") || !strings.Contains(got, "missing user key") {
		t.Fatalf("no key: %q", got)
	}
	if got := rawRequest(t, addr, []byte("garbage\r\n\r\n")); !strings.HasPrefix(got, "HTTP/1.1 400 ") {
		t.Fatalf("not http: %q", got)
	}
	big := "GET /ws?uid=a HTTP/1.1\r\nX-Pad: " + strings.Repeat("p", 9000)
	if got := rawRequest(t, addr, []byte(big)); !strings.HasPrefix(got, "HTTP/1.1 431 ") {
		t.Fatalf("over 8 KiB: %q", got)
	}
	// A head that never finishes is closed (no answer) and counted.
	if got := rawRequest(t, addr, []byte("GET /ws?uid=a HTTP/1.1\r\nHost:")); got != "" {
		t.Fatalf("head timeout answered %q", got)
	}
	if value(r.m.headTimeouts) != 1 {
		t.Fatalf("head timeouts = %v", value(r.m.headTimeouts))
	}
	if n := value(r.m.rejected.WithLabelValues(rejNoKey)); n != 1 {
		t.Fatalf("no_key rejections = %v", n)
	}
	waitFor(t, "sessions to close", func() bool { return r.Sessions() == 0 })
}

// A head split over several segments is reassembled by peeking again (with
// SO_RCVLOWAT so the wait does not spin).
func TestSlowHeadIsRouted(t *testing.T) {
	r, edges := cluster(t, Config{})
	c, err := net.Dial("tcp", r.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	uid := "slow"
	head := "GET /ws?uid=" + uid + "&token=" + token(uid) + " HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
	for i := 0; i < len(head); i += 40 {
		c.Write([]byte(head[i:min(i+40, len(head))]))
		time.Sleep(5 * time.Millisecond)
	}
	c.SetDeadline(time.Now().Add(20 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "HTTP/1.1 101") {
		t.Fatalf("%q %v", line, err)
	}
	owner := edges[r.Ring().LookupString(uid)]
	waitFor(t, "presence", func() bool { return owner.srv.Presence(uid) == 1 })
}

func maskedFrame(op byte, payload string) []byte {
	f := []byte{0x80 | op, 0x80 | byte(len(payload)), 1, 2, 3, 4}
	for i := 0; i < len(payload); i++ {
		f = append(f, payload[i]^byte(i%4+1))
	}
	return f
}

// A frame sent right behind the head, before the 101 arrives, reaches the
// edge: the router consumed nothing past the head and lost nothing.
func TestPipelinedFrameAfterHead(t *testing.T) {
	r, _ := cluster(t, Config{})
	c, err := net.Dial("tcp", r.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	uid := "pipelined"
	head := "GET /ws?uid=" + uid + "&token=" + token(uid) + " HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
	if _, err := c.Write(append([]byte(head), maskedFrame(0x9, "early")...)); err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(20 * time.Second))
	br := bufio.NewReader(c)
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		if line == "\r\n" {
			break
		}
	}
	// The edge parses bytes that arrived with the head on its next read
	// event, so a second ping follows; both pongs must come back in order.
	c.Write(maskedFrame(0x9, "late"))
	for _, want := range []string{"early", "late"} {
		var h [2]byte
		if _, err := io.ReadFull(br, h[:]); err != nil {
			t.Fatal(err)
		}
		p := make([]byte, h[1]&0x7f)
		io.ReadFull(br, p)
		if h[0]&0x0f != 0xA || string(p) != want {
			t.Fatalf("got opcode %x %q, want pong %q", h[0]&0x0f, p, want)
		}
	}
}

// An edge that stops while the view still holds it live (here: a ring
// without liveness, so it stays live) keeps owning its users; their new
// connections fail to dial it and go to view.OwnerExcept(2), the next
// owner. The health check marks it down for operators only.
func TestEdgeDownUsersMoveToTheNextOwner(t *testing.T) {
	r, edges := cluster(t, Config{})
	rg := r.Ring()
	// Users of edge 2.
	var uids []string
	for i := 0; len(uids) < 4; i++ {
		if uid := fmt.Sprintf("mv-%d", i); rg.LookupString(uid) == 2 {
			uids = append(uids, uid)
		}
	}
	conns := map[string]*websocket.Conn{}
	for _, uid := range uids {
		conns[uid] = dialWS(t, r, uid, nil)
		waitFor(t, uid+" on edge 2", func() bool { return edges[2].srv.Presence(uid) == 1 })
	}
	edges[2].stop()
	for uid, c := range conns {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, _, err := c.Read(ctx)
		cancel()
		if websocket.CloseStatus(err) != edge.CloseGoingAway {
			t.Fatalf("%s: %v, want close 1001", uid, err)
		}
	}
	waitFor(t, "edge 2 marked down", func() bool { return !r.Up(2) })
	if value(r.m.edgeUp.WithLabelValues("2")) != 0 {
		t.Fatal("edge up gauge still 1")
	}
	for _, uid := range uids {
		next, ok := r.View().OwnerExcept(uid, func(id uint32) bool { return id == 2 })
		if !ok || next == 2 {
			t.Fatal("no next owner")
		}
		if want, _ := rg.LookupLive([]byte(uid), func(id uint32) bool { return id != 2 }); want != next {
			t.Fatalf("view's next owner %d, the ring's %d", next, want)
		}
		c := dialWS(t, r, uid, nil)
		waitFor(t, uid+" on the next owner", func() bool { return edges[next].srv.Presence(uid) == 1 })
		publishAndReceive(t, edges[next], c, uid, `"moved"`)
	}
	if n := value(r.m.redispatch.WithLabelValues(redisRefused)); n < float64(len(uids)) {
		t.Fatalf("%v redispatches counted as refused, want %d", n, len(uids))
	}
}

// A member the view holds live that refuses connections is skipped by
// redispatch (the health check is off: it plays no part).
func TestRedispatchOnFailedDial(t *testing.T) {
	e1 := startEdge(t, 1)
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := ln.Addr().String()
	ln.Close()
	m2 := ring.Member{ID: 2, Name: "dead", WS: dead, GRPC: dead, Weight: 1}
	r := startRouter(t, Config{Check: CheckNone}, newRing(t, 1, e1.member(), m2))
	var uid string
	for i := 0; ; i++ {
		if uid = fmt.Sprintf("rd-%d", i); r.Ring().LookupString(uid) == 2 {
			break
		}
	}
	c := dialWS(t, r, uid, nil)
	waitFor(t, "presence on edge 1", func() bool { return e1.srv.Presence(uid) == 1 })
	publishAndReceive(t, e1, c, uid, `"redispatched"`)
	if value(r.m.redispatch) < 1 || value(r.m.dialErrors) < 1 {
		t.Fatalf("redispatch %v dial errors %v", value(r.m.redispatch), value(r.m.dialErrors))
	}
	// With no member left, a 503.
	r.SetRing(newRing(t, 2, m2))
	if got := rawRequest(t, r.Addr().String(), []byte("GET /ws?uid=x HTTP/1.1\r\nHost: x\r\n\r\n")); !strings.HasPrefix(got, "HTTP/1.1 503 ") {
		t.Fatalf("all dials failed: %q", got)
	}
}

func TestRingChange(t *testing.T) {
	r, edges := cluster(t, Config{})
	old := r.Ring()
	// Users whose owner changes when edge 3 leaves.
	var uids []string
	for i := 0; len(uids) < 3; i++ {
		if uid := fmt.Sprintf("rc-%d", i); old.LookupString(uid) == 3 {
			uids = append(uids, uid)
		}
	}
	conns := map[string]*websocket.Conn{}
	for _, uid := range uids {
		conns[uid] = dialWS(t, r, uid, nil)
		waitFor(t, uid+" on edge 3", func() bool { return edges[3].srv.Presence(uid) == 1 })
	}
	next := newRing(t, 2, edges[1].member(), edges[2].member())
	if err := r.SetRing(next); err != nil {
		t.Fatal(err)
	}
	for _, uid := range uids {
		// The relayed connection stays up on its edge...
		publishAndReceive(t, edges[3], conns[uid], uid, `"still here"`)
		// ...and a new one follows the new ring.
		owner := edges[next.LookupString(uid)]
		c := dialWS(t, r, uid, nil)
		waitFor(t, uid+" on its new owner", func() bool { return owner.srv.Presence(uid) == 1 })
		publishAndReceive(t, owner, c, uid, `"new"`)
	}
}

// rawBackend is a ring member that is not an edge: it hands every accepted
// connection to fn.
func rawBackend(t *testing.T, fn func(net.Conn)) ring.Member {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); c.SetDeadline(time.Now().Add(20 * time.Second)); fn(c) }()
		}
	}()
	return ring.Member{ID: 7, Name: "raw", WS: ln.Addr().String(), GRPC: ln.Addr().String(), Weight: 1}
}

func TestHalfClose(t *testing.T) {
	m := rawBackend(t, func(c net.Conn) {
		b, _ := io.ReadAll(c) // until the client's FIN, relayed as SHUT_WR
		fmt.Fprintf(c, "read %d bytes ending %q", len(b), b[len(b)-5:])
	})
	r := startRouter(t, Config{Check: CheckNone}, newRing(t, 1, m))
	c, err := net.Dial("tcp", r.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	req := "GET /ws?uid=h HTTP/1.1\r\nHost: x\r\n\r\nhello"
	c.Write([]byte(req))
	c.(*net.TCPConn).CloseWrite()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	b, err := io.ReadAll(c)
	if want := fmt.Sprintf("read %d bytes ending \"hello\"", len(req)); string(b) != want || err != nil {
		t.Fatalf("got %q %v, want %q", b, err, want)
	}
	waitFor(t, "session closed", func() bool { return r.Sessions() == 0 })
}

// A large transfer with a reader slower than the writer (back-pressure)
// arrives intact in both directions: with the default bounded socket
// buffers (reads never fill copyMax, so it is copied) and with the
// kernel's autotuned ones, where bulk reads go through splice(2).
func TestBulkRelayWithBackPressure(t *testing.T) {
	for _, tc := range []struct {
		name   string
		buf    int
		splice bool
	}{{"bounded", 0, false}, {"autotuned", -1, true}} {
		t.Run(tc.name, func(t *testing.T) { bulkRelay(t, tc.buf, tc.splice) })
	}
}

func bulkRelay(t *testing.T, relayBuffer int, wantSplice bool) {
	const size = 8 << 20
	m := rawBackend(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			if line == "\r\n" {
				break
			}
		}
		// Echo everything back.
		io.Copy(c, br)
		c.(*net.TCPConn).CloseWrite()
	})
	r := startRouter(t, Config{Check: CheckNone, RelayBuffer: relayBuffer}, newRing(t, 1, m))
	c, err := net.Dial("tcp", r.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(60 * time.Second))
	payload := make([]byte, size)
	for i := range payload {
		payload[i] = byte(i * 7)
	}
	go func() {
		c.Write([]byte("GET /ws?uid=bulk HTTP/1.1\r\nHost: x\r\n\r\n"))
		c.Write(payload)
		c.(*net.TCPConn).CloseWrite()
	}()
	time.Sleep(200 * time.Millisecond) // let buffers fill: back-pressure
	got, err := io.ReadAll(c)
	if err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("echo: %d bytes (want %d) %v; relayed client→edge %v edge→client %v", len(got), size, err, value(r.m.bytesC2E), value(r.m.bytesE2C))
	}
	if wantSplice && value(r.m.splices) == 0 {
		t.Fatal("8 MiB moved without a splice")
	}
	waitFor(t, "nothing left in flight", func() bool { return value(r.m.inflight) == 0 })
}

func readProxyHeader(t *testing.T, c net.Conn) (proxyproto.Header, []byte) {
	buf := make([]byte, 0, 512)
	tmp := make([]byte, 512)
	for {
		n, err := c.Read(tmp)
		buf = append(buf, tmp[:n]...)
		h, hn, perr := proxyproto.Parse(buf)
		if perr == nil && bytes.Contains(buf[hn:], []byte("\r\n\r\n")) {
			return h, buf[hn:]
		}
		if err != nil || (perr != nil && perr != proxyproto.ErrIncomplete) {
			t.Errorf("backend: %v %v after %q", err, perr, buf)
			return h, nil
		}
	}
}

func TestProxyProtocol(t *testing.T) {
	type got struct {
		h    proxyproto.Header
		rest string
	}
	seen := make(chan got, 4)
	m := rawBackend(t, func(c net.Conn) {
		h, rest := readProxyHeader(t, c)
		seen <- got{h, string(rest)}
		c.Write([]byte("ok"))
	})
	head := "GET /ws?uid=pp HTTP/1.1\r\nHost: x\r\n\r\n"

	t.Run("send v2", func(t *testing.T) {
		r := startRouter(t, Config{Check: CheckNone, SendProxyV2: true}, newRing(t, 1, m))
		c, err := net.Dial("tcp", r.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write([]byte(head))
		g := <-seen
		if g.h.Version != 2 || g.h.Source.String() != c.LocalAddr().String() || g.h.Dest.String() != r.Addr().String() || g.rest != head {
			t.Fatalf("backend saw %+v %q; client %v router %v", g.h, g.rest, c.LocalAddr(), r.Addr())
		}
	})
	t.Run("accept v1 and v2", func(t *testing.T) {
		r := startRouter(t, Config{Check: CheckNone, SendProxyV2: true, AcceptProxy: true}, newRing(t, 1, m))
		src, dst := netip.MustParseAddrPort("203.0.113.9:4242"), netip.MustParseAddrPort("198.51.100.1:443")
		for _, hdr := range [][]byte{proxyproto.AppendV1(nil, src, dst), proxyproto.AppendV2(nil, src, dst)} {
			c, err := net.Dial("tcp", r.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			c.Write(append(hdr, head...))
			g := <-seen
			if g.h.Version != 2 || g.h.Source != src || g.h.Dest != dst || g.rest != head {
				t.Fatalf("backend saw %+v %q", g.h, g.rest)
			}
			c.Close()
		}
		if got := rawRequest(t, r.Addr().String(), []byte("PROXY TCP9 x\r\n"+head)); got != "" {
			t.Fatalf("malformed PROXY answered %q", got)
		}
		if got := rawRequest(t, r.Addr().String(), []byte(head)); got != "" {
			t.Fatalf("missing PROXY answered %q", got)
		}
		if n := value(r.m.rejected.WithLabelValues(rejProxy)); n != 2 {
			t.Fatalf("proxy rejections = %v", n)
		}
	})
}

// Every source address out of ports (here: TEST-NET-2, not on this host) gives a
// 503, a metric and a log line, never a hang.
func TestPortExhaustion(t *testing.T) {
	m := rawBackend(t, func(c net.Conn) {})
	r := startRouter(t, Config{Check: CheckNone, SourceAddrs: []netip.Addr{netip.MustParseAddr("198.51.100.1"), netip.MustParseAddr("198.51.100.2")}},
		newRing(t, 1, m))
	if got := rawRequest(t, r.Addr().String(), []byte("GET /ws?uid=p HTTP/1.1\r\nHost: x\r\n\r\n")); !strings.HasPrefix(got, "HTTP/1.1 503 ") || !strings.Contains(got, "out of ports") {
		t.Fatalf("got %q", got)
	}
	if value(r.m.ports) != 1 {
		t.Fatalf("port exhaustion = %v", value(r.m.ports))
	}
}

func countFDs(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd")
	}
	return len(ents)
}

// Each idle relayed connection costs the router exactly two descriptors.
func TestTwoDescriptorsPerRelayedConnection(t *testing.T) {
	n := 500
	if testing.Short() {
		n = 100
	}
	r, edges := cluster(t, Config{Check: CheckNone}) // no health-check connections coming and going
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	open := func(from, to int) {
		for i := from; i < to; i++ {
			c, err := net.Dial("tcp", r.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			conns = append(conns, c)
			uid := fmt.Sprintf("fd-%d", i)
			fmt.Fprintf(c, "GET /ws?uid=%s&token=%s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
				"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", uid, token(uid))
		}
		waitFor(t, "every connection upgraded", func() bool {
			var open int64
			for _, e := range edges {
				open += e.srv.Open()
			}
			return open == int64(to)
		})
		time.Sleep(100 * time.Millisecond)
	}
	// A warm-up first, so that descriptors opened once (gRPC health
	// connections settling, runtime) do not count.
	const warm = 20
	open(0, warm)
	base := countFDs(t)
	open(warm, warm+n)
	delta := countFDs(t) - base
	// Each connection: the test's client socket, the edge's socket, and
	// the router's client and edge sockets.
	routerFDs := float64(delta-2*n) / float64(n)
	t.Logf("%d connections: %d new descriptors in the process, %.2f in the router per connection", n, delta, routerFDs)
	if routerFDs != 2 {
		t.Fatalf("router holds %.2f descriptors per relayed connection, want 2", routerFDs)
	}
	if got := value(r.m.active); got != float64(n+warm) {
		t.Fatalf("active = %v", got)
	}
}

func TestShutdownKeepsRelayedConnectionsUntilTheDrainPeriod(t *testing.T) {
	m := rawBackend(t, func(c net.Conn) { io.Copy(io.Discard, c) })
	r := startRouter(t, Config{Check: CheckNone, DrainPeriod: 300 * time.Millisecond}, newRing(t, 1, m))
	c, err := net.Dial("tcp", r.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("GET /ws?uid=d HTTP/1.1\r\nHost: x\r\n\r\n"))
	waitFor(t, "relayed", func() bool { return value(r.m.active) == 1 })
	done := make(chan error)
	go func() { done <- r.Shutdown(context.Background()) }()
	waitFor(t, "not ready", func() bool { return r.Ready() != nil })
	if _, err := c.Write([]byte("still relayed")); err != nil {
		t.Fatal(err)
	}
	<-done
	c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("connection survived the drain period")
	}
}

func selfSignedTLS(t *testing.T) *tls.Config {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}}
	der, err := x509.CreateCertificate(rand.Reader, &tmpl, &tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}
}

func TestTLSTermination(t *testing.T) {
	r, edges := cluster(t, Config{TLSListen: "127.0.0.1:0", TLS: selfSignedTLS(t), SendProxyV2: false})
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	for i := 0; i < 6; i++ {
		uid := fmt.Sprintf("tls-%d", i)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		c, _, err := websocket.Dial(ctx, "wss://"+r.TLSAddr().String()+"/ws?uid="+uid+"&token="+token(uid), &websocket.DialOptions{HTTPClient: hc})
		cancel()
		if err != nil {
			t.Fatalf("dial %s: %v", uid, err)
		}
		defer c.CloseNow()
		owner := edges[r.Ring().LookupString(uid)]
		waitFor(t, uid+" on its owner", func() bool { return owner.srv.Presence(uid) == 1 })
		publishAndReceive(t, owner, c, uid, `"over tls"`)
	}
	if got := value(r.m.tlsActive); got != 6 {
		t.Fatalf("tls connections = %v", got)
	}
	// A TLS client without the key gets a 400 too.
	tc, err := tls.Dial("tcp", r.TLSAddr().String(), &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	tc.Write([]byte("GET /ws HTTP/1.1\r\nHost: x\r\n\r\n"))
	tc.SetDeadline(time.Now().Add(20 * time.Second))
	b, _ := io.ReadAll(tc)
	if !strings.HasPrefix(string(b), "HTTP/1.1 400 ") {
		t.Fatalf("tls without key: %q", b)
	}
}

// The ring comes from a file store through a store.Follower as in
// cmd/router (a ring file without lease files: every member live): a new
// version written to the file reaches new connections, relayed ones stay.
func TestRingFromFileStore(t *testing.T) {
	edges := map[uint32]*testEdge{}
	var ms []ring.Member
	for id := uint32(1); id <= 3; id++ {
		edges[id] = startEdge(t, id)
		ms = append(ms, edges[id].member())
	}
	path := filepath.Join(t.TempDir(), "ring.json")
	doc := &ring.Document{Version: 1, Algorithm: ring.AlgorithmHAProxy, Members: ms}
	js, _ := doc.Marshal()
	if err := os.WriteFile(path, js, 0o644); err != nil {
		t.Fatal(err)
	}
	st, err := store.Open("file:"+path, quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	f, err := store.Follow(ctx, st, store.FollowOptions{Log: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r := startRouterWith(t, Config{}, func(r *Router) { r.Follow(f) })
	if r.View().HasLiveness() {
		t.Fatal("a ring file without lease files has liveness")
	}

	var uid string
	for i := 0; ; i++ {
		if uid = fmt.Sprintf("file-%d", i); r.Ring().LookupString(uid) == 3 {
			break
		}
	}
	old := dialWS(t, r, uid, nil)
	waitFor(t, "on edge 3", func() bool { return edges[3].srv.Presence(uid) == 1 })
	next := &ring.Document{Version: 2, Algorithm: ring.AlgorithmHAProxy, Members: ms[:2]}
	if err := st.CompareAndSwap(ctx, 1, next, false); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "version 2", func() bool { return r.Ring().Version() == 2 })
	publishAndReceive(t, edges[3], old, uid, `"kept"`)
	owner := edges[r.Ring().LookupString(uid)]
	c := dialWS(t, r, uid, nil)
	waitFor(t, "on the new owner", func() bool { return owner.srv.Presence(uid) == 1 })
	publishAndReceive(t, owner, c, uid, `"followed"`)
}

// --edge-port-span: connections spread over consecutive ports from the
// member's ws port.
func TestEdgePortSpan(t *testing.T) {
	var lns [2]net.Listener
	for try := 0; ; try++ {
		a, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		b, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", a.Addr().(*net.TCPAddr).Port+1))
		if err == nil {
			lns = [2]net.Listener{a, b}
			break
		}
		a.Close()
		if try > 20 {
			t.Skip("no two consecutive free ports")
		}
	}
	var hits [2]atomic.Int64
	for i, ln := range lns {
		defer ln.Close()
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				hits[i].Add(1)
				c.Close()
			}
		}()
	}
	m := ring.Member{ID: 1, Name: "span", WS: lns[0].Addr().String(), GRPC: lns[0].Addr().String(), Weight: 1}
	r := startRouter(t, Config{Check: CheckNone, EdgePortSpan: 2}, newRing(t, 1, m))
	for i := 0; i < 10; i++ {
		rawRequest(t, r.Addr().String(), []byte("GET /ws?uid=s HTTP/1.1\r\nHost: x\r\n\r\n"))
	}
	waitFor(t, "both ports used", func() bool { return hits[0].Load()+hits[1].Load() == 10 })
	if hits[0].Load() != 5 || hits[1].Load() != 5 {
		t.Fatalf("ports got %d and %d connections, want 5 and 5", hits[0].Load(), hits[1].Load())
	}
}

// --check tcp: a member whose ws port stops accepting goes down after Fall
// failed checks and comes back after Rise passed ones.
func TestTCPHealthCheck(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	m := ring.Member{ID: 4, Name: "tcp", WS: addr, GRPC: addr, Weight: 1}
	r := startRouter(t, Config{Check: CheckTCP, CheckInterval: 50 * time.Millisecond}, newRing(t, 1, m))
	if !r.Up(4) {
		t.Fatal("a new member starts up")
	}
	ln.Close()
	waitFor(t, "member down", func() bool { return !r.Up(4) })
	ln2, err := net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("port %s taken meanwhile: %v", addr, err)
	}
	defer ln2.Close()
	waitFor(t, "member up again", func() bool { return r.Up(4) })
}

// A member whose name does not resolve (a pod not created yet) does not
// make the router refuse the ring: its probe starts down, its users are
// redispatched to the next owner (a dial to it fails at once, counted as
// "unresolved"), and a name given as "localhost" is resolved.
func TestUnresolvableMemberStartsDown(t *testing.T) {
	e := startEdge(t, 1)
	ghost := ring.Member{ID: 2, Name: "edge-2", WS: "no-such-edge.invalid:8080", GRPC: "no-such-edge.invalid:9090", Weight: 1}
	local := e.member()
	_, port, _ := net.SplitHostPort(local.WS)
	local.WS = "localhost:" + port
	r := startRouter(t, Config{}, newRing(t, 1, local, ghost))
	if r.Up(2) {
		t.Fatal("an unresolvable member is up")
	}
	waitFor(t, "edge 1 up", func() bool { return r.Up(1) })
	for i := 0; i < 20; i++ {
		uid := fmt.Sprintf("ghost-%d", i)
		c := dialWS(t, r, uid, nil)
		waitFor(t, "user on edge 1", func() bool { return e.srv.Presence(uid) == 1 })
		c.CloseNow()
	}
	if value(r.m.redispatch.WithLabelValues(redisUnresolved)) == 0 {
		t.Fatal("no redispatch counted as unresolved")
	}
}
