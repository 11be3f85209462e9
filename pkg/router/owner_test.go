package router

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/pushcluster/push/pkg/owner"
	"github.com/pushcluster/push/pkg/ring"
	"github.com/pushcluster/push/pkg/store"
)

// fakeEdge is a ring member that answers like an edge would for the
// router's purposes: it reads the request head the router replays, records
// the user, answers 200 with its id in X-Edge and closes. Its gRPC port
// serves only the health service, whose status the test sets, so the
// router's probe passes or fails at will, independently of the ws port.
type fakeEdge struct {
	id     uint32
	ws     net.Listener
	grpc   string // the health server's address
	health *health.Server

	mu   sync.Mutex
	seen []string // uids received, in order
}

func startFakeEdge(t *testing.T, id uint32) *fakeEdge {
	t.Helper()
	ws, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e := &fakeEdge{id: id, ws: ws, grpc: gl.Addr().String(), health: health.NewServer()}
	gs := grpc.NewServer()
	healthpb.RegisterHealthServer(gs, e.health)
	go gs.Serve(gl)
	t.Cleanup(func() { gs.Stop(); ws.Close() })
	go func() {
		for {
			c, err := ws.Accept()
			if err != nil {
				return
			}
			go e.serve(c)
		}
	}()
	return e
}

func (e *fakeEdge) serve(c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	br := bufio.NewReader(c)
	line, err := br.ReadString('\n')
	if err != nil {
		return
	}
	for {
		h, err := br.ReadString('\n')
		if err != nil {
			return
		}
		if h == "\r\n" {
			break
		}
	}
	var uid string
	if f := strings.Fields(line); len(f) == 3 {
		v, _ := ring.URLParam([]byte(f[1]), "uid")
		uid = string(v)
	}
	e.mu.Lock()
	e.seen = append(e.seen, uid)
	e.mu.Unlock()
	fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nX-Edge: %d\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", e.id)
}

func (e *fakeEdge) received() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.seen)
}

func (e *fakeEdge) member() ring.Member {
	return ring.Member{ID: e.id, Name: "fake-" + strconv.Itoa(int(e.id)), WS: e.ws.Addr().String(), GRPC: e.grpc, Weight: 1}
}

// probeFails makes the router's gRPC health check of e fail (NOT_SERVING)
// or pass.
func (e *fakeEdge) probeFails(fail bool) {
	st := healthpb.HealthCheckResponse_SERVING
	if fail {
		st = healthpb.HealthCheckResponse_NOT_SERVING
	}
	e.health.SetServingStatus("", st)
}

// leasedCluster is a file ring store with lease files, fake edges that each
// hold a lease, a store.Follower and a router following it, as cmd/router
// runs them.
type leasedCluster struct {
	st     *store.File
	f      *store.Follower
	r      *Router
	edges  map[uint32]*fakeEdge
	leases map[uint32]store.Lease
}

func startLeasedCluster(t *testing.T, n int, algo string, cfg Config) *leasedCluster {
	t.Helper()
	st, err := store.OpenFile(filepath.Join(t.TempDir(), "ring.json"), quiet)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	c := &leasedCluster{st: st, edges: map[uint32]*fakeEdge{}, leases: map[uint32]store.Lease{}}
	doc := &ring.Document{Version: 1, Algorithm: algo}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for id := uint32(1); id <= uint32(n); id++ {
		e := startFakeEdge(t, id)
		c.edges[id] = e
		doc.Members = append(doc.Members, e.member())
		l, err := st.Register(ctx, id, 30*time.Second, owner.Live{})
		if err != nil {
			t.Fatal(err)
		}
		c.leases[id] = l
		t.Cleanup(func() { l.Close() })
	}
	if err := st.CompareAndSwap(ctx, 0, doc, false); err != nil {
		t.Fatal(err)
	}
	c.f, err = store.Follow(ctx, st, store.FollowOptions{Poll: 20 * time.Millisecond, Log: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.f.Close) // after the router's Shutdown (cleanups run last first)
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	cfg.Logger, cfg.Metrics = quiet, prometheus.NewRegistry()
	cfg.Check, cfg.CheckInterval, cfg.CheckTimeout = CheckGRPC, 50*time.Millisecond, 50*time.Millisecond
	cfg.Rise, cfg.Fall = 1, 1
	cfg.Loops, cfg.Tick = 2, 20*time.Millisecond
	c.r, err = New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.r.Follow(c.f)
	if err := c.r.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c.r.Shutdown(ctx)
	})
	return c
}

