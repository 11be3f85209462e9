package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/pushcluster/push/pkg/auth"
	"github.com/pushcluster/push/pkg/client"
	"github.com/pushcluster/push/pkg/daemon"
	"github.com/pushcluster/push/pkg/edge"
	"github.com/pushcluster/push/pkg/ring"
	"github.com/pushcluster/push/pkg/store"
	"github.com/pushcluster/push/pkg/userid"
	pushv1 "github.com/pushcluster/push/proto/push/v1"
)

// bound is the generous limit for anything that should happen soon.
const bound = 15 * time.Second

func (e *testEdge) member() ring.Member {
	return ring.Member{ID: e.id, Name: fmt.Sprintf("e%d", e.id), WS: e.ws, GRPC: e.grpc, Weight: 1}
}

// cluster is n edges and a file store naming them.
type cluster struct {
	t     *testing.T
	edges map[uint32]*testEdge
	st    *store.File
}

func newCluster(t *testing.T, n int) *cluster {
	t.Helper()
	cl := &cluster{t: t, edges: make(map[uint32]*testEdge)}
	for id := uint32(1); id <= uint32(n); id++ {
		e, stop, err := startEdge(id)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(stop)
		cl.edges[id] = e
	}
	st, err := store.OpenFile(filepath.Join(t.TempDir(), "ring.json"), quiet())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	cl.st = st
	ids := make([]uint32, 0, n)
	for id := uint32(1); id <= uint32(n); id++ {
		ids = append(ids, id)
	}
	cl.setRing(ids...)
	return cl
}

// setRing writes the next version naming the given edges, all active.
func (cl *cluster) setRing(ids ...uint32) *ring.Document {
	cl.t.Helper()
	var ms []ring.Member
	for _, id := range ids {
		ms = append(ms, cl.edges[id].member())
	}
	return cl.setMembers(ms)
}

// setMembers writes the next version with exactly these members.
func (cl *cluster) setMembers(ms []ring.Member) *ring.Document {
	cl.t.Helper()
	ctx := context.Background()
	var prev uint64
	if d, err := cl.st.Load(ctx); err == nil {
		prev = d.Version
	}
	d := &ring.Document{Version: prev + 1, Members: ms}
	if err := cl.st.CompareAndSwap(ctx, prev, d, false); err != nil {
		cl.t.Fatal(err)
	}
	return d
}

// calls counts the RPCs the client made, by target and outcome.
type calls struct {
	mu sync.Mutex
	n  map[string]int // "method target code"
}

func (c *calls) add(method, target, code string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == nil {
		c.n = make(map[string]int)
	}
	c.n[fmt.Sprintf("%s %s %s", method, target, code)]++
}

// interceptors count unary calls, and each publish answered on a
// PublishStream as one "Publish" call, so retries show the same way.
func (c *calls) interceptors() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any,
			cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			err := invoker(ctx, method, req, reply, cc, opts...)
			c.add(method[strings.LastIndex(method, "/")+1:], cc.Target(), status.Code(err).String())
			return err
		}),
		grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn,
			method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
			cs, err := streamer(ctx, desc, cc, method, opts...)
			if err != nil {
				c.add("Publish", cc.Target(), status.Code(err).String())
				return nil, err
			}
			return &countedStream{ClientStream: cs, c: c, target: cc.Target()}, nil
		}),
	}
}

type countedStream struct {
	grpc.ClientStream
	c      *calls
	target string
}

func (s *countedStream) RecvMsg(m any) error {
	err := s.ClientStream.RecvMsg(m)
	if r, ok := m.(*pushv1.PublishResponse); ok && err == nil {
		s.c.add("Publish", s.target, codes.Code(r.GetErrorCode()).String())
	}
	return err
}

// count sums the calls whose key contains every fragment.
func (c *calls) count(fragments ...string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	sum := 0
next:
	for k, v := range c.n {
		for _, f := range fragments {
			if !strings.Contains(k, f) {
				continue next
			}
		}
		sum += v
	}
	return sum
}

