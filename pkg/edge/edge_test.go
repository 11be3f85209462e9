package edge_test

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/pushcluster/push/pkg/auth"
	"github.com/pushcluster/push/pkg/daemon"
	"github.com/pushcluster/push/pkg/edge"
	"github.com/pushcluster/push/pkg/proxyproto"
	pushv1 "github.com/pushcluster/push/proto/push/v1"
)

var secret = []byte("test-secret-test-secret-test-secret-0123")

type env struct {
	t    *testing.T
	srv  *edge.Server
	push pushv1.PushClient
	cc   *grpc.ClientConn
	addr string
}

func start(t *testing.T, mod func(*edge.Config)) *env {
	t.Helper()
	e, err := tryStart(t, mod)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func tryStart(t *testing.T, mod func(*edge.Config)) (*env, error) {
	t.Helper()
	v, err := auth.NewVerifier(auth.Config{HMACSecret: secret})
	if err != nil {
		t.Fatal(err)
	}
	cfg := edge.Config{
		ID: 7, Listen: "127.0.0.1:0", Verifier: v, Tick: 20 * time.Millisecond,
		Logger:      slog.New(slog.NewTextHandler(io.Discard, nil)),
		DrainPeriod: 200 * time.Millisecond, CloseTimeout: time.Second,
	}
	if mod != nil {
		mod(&cfg)
	}
	srv, err := edge.New(cfg)
	if err != nil {
		return nil, err
	}
	if err := srv.Start(); err != nil {
		return nil, err
	}
	g, err := daemon.NewGRPC("127.0.0.1:0", 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	edge.NewService(srv).Register(g.Server)
	go g.Serve()
	cc, err := grpc.NewClient(g.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, srv: srv, push: pushv1.NewPushClient(cc), cc: cc, addr: srv.Addr().String()}
	t.Cleanup(func() {
		cc.Close()
		g.Server.Stop()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	return e, nil
}

func token(t *testing.T, uid string) string {
	t.Helper()
	tok, err := auth.Mint(secret, uid, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func (e *env) url(uid, tok string, extra string) string {
	return fmt.Sprintf("ws://%s/ws?uid=%s&token=%s%s", e.addr, uid, tok, extra)
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return c
}

func (e *env) dial(uid string, extra string) *websocket.Conn {
	e.t.Helper()
	c, _, err := websocket.Dial(ctx(e.t), e.url(uid, token(e.t, uid), extra), nil)
	if err != nil {
		e.t.Fatalf("dial %s: %v", uid, err)
	}
	c.SetReadLimit(1 << 20)
	e.t.Cleanup(func() { c.CloseNow() })
	return c
}

type msg struct {
	Seq       uint64          `json:"seq"`
	Data      json.RawMessage `json:"data"`
	Gap       bool            `json:"gap"`
	From      uint64          `json:"from"`
	To        uint64          `json:"to"`
	Broadcast bool            `json:"broadcast"`
}

func read(t *testing.T, c *websocket.Conn) msg {
	t.Helper()
	typ, b, err := c.Read(ctx(t))
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if typ != websocket.MessageText {
		t.Fatalf("got a %v frame, want text", typ)
	}
	var m msg
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("frame %q is not JSON: %v", b, err)
	}
	return m
}

func (e *env) publish(uid, data string) *pushv1.PublishResponse {
	e.t.Helper()
	r, err := e.push.Publish(ctx(e.t), &pushv1.PublishRequest{UserId: uid, Data: []byte(data)})
	if err != nil {
		e.t.Fatalf("publish: %v", err)
	}
	return r
}

// waitFor polls cond (state changes on other goroutines) with a generous
// bound; it never asserts on how long something took.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestPublishReachesUserWithSeq(t *testing.T) {
	e := start(t, nil)
	c := e.dial("alice", "")
	waitFor(t, "registration", func() bool { return e.srv.Presence("alice") == 1 })
	payloads := []string{`{"text":"hi"}`, `[1,2,3]`, `plain text, not JSON`, `"a string"`}
	for i, p := range payloads {
		r := e.publish("alice", p)
		if r.Outcome != pushv1.Outcome_OUTCOME_DELIVERED || r.Seq != uint64(i+1) || r.Connections != 1 || r.EdgeId != 7 {
			t.Fatalf("publish %d answered %v", i, r)
		}
	}
	for i, p := range payloads {
		m := read(t, c)
		if m.Seq != uint64(i+1) {
			t.Fatalf("message %d has seq %d", i, m.Seq)
		}
		want := p
		if i == 2 {
			want = `"plain text, not JSON"`
		}
		if string(m.Data) != want {
			t.Fatalf("message %d data %s, want %s", i, m.Data, want)
		}
	}
}

func TestResumeReplaysExactlyTheMissed(t *testing.T) {
	e := start(t, nil)
	c := e.dial("bob", "")
	waitFor(t, "registration", func() bool { return e.srv.Presence("bob") == 1 })
	for i := 1; i <= 3; i++ {
		e.publish("bob", fmt.Sprintf(`{"n":%d}`, i))
	}
	for i := 1; i <= 3; i++ {
		if m := read(t, c); m.Seq != uint64(i) {
			t.Fatalf("seq %d, want %d", m.Seq, i)
		}
	}
	c.Close(websocket.StatusNormalClosure, "bye")
	waitFor(t, "detach", func() bool { return e.srv.Presence("bob") == 0 })
	for i := 4; i <= 6; i++ {
		if r := e.publish("bob", fmt.Sprintf(`{"n":%d}`, i)); r.Outcome != pushv1.Outcome_OUTCOME_STORED {
			t.Fatalf("publish to an absent user: %v", r.Outcome)
		}
	}
	c2 := e.dial("bob", "&last_seq=3")
	for i := 4; i <= 6; i++ {
		m := read(t, c2)
		if m.Seq != uint64(i) || string(m.Data) != fmt.Sprintf(`{"n":%d}`, i) {
			t.Fatalf("replayed %d %s, want %d", m.Seq, m.Data, i)
		}
	}
	e.publish("bob", `{"n":7}`)
	if m := read(t, c2); m.Seq != 7 {
		t.Fatalf("after replay got seq %d, want 7 (no duplicates, no gaps)", m.Seq)
	}
}

func TestStoredMessagesDeliveredOnFirstConnect(t *testing.T) {
	e := start(t, nil)
	e.publish("carol", `{"n":1}`)
	e.publish("carol", `{"n":2}`)
	c := e.dial("carol", "")
	for i := 1; i <= 2; i++ {
		if m := read(t, c); m.Seq != uint64(i) {
			t.Fatalf("seq %d, want %d", m.Seq, i)
		}
	}
}

func TestGapIsReported(t *testing.T) {
	e := start(t, func(c *edge.Config) { c.MailboxSize = 3 })
	for i := 1; i <= 6; i++ {
		e.publish("dave", fmt.Sprintf(`%d`, i))
	}
	c := e.dial("dave", "&last_seq=1")
	if m := read(t, c); !m.Gap || m.From != 2 || m.To != 3 {
		t.Fatalf("want a gap 2..3 first, got %+v", m)
	}
	for i := 4; i <= 6; i++ {
		if m := read(t, c); m.Seq != uint64(i) {
			t.Fatalf("seq %d, want %d", m.Seq, i)
		}
	}
}

func TestNewConnectionReplacesOld(t *testing.T) {
	e := start(t, nil)
	old := e.dial("erin", "")
	waitFor(t, "registration", func() bool { return e.srv.Presence("erin") == 1 })
	fresh := e.dial("erin", "")
	_, _, err := old.Read(ctx(t))
	if code := websocket.CloseStatus(err); code != edge.CloseReplaced {
		t.Fatalf("old connection closed with %v (%v), want 4002", code, err)
	}
	waitFor(t, "one connection", func() bool { return e.srv.Presence("erin") == 1 })
	e.publish("erin", `"to the new one"`)
	if m := read(t, fresh); m.Seq != 1 {
		t.Fatalf("seq %d", m.Seq)
	}
}

func TestKeepsNewestNPerUser(t *testing.T) {
	e := start(t, func(c *edge.Config) { c.MaxConnsPerUser = 2 })
	a := e.dial("fay", "")
	waitFor(t, "a", func() bool { return e.srv.Presence("fay") == 1 })
	b := e.dial("fay", "")
	waitFor(t, "b", func() bool { return e.srv.Presence("fay") == 2 })
	c := e.dial("fay", "")
	if _, _, err := a.Read(ctx(t)); websocket.CloseStatus(err) != edge.CloseReplaced {
		t.Fatalf("oldest should get 4002, got %v", err)
	}
	r := e.publish("fay", `1`)
	if r.Connections != 2 {
		t.Fatalf("delivered to %d connections, want 2", r.Connections)
	}
	for _, x := range []*websocket.Conn{b, c} {
		if m := read(t, x); m.Seq != 1 {
			t.Fatalf("seq %d", m.Seq)
		}
	}
}

func TestTokenChecks(t *testing.T) {
	e := start(t, nil)
	expired, _ := auth.Mint(secret, "gus", time.Hour, time.Now().Add(-2*time.Hour))
	forged, _ := auth.Mint([]byte("another-secret-another-secret-0123456"), "gus", time.Hour, time.Now())
	other := token(t, "hank")
	cases := map[string]string{
		"forged":   forged,
		"expired":  expired,
		"mismatch": other,
		"missing":  "",
		"garbage":  "not.a.jwt",
	}
	for name, tok := range cases {
		_, resp, err := websocket.Dial(ctx(t), e.url("gus", tok, ""), nil)
		if err == nil {
			t.Fatalf("%s token was accepted", name)
		}
		if resp == nil || resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("%s token: got %v, want 401", name, resp)
		}
	}
	if e.srv.Presence("gus") != 0 {
		t.Fatal("a rejected handshake registered the user")
	}
}

func TestOriginAllowlist(t *testing.T) {
	e := start(t, func(c *edge.Config) { c.AllowedOrigins = []string{"https://app.example.com", "https://*.good.org"} })
	dial := func(origin string) int {
		h := http.Header{}
		h.Set("Origin", origin)
		c, resp, err := websocket.Dial(ctx(t), e.url("ivy", token(t, "ivy"), ""), &websocket.DialOptions{HTTPHeader: h})
		if err == nil {
			c.CloseNow()
			return http.StatusSwitchingProtocols
		}
		if resp == nil {
			t.Fatalf("origin %s: %v", origin, err)
		}
		return resp.StatusCode
	}
	for origin, want := range map[string]int{
		"https://evil.example.com": http.StatusForbidden,
		"https://app.example.com":  http.StatusSwitchingProtocols,
		"https://x.good.org":       http.StatusSwitchingProtocols,
		"http://x.good.org":        http.StatusForbidden,
		"https://good.org.evil":    http.StatusForbidden,
		"http://" + e.addr:         http.StatusSwitchingProtocols, // same host
	} {
		if got := dial(origin); got != want {
			t.Errorf("origin %s: %d, want %d", origin, got, want)
		}
	}
}

func TestBadRequests(t *testing.T) {
	e := start(t, nil)
	for _, tc := range []struct {
		path string
		want int
	}{
		{"/ws?token=x", 400},
		{"/ws?uid=bad%20id&token=x", 400},
		{"/ws?uid=a&token=x&last_seq=-1", 400},
		{"/ws?uid=a&token=x&last_seq=9007199254740992", 400},
		{"/other?uid=a", 404},
	} {
		_, resp, err := websocket.Dial(ctx(t), "ws://"+e.addr+tc.path, nil)
		if err == nil || resp == nil || resp.StatusCode != tc.want {
			t.Errorf("%s: %v %v, want %d", tc.path, resp, err, tc.want)
		}
	}
	// A plain HTTP request (no upgrade) is answered, not hung.
	resp, err := http.Get("http://" + e.addr + "/ws?uid=a&token=" + token(t, "a"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 4 {
		t.Errorf("plain GET answered %d", resp.StatusCode)
	}
}

func TestKickPresenceBroadcast(t *testing.T) {
	e := start(t, nil)
	a := e.dial("jo", "")
	b := e.dial("kim", "")
	waitFor(t, "both", func() bool { return e.srv.Presence("jo") == 1 && e.srv.Presence("kim") == 1 })
	p, err := e.push.Presence(ctx(t), &pushv1.PresenceRequest{UserIds: []string{"jo", "kim", "nobody"}})
	if err != nil {
		t.Fatal(err)
	}
	if !p.Users[0].Online || !p.Users[1].Online || p.Users[2].Online || p.Users[0].EdgeId != 7 {
		t.Fatalf("presence %v", p.Users)
	}
	br, err := e.push.Broadcast(ctx(t), &pushv1.BroadcastRequest{Data: []byte(`{"all":true}`)})
	if err != nil || br.Connections != 2 {
		t.Fatalf("broadcast %v %v", br, err)
	}
	for _, c := range []*websocket.Conn{a, b} {
		m := read(t, c)
		if !m.Broadcast || m.Seq != 0 || string(m.Data) != `{"all":true}` {
			t.Fatalf("broadcast frame %+v", m)
		}
	}
	k, err := e.push.Kick(ctx(t), &pushv1.KickRequest{UserId: "jo", Reason: "bye"})
	if err != nil || k.Connections != 1 {
		t.Fatalf("kick %v %v", k, err)
	}
	if _, _, err := a.Read(ctx(t)); websocket.CloseStatus(err) != edge.CloseKicked {
		t.Fatalf("kicked connection got %v, want 4004", err)
	}
	// Other users are untouched.
	e.publish("kim", `1`)
	if m := read(t, b); m.Seq != 1 {
		t.Fatalf("seq %d", m.Seq)
	}
}

func TestGRPCValidationHealthReflection(t *testing.T) {
	e := start(t, func(c *edge.Config) { c.MaxPayloadBytes = 1000 })
	for name, req := range map[string]*pushv1.PublishRequest{
		"empty id": {UserId: "", Data: []byte("x")},
		"bad id":   {UserId: "a b", Data: []byte("x")},
		"too big":  {UserId: "a", Data: make([]byte, 1001)},
		"no data":  {UserId: "a"},
		"too long": {UserId: strings.Repeat("a", 129), Data: []byte("x")},
		"reserved": {UserId: "a/b", Data: []byte("x")},
	} {
		_, err := e.push.Publish(ctx(t), req)
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: %v, want InvalidArgument", name, err)
		}
	}
	if _, err := e.push.PublishMulti(ctx(t), &pushv1.PublishMultiRequest{Data: []byte("x")}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("empty PublishMulti: %v", err)
	}
	h, err := healthpb.NewHealthClient(e.cc).Check(ctx(t), &healthpb.HealthCheckRequest{})
	if err != nil || h.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health %v %v", h, err)
	}
}

func TestPublishMultiEncodesOnceDeliversEach(t *testing.T) {
	e := start(t, nil)
	a, b := e.dial("m1", ""), e.dial("m2", "")
	waitFor(t, "both", func() bool { return e.srv.Presence("m1")+e.srv.Presence("m2") == 2 })
	e.publish("m1", `"first"`)
	r, err := e.push.PublishMulti(ctx(t), &pushv1.PublishMultiRequest{UserIds: []string{"m1", "m2", "m3"}, Data: []byte(`{"x":1}`)})
	if err != nil {
		t.Fatal(err)
	}
	got := []pushv1.Outcome{r.Results[0].Outcome, r.Results[1].Outcome, r.Results[2].Outcome}
	want := []pushv1.Outcome{pushv1.Outcome_OUTCOME_DELIVERED, pushv1.Outcome_OUTCOME_DELIVERED, pushv1.Outcome_OUTCOME_STORED}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("outcomes %v, want %v", got, want)
		}
	}
	read(t, a)
	if m := read(t, a); m.Seq != 2 || string(m.Data) != `{"x":1}` {
		t.Fatalf("m1 got %+v", m)
	}
	if m := read(t, b); m.Seq != 1 || string(m.Data) != `{"x":1}` {
		t.Fatalf("m2 got %+v", m)
	}
}

// One client that never reads must not hold up a thousand others, and is
// cut off once its queue is full.
func TestSlowConsumerDoesNotDelayOthers(t *testing.T) {
	e := start(t, func(c *edge.Config) { c.MaxQueueBytes = 256 << 10; c.MaxPayloadBytes = 64 << 10 })
	slow := rawDial(t, e.addr, "slow", token(t, "slow"), "")
	_ = slow // never read from
	const n = 1000
	conns := make([]*websocket.Conn, n)
	for i := range conns {
		conns[i] = e.dial(fmt.Sprintf("u%d", i), "")
	}
	waitFor(t, "all registered", func() bool { return e.srv.Open() == n+1 })
	big := []byte(`"` + strings.Repeat("x", 60<<10) + `"`)
	// Fill the slow client's socket buffers and queue until it is cut off.
	cut := false
	for i := 0; i < 2000 && !cut; i++ {
		r, err := e.push.Publish(ctx(t), &pushv1.PublishRequest{UserId: "slow", Data: big})
		if err != nil {
			t.Fatal(err)
		}
		cut = r.Outcome == pushv1.Outcome_OUTCOME_STORED
	}
	if !cut {
		t.Fatal("slow consumer was never disconnected")
	}
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i, c := range conns {
		wg.Add(1)
		go func(i int, c *websocket.Conn) {
			defer wg.Done()
			_, b, err := c.Read(ctx(t))
			if err != nil {
				errs <- err
				return
			}
			var m msg
			if json.Unmarshal(b, &m); m.Seq != 1 || string(m.Data) != fmt.Sprint(i) {
				errs <- fmt.Errorf("u%d got %s", i, b)
			}
		}(i, c)
	}
	for i := range conns {
		e.publish(fmt.Sprintf("u%d", i), fmt.Sprint(i))
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// --- a raw client for what real client libraries refuse to send ---

type raw struct {
	net.Conn
	br *bufio.Reader
}

func rawDial(t *testing.T, addr, uid, tok, extra string) *raw {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	fmt.Fprintf(c, "GET /ws?uid=%s&token=%s%s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", uid, tok, extra, addr)
	r := &raw{Conn: c, br: bufio.NewReader(c)}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(r.br, nil)
	if err != nil || resp.StatusCode != 101 {
		t.Fatalf("raw upgrade: %v %v", resp, err)
	}
	return r
}

func (r *raw) send(b0 byte, payload []byte, masked bool) {
	h := []byte{b0, 0}
	switch n := len(payload); {
	case n < 126:
		h[1] = byte(n)
	case n < 65536:
		h[1] = 126
		h = binary.BigEndian.AppendUint16(h, uint16(n))
	default:
		h[1] = 127
		h = binary.BigEndian.AppendUint64(h, uint64(n))
	}
	p := append([]byte(nil), payload...)
	if masked {
		h[1] |= 0x80
		var key [4]byte
		rand.Read(key[:])
		h = append(h, key[:]...)
		for i := range p {
			p[i] ^= key[i%4]
		}
	}
	r.Write(append(h, p...))
}

// readFrame returns the next server frame's opcode and payload.
func (r *raw) readFrame() (byte, []byte, error) {
	r.SetReadDeadline(time.Now().Add(10 * time.Second))
	var h [2]byte
	if _, err := io.ReadFull(r.br, h[:]); err != nil {
		return 0, nil, err
	}
	n := uint64(h[1] & 0x7f)
	switch n {
	case 126:
		var b [2]byte
		io.ReadFull(r.br, b[:])
		n = uint64(binary.BigEndian.Uint16(b[:]))
	case 127:
		var b [8]byte
		io.ReadFull(r.br, b[:])
		n = binary.BigEndian.Uint64(b[:])
	}
	p := make([]byte, n)
	_, err := io.ReadFull(r.br, p)
	return h[0] & 0x0f, p, err
}

// closeCode reads frames until a close frame and returns its code.
func (r *raw) closeCode(t *testing.T) int {
	t.Helper()
	for {
		op, p, err := r.readFrame()
		if err != nil {
			t.Fatalf("no close frame: %v", err)
		}
		if op == 8 {
			if len(p) < 2 {
				return 1005
			}
			return int(binary.BigEndian.Uint16(p))
		}
	}
}

func TestMalformedFramesGetTheirCloseCodes(t *testing.T) {
	e := start(t, func(c *edge.Config) { c.MaxMessageBytes = 1000 })
	for _, tc := range []struct {
		name    string
		b0      byte
		payload []byte
		masked  bool
		want    int
	}{
		{"unmasked", 0x81, []byte("hi"), false, edge.CloseProtocol},
		{"control over 125 bytes", 0x89, make([]byte, 126), true, edge.CloseProtocol},
		{"fragmented ping", 0x09, []byte("x"), true, edge.CloseProtocol},
		{"reserved opcode", 0x83, []byte("x"), true, edge.CloseProtocol},
		{"reserved bits", 0xC1, []byte("x"), true, edge.CloseProtocol},
		{"continuation first", 0x80, []byte("x"), true, edge.CloseProtocol},
		{"invalid utf-8", 0x81, []byte{0xff, 0xfe}, true, edge.CloseInvalidData},
		{"too big", 0x82, make([]byte, 1001), true, edge.CloseTooBig},
		{"close with bad code", 0x88, []byte{0x03, 0xe7}, true, edge.CloseProtocol}, // 999
	} {
		t.Run(tc.name, func(t *testing.T) {
			uid := "mf" + fmt.Sprint(len(tc.name))
			r := rawDial(t, e.addr, uid, token(t, uid), "")
			r.send(tc.b0, tc.payload, tc.masked)
			if got := r.closeCode(t); got != tc.want {
				t.Fatalf("close code %d, want %d", got, tc.want)
			}
		})
	}
	// Fragmented text with a rune split across fragments is fine; an invalid
	// sequence completed in the last fragment is 1007.
	r := rawDial(t, e.addr, "frag", token(t, "frag"), "")
	euro := []byte("€") // e2 82 ac
	r.send(0x01, euro[:1], true)
	r.send(0x80, euro[1:], true)
	r.send(0x89, []byte("p"), true) // ping after a whole message: answered with pong
	if op, p, err := r.readFrame(); err != nil || op != 0xA || string(p) != "p" {
		t.Fatalf("pong %x %q %v", op, p, err)
	}
	r.send(0x01, euro[:2], true)
	r.send(0x80, []byte{0x41}, true)
	if got := r.closeCode(t); got != edge.CloseInvalidData {
		t.Fatalf("split invalid rune: %d, want 1007", got)
	}
}

func TestCloseHandshakeHonoured(t *testing.T) {
	e := start(t, nil)
	r := rawDial(t, e.addr, "nina", token(t, "nina"), "")
	r.send(0x88, []byte{0x0f, 0xa0, 'o', 'k'}, true) // 4000 "ok"
	if got := r.closeCode(t); got != 4000 {
		t.Fatalf("echoed %d, want 4000", got)
	}
	if _, _, err := r.readFrame(); !errors.Is(err, io.EOF) {
		t.Fatalf("after close: %v, want EOF", err)
	}
	waitFor(t, "detach", func() bool { return e.srv.Presence("nina") == 0 && e.srv.Open() == 0 })
}

func TestSlowHandshakeIsCut(t *testing.T) {
	e := start(t, func(c *edge.Config) { c.HandshakeTimeout = 200 * time.Millisecond })
	c, err := net.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "GET /ws?uid=slowloris HTTP/1.1\r\nHost: x\r\n") // never finishes
	c.SetReadDeadline(time.Now().Add(15 * time.Second))
	_, err = c.Read(make([]byte, 1))
	if err == nil || isTimeout(err) {
		t.Fatalf("slow handshake not cut: %v", err)
	}
	// A head over the cap is refused with 431.
	c2, _ := net.Dial("tcp", e.addr)
	defer c2.Close()
	fmt.Fprintf(c2, "GET /ws?uid=a HTTP/1.1\r\nX: %s\r\n\r\n", strings.Repeat("a", 9000))
	c2.SetReadDeadline(time.Now().Add(15 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c2), nil)
	if err != nil || resp.StatusCode != 431 {
		t.Fatalf("oversized head: %v %v", resp, err)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func TestPingAndIdleTimeout(t *testing.T) {
	e := start(t, func(c *edge.Config) { c.PingInterval = 100 * time.Millisecond; c.IdleTimeout = 300 * time.Millisecond })
	r := rawDial(t, e.addr, "oz", token(t, "oz"), "")
	op, _, err := r.readFrame()
	if err != nil || op != 0x9 {
		t.Fatalf("want a ping, got %x %v", op, err)
	}
	// Never answer: the edge closes with 4000 after the idle timeout.
	if got := r.closeCode(t); got != edge.CloseIdle {
		t.Fatalf("idle close %d, want 4000", got)
	}
}

func TestShutdownClosesWithGoingAway(t *testing.T) {
	e := start(t, nil)
	c := e.dial("pat", "")
	waitFor(t, "registration", func() bool { return e.srv.Presence("pat") == 1 })
	go e.srv.Shutdown(context.Background())
	if _, _, err := c.Read(ctx(t)); websocket.CloseStatus(err) != edge.CloseGoingAway {
		t.Fatalf("got %v, want 1001", err)
	}
	waitFor(t, "not ready", func() bool { return e.srv.Ready() != nil })
	// A draining edge refuses publishes with UNAVAILABLE so SDKs retry on
	// the next owner instead of storing here.
	_, err := e.push.Publish(ctx(t), &pushv1.PublishRequest{UserId: "pat", Data: []byte("1")})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("publish while draining: %v, want Unavailable", err)
	}
}

func TestCapacityAnswers503(t *testing.T) {
	e := start(t, func(c *edge.Config) { c.MaxConns = 1 })
	e.dial("q1", "")
	_, resp, err := websocket.Dial(ctx(t), e.url("q2", token(t, "q2"), ""), nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("over capacity: %v %v, want 503", resp, err)
	}
}

func TestAcceptProxyAndListenSpan(t *testing.T) {
	// A fixed port is needed for a span: find a free pair.
	var e *env
	for try := 0; e == nil && try < 20; try++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		e, _ = tryStart(t, func(c *edge.Config) { c.Listen = addr; c.ListenSpan = 2; c.AcceptProxy = true })
	}
	if e == nil {
		t.Fatal("no free port pair")
	}
	second := fmt.Sprintf("127.0.0.1:%d", e.srv.Addr().Port+1)
	for _, tc := range []struct {
		name, addr string
		header     []byte
	}{
		{"v2 on the first port", e.addr, proxyproto.AppendV2(nil, netip.MustParseAddrPort("203.0.113.7:5555"), netip.MustParseAddrPort("127.0.0.1:80"))},
		{"v1 on the second port", second, proxyproto.AppendV1(nil, netip.MustParseAddrPort("203.0.113.8:5556"), netip.MustParseAddrPort("127.0.0.1:80"))},
	} {
		c, err := net.Dial("tcp", tc.addr)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		uid := "px" + fmt.Sprint(len(tc.name))
		c.Write(tc.header)
		fmt.Fprintf(c, "GET /ws?uid=%s&token=%s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
			"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", uid, token(t, uid))
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil || resp.StatusCode != 101 {
			t.Fatalf("%s: %v %v", tc.name, resp, err)
		}
		c.Close()
	}
	// Without a PROXY header the edge refuses the request.
	c, _ := net.Dial("tcp", e.addr)
	defer c.Close()
	fmt.Fprintf(c, "GET /ws?uid=a HTTP/1.1\r\nHost: x\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil || resp.StatusCode != 400 {
		t.Fatalf("missing PROXY header: %v %v", resp, err)
	}
}

// A frame sent in the same segment as the request head is handled at
// once, not left waiting for the next read.
func TestFrameRightBehindTheHead(t *testing.T) {
	e := start(t, nil)
	c, err := net.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	head := fmt.Sprintf("GET /ws?uid=eager&token=%s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", token(t, "eager"))
	ping := []byte{0x89, 0x81, 1, 2, 3, 4, 'x' ^ 1}
	c.Write(append([]byte(head), ping...))
	r := &raw{Conn: c, br: bufio.NewReader(c)}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(r.br, nil)
	if err != nil || resp.StatusCode != 101 {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	if op, p, err := r.readFrame(); err != nil || op != 0xA || string(p) != "x" {
		t.Fatalf("want the pong for the pipelined ping, got %x %q %v", op, p, err)
	}
}

func TestIDFromHostname(t *testing.T) {
	for host, want := range map[string]uint32{"edge-0": 1, "edge-41": 42, "push-edge-3.edge.ns.svc": 4} {
		if got, err := edge.IDFromHostname(host); err != nil || got != want {
			t.Errorf("%s: %d %v, want %d", host, got, err, want)
		}
	}
	for _, host := range []string{"edge", "edge-x", "edge-", "edge-99999999999"} {
		if _, err := edge.IDFromHostname(host); err == nil {
			t.Errorf("%s: accepted", host)
		}
	}
}

// PublishStream: answers carry the request ids; a bad request answers with
// its error code and the stream goes on.
func TestPublishStream(t *testing.T) {
	e := start(t, nil)
	c := e.dial("ivan", "")
	waitFor(t, "registration", func() bool { return e.srv.Presence("ivan") == 1 })
	st, err := e.push.PublishStream(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	reqs := []*pushv1.PublishRequest{
		{RequestId: 7, UserId: "ivan", Data: []byte(`1`)},
		{RequestId: 8, UserId: "bad id", Data: []byte(`x`)},
		{RequestId: 9, UserId: "ivan", Data: []byte(`2`)},
	}
	for _, r := range reqs {
		if err := st.Send(r); err != nil {
			t.Fatal(err)
		}
	}
	for _, want := range []struct {
		id   uint64
		code codes.Code
		seq  uint64
	}{{7, codes.OK, 1}, {8, codes.InvalidArgument, 0}, {9, codes.OK, 2}} {
		r, err := st.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if r.RequestId != want.id || codes.Code(r.ErrorCode) != want.code || r.Seq != want.seq {
			t.Fatalf("answer %+v, want id %d code %v seq %d", r, want.id, want.code, want.seq)
		}
	}
	st.CloseSend()
	for i := uint64(1); i <= 2; i++ {
		if m := read(t, c); m.Seq != i {
			t.Fatalf("seq %d, want %d", m.Seq, i)
		}
	}
}