// routeVia sends a request head for uid through the router's plaintext or
// TLS listener and returns the status and the id of the edge that answered
// (0 when the router answered itself).
func routeVia(t *testing.T, r *Router, path, uid string) (int, uint32) {
	t.Helper()
	var (
		c   net.Conn
		err error
	)
	if path == "tls" {
		d := &net.Dialer{Timeout: 10 * time.Second}
		c, err = tls.DialWithDialer(d, "tcp", r.TLSAddr().String(), &tls.Config{InsecureSkipVerify: true})
	} else {
		c, err = net.DialTimeout("tcp", r.Addr().String(), 10*time.Second)
	}
	if err != nil {
		t.Fatalf("%s: dial the router: %v", path, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := fmt.Fprintf(c, "GET /ws?uid=%s HTTP/1.1\r\nHost: x\r\n\r\n", uid); err != nil {
		t.Fatalf("%s: write: %v", path, err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("%s: %s: no answer: %v", path, uid, err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	id, _ := strconv.ParseUint(resp.Header.Get("X-Edge"), 10, 32)
	return resp.StatusCode, uint32(id)
}

// TestOwnershipFollowsTheView runs one table of steps over the plaintext
// and the TLS path (and both ring algorithms): every user goes where the
// ownership view says, never where the health check would have sent it.
//
// Three edges hold leases. Edge 3's probe fails throughout (gRPC health
// NOT_SERVING) while its lease is live; edge 2's probe passes throughout.
func TestOwnershipFollowsTheView(t *testing.T) {
	uids := make([]string, 40)
	for i := range uids {
		uids[i] = fmt.Sprintf("own-%d", i)
	}
	type step struct {
		name string
		act  func(t *testing.T, c *leasedCluster)
		// want is the edge uid must reach in view v (0: a 503).
		want func(v *owner.View, uid string) uint32
		// never are edges that must receive nothing during the step.
		never []uint32
		// check runs after the step's requests.
		check func(t *testing.T, c *leasedCluster)
	}
	ownerOf := func(v *owner.View, uid string) uint32 { id, _ := v.Owner(uid); return id }
	steps := []step{{
		name: "every user on view.Owner, a live member whose probe fails included",
		act: func(t *testing.T, c *leasedCluster) {
			waitFor(t, "edge 3's probe to fail", func() bool { return !c.r.Up(3) && c.r.Up(1) && c.r.Up(2) })
		},
		want: ownerOf,
		check: func(t *testing.T, c *leasedCluster) {
			if len(c.edges[3].received()) == 0 {
				t.Fatal("edge 3 (probe failing, lease live) got no user: the probe decided routing")
			}
			if err := c.r.Ready(); err != nil {
				t.Fatalf("ready: %v", err)
			}
		},
	}, {
		name: "edge 2's lease gone (its probe passes): its users on the new view.Owner",
		act: func(t *testing.T, c *leasedCluster) {
			if err := c.leases[2].Close(); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "the router's view without edge 2", func() bool { return !c.r.View().Live(2) })
			if !c.r.Up(2) {
				t.Fatal("edge 2's probe fails: the step proves nothing")
			}
		},
		want:  ownerOf,
		never: []uint32{2},
	}, {
		name: "edge 1's port closed, its lease live (its probe passes): redispatched to view.OwnerExcept(1), not to edge 2",
		act: func(t *testing.T, c *leasedCluster) {
			c.edges[1].ws.Close()
			if !c.r.Up(1) || !c.r.Up(2) || c.r.Up(3) {
				t.Fatalf("probes: 1 %v 2 %v 3 %v, want up, up, down", c.r.Up(1), c.r.Up(2), c.r.Up(3))
			}
		},
		want: func(v *owner.View, uid string) uint32 {
			id, _ := v.OwnerExcept(uid, func(id uint32) bool { return id == 1 })
			return id // 3: the only live member left; the health check would say 2
		},
		never: []uint32{1, 2},
		check: func(t *testing.T, c *leasedCluster) {
			if n := value(c.r.m.redispatch.WithLabelValues(redisRefused)); n == 0 {
				t.Fatal("no redispatch counted as refused")
			}
		},
	}, {
		name: "edge 3's lease gone too: only edge 1 is live and refuses, a 503",
		act: func(t *testing.T, c *leasedCluster) {
			if err := c.leases[3].Close(); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "the router's view without edge 3", func() bool { return !c.r.View().Live(3) })
		},
		want:  func(*owner.View, string) uint32 { return 0 },
		never: []uint32{1, 2, 3},
		check: func(t *testing.T, c *leasedCluster) {
			if err := c.r.Ready(); err != nil {
				t.Fatalf("ready with edge 1 live: %v", err)
			}
			if err := c.leases[1].Close(); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "not ready without a live member", func() bool { return c.r.Ready() == ErrNoLiveMember })
			if n := value(c.r.m.liveMembers); n != 0 {
				t.Fatalf("live members gauge %v", n)
			}
		},
	}}
	for _, algo := range []string{ring.AlgorithmHAProxy, ring.AlgorithmBounded} {
		for _, path := range []string{"plain", "tls"} {
			t.Run(algo+"/"+path, func(t *testing.T) {
				c := startLeasedCluster(t, 3, algo, Config{TLSListen: "127.0.0.1:0", TLS: selfSignedTLS(t)})
				c.edges[3].probeFails(true)
				for _, s := range steps {
					t.Run(s.name, func(t *testing.T) {
						s.act(t, c)
						before := map[uint32]int{}
						for id, e := range c.edges {
							before[id] = len(e.received())
						}
						v := c.r.View()
						if v.Gen() != c.f.View().Gen() {
							t.Fatalf("the router routes by view %d, the follower has %d", v.Gen(), c.f.View().Gen())
						}
						for _, uid := range uids {
							want := s.want(v, uid)
							status, got := routeVia(t, c.r, path, uid)
							if want == 0 {
								if status != http.StatusServiceUnavailable {
									t.Fatalf("%s: status %d from edge %d, want a 503", uid, status, got)
								}
								continue
							}
							if status != http.StatusOK || got != want {
								t.Fatalf("%s: status %d from edge %d, want edge %d (view %d, live %v)", uid, status, got, want,
									v.Gen(), liveIDs(v))
							}
						}
						for _, id := range s.never {
							if got := c.edges[id].received()[before[id]:]; len(got) > 0 {
								t.Fatalf("edge %d got %v", id, got)
							}
						}
						if s.check != nil {
							s.check(t, c)
						}
					})
				}
				if g := value(c.r.m.viewGen); g != float64(c.r.View().Gen()) || g == 0 {
					t.Fatalf("view generation gauge %v, view %d", g, c.r.View().Gen())
				}
				if rv := value(c.r.m.ringVersion); rv != 1 {
					t.Fatalf("ring version gauge %v", rv)
				}
			})
		}
	}
}

func liveIDs(v *owner.View) []uint32 {
	var ids []uint32
	for _, m := range v.Ring().Members() {
		if v.Live(m.ID) {
			ids = append(ids, m.ID)
		}
	}
	return ids
}