func (cl *cluster) client(opts ...client.Option) *client.Client {
	cl.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	c, err := client.New(ctx, cl.st, append([]client.Option{client.WithLogger(quiet())}, opts...)...)
	if err != nil {
		cl.t.Fatal(err)
	}
	cl.t.Cleanup(func() { c.Close() })
	return c
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), bound)
	t.Cleanup(cancel)
	return c
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(bound)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// connect opens a browser-like WebSocket for uid on e.
func connect(t *testing.T, e *testEdge, uid string) *websocket.Conn {
	t.Helper()
	tok, err := auth.Mint(secret, uid, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	ws, _, err := websocket.Dial(ctx(t), fmt.Sprintf("ws://%s/ws?uid=%s&token=%s", e.ws, uid, tok), nil)
	if err != nil {
		t.Fatalf("connect %s to edge %d: %v", uid, e.id, err)
	}
	t.Cleanup(func() { ws.CloseNow() })
	return ws
}

type frame struct {
	Seq       uint64          `json:"seq"`
	Data      json.RawMessage `json:"data"`
	Broadcast bool            `json:"broadcast"`
}

func readFrame(t *testing.T, ws *websocket.Conn) frame {
	t.Helper()
	_, b, err := ws.Read(ctx(t))
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	var f frame
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatalf("frame %q: %v", b, err)
	}
	return f
}

func users(n int) []string {
	u := make([]string, n)
	for i := range u {
		u[i] = fmt.Sprintf("user-%d", i)
	}
	return u
}

// userOwnedBy returns a user the ring places on id.
func userOwnedBy(t *testing.T, r *ring.Ring, id uint32) string {
	t.Helper()
	for _, u := range users(10000) {
		if r.LookupString(u) == id {
			return u
		}
	}
	t.Fatalf("no user owned by %d", id)
	return ""
}

