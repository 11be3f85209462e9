// Package cluster_test runs a whole cluster in one process — a ring store,
// edges that follow it, a router in front and the SDK behind — and resizes
// it while users are connected and messages flow.
package cluster_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/pushcluster/push/pkg/auth"
	"github.com/pushcluster/push/pkg/client"
	"github.com/pushcluster/push/pkg/edge"
	"github.com/pushcluster/push/pkg/edge/edgetest"
	"github.com/pushcluster/push/pkg/ring"
	"github.com/pushcluster/push/pkg/router"
	"github.com/pushcluster/push/pkg/store"
	"github.com/pushcluster/push/pkg/store/etcdtest"
)

var secret = []byte("cluster-test-secret-cluster-test-secret!!")

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

type node struct {
	*edgetest.Edge
	id   uint32
	srv  *edge.Server
	stop context.CancelFunc
}

type cluster struct {
	t     *testing.T
	st    store.Store
	nodes map[uint32]*node
	rt    *router.Router
	sdk   *client.Client
	mu    sync.Mutex
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	c, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return c
}

// startEdge runs an edge in this process; it joins no ring by itself.
func (c *cluster) startEdge(id uint32) *node {
	e := edgetest.Start(c.t, secret, edge.Config{ID: id, MigrateRate: 2000})
	n := &node{Edge: e, id: id, srv: e.Srv}
	c.mu.Lock()
	c.nodes[id] = n
	c.mu.Unlock()
	c.t.Cleanup(func() { c.stopEdge(id) })
	return n
}

// follow connects a started edge to the store (the ring must exist), as
// cmd/edge does: the SDK it forwards with, the ring, and edge.Join (which
// with etcd also registers its lease).
func (c *cluster) follow(n *node) {
	r, err := edge.DesiredRing(ctxT(c.t, 10*time.Second), c.st)
	if err != nil {
		c.t.Fatal(err)
	}
	n.srv.SetRing(r)
	// A lease long enough that a starved test machine does not expire it:
	// a lost lease moves every user of the edge, which this test would
	// count as unpredicted moves (TestKilledEdgeLeavesTheRing covers that).
	mem, err := edge.Join(n.srv, c.st, 15*time.Second)
	if err != nil {
		c.t.Fatal(err)
	}
	n.stop = mem.Close
}

func (c *cluster) stopEdge(id uint32) {
	c.mu.Lock()
	n := c.nodes[id]
	delete(c.nodes, id)
	c.mu.Unlock()
	if n == nil {
		return
	}
	if n.stop != nil {
		n.stop()
	}
	n.Stop()
}

func (c *cluster) member(n *node, weight int) ring.Member { return n.Member(n.id, weight) }

// change applies mutate to the stored document as one compare-and-swap.
func (c *cluster) change(mutate func(d *ring.Document)) (before, after *ring.Document) {
	ctx := ctxT(c.t, 10*time.Second)
	cur, err := c.st.Load(ctx)
	if err != nil {
		c.t.Fatal(err)
	}
	next := *cur
	next.Members = append([]ring.Member(nil), cur.Members...)
	mutate(&next)
	next.Version = cur.Version + 1
	if err := c.st.CompareAndSwap(ctx, cur.Version, &next, false); err != nil {
		c.t.Fatal(err)
	}
	return cur, &next
}

