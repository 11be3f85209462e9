package edge_test

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/pushcluster/push/pkg/auth"
	"github.com/pushcluster/push/pkg/edge"
	"github.com/pushcluster/push/pkg/edge/edgetest"
	"github.com/pushcluster/push/pkg/ring"
	"github.com/pushcluster/push/pkg/store"
	"github.com/pushcluster/push/pkg/store/etcdtest"
	pushv1 "github.com/pushcluster/push/proto/push/v1"
)

// mint makes a token of uid valid for ttl from now.
func mint(t *testing.T, uid string, ttl time.Duration) string {
	t.Helper()
	tok, err := auth.Mint(secret, uid, ttl, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// expiryOf is when a token of uid expires (exp has whole seconds).
func expiryOf(t *testing.T, tok, uid string) time.Time {
	t.Helper()
	v, _ := auth.NewVerifier(auth.Config{HMACSecret: secret})
	c, err := v.VerifyClaims(tok, uid)
	if err != nil {
		t.Fatal(err)
	}
	return time.Unix(0, c.Exp)
}

func dialWith(t *testing.T, addr, uid, tok string) *websocket.Conn {
	t.Helper()
	c, _, err := websocket.Dial(ctx(t), fmt.Sprintf("ws://%s/ws?uid=%s&token=%s", addr, uid, tok), nil)
	if err != nil {
		t.Fatalf("dial %s: %v", uid, err)
	}
	t.Cleanup(func() { c.CloseNow() })
	return c
}

// closedWith reads (skipping messages) until the connection ends and
// returns the close code and reason the edge sent.
func closedWith(t *testing.T, c *websocket.Conn) (websocket.StatusCode, string) {
	t.Helper()
	for {
		_, _, err := c.Read(ctx(t))
		if err == nil {
			continue
		}
		var ce websocket.CloseError
		if !errors.As(err, &ce) {
			t.Fatalf("connection ended without a close frame: %v", err)
		}
		return ce.Code, ce.Reason
	}
}

// refresh sends the token control message.
func refresh(t *testing.T, c *websocket.Conn, tok string) {
	t.Helper()
	b, _ := json.Marshal(map[string]string{"type": "token", "token": tok})
	if err := c.Write(ctx(t), websocket.MessageText, b); err != nil {
		t.Fatalf("send refresh: %v", err)
	}
}

type tokenAnswer struct {
	Seq   uint64          `json:"seq"`
	Token bool            `json:"token"`
	Exp   int64           `json:"exp"`
	HB    bool            `json:"hb"`
	Data  json.RawMessage `json:"data"`
}

// nextNonHeartbeat reads the next frame that is not a heartbeat.
func nextNonHeartbeat(t *testing.T, c *websocket.Conn) tokenAnswer {
	t.Helper()
	for {
		_, b, err := c.Read(ctx(t))
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		var a tokenAnswer
		if err := json.Unmarshal(b, &a); err != nil {
			t.Fatalf("frame %q: %v", b, err)
		}
		if !a.HB {
			return a
		}
	}
}

// tokenEvents reads push_edge_token_events_total{event} from reg.
func tokenEvents(t *testing.T, reg *prometheus.Registry, event string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "push_edge_token_events_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "event" && l.GetValue() == event {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("no push_edge_token_events_total{event=%q}", event)
	return 0
}

// A connection whose token expires is closed with 4001; the deadline comes
// from the timing wheel (the ping interval here is far longer).
func TestTokenExpiryClosesWith4001(t *testing.T) {
	reg := prometheus.NewRegistry()
	e := start(t, func(c *edge.Config) { c.Metrics = reg })
	c := dialWith(t, e.addr, "exa", mint(t, "exa", 2*time.Second))
	code, reason := closedWith(t, c)
	if code != edge.CloseUnauthorized || reason != "token expired" {
		t.Fatalf("closed with %d %q, want 4001 \"token expired\"", code, reason)
	}
	waitFor(t, "the user to be gone", func() bool { return e.srv.Presence("exa") == 0 })
	if n := tokenEvents(t, reg, "expired"); n != 1 {
		t.Fatalf("expired events %v, want 1", n)
	}
}

// A refreshed connection stays open past its first token's expiry and
// still receives messages.
func TestRefreshedConnectionOutlivesItsFirstToken(t *testing.T) {
	reg := prometheus.NewRegistry()
	e := start(t, func(c *edge.Config) { c.Metrics = reg })
	first := mint(t, "ref", 2*time.Second)
	c := dialWith(t, e.addr, "ref", first)
	waitFor(t, "registration", func() bool { return e.srv.Presence("ref") == 1 })
	fresh := mint(t, "ref", time.Hour)
	refresh(t, c, fresh)
	a := nextNonHeartbeat(t, c)
	if !a.Token || a.Seq != 0 || a.Exp != expiryOf(t, fresh, "ref").Unix() {
		t.Fatalf("refresh answer %+v, want {seq:0, token:true, exp:%d}", a, expiryOf(t, fresh, "ref").Unix())
	}
	// Wait past the first token's expiry (plus the wheel's tick and slack).
	time.Sleep(time.Until(expiryOf(t, first, "ref").Add(time.Second)))
	e.publish("ref", `{"after":"expiry"}`)
	if m := nextNonHeartbeat(t, c); string(m.Data) != `{"after":"expiry"}` || m.Seq == 0 {
		t.Fatalf("after the first expiry got %+v, want the published message", m)
	}
	if e.srv.Presence("ref") != 1 {
		t.Fatal("the refreshed connection is gone")
	}
	if r, x := tokenEvents(t, reg, "renewed"), tokenEvents(t, reg, "expired"); r != 1 || x != 0 {
		t.Fatalf("renewed %v expired %v, want 1 and 0", r, x)
	}
}

// A refresh with a token that does not verify for the connection's user
// closes it with 4001 and the reason.
func TestRefusedRefreshesClose4001(t *testing.T) {
	e := start(t, nil)
	forged, _ := auth.Mint([]byte("another-secret-another-secret-0123456"), "rob", time.Hour, time.Now())
	expired, _ := auth.Mint(secret, "rob", time.Hour, time.Now().Add(-2*time.Hour))
	for _, c := range []struct {
		name, msg, reason string
	}{
		{"another user's token", `{"type":"token","token":"` + mint(t, "eve", time.Hour) + `"}`, "token sub does not match uid"},
		{"forged token", `{"type":"token","token":"` + forged + `"}`, "bad signature"},
		{"expired token", `{"type":"token","token":"` + expired + `"}`, "token expired"},
		{"no token", `{"type":"token"}`, `malformed token message: want {"type":"token","token":"<jwt>"}`},
		{"token not a string", `{"type":"token","token":42}`, `malformed token message: want {"type":"token","token":"<jwt>"}`},
	} {
		t.Run(c.name, func(t *testing.T) {
			ws := dialWith(t, e.addr, "rob", mint(t, "rob", time.Hour))
			if err := ws.Write(ctx(t), websocket.MessageText, []byte(c.msg)); err != nil {
				t.Fatal(err)
			}
			code, reason := closedWith(t, ws)
			if code != edge.CloseUnauthorized || reason != c.reason {
				t.Fatalf("closed with %d %q, want 4001 %q", code, reason, c.reason)
			}
		})
	}
	// Other messages are still ignored.
	ws := dialWith(t, e.addr, "rob", mint(t, "rob", time.Hour))
	ws.Write(ctx(t), websocket.MessageText, []byte(`{"type":"chat","token":"x"}`))
	ws.Write(ctx(t), websocket.MessageText, []byte(`hello`))
	e.publish("rob", `"still here"`)
	if m := nextNonHeartbeat(t, ws); string(m.Data) != `"still here"` {
		t.Fatalf("got %+v", m)
	}
}

// SSE and long-poll clients renew by reconnecting: their stream ends with
// a close notice 4001 at expiry.
func TestStreamsEndAtTokenExpiry(t *testing.T) {
	e := start(t, nil)
	for _, path := range []string{"sse", "poll"} {
		tok := mint(t, "str", 2*time.Second)
		req, _ := http.NewRequestWithContext(ctx(t), "GET", fmt.Sprintf("http://%s/%s?uid=str&token=%s", e.addr, path, tok), nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var body strings.Builder
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			body.WriteString(sc.Text() + "\n")
		}
		resp.Body.Close()
		want := `{"close":4001,"reason":"token expired"}`
		if path == "sse" && !strings.Contains(body.String(), "event: close\ndata: "+want) ||
			path == "poll" && strings.TrimSpace(body.String()) != "["+want+"]" {
			t.Fatalf("%s body %q, want the close notice %s", path, body.String(), want)
		}
	}
}

// revokeCluster is two edges following one store, with user uid connected
// to both: to its owner, and as a guest (kept a minute) to the other.
func revokeCluster(t *testing.T, st store.Store, uid string) ([]*edgetest.Edge, []*websocket.Conn, string) {
	t.Helper()
	var edges []*edgetest.Edge
	d := &ring.Document{Version: 1, Algorithm: ring.AlgorithmBounded}
	for id := uint32(1); id <= 2; id++ {
		e := edgetest.Start(t, secret, edge.Config{ID: id, GuestGrace: time.Minute})
		edges = append(edges, e)
		d.Members = append(d.Members, e.Member(id, 1))
	}
	if err := st.CompareAndSwap(ctx(t), 0, d, false); err != nil {
		t.Fatal(err)
	}
	for _, e := range edges {
		m, err := edge.Join(e.Srv, st, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(m.Close)
	}
	old := mint(t, uid, time.Hour)
	var conns []*websocket.Conn
	for _, e := range edges {
		conns = append(conns, dialWith(t, e.WS(), uid, old))
	}
	for _, e := range edges {
		waitFor(t, "the user on every edge", func() bool { return e.Srv.Presence(uid) == 1 })
	}
	return edges, conns, old
}

// A revoked user is cut off (4001) on every edge; its old token gets 401
// at a new handshake, a token issued after the revocation works.
func testRevocation(t *testing.T, st store.Store) {
	const uid = "mallory"
	edges, conns, old := revokeCluster(t, st, uid)
	rv := st.(store.Revoker)
	before := time.Now()
	if err := rv.Revoke(ctx(t), store.Revocation{User: uid, Before: before, Expires: before.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	for i, c := range conns {
		if code, reason := closedWith(t, c); code != edge.CloseUnauthorized || reason != "token revoked" {
			t.Fatalf("edge %d closed with %d %q, want 4001 \"token revoked\"", i+1, code, reason)
		}
	}
	for i, e := range edges {
		_, resp, err := websocket.Dial(ctx(t), fmt.Sprintf("ws://%s/ws?uid=%s&token=%s", e.WS(), uid, old), nil)
		if err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("edge %d: old token answered %v %v, want 401", i+1, resp, err)
		}
	}
	// iat has whole seconds: a token issued after the revocation is one
	// minted once the clock has passed its second.
	time.Sleep(time.Until(before.Truncate(time.Second).Add(time.Second)))
	fresh := mint(t, uid, time.Hour)
	id, _ := edges[0].Srv.View().Owner(uid)
	owner := edges[id-1]
	c := dialWith(t, owner.WS(), uid, fresh)
	cc, err := grpc.NewClient(owner.GRPCAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	waitFor(t, "the new connection", func() bool { return owner.Srv.Presence(uid) == 1 })
	// Several reads of the revocations later, it is still open.
	time.Sleep(3 * edge.RevocationPoll)
	if _, err := pushv1.NewPushClient(cc).Publish(ctx(t), &pushv1.PublishRequest{UserId: uid, Data: []byte(`"welcome back"`)}); err != nil {
		t.Fatal(err)
	}
	if m := nextNonHeartbeat(t, c); string(m.Data) != `"welcome back"` {
		t.Fatalf("got %+v", m)
	}
}

func TestRevocationFileStore(t *testing.T) { testRevocation(t, fileStore(t)) }

func TestRevocationEtcdStore(t *testing.T) {
	srv := etcdtest.Start(t)
	st, err := store.Open(srv.URL("/revoke"), quietLog())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	testRevocation(t, st)
}

// A renewal may shorten the connection's life: the deadline moves to the
// new, earlier expiry.
func TestRenewalWithAShorterTokenEndsEarlier(t *testing.T) {
	e := start(t, nil)
	c := dialWith(t, e.addr, "sho", mint(t, "sho", time.Hour))
	refresh(t, c, mint(t, "sho", 2*time.Second))
	if a := nextNonHeartbeat(t, c); !a.Token {
		t.Fatalf("refresh answer %+v", a)
	}
	if code, reason := closedWith(t, c); code != edge.CloseUnauthorized || reason != "token expired" {
		t.Fatalf("closed with %d %q, want 4001 \"token expired\"", code, reason)
	}
}

// A browser that negotiated permessage-deflate may send its renewal
// compressed: it is inflated and applied like an uncompressed one.
func TestCompressedRefreshIsApplied(t *testing.T) {
	e := start(t, nil)
	first := mint(t, "zref", time.Hour)
	c, _, err := websocket.Dial(ctx(t), fmt.Sprintf("ws://%s/ws?uid=zref&token=%s", e.addr, first),
		&websocket.DialOptions{CompressionMode: websocket.CompressionNoContextTakeover, CompressionThreshold: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.CloseNow() })
	fresh := mint(t, "zref", 2*time.Hour)
	refresh(t, c, fresh)
	if a := nextNonHeartbeat(t, c); !a.Token || a.Exp != expiryOf(t, fresh, "zref").Unix() {
		t.Fatalf("refresh answer %+v, want {token:true, exp:%d}", a, expiryOf(t, fresh, "zref").Unix())
	}
}