func TestPublishGoesToTheOwner(t *testing.T) {
	cl := newCluster(t, 3)
	c := cl.client()
	r := c.Ring()
	perEdge := make(map[uint32]int)
	for _, u := range users(300) {
		resp, err := c.Publish(ctx(t), u, []byte(`{"n":1}`), time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		want := r.LookupString(u)
		if resp.EdgeId != want || resp.Outcome != pushv1.Outcome_OUTCOME_STORED || resp.Seq != 1 {
			t.Fatalf("%s: %v, want stored seq 1 on edge %d", u, resp, want)
		}
		perEdge[want]++
		// The owner really holds it: its next message for u is seq 2.
		if next, err := cl.edges[want].srv.Publish(u, []byte("x"), 0); err != nil || next.Seq != 2 {
			t.Fatalf("%s on edge %d: %+v %v, want seq 2", u, want, next, err)
		}
	}
	if len(perEdge) != 3 {
		t.Fatalf("users spread over %v, want all 3 edges", perEdge)
	}
}

func TestPublishReachesAConnectedUser(t *testing.T) {
	cl := newCluster(t, 3)
	c := cl.client()
	owner := c.Ring().LookupString("alice")
	ws := connect(t, cl.edges[owner], "alice")
	waitFor(t, "alice registered", func() bool { return cl.edges[owner].srv.Presence("alice") == 1 })
	resp, err := c.Publish(ctx(t), "alice", []byte(`{"hi":1}`), 0)
	if err != nil || resp.Outcome != pushv1.Outcome_OUTCOME_DELIVERED || resp.Connections != 1 {
		t.Fatalf("publish: %v %v", resp, err)
	}
	if f := readFrame(t, ws); f.Seq != 1 || string(f.Data) != `{"hi":1}` {
		t.Fatalf("alice got %+v", f)
	}
}

func TestPublishMultiSplitsPerOwnerAndKeepsOrder(t *testing.T) {
	cl := newCluster(t, 3)
	var rec calls
	c := cl.client(client.WithDialOptions(rec.interceptors()...))
	r := c.Ring()
	// Interleaved owners and one duplicate, so order matters.
	uids := users(500)
	for i, j := 0, len(uids)-1; i < j; i, j = i+1, j-1 {
		if i%3 == 0 {
			uids[i], uids[j] = uids[j], uids[i]
		}
	}
	uids = append(uids, uids[7])
	resp, err := c.PublishMulti(ctx(t), uids, []byte(`"hello"`), 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Results) != len(uids) {
		t.Fatalf("%d results for %d users", len(resp.Results), len(uids))
	}
	for i, res := range resp.Results {
		wantSeq := uint64(1)
		if i == len(uids)-1 {
			wantSeq = 2 // the duplicate: same owner, same call, after the first
		}
		if res.UserId != uids[i] || res.Outcome != pushv1.Outcome_OUTCOME_STORED || res.Seq != wantSeq {
			t.Fatalf("result %d: %v, want %s stored seq %d", i, res, uids[i], wantSeq)
		}
	}
	for _, u := range uids[:50] {
		owner := r.LookupString(u)
		if next, _ := cl.edges[owner].srv.Publish(u, []byte("x"), 0); next.Seq < 2 {
			t.Fatalf("%s: edge %d did not get the message", u, owner)
		}
	}
	if n := rec.count("PublishMulti", "OK"); n != 3 {
		t.Fatalf("%d PublishMulti calls, want one per owner (3)", n)
	}
}

func TestPresenceAndKick(t *testing.T) {
	cl := newCluster(t, 3)
	c := cl.client()
	owner := c.Ring().LookupString("alice")
	ws := connect(t, cl.edges[owner], "alice")
	waitFor(t, "alice registered", func() bool { return cl.edges[owner].srv.Presence("alice") == 1 })

	resp, err := c.Presence(ctx(t), []string{"bob", "alice", "carol"})
	if err != nil {
		t.Fatal(err)
	}
	got := make([]string, len(resp.Users))
	for i, p := range resp.Users {
		got[i] = fmt.Sprintf("%s:%v:%d:%d", p.UserId, p.Online, p.Connections, p.EdgeId)
	}
	if want := fmt.Sprintf("bob:false:0:0 alice:true:1:%d carol:false:0:0", owner); strings.Join(got, " ") != want {
		t.Fatalf("presence %v, want %s", got, want)
	}
	k, err := c.Kick(ctx(t), "alice", "bye")
	if err != nil || k.Connections != 1 {
		t.Fatalf("kick: %v %v", k, err)
	}
	if _, _, err := ws.Read(ctx(t)); websocket.CloseStatus(err) != edge.CloseKicked {
		t.Fatalf("alice: %v, want close %d", err, edge.CloseKicked)
	}
}

func TestBroadcastReachesEveryMemberIncludingDraining(t *testing.T) {
	cl := newCluster(t, 3)
	m3 := cl.edges[3].member()
	m3.State = ring.StateDraining
	cl.setMembers([]ring.Member{cl.edges[1].member(), cl.edges[2].member(), m3})
	c := cl.client()
	var conns []*websocket.Conn
	for id := uint32(1); id <= 3; id++ {
		uid := fmt.Sprintf("viewer-%d", id)
		conns = append(conns, connect(t, cl.edges[id], uid))
		waitFor(t, uid+" registered", func() bool { return cl.edges[id].srv.Presence(uid) == 1 })
	}
	resp, err := c.Broadcast(ctx(t), []byte(`"maintenance"`))
	if err != nil || resp.Connections != 3 || resp.Edges != 3 {
		t.Fatalf("broadcast: %v %v, want 3 connections on 3 edges", resp, err)
	}
	for i, ws := range conns {
		if f := readFrame(t, ws); !f.Broadcast || string(f.Data) != `"maintenance"` {
			t.Fatalf("viewer on edge %d got %+v", i+1, f)
		}
	}
}

func TestBroadcastNamesTheEdgesThatFailed(t *testing.T) {
	cl := newCluster(t, 3)
	c := cl.client()
	cl.edges[2].g.Server.Stop()
	// Long enough for edges 1 and 3 to answer on a loaded machine; edge 2
	// is retried until then.
	cx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	resp, err := c.Broadcast(cx, []byte("x"))
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "failed on 1: edge 2 e2") {
		t.Fatalf("broadcast with edge 2 down: %v", err)
	}
	if resp == nil || resp.Edges != 2 {
		t.Fatalf("totals of the edges that took it: %v, want 2 edges", resp)
	}
	// Once the ring no longer names it, nobody waits for edge 2.
	cl.setRing(1, 3)
	waitFor(t, "the new ring", func() bool { return c.Ring().Version() == 2 })
	if resp, err := c.Broadcast(ctx(t), []byte("y")); err != nil || resp.Edges != 2 {
		t.Fatalf("broadcast after edge 2 left: %v %v", resp, err)
	}
}

