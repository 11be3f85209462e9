package console_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pushcluster/push/pkg/admin"
	"github.com/pushcluster/push/pkg/console"
	"github.com/pushcluster/push/pkg/edge"
	"github.com/pushcluster/push/pkg/edge/edgetest"
	"github.com/pushcluster/push/pkg/pushctl"
	"github.com/pushcluster/push/pkg/ring"
	"github.com/pushcluster/push/pkg/router"
	"github.com/pushcluster/push/pkg/store"
)

var secret = []byte("console-test-secret-console-test-secret!!")

const token = "console-test-admin-token"

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func ctxT(t *testing.T, d time.Duration) context.Context {
	c, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return c
}

type node struct {
	*edgetest.Edge
	id    uint32
	admin string
}

// cluster is a file ring store, edges 1..3 in the ring, edge 4 running and
// live but not in the ring, a router in front and the console on the
// router's admin port. Every edge has an admin port with its metrics,
// which its lease publishes.
type cluster struct {
	t       *testing.T
	ringURL string
	st      store.Store
	nodes   map[uint32]*node
	rt      *router.Router
	api     string // http://router-admin
}

func startEdge(t *testing.T, id uint32) *node {
	reg := admin.NewRegistry()
	adm, err := admin.New(admin.Config{Addr: "127.0.0.1:0", Registry: reg, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	go adm.Serve()
	t.Cleanup(func() { adm.Shutdown(context.Background()) })
	e := edgetest.Start(t, secret, edge.Config{ID: id, MigrateRate: 2000, Metrics: reg, AdminAddr: adm.Addr().String()})
	return &node{Edge: e, id: id, admin: adm.Addr().String()}
}

func newCluster(t *testing.T, tokenValue string) *cluster {
	path := filepath.Join(t.TempDir(), "ring.json")
	st, err := store.Open("file:"+path, quiet())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	c := &cluster{t: t, ringURL: "file:" + path, st: st, nodes: map[uint32]*node{}}
	doc := &ring.Document{Version: 1, Algorithm: ring.AlgorithmBounded}
	for id := uint32(1); id <= 4; id++ {
		n := startEdge(t, id)
		c.nodes[id] = n
		if id <= 3 {
			doc.Members = append(doc.Members, n.Member(id, 1))
		}
	}
	if err := st.CompareAndSwap(ctxT(t, 10*time.Second), 0, doc, false); err != nil {
		t.Fatal(err)
	}
	for id := uint32(1); id <= 4; id++ {
		n := c.nodes[id]
		r, err := edge.DesiredRing(ctxT(t, 10*time.Second), st)
		if err != nil {
			t.Fatal(err)
		}
		n.Srv.SetRing(r)
		// A long lease: a starved test machine must not expire it (that
		// would move users this test does not expect to move).
		mem, err := edge.Join(n.Srv, st, 30*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(mem.Close) // before the edge's own Stop (cleanups run last first)
	}
	rt, err := router.New(router.Config{Listen: "127.0.0.1:0", Check: router.CheckNone, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	f, err := store.Follow(ctxT(t, 10*time.Second), st, store.FollowOptions{Log: quiet(), Grace: 60 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Close)
	rt.Follow(f)
	if err := rt.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		rt.Shutdown(ctx)
	})
	c.rt = rt
	cons, err := console.New(console.Config{Follower: f, Token: tokenValue, Sessions: rt.Sessions, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	adm, err := admin.New(admin.Config{Addr: "127.0.0.1:0", Ready: rt.Ready, Logger: quiet(), Open: cons.Routes()})
	if err != nil {
		t.Fatal(err)
	}
	go adm.Serve()
	t.Cleanup(func() { adm.Shutdown(context.Background()) })
	c.api = "http://" + adm.Addr().String()
	return c
}

// get decodes GET path into v.
func (c *cluster) get(path string, v any) {
	c.t.Helper()
	resp, err := http.Get(c.api + path)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		c.t.Fatalf("GET %s: %s %s", path, resp.Status, b)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		c.t.Fatalf("GET %s: %v", path, err)
	}
}

// post sends body as JSON (with the headers given, "Authorization" and
// "Origin" among them) and returns the status and the decoded answer.
func (c *cluster) post(path string, body any, header map[string]string) (int, map[string]any) {
	c.t.Helper()
	b, _ := json.Marshal(body)
	req, _ := http.NewRequest(http.MethodPost, c.api+path, bytes.NewReader(b))
	req.Header.Set("Content-Type", "application/json")
	for k, v := range header {
		if k == "Host" {
			req.Host = v
			continue
		}
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	raw, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(raw, &out); err != nil {
		c.t.Fatalf("POST %s: %s: not JSON: %q", path, resp.Status, raw)
	}
	return resp.StatusCode, out
}

func bearer() map[string]string { return map[string]string{"Authorization": "Bearer " + token} }

// addChange is the change that adds edge 4 to the ring.
func (c *cluster) addChange() pushctl.Change {
	m := c.nodes[4].Member(4, 1)
	return pushctl.Change{Op: pushctl.OpAdd, Member: &m}
}

// simulate runs "pushctl ring simulate" on the cluster's store.
func (c *cluster) simulate(args ...string) string {
	c.t.Helper()
	var out, errOut bytes.Buffer
	app := &pushctl.App{Stdout: &out, Stderr: &errOut, Env: func(string) (string, bool) { return "", false }}
	if code := app.Main(append([]string{"ring", "simulate", "--ring", c.ringURL}, args...)); code != 0 {
		c.t.Fatalf("pushctl ring simulate %q: exit %d: %s", args, code, errOut.String())
	}
	return out.String()
}

func TestClusterReportsRingLeasesAndEdges(t *testing.T) {
	c := newCluster(t, token)
	var got struct {
		Version  uint64 `json:"version"`
		Liveness bool   `json:"liveness"`
		Members  []struct {
			ID    uint32  `json:"id"`
			Name  string  `json:"name"`
			State string  `json:"state"`
			Share float64 `json:"share"`
			Live  bool    `json:"live"`
			Lease *struct {
				State string `json:"state"`
				Admin string `json:"admin"`
			} `json:"lease"`
		} `json:"members"`
		Unlisted []struct {
			ID uint32 `json:"id"`
		} `json:"unlisted"`
		TokenRequired bool `json:"token_required"`
	}
	c.get("/api/v1/cluster", &got)
	d, err := c.st.Load(ctxT(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	r, _ := ring.New(d)
	shares := r.Shares()
	if got.Version != d.Version || !got.Liveness || !got.TokenRequired || len(got.Members) != 3 {
		t.Fatalf("cluster %+v", got)
	}
	for _, m := range got.Members {
		if m.Share != shares[m.ID] || !m.Live || m.Lease == nil || m.Lease.State != "active" || m.Lease.Admin != c.nodes[m.ID].admin {
			t.Fatalf("member %d: %+v (lease %+v), want share %v and a lease naming %s", m.ID, m, m.Lease, shares[m.ID], c.nodes[m.ID].admin)
		}
	}
	if len(got.Unlisted) != 1 || got.Unlisted[0].ID != 4 {
		t.Fatalf("unlisted %+v, want edge 4", got.Unlisted)
	}

	// The page itself: embedded, under a policy that runs no inline code.
	for path, want := range map[string]string{"/console/": "<title>push console</title>", "/console/console.js": "api/v1/", "/console/console.css": ".card"} {
		resp, err := http.Get(c.api + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), want) || !strings.Contains(resp.Header.Get("Content-Security-Policy"), "default-src 'self'") {
			t.Fatalf("GET %s: %s, CSP %q, body has %q: %v", path, resp.Status, resp.Header.Get("Content-Security-Policy"), want, strings.Contains(string(b), want))
		}
	}
	resp, err := http.Get(c.api + "/console")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.Request.URL.Path != "/console/" || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /console: %s at %s", resp.Status, resp.Request.URL)
	}

	// Users connected through the router are counted on their edges.
	users := connect(t, c, 12)
	waitFor(t, "12 connections in /api/v1/edges", func() (bool, string) {
		var e struct {
			Edges []struct {
				ID          uint32 `json:"id"`
				Connections int64  `json:"connections"`
				Error       string `json:"error"`
			} `json:"edges"`
			Totals struct {
				Connections int64 `json:"connections"`
			} `json:"totals"`
		}
		c.get("/api/v1/edges", &e)
		for _, x := range e.Edges {
			if x.Error != "" {
				return false, x.Error
			}
			if want := c.nodes[x.ID].Srv.Open(); x.Connections != want {
				return false, fmt.Sprintf("edge %d reports %d, holds %d", x.ID, x.Connections, want)
			}
		}
		return e.Totals.Connections == 12 && len(e.Edges) == 4, fmt.Sprintf("%+v", e)
	})
	users.stop()
}

func TestPreviewEqualsPushctlSimulate(t *testing.T) {
	c := newCluster(t, token)
	m := c.nodes[4].Member(4, 1)
	cases := []struct {
		name   string
		change pushctl.Change
		args   []string
	}{
		{"add", c.addChange(), []string{"--add", fmt.Sprintf("id=4,name=%s,ws=%s,grpc=%s", m.Name, m.WS, m.GRPC)}},
		{"drain", pushctl.Change{Op: pushctl.OpDrain, ID: 2}, []string{"--drain", "2"}},
		{"weight", pushctl.Change{Op: pushctl.OpWeight, ID: 1, Weight: 3}, []string{"--weight", "1=3"}},
		{"remove", pushctl.Change{Op: pushctl.OpRemove, ID: 3}, []string{"--remove", "3"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, p := c.post("/api/v1/ring/preview", map[string]any{"changes": []pushctl.Change{tc.change}}, nil)
			if code != http.StatusOK {
				t.Fatalf("preview: %d %v", code, p)
			}
			want := c.simulate(tc.args...)
			if p["text"] != want {
				t.Fatalf("preview text:\n%s\npushctl ring simulate:\n%s", p["text"], want)
			}
			// The numbers themselves, formatted as pushctl does, are the
			// ones it printed.
			keys, moved := int(p["keys"].(float64)), int(p["moved"].(float64))
			line := fmt.Sprintf("moved      %.2f%% (%d of %d keys uid-0..uid-%d)", 100*p["moved_fraction"].(float64), moved, keys, keys-1)
			if keys != pushctl.DefaultSimulateKeys || !strings.Contains(want, line+"\n") {
				t.Fatalf("%q not in pushctl's output:\n%s", line, want)
			}
			if !strings.Contains(want, fmt.Sprintf("ideal      %.2f%%\n", 100*p["ideal_fraction"].(float64))) {
				t.Fatalf("ideal %v not in pushctl's output:\n%s", p["ideal_fraction"], want)
			}
			for _, row := range p["members"].([]any) {
				r := row.(map[string]any)
				fields := []string{fmt.Sprint(r["id"]), r["name"].(string), r["state"].(string), fmt.Sprint(r["weight"]),
					fmt.Sprintf("%.2f%%", 100*r["before"].(float64)), fmt.Sprintf("%.2f%%", 100*r["after"].(float64))}
				if !containsRow(want, fields) {
					t.Fatalf("row %v not in pushctl's output:\n%s", fields, want)
				}
			}
			// Removing an active member is what "ring remove" refuses:
			// the preview says so.
			if refused, _ := p["refused"].(string); (tc.name == "remove") != (refused != "") {
				t.Fatalf("refused %q", refused)
			}
		})
	}
	// A change the ring refuses outright (an unknown member) is 422.
	if code, p := c.post("/api/v1/ring/preview", map[string]any{"changes": []pushctl.Change{{Op: pushctl.OpDrain, ID: 9}}}, nil); code != http.StatusUnprocessableEntity {
		t.Fatalf("unknown member: %d %v", code, p)
	}
	if code, p := c.post("/api/v1/ring/preview", map[string]any{"changes": []map[string]any{{"op": "explode", "id": 1}}}, nil); code != http.StatusBadRequest {
		t.Fatalf("unknown op: %d %v", code, p)
	}
}

// containsRow reports whether text has a line whose first fields are want.
func containsRow(text string, want []string) bool {
	for line := range strings.Lines(text) {
		f := strings.Fields(line)
		if len(f) >= len(want) && strings.Join(f[:len(want)], " ") == strings.Join(want, " ") {
			return true
		}
	}
	return false
}

func TestApplyIsProtectedAndCompareAndSwapped(t *testing.T) {
	c := newCluster(t, token)
	change := []pushctl.Change{{Op: pushctl.OpWeight, ID: 1, Weight: 2}}
	body := map[string]any{"version": 1, "changes": change}
	for _, tc := range []struct {
		name   string
		header map[string]string
		want   int
	}{
		{"no token", nil, http.StatusUnauthorized},
		{"wrong token", map[string]string{"Authorization": "Bearer nope"}, http.StatusForbidden},
		{"not bearer", map[string]string{"Authorization": "Basic " + token}, http.StatusUnauthorized},
		{"cross-origin", map[string]string{"Authorization": "Bearer " + token, "Origin": "http://evil.example"}, http.StatusForbidden},
	} {
		if code, out := c.post("/api/v1/ring/apply", body, tc.header); code != tc.want {
			t.Fatalf("%s: %d %v, want %d", tc.name, code, out, tc.want)
		}
	}
	// Not JSON: a cross-site form cannot post it.
	resp, err := http.Post(c.api+"/api/v1/ring/apply", "application/x-www-form-urlencoded", strings.NewReader("version=1"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized && resp.StatusCode != http.StatusUnsupportedMediaType {
		t.Fatalf("form post: %s", resp.Status)
	}
	if d, _ := c.st.Load(ctxT(t, 5*time.Second)); d.Version != 1 {
		t.Fatalf("refused requests wrote version %d", d.Version)
	}

	// Somebody else changes the ring between the preview and the apply:
	// the apply made for version 1 is a conflict and writes nothing.
	var out bytes.Buffer
	app := &pushctl.App{Stdout: &out, Stderr: &out, Env: func(string) (string, bool) { return "", false }}
	if code := app.Main([]string{"ring", "weight", "--ring", c.ringURL, "3", "2"}); code != 0 {
		t.Fatalf("pushctl ring weight: %d %s", code, out.String())
	}
	code, res := c.post("/api/v1/ring/apply", body, bearer())
	if code != http.StatusConflict || res["version"] != float64(2) {
		t.Fatalf("stale version: %d %v, want 409 naming version 2", code, res)
	}
	if d, _ := c.st.Load(ctxT(t, 5*time.Second)); d.Version != 2 || d.Members[0].Weight != 1 {
		t.Fatalf("after the conflict: version %d, member 1 weight %d", d.Version, d.Members[0].Weight)
	}
	// Refused by the rules "ring drain|remove" follow: 422, nothing written.
	for _, ch := range []pushctl.Change{{Op: pushctl.OpRemove, ID: 2}, {Op: pushctl.OpWeight, ID: 3, Weight: 2}} {
		if code, res := c.post("/api/v1/ring/apply", map[string]any{"version": 2, "changes": []pushctl.Change{ch}}, bearer()); code != http.StatusUnprocessableEntity {
			t.Fatalf("%+v: %d %v, want 422", ch, code, res)
		}
	}
	// With the right version and token it is written.
	code, res = c.post("/api/v1/ring/apply", map[string]any{"version": 2, "changes": change}, bearer())
	if code != http.StatusOK || res["applied"] != true || res["next_version"] != float64(3) {
		t.Fatalf("apply: %d %v", code, res)
	}
	if d, _ := c.st.Load(ctxT(t, 5*time.Second)); d.Version != 3 || d.Members[0].Weight != 2 {
		t.Fatalf("after apply: version %d, member 1 weight %d", d.Version, d.Members[0].Weight)
	}
}

func TestApplyWithoutTokenOnlyFromLoopback(t *testing.T) {
	c := newCluster(t, "")
	// The test's client is on loopback: allowed without a token.
	code, res := c.post("/api/v1/ring/apply", map[string]any{"version": 1, "changes": []pushctl.Change{{Op: pushctl.OpDrain, ID: 3}}}, nil)
	if code != http.StatusOK {
		t.Fatalf("loopback apply without a token: %d %v", code, res)
	}
	// A page that rebinds its DNS name to 127.0.0.1 (same origin for the
	// browser) is refused without a token.
	code, res = c.post("/api/v1/ring/apply", map[string]any{"version": 2, "changes": []pushctl.Change{{Op: pushctl.OpDrain, ID: 2}}},
		map[string]string{"Host": "rebind.example:80", "Origin": "http://rebind.example:80"})
	if code != http.StatusForbidden {
		t.Fatalf("DNS-rebound apply without a token: %d %v", code, res)
	}
	// The admin listener cannot be reached from another address here, so
	// the rule is checked through the handler with a remote address set.
	f, err := store.Follow(ctxT(t, 10*time.Second), c.st, store.FollowOptions{Log: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cons, err := console.New(console.Config{Follower: f, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest(http.MethodPost, "/api/v1/ring/apply", strings.NewReader(`{"version":2,"changes":[{"op":"drain","id":2}]}`))
	req.Header.Set("Content-Type", "application/json")
	req.RemoteAddr = "10.1.2.3:40000"
	w := &recorder{header: http.Header{}}
	cons.Routes()["POST /api/v1/ring/apply"].ServeHTTP(w, req)
	if w.code != http.StatusForbidden {
		t.Fatalf("remote apply without a token: %d %s", w.code, w.body.String())
	}
}

type recorder struct {
	header http.Header
	code   int
	body   bytes.Buffer
}

func (r *recorder) Header() http.Header         { return r.header }
func (r *recorder) Write(b []byte) (int, error) { return r.body.Write(b) }
func (r *recorder) WriteHeader(code int)        { r.code = code }

func TestApplyAddMovesUsersToTheNewEdge(t *testing.T) {
	c := newCluster(t, token)
	users := connect(t, c, 40)
	defer users.stop()

	code, p := c.post("/api/v1/ring/preview", map[string]any{"changes": []pushctl.Change{c.addChange()}}, nil)
	if code != http.StatusOK {
		t.Fatalf("preview: %d %v", code, p)
	}
	// Which users the new ring gives to edge 4.
	next, _ := json.Marshal(p["next"])
	nd, err := ring.Parse(next)
	if err != nil {
		t.Fatal(err)
	}
	nr, _ := ring.New(nd)
	var moving []*edgetest.User
	for _, u := range users.all {
		if nr.LookupString(u.UID) == 4 {
			moving = append(moving, u)
		}
	}
	if len(moving) == 0 {
		t.Fatal("no user of 40 moves to edge 4: pick other user ids")
	}
	waitFor(t, "the leases to report 40 users", func() (bool, string) {
		_, p = c.post("/api/v1/ring/preview", map[string]any{"changes": []pushctl.Change{c.addChange()}}, nil)
		return p["users_connected"] == float64(40), fmt.Sprint(p["users_connected"])
	})
	if est := p["users_moving"].(float64); est < 1 || est > 40 {
		t.Fatalf("users_moving estimate %v", est)
	}

	code, res := c.post("/api/v1/ring/apply", map[string]any{"version": p["version"], "changes": []pushctl.Change{c.addChange()}}, bearer())
	if code != http.StatusOK {
		t.Fatalf("apply: %d %v", code, res)
	}
	// Each user the ring gave to edge 4 was closed with 4003 and is now
	// connected to edge 4; nobody else moved.
	waitFor(t, "the moved users on edge 4", func() (bool, string) {
		var missing []string
		for _, u := range moving {
			if c.nodes[4].Srv.Presence(u.UID) != 1 || u.Moved() == 0 {
				missing = append(missing, fmt.Sprintf("%s(presence %d, 4003s %d)", u.UID, c.nodes[4].Srv.Presence(u.UID), u.Moved()))
			}
		}
		return len(missing) == 0, strings.Join(missing, " ")
	})
	// Bounded loads may also hand a few users from one old member to
	// another (they move too); nobody whose owner stayed moves.
	d, err := c.st.Load(ctxT(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	d.Version, d.Members = 1, d.Members[:3]
	pr, err := ring.New(d)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "every user whose owner changed moved", func() (bool, string) {
		for _, u := range users.all {
			if changed := pr.LookupString(u.UID) != nr.LookupString(u.UID); changed != (u.Moved() > 0) {
				return false, fmt.Sprintf("%s: owner %d -> %d, %d 4003 closes", u.UID, pr.LookupString(u.UID), nr.LookupString(u.UID), u.Moved())
			}
		}
		return true, ""
	})
	// The console shows them there: edge 4 is in the ring and holds them.
	waitFor(t, "edge 4 in the ring with its users", func() (bool, string) {
		var e struct {
			Edges []struct {
				ID          uint32 `json:"id"`
				InRing      bool   `json:"in_ring"`
				Connections int64  `json:"connections"`
				MovedTotal  int64  `json:"moved_total"`
			} `json:"edges"`
		}
		c.get("/api/v1/edges", &e)
		moved := int64(0)
		var four int64 = -1
		for _, x := range e.Edges {
			moved += x.MovedTotal
			if x.ID == 4 && x.InRing {
				four = x.Connections
			}
		}
		return four == int64(len(moving)) && moved >= int64(len(moving)), fmt.Sprintf("%+v", e.Edges)
	})
}

// user is a WebSocket client through the router that reconnects after
// every close, as the browser client does.

type users struct {
	all    []*edgetest.User
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func (us *users) stop() {
	us.cancel()
	us.wg.Wait()
}

// connect starts n users through the router and waits until all are
// connected to an edge.
func connect(t *testing.T, c *cluster, n int) *users {
	ctx, cancel := context.WithCancel(context.Background())
	us := &users{cancel: cancel}
	t.Cleanup(us.stop)
	for i := range n {
		u := &edgetest.User{UID: fmt.Sprintf("console-user-%d", i)}
		us.all = append(us.all, u)
		us.wg.Go(func() { u.Run(ctx, c.rt.Addr().String(), secret) })
	}
	waitFor(t, fmt.Sprintf("%d users connected", n), func() (bool, string) {
		total := int64(0)
		for _, nd := range c.nodes {
			total += nd.Srv.Open()
		}
		return total == int64(n), fmt.Sprint(total)
	})
	return us
}

// waitFor polls cond every 50 ms for up to 60 s (a busy machine is slow,
// never wrong) and fails with cond's last detail.
func waitFor(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		ok, detail := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s: %s", what, detail)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
