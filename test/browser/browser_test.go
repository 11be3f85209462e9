// Package browser_test runs the JavaScript client in a real headless
// Chromium against a whole cluster in this process: a file ring store, three
// edges following it, a router in front, the Go SDK behind, and the demo
// server (pkg/demo) serving the page. web/test-browser/run.mjs drives the
// browser with playwright-core and reports one line per scenario; this test
// provides the cluster and a small control endpoint (presence per edge,
// draining the edge a user is on) and turns those lines into subtests.
//
// Prerequisites come from scripts/browser-deps.sh (Debian's chromium,
// playwright-core in web/node_modules). Without them the test is skipped,
// except with CI=true, where it fails.
package browser_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pushcluster/push/pkg/client"
	"github.com/pushcluster/push/pkg/daemon"
	"github.com/pushcluster/push/pkg/demo"
	"github.com/pushcluster/push/pkg/edge"
	"github.com/pushcluster/push/pkg/edge/edgetest"
	"github.com/pushcluster/push/pkg/ring"
	"github.com/pushcluster/push/pkg/router"
	"github.com/pushcluster/push/pkg/store"
)

const chromiumPath = "/usr/bin/chromium"

var secret = []byte("browser-test-secret-browser-test-secret!!")

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// repoRoot is two levels above this file's directory.
func repoRoot(t *testing.T) string {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("no caller")
	}
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// prerequisites skips (or, in CI, fails) when the browser, node or
// playwright-core is missing.
func prerequisites(t *testing.T, root string) string {
	var missing []string
	if _, err := os.Stat(chromiumPath); err != nil {
		missing = append(missing, chromiumPath)
	}
	node, err := exec.LookPath("node")
	if err != nil {
		missing = append(missing, "node")
	}
	if _, err := os.Stat(filepath.Join(root, "web", "node_modules", "playwright-core", "package.json")); err != nil {
		missing = append(missing, "web/node_modules/playwright-core")
	}
	if len(missing) > 0 {
		msg := "missing " + strings.Join(missing, ", ") + " (run scripts/browser-deps.sh)"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return node
}

type node struct {
	id   uint32
	srv  *edge.Server
	g    *daemon.GRPC
	stop func()
}

type cluster struct {
	t     *testing.T
	st    store.Store
	rt    *router.Router
	sdk   *client.Client
	mu    sync.Mutex
	nodes []*node
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	c, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return c
}

// newCluster starts n edges (any Origin allowed, as with --dev), a ring of
// them in a file store, the SDK and a router, as test/cluster does.
func newCluster(t *testing.T, n int) *cluster {
	st, err := store.Open("file:"+filepath.Join(t.TempDir(), "ring.json"), quiet())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	c := &cluster{t: t, st: st}
	doc := &ring.Document{Version: 1, Algorithm: ring.AlgorithmBounded}
	for id := uint32(1); id <= uint32(n); id++ {
		e := edgetest.Start(t, secret, edge.Config{ID: id, Dev: true, MigrateRate: 2000})
		nd := &node{id: id, srv: e.Srv, g: e.GRPC}
		c.nodes = append(c.nodes, nd)
		t.Cleanup(func() { // registered after the edge's own cleanup, so it runs first
			if nd.stop != nil {
				nd.stop()
			}
		})
		doc.Members = append(doc.Members, e.Member(id, 1))
	}
	if err := st.CompareAndSwap(ctxT(t, 10*time.Second), 0, doc, false); err != nil {
		t.Fatal(err)
	}
	for _, nd := range c.nodes {
		r, err := edge.DesiredRing(ctxT(t, 10*time.Second), st)
		if err != nil {
			t.Fatal(err)
		}
		nd.srv.SetRing(r)
		mem, err := edge.Join(nd.srv, st, 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		nd.stop = mem.Close
	}
	if c.sdk, err = client.New(ctxT(t, 10*time.Second), st, client.WithLogger(quiet())); err != nil {
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
	deadline := time.Now().Add(30 * time.Second)
	for rt.Ring() == nil {
		if time.Now().After(deadline) {
			t.Fatal("router got no ring")
		}
		time.Sleep(20 * time.Millisecond)
	}
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

// presence counts uid's connections on each edge.
func (c *cluster) presence(uid string) (total int, byEdge map[uint32]int) {
	byEdge = map[uint32]int{}
	for _, nd := range c.nodes {
		if n := nd.srv.Presence(uid); n > 0 {
			byEdge[nd.id] = n
			total += n
		}
	}
	return total, byEdge
}

// drainHolder marks the edge holding uid as draining in the ring, so its
// users move to their new owners with 4003.
func (c *cluster) drainHolder(uid string) (uint32, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, by := c.presence(uid)
	var from uint32
	for id := range by {
		from = id
	}
	if from == 0 {
		return 0, fmt.Errorf("%s is not connected", uid)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cur, err := c.st.Load(ctx)
	if err != nil {
		return 0, err
	}
	next := *cur
	next.Members = append([]ring.Member(nil), cur.Members...)
	for i := range next.Members {
		if next.Members[i].ID == from {
			next.Members[i].State = ring.StateDraining
		}
	}
	next.Version = cur.Version + 1
	return from, c.st.CompareAndSwap(ctx, cur.Version, &next, false)
}

// control is what run.mjs asks of the cluster besides the demo server.
func (c *cluster) control() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /presence", func(w http.ResponseWriter, r *http.Request) {
		total, by := c.presence(r.URL.Query().Get("uid"))
		json.NewEncoder(w).Encode(map[string]any{"total": total, "edges": by})
	})
	mux.HandleFunc("POST /drain", func(w http.ResponseWriter, r *http.Request) {
		from, err := c.drainHolder(r.URL.Query().Get("uid"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusConflict)
			return
		}
		json.NewEncoder(w).Encode(map[string]any{"from": from})
	})
	// publish sends count messages {"n":i,"t":<wall clock ms>} to uid over
	// gRPC with the SDK, one every every_ms, for the publish → visible figure.
	mux.HandleFunc("POST /publish", func(w http.ResponseWriter, r *http.Request) {
		uid := r.URL.Query().Get("uid")
		var count, every int
		fmt.Sscan(r.URL.Query().Get("count"), &count)
		fmt.Sscan(r.URL.Query().Get("every_ms"), &every)
		tick := time.NewTicker(time.Duration(max(every, 1)) * time.Millisecond)
		defer tick.Stop()
		for i := 1; i <= count; i++ {
			<-tick.C // paced: a latency, not how fast a backlog drains
			now := float64(time.Now().UnixNano()) / 1e6
			data := fmt.Appendf(nil, `{"n":%d,"t":%.3f}`, i, now)
			if _, err := c.sdk.Publish(r.Context(), uid, data, 0); err != nil {
				http.Error(w, err.Error(), http.StatusBadGateway)
				return
			}
		}
		fmt.Fprintln(w, "{}")
	})
	return mux
}

// TestBrowser runs every scenario of web/test-browser/run.mjs in one
// Chromium against one cluster. BROWSER_ONLY=name,name runs some of them,
// BROWSER_MESSAGES=n sets the latency sample (default 1000), and
// BROWSER_STRICT_ORDER=1 also requires publish order across an edge drain.
func TestBrowser(t *testing.T) {
	root := repoRoot(t)
	nodeBin := prerequisites(t, root)
	c := newCluster(t, 3)

	ds, err := demo.New(demo.Config{Listen: "127.0.0.1:0", WSURL: "ws://" + c.rt.Addr().String() + "/ws",
		Dev: true, Secret: secret, Publisher: c.sdk, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	go ds.Serve()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		ds.Shutdown(ctx)
	})
	ctl := httptest.NewServer(c.control())
	t.Cleanup(ctl.Close)

	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, nodeBin, filepath.Join("web", "test-browser", "run.mjs"))
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "DEMO_URL=http://"+ds.Addr().String(), "CONTROL_URL="+ctl.URL,
		"CHROMIUM="+chromiumPath, "MESSAGES="+os.Getenv("BROWSER_MESSAGES"))
	if s := os.Getenv("BROWSER_ONLY"); s != "" {
		cmd.Env = append(cmd.Env, "ONLY="+s)
	}
	if os.Getenv("BROWSER_STRICT_ORDER") == "1" {
		cmd.Env = append(cmd.Env, "STRICT_ORDER=1")
	}
	cmd.Stderr = &logWriter{t: t, prefix: "node: "}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// run.mjs prints "PASS name detail", "FAIL name detail" and
	// "FIGURE name value" lines; anything else is logged.
	results := map[string]string{}
	var order []string
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		line := sc.Text()
		kind, rest, _ := strings.Cut(line, " ")
		name, detail, _ := strings.Cut(rest, " ")
		switch kind {
		case "PASS", "FAIL":
			results[name] = kind + " " + detail
			order = append(order, name)
		case "FIGURE":
			t.Logf("figure: %s %s", name, detail)
		case "ORDER":
			// Seq order is not publish order across a move (see run.mjs);
			// BROWSER_STRICT_ORDER=1 makes it a failure.
			t.Logf("cluster ordering: %s %s", name, detail)
		default:
			t.Log(line)
		}
	}
	werr := cmd.Wait()
	for _, name := range order {
		res := results[name]
		t.Run(name, func(t *testing.T) {
			if strings.HasPrefix(res, "FAIL") {
				t.Error(strings.TrimPrefix(res, "FAIL "))
			} else {
				t.Log(strings.TrimPrefix(res, "PASS "))
			}
		})
	}
	if werr != nil {
		t.Fatalf("run.mjs: %v", werr)
	}
	if len(order) == 0 {
		t.Fatal("run.mjs reported no scenario")
	}
}

// logWriter sends a child's stderr to the test log line by line.
type logWriter struct {
	t      *testing.T
	prefix string
	mu     sync.Mutex
	buf    []byte
}

func (w *logWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	for {
		i := strings.IndexByte(string(w.buf), '\n')
		if i < 0 {
			break
		}
		w.t.Log(w.prefix + string(w.buf[:i]))
		w.buf = w.buf[i+1:]
	}
	return len(p), nil
}