func TestRingChangeReroutesAndClosesConnections(t *testing.T) {
	cl := newCluster(t, 3)
	defer client.SetCloseGrace(50 * time.Millisecond)()
	cl.setRing(1, 2) // version 2: edge 3 not yet a member
	c := cl.client()
	waitFor(t, "ring version 2", func() bool { return c.Ring().Version() == 2 })
	uids := users(60)
	for _, u := range uids {
		if _, err := c.Publish(ctx(t), u, []byte("a"), 0); err != nil {
			t.Fatal(err)
		}
	}
	old := client.PooledConn(c, cl.edges[2].grpc)
	if old == nil {
		t.Fatal("no pooled connection to edge 2")
	}

	cl.setRing(1, 3) // version 3: edge 2 leaves, edge 3 joins
	waitFor(t, "ring version 3", func() bool { return c.Ring().Version() == 3 })
	waitFor(t, "the connection to edge 2 closed", func() bool { return old.GetState() == connectivity.Shutdown })
	if client.PooledConn(c, cl.edges[2].grpc) != nil {
		t.Fatal("edge 2 still pooled")
	}
	r := c.Ring()
	to3 := 0
	for _, u := range uids {
		resp, err := c.Publish(ctx(t), u, []byte("b"), 0)
		if err != nil {
			t.Fatal(err)
		}
		if want := r.LookupString(u); resp.EdgeId != want || want == 2 {
			t.Fatalf("%s went to edge %d, ring says %d", u, resp.EdgeId, want)
		}
		if resp.EdgeId == 3 {
			to3++
		}
	}
	if to3 == 0 {
		t.Fatal("no user moved to the new edge 3")
	}
}

func TestUnavailableEdgeRetriedUntilTheRingDropsIt(t *testing.T) {
	cl := newCluster(t, 3)
	var rec calls
	c := cl.client(client.WithDialOptions(rec.interceptors()...))
	uid := userOwnedBy(t, c.Ring(), 3)
	down := cl.edges[3].grpc
	cl.edges[3].g.Server.Stop() // connection refused from now on

	type result struct {
		resp *pushv1.PublishResponse
		err  error
	}
	done := make(chan result, 1)
	go func() {
		resp, err := c.Publish(ctx(t), uid, []byte("m"), 0)
		done <- result{resp, err}
	}()
	waitFor(t, "retries against the stopped edge", func() bool { return rec.count("Publish", down, "Unavailable") >= 2 })
	cl.setRing(1, 2)
	select {
	case res := <-done:
		if res.err != nil {
			t.Fatalf("publish: %v", res.err)
		}
		if want := c.Ring().LookupString(uid); res.resp.EdgeId != want || want == 3 {
			t.Fatalf("landed on edge %d, the new ring says %d", res.resp.EdgeId, want)
		}
	case <-time.After(bound):
		t.Fatal("publish did not finish after the ring dropped the stopped edge")
	}
}