// newCluster starts edges 1..edges, a ring of them in the store at url
// ("" for a file store in a temp dir), the SDK and a router.
func newCluster(t *testing.T, url string, edges int) *cluster {
	if url == "" {
		url = "file:" + filepath.Join(t.TempDir(), "ring.json")
	}
	st, err := store.Open(url, quiet())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	c := &cluster{t: t, st: st, nodes: map[uint32]*node{}}
	doc := &ring.Document{Version: 1, Algorithm: ring.AlgorithmBounded}
	var started []*node
	for id := uint32(1); id <= uint32(edges); id++ {
		n := c.startEdge(id)
		started = append(started, n)
		doc.Members = append(doc.Members, c.member(n, 1))
	}
	if err := st.CompareAndSwap(ctxT(t, 10*time.Second), 0, doc, false); err != nil {
		t.Fatal(err)
	}
	for _, n := range started {
		c.follow(n)
	}
	c.sdk, err = client.New(ctxT(t, 10*time.Second), st, client.WithLogger(quiet()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.sdk.Close() })
	rt, err := router.New(router.Config{Listen: "127.0.0.1:0", Check: router.CheckGRPC,
		CheckInterval: 200 * time.Millisecond, CheckTimeout: 5 * time.Second, Rise: 1, Fall: 3, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	f, err := store.Follow(context.Background(), st, store.FollowOptions{Log: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Close) // after the router's Shutdown (cleanups run last first)
	rt.Follow(f)
	waitFor(t, "router ring", func() bool { return rt.Ring() != nil })
	if err := rt.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		rt.Shutdown(ctx)
	})
	c.rt = rt
	return c
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(120 * time.Second) // generous: CI machines are slow under -race
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// user is a client that behaves like the browser library: it reconnects
// through the router with last_seq after 4003 "moved", 1001 or a dropped
// connection, and dedupes by seq.
type user struct {
	uid string

	mu     sync.Mutex
	last   uint64
	got    []int // the "n" of every message, in arrival order
	gaps   int
	moved  int // 4003 closes seen
	fatal  string
	online bool
}

type frame struct {
	Seq  uint64          `json:"seq"`
	Gap  bool            `json:"gap"`
	Data json.RawMessage `json:"data"`
}

func (u *user) run(ctx context.Context, addr string) {
	tok, _ := auth.Mint(secret, u.uid, time.Hour, time.Now())
	for ctx.Err() == nil {
		u.mu.Lock()
		url := fmt.Sprintf("ws://%s/ws?uid=%s&token=%s", addr, u.uid, tok)
		if u.last > 0 {
			url += fmt.Sprintf("&last_seq=%d", u.last)
		}
		u.mu.Unlock()
		dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		c, _, err := websocket.Dial(dctx, url, nil)
		cancel()
		if err != nil {
			time.Sleep(time.Duration(10+rand.IntN(40)) * time.Millisecond)
			continue
		}
		u.mu.Lock()
		u.online = true
		u.mu.Unlock()
		for {
			_, b, err := c.Read(ctx)
			if err != nil {
				code := websocket.CloseStatus(err)
				u.mu.Lock()
				u.online = false
				switch code {
				case edge.CloseMoved:
					u.moved++
				case edge.CloseReplaced, edge.CloseKicked:
					u.fatal = fmt.Sprintf("closed with %d", code)
				}
				u.mu.Unlock()
				c.CloseNow()
				break
			}
			var f frame
			if json.Unmarshal(b, &f) != nil {
				continue
			}
			var d struct{ N int }
			json.Unmarshal(f.Data, &d)
			u.mu.Lock()
			switch {
			case f.Gap:
				u.gaps++
			case f.Seq > u.last:
				u.last = f.Seq
				u.got = append(u.got, d.N)
			}
			u.mu.Unlock()
		}
		time.Sleep(time.Duration(rand.IntN(20)) * time.Millisecond) // jitter, as the browser client does
	}
}

func (u *user) snapshot() (moved int, online bool, got []int, gaps int, fatal string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.moved, u.online, append([]int(nil), u.got...), u.gaps, u.fatal
}

// owners returns each user's owner on d.
func owners(t *testing.T, d *ring.Document, users []*user) map[string]uint32 {
	r, err := ring.New(d)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]uint32{}
	for _, u := range users {
		out[u.uid] = r.LookupString(u.uid)
	}
	return out
}

// settled reports whether every user is connected to the owner d names.
func (c *cluster) settled(d *ring.Document, users []*user) bool {
	own := owners(c.t, d, users)
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, u := range users {
		n := c.nodes[own[u.uid]]
		if n == nil || n.srv.Presence(u.uid) != 1 {
			return false
		}
	}
	return true
}

// TestZeroLossResize: users connected through the router keep receiving
// a steady, sequenced stream from the SDK while the ring grows, drains a
// member, drops it and changes a weight. Every message must arrive exactly
// once and in order, and the users that move must be the ones the ring
// change predicts.
func TestZeroLossResize(t *testing.T) {
	t.Run("file", func(t *testing.T) { zeroLossResize(t, "") })
	t.Run("etcd", func(t *testing.T) { zeroLossResize(t, etcdtest.Start(t).URL("/push")) })
}

func zeroLossResize(t *testing.T, storeURL string) {
	users := 2000
	if testing.Short() {
		users = 300
	}
	if v := os.Getenv("RESIZE_USERS"); v != "" {
		fmt.Sscan(v, &users)
	}
	c := newCluster(t, storeURL, 3)
	us := make([]*user, users)
	ctx, stopUsers := context.WithCancel(context.Background())
	defer stopUsers()
	for i := range us {
		us[i] = &user{uid: fmt.Sprintf("user-%d", i)}
		go us[i].run(ctx, c.rt.Addr().String())
	}
	doc, _ := c.st.Load(ctxT(t, 5*time.Second))
	waitFor(t, "every user connected to its owner", func() bool { return c.settled(doc, us) })

	// A steady publisher: each user's messages are numbered 1, 2, 3...
	sent := make([]atomic.Int64, users)
	var pubErrs atomic.Int64
	pubCtx, stopPub := context.WithCancel(context.Background())
	var pubWG sync.WaitGroup
	const workers = 16
	for w := 0; w < workers; w++ {
		pubWG.Add(1)
		go func(w int) {
			defer pubWG.Done()
			tick := time.NewTicker(5 * time.Millisecond) // up to ~3,200 messages/s in all
			defer tick.Stop()
			for i := w; pubCtx.Err() == nil; i = (i + workers) % users {
				<-tick.C
				n := sent[i].Load() + 1
				// A call that failed may have been applied (its answer
				// was lost or came after the deadline): the next call for
				// the same message carries the same idempotency key, as a
				// backend retrying after the SDK gave up must, so it is
				// not applied twice.
				pctx, cancel := context.WithTimeout(client.WithIdempotencyKey(context.Background(), fmt.Sprintf("%s/%d", us[i].uid, n)), 10*time.Second)
				_, err := c.sdk.Publish(pctx, us[i].uid, []byte(fmt.Sprintf(`{"n":%d}`, n)), 0)
				cancel()
				if err != nil {
					pubErrs.Add(1)
					t.Errorf("publish to %s: %v", us[i].uid, err)
					continue
				}
				sent[i].Store(n)
			}
		}(w)
	}

	movedSoFar := func() int {
		total := 0
		for _, u := range us {
			m, _, _, _, _ := u.snapshot()
			total += m
		}
		return total
	}
	// step applies one ring change and checks that the users who moved are
	// the ones whose owner changed.
	step := func(name string, mutate func(d *ring.Document)) {
		t.Helper()
		before := map[string]int{}
		for _, u := range us {
			m, _, _, _, _ := u.snapshot()
			before[u.uid] = m
		}
		prev, next := c.change(mutate)
		a, b := owners(t, prev, us), owners(t, next, us)
		predicted := 0
		for _, u := range us {
			if a[u.uid] != b[u.uid] {
				predicted++
			}
		}
		waitFor(t, name+": users on their new owners", func() bool { return c.settled(next, us) })
		observed := 0
		for _, u := range us {
			if m, _, _, _, _ := u.snapshot(); m > before[u.uid] {
				observed++
			}
		}
		diff := observed - predicted
		if diff < 0 {
			diff = -diff
		}
		t.Logf("%s: %d of %d users moved, ring simulation predicted %d", name, observed, users, predicted)
		if float64(diff) > 0.01*float64(users) {
			t.Errorf("%s: %d users moved, the ring predicts %d (more than 1%% apart)", name, observed, predicted)
		}
		time.Sleep(700 * time.Millisecond) // traffic in the new state before the next change
	}

	time.Sleep(500 * time.Millisecond) // some traffic before the first change
	e4 := c.startEdge(4)
	c.follow(e4) // live (etcd) but owning nobody until the ring names it
	step("add edge 4", func(d *ring.Document) { d.Members = append(d.Members, c.member(e4, 1)) })
	step("drain edge 2", func(d *ring.Document) {
		for i := range d.Members {
			if d.Members[i].ID == 2 {
				d.Members[i].State = ring.StateDraining
			}
		}
	})
	if n := c.nodes[2].srv.Open(); n != 0 {
		t.Errorf("drained edge 2 still holds %d connections", n)
	}
	step("remove edge 2", func(d *ring.Document) {
		for i := range d.Members {
			if d.Members[i].ID == 2 {
				d.Members = append(d.Members[:i], d.Members[i+1:]...)
				break
			}
		}
	})
	c.stopEdge(2)
	step("weight of edge 1 to 2", func(d *ring.Document) {
		for i := range d.Members {
			if d.Members[i].ID == 1 {
				d.Members[i].Weight = 2
			}
		}
	})
	time.Sleep(500 * time.Millisecond)
	stopPub()
	pubWG.Wait()

	// Every message published reaches its user once, in order. The checks
	// below say who misses what if some never arrive.
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		all := true
		for i, u := range us {
			if _, _, got, _, _ := u.snapshot(); int64(len(got)) < sent[i].Load() {
				all = false
				break
			}
		}
		if all {
			break
		}
	}
	lost, dup, gaps, total := 0, 0, 0, int64(0)
	for i, u := range us {
		_, _, got, g, fatal := u.snapshot()
		if fatal != "" {
			t.Errorf("%s: %s", u.uid, fatal)
		}
		gaps += g
		total += sent[i].Load()
		for k, n := range got {
			if n != k+1 {
				if n <= k {
					dup++
				} else {
					lost++
				}
				t.Errorf("%s: message %d is n=%d (received %v)", u.uid, k+1, n, got)
				break
			}
		}
		if int64(len(got)) != sent[i].Load() {
			t.Errorf("%s: received %d messages, %d published", u.uid, len(got), sent[i].Load())
		}
	}
	t.Logf("published %d messages to %d users across 4 ring changes; %d users moved in all; lost %d, duplicated %d, gaps %d, publish errors %d",
		total, users, movedSoFar(), lost, dup, gaps, pubErrs.Load())
	if gaps != 0 {
		t.Errorf("%d gaps reported", gaps)
	}
}