func TestUnavailableGivesUpAtTheDeadline(t *testing.T) {
	cl := newCluster(t, 3)
	var rec calls
	c := cl.client(client.WithDialOptions(rec.interceptors()...))
	uid := userOwnedBy(t, c.Ring(), 3)
	cl.edges[3].g.Server.Stop()
	cx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, err := c.Publish(cx, uid, []byte("m"), 0)
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "edge 3 e3 ("+cl.edges[3].grpc+")") {
		t.Fatalf("publish to a stopped edge: %v, want UNAVAILABLE naming edge 3", err)
	}
	if n := rec.count("Publish", cl.edges[3].grpc); n < 2 {
		t.Fatalf("%d attempts, want retries", n)
	}
}

func TestInvalidArgumentIsNotRetried(t *testing.T) {
	cl := newCluster(t, 3)
	var rec calls
	c := cl.client(client.WithDialOptions(rec.interceptors()...))
	local := []struct {
		name string
		call func() error
	}{
		{"bad user", func() error { _, err := c.Publish(ctx(t), "no spaces", []byte("x"), 0); return err }},
		{"empty user", func() error { _, err := c.Publish(ctx(t), "", []byte("x"), 0); return err }},
		{"empty payload", func() error { _, err := c.Publish(ctx(t), "u", nil, 0); return err }},
		{"negative ttl", func() error { _, err := c.Publish(ctx(t), "u", []byte("x"), -time.Second); return err }},
		{"multi: no users", func() error { _, err := c.PublishMulti(ctx(t), nil, []byte("x"), 0); return err }},
		{"multi: a bad user", func() error {
			_, err := c.PublishMulti(ctx(t), []string{"ok", "n/o"}, []byte("x"), 0)
			return err
		}},
		{"multi: too many", func() error {
			_, err := c.PublishMulti(ctx(t), users(userid.MaxPerCall+1), []byte("x"), 0)
			return err
		}},
		{"presence: bad user", func() error { _, err := c.Presence(ctx(t), []string{"a b"}); return err }},
		{"kick: bad user", func() error { _, err := c.Kick(ctx(t), "é", ""); return err }},
		{"broadcast: empty", func() error { _, err := c.Broadcast(ctx(t), nil); return err }},
	}
	for _, tc := range local {
		if err := tc.call(); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: %v, want INVALID_ARGUMENT", tc.name, err)
		}
	}
	if n := rec.count(""); n != 0 {
		t.Fatalf("%d calls went out for input refused locally", n)
	}
	// The edge's own limit: answered once, not retried.
	_, err := c.Publish(ctx(t), "u", make([]byte, 70000), 0)
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "payload too big") {
		t.Fatalf("oversized payload: %v", err)
	}
	if n := rec.count("Publish"); n != 1 {
		t.Fatalf("%d calls for an INVALID_ARGUMENT answer, want 1", n)
	}
}

func TestUpFilterSkipsDownMembers(t *testing.T) {
	cl := newCluster(t, 3)
	c := cl.client(client.WithUp(func(id uint32) bool { return id != 2 }))
	moved := 0
	for _, u := range users(200) {
		resp, err := c.Publish(ctx(t), u, []byte("x"), 0)
		if err != nil {
			t.Fatal(err)
		}
		if resp.EdgeId == 2 {
			t.Fatalf("%s went to edge 2, which is down", u)
		}
		if c.Ring().LookupString(u) == 2 {
			moved++
		}
	}
	if moved == 0 {
		t.Fatal("no user of edge 2 was tried")
	}
	b, err := c.Broadcast(ctx(t), []byte("x"))
	if err != nil || b.Edges != 2 {
		t.Fatalf("broadcast: %v %v, want edge 2 skipped", b, err)
	}
}

func TestServerForwardsEveryCall(t *testing.T) {
	cl := newCluster(t, 3)
	c := cl.client()
	g, err := daemon.NewGRPC("127.0.0.1:0", 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	pushv1.RegisterPushServer(g.Server, c.Server())
	go g.Serve()
	defer g.Server.Stop()
	cc, err := grpc.NewClient(g.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	router := pushv1.NewPushClient(cc)
	r := c.Ring()

	for _, u := range users(30) {
		resp, err := router.Publish(ctx(t), &pushv1.PublishRequest{UserId: u, Data: []byte("x"), Forwarded: true})
		if err != nil || resp.EdgeId != r.LookupString(u) {
			t.Fatalf("publish %s through the forwarder: %v %v, want edge %d", u, resp, err, r.LookupString(u))
		}
	}
	uids := users(40)
	multi, err := router.PublishMulti(ctx(t), &pushv1.PublishMultiRequest{UserIds: uids, Data: []byte("y")})
	if err != nil {
		t.Fatal(err)
	}
	for i, res := range multi.Results {
		if want := uint64(1); i >= 30 && res.Seq != want || i < 30 && res.Seq != 2 || res.UserId != uids[i] {
			t.Fatalf("multi result %d: %v", i, res)
		}
	}
	owner := r.LookupString("alice")
	ws := connect(t, cl.edges[owner], "alice")
	waitFor(t, "alice registered", func() bool { return cl.edges[owner].srv.Presence("alice") == 1 })
	p, err := router.Presence(ctx(t), &pushv1.PresenceRequest{UserIds: []string{"alice", "bob"}})
	if err != nil || !p.Users[0].Online || p.Users[0].EdgeId != owner || p.Users[1].Online {
		t.Fatalf("presence: %v %v", p, err)
	}
	b, err := router.Broadcast(ctx(t), &pushv1.BroadcastRequest{Data: []byte(`"all"`), Forwarded: true})
	if err != nil || b.Edges != 3 || b.Connections != 1 {
		t.Fatalf("broadcast: %v %v", b, err)
	}
	if f := readFrame(t, ws); !f.Broadcast {
		t.Fatalf("alice got %+v, want the broadcast", f)
	}
	k, err := router.Kick(ctx(t), &pushv1.KickRequest{UserId: "alice", Reason: "bye"})
	if err != nil || k.Connections != 1 {
		t.Fatalf("kick: %v %v", k, err)
	}
	_, err = router.Publish(ctx(t), &pushv1.PublishRequest{UserId: "bad id", Data: []byte("x")})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("invalid user through the forwarder: %v", err)
	}
	cl.edges[2].g.Server.Stop()
	cx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := router.Broadcast(cx, &pushv1.BroadcastRequest{Data: []byte("z")}); status.Code(err) != codes.Unavailable ||
		!strings.Contains(err.Error(), "edge 2") {
		t.Fatalf("broadcast with edge 2 down through the forwarder: %v", err)
	}
}

func TestNewWaitsForTheFirstDocument(t *testing.T) {
	st, err := store.OpenFile(filepath.Join(t.TempDir(), "ring.json"), quiet())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	cx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := client.New(cx, st, client.WithLogger(quiet())); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("New without a document: %v", err)
	}

	e, stop, err := startEdge(1)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	got := make(chan error, 1)
	go func() {
		c, err := client.New(ctx(t), st, client.WithLogger(quiet()))
		if err == nil {
			if c.Ring().Version() != 1 {
				err = fmt.Errorf("ring version %d", c.Ring().Version())
			}
			c.Close()
		}
		got <- err
	}()
	if err := st.CompareAndSwap(ctx(t), 0, &ring.Document{Version: 1, Members: []ring.Member{e.member()}}, false); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(bound):
		t.Fatal("New did not return after the document was written")
	}
}

func TestClose(t *testing.T) {
	cl := newCluster(t, 2)
	c := cl.client()
	if _, err := c.Publish(ctx(t), "u", []byte("x"), 0); err != nil {
		t.Fatal(err)
	}
	owner := c.Ring().LookupString("u")
	cc := client.PooledConn(c, cl.edges[owner].grpc)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if cc.GetState() != connectivity.Shutdown {
		t.Fatalf("connection %v after Close", cc.GetState())
	}
	if _, err := c.Publish(ctx(t), "u", []byte("x"), 0); !errors.Is(err, client.ErrClosed) {
		t.Fatalf("publish after Close: %v", err)
	}
	if _, err := c.Broadcast(ctx(t), []byte("x")); !errors.Is(err, client.ErrClosed) {
		t.Fatalf("broadcast after Close: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}
