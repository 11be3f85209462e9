// Package console_test runs the cluster console in a real headless Chromium
// against a real cluster: the edge, router and pushctl binaries built from
// this tree, started as processes on loopback with a file ring store (as
// `make run` does), and users connected through the router.
// web/test-browser/console.mjs drives the browser with playwright-core:
// it checks the ring drawn against the store, a preview against what
// `pushctl ring simulate` prints for the same change, and that applying it
// shows the new member and moves its users to it; this test checks the
// same from the outside (4003 closes seen by the users, the new edge's
// /metrics).
//
// Screenshots go to $CONSOLE_SHOTS, else bench/results/console/ (not
// committed; docs/img holds a copy); the test logs their paths.
// Prerequisites come from scripts/browser-deps.sh; without them the test
// is skipped, except with CI=true, where it fails.
package console_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pushcluster/push/pkg/client"
	"github.com/pushcluster/push/pkg/edge/edgetest"
	"github.com/pushcluster/push/pkg/ring"
	"github.com/pushcluster/push/pkg/store"
)

const chromiumPath = "/usr/bin/chromium"

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

// freePort returns a loopback address nobody listens on now.
func freePort(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// proc is a daemon of the cluster under test.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
}

// harness builds the binaries and runs the processes.
type harness struct {
	t    *testing.T
	root string
	bin  string
	dir  string
	env  []string
	mu   sync.Mutex
	ps   []*proc
}

func (h *harness) build() {
	cmd := exec.Command("go", "build", "-o", h.bin+string(filepath.Separator), "./cmd/edge", "./cmd/router", "./cmd/pushctl")
	cmd.Dir = h.root
	if out, err := cmd.CombinedOutput(); err != nil {
		h.t.Fatalf("go build: %v\n%s", err, out)
	}
}

// pushctl runs the pushctl binary and returns its stdout.
func (h *harness) pushctl(args ...string) string {
	h.t.Helper()
	cmd := exec.Command(filepath.Join(h.bin, "pushctl"), args...)
	cmd.Env = h.env
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		h.t.Fatalf("pushctl %s: %v: %s", strings.Join(args, " "), err, stderr.String())
	}
	return string(out)
}

func (h *harness) start(name string, args ...string) {
	h.t.Helper()
	logPath := filepath.Join(h.dir, name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		h.t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(h.bin, strings.SplitN(name, "-", 2)[0]), args...)
	cmd.Env = h.env
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		h.t.Fatal(err)
	}
	f.Close()
	h.mu.Lock()
	h.ps = append(h.ps, &proc{name: name, cmd: cmd, log: logPath})
	h.mu.Unlock()
}

// stop drains every process (SIGTERM), then kills what is left after 20 s.
func (h *harness) stop() {
	h.mu.Lock()
	defer h.mu.Unlock()
	var wg sync.WaitGroup
	for _, p := range h.ps {
		p.cmd.Process.Signal(syscall.SIGTERM)
		wg.Go(func() {
			done := make(chan struct{})
			go func() { p.cmd.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(20 * time.Second):
				p.cmd.Process.Kill()
				<-done
			}
		})
	}
	wg.Wait()
	if h.t.Failed() {
		for _, p := range h.ps {
			b, _ := os.ReadFile(p.log)
			lines := strings.Split(strings.TrimSpace(string(b)), "\n")
			h.t.Logf("--- %s (last lines of %s):\n%s", p.name, p.log, strings.Join(lines[max(0, len(lines)-15):], "\n"))
		}
	}
}

// waitReady polls url until it answers 200.
func waitReady(t *testing.T, what, url string) {
	t.Helper()
	waitFor(t, what+" ready", func() (bool, string) {
		resp, err := http.Get(url)
		if err != nil {
			return false, err.Error()
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, resp.Status
	})
}

type edgeAddrs struct{ ws, grpc, admin string }

func TestConsoleInChromium(t *testing.T) {
	root, err := filepath.Abs(repoRoot(t))
	if err != nil {
		t.Fatal(err)
	}
	nodeBin := prerequisites(t, root)
	dir := t.TempDir()
	secret := []byte("console-browser-test-secret-console-browser!!")
	if err := os.WriteFile(filepath.Join(dir, "secret"), secret, 0o600); err != nil {
		t.Fatal(err)
	}
	const token = "console-browser-test-token"
	ringURL := "file:" + filepath.Join(dir, "ring.json")
	h := &harness{t: t, root: root, bin: filepath.Join(dir, "bin"), dir: dir,
		env: append(os.Environ(), "PUSH_RING="+ringURL, "PUSH_JWT_SECRET_FILE="+filepath.Join(dir, "secret"), "PUSH_ADMIN_TOKEN="+token)}
	h.build()
	t.Cleanup(h.stop)

	// Edges 1-3 in the ring, edge 4 running beside it, as in the README's
	// resize walkthrough. Leases of 15 s: a starved machine must not let
	// one run out (that would move users this test does not expect to move).
	edges := map[int]edgeAddrs{}
	for i := 1; i <= 4; i++ {
		edges[i] = edgeAddrs{freePort(t), freePort(t), freePort(t)}
	}
	member := func(i int) []string {
		return []string{"--id", strconv.Itoa(i), "--name", fmt.Sprintf("edge-%d", i), "--ws", edges[i].ws, "--grpc", edges[i].grpc}
	}
	h.pushctl(append([]string{"ring", "init"}, member(1)...)...)
	for i := 2; i <= 3; i++ {
		h.pushctl(append([]string{"ring", "add", "--force", "--keys", "0"}, member(i)...)...)
	}
	for i := 1; i <= 4; i++ {
		h.start(fmt.Sprintf("edge-%d", i), "--id", strconv.Itoa(i), "--listen", edges[i].ws, "--grpc", edges[i].grpc, "--admin", edges[i].admin,
			"--dev", "--lease-ttl", "15s", "--migrate-rate", "1000", "--drain-period", "2s", "--log-format", "text")
	}
	for i := 1; i <= 4; i++ {
		waitReady(t, fmt.Sprintf("edge %d", i), "http://"+edges[i].admin+"/readyz")
	}
	routerWS, routerAdmin := freePort(t), freePort(t)
	h.start("router", "--listen", routerWS, "--grpc", freePort(t), "--admin", routerAdmin, "--lease-ttl", "15s",
		"--drain-period", "2s", "--log-format", "text")
	waitReady(t, "router", "http://"+routerAdmin+"/readyz")

	// 30 users through the router, reconnecting after every close.
	var users []*edgetest.User
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	for i := range 30 {
		u := &edgetest.User{UID: fmt.Sprintf("console-web-%d", i)}
		users = append(users, u)
		wg.Go(func() { u.Run(ctx, routerWS, secret) })
	}
	// A backend publishing to them (the SDK, on the same ring), so the
	// console has publishes per second to show.
	st, err := store.Open(ringURL, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	sdk, err := client.New(ctxT(t, 30*time.Second), st, client.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sdk.Close() })
	wg.Go(func() {
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ctx.Err() == nil; i++ {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			pctx, pcancel := context.WithTimeout(ctx, 5*time.Second)
			sdk.Publish(pctx, users[i%len(users)].UID, fmt.Appendf(nil, `{"n":%d}`, i), 0) // errors: retried by the next tick's user
			pcancel()
		}
	})
	waitFor(t, "30 users connected", func() (bool, string) {
		n := 0
		for i := 1; i <= 3; i++ {
			n += int(gauge(t, edges[i].admin, "push_edge_connections"))
		}
		return n == 30, fmt.Sprint(n)
	})

	// What pushctl says adding edge 4 does, and who moves.
	add := map[string]any{"id": 4, "name": "edge-4", "ws": edges[4].ws, "grpc": edges[4].grpc}
	sim := h.pushctl("ring", "simulate", "--add", fmt.Sprintf("id=4,name=edge-4,ws=%s,grpc=%s", edges[4].ws, edges[4].grpc))
	cur := h.pushctl("ring", "show", "--live-timeout", "0")
	t.Logf("pushctl ring show:\n%s\npushctl ring simulate --add edge 4:\n%s", cur, sim)
	d, err := os.ReadFile(filepath.Join(dir, "ring.json"))
	if err != nil {
		t.Fatal(err)
	}
	doc, err := ring.Parse(d)
	if err != nil {
		t.Fatal(err)
	}
	prev, err := ring.New(doc)
	if err != nil {
		t.Fatal(err)
	}
	doc.Version++
	doc.Members = append(doc.Members, ring.Member{ID: 4, Name: "edge-4", WS: edges[4].ws, GRPC: edges[4].grpc, Weight: 1, State: ring.StateActive})
	next, err := ring.New(doc)
	if err != nil {
		t.Fatal(err)
	}
	var movers []*edgetest.User
	for _, u := range users {
		if next.LookupString(u.UID) == 4 {
			movers = append(movers, u)
		}
	}
	if len(movers) == 0 {
		t.Fatal("no user moves to edge 4: pick other user ids")
	}

	shots := os.Getenv("CONSOLE_SHOTS")
	if shots == "" {
		shots = filepath.Join(root, "bench", "results", "console")
	}
	if err := os.MkdirAll(shots, 0o755); err != nil {
		t.Fatal(err)
	}
	addJSON, _ := json.Marshal(add)
	nctx, ncancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer ncancel()
	cmd := exec.CommandContext(nctx, nodeBin, filepath.Join("web", "test-browser", "console.mjs"))
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CONSOLE_URL=http://"+routerAdmin+"/console/", "TOKEN="+token, "SIMULATE="+sim,
		"ADD="+string(addJSON), "MOVERS="+strconv.Itoa(len(movers)), "USERS="+strconv.Itoa(len(users)), "SHOTS="+shots, "CHROMIUM="+chromiumPath)
	cmd.Stderr = &logWriter{t: t, prefix: "node: "}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	type result struct{ name, res string }
	var results []result
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		line := sc.Text()
		kind, rest, _ := strings.Cut(line, " ")
		switch kind {
		case "PASS", "FAIL":
			name, detail, _ := strings.Cut(rest, " ")
			results = append(results, result{name, kind + " " + detail})
		case "SHOT":
			t.Logf("screenshot: %s", rest)
		default:
			t.Log(line)
		}
	}
	werr := cmd.Wait()
	for _, r := range results {
		t.Run(r.name, func(t *testing.T) {
			if strings.HasPrefix(r.res, "FAIL") {
				t.Error(strings.TrimPrefix(r.res, "FAIL "))
			} else {
				t.Log(strings.TrimPrefix(r.res, "PASS "))
			}
		})
	}
	if werr != nil {
		t.Fatalf("console.mjs: %v", werr)
	}
	if len(results) != 4 {
		t.Fatalf("console.mjs reported %d of 4 steps", len(results))
	}

	// From the outside: the ring has edge 4 (and the draining edge 5 the
	// conflict step added, but not the weight that conflicted), its users
	// were closed with 4003 and are on edge 4 now, and nobody whose owner
	// stayed moved.
	d, err = os.ReadFile(filepath.Join(dir, "ring.json"))
	if err != nil {
		t.Fatal(err)
	}
	if doc, err = ring.Parse(d); err != nil {
		t.Fatal(err)
	}
	if doc.Version != 5 || len(doc.Members) != 5 || doc.Members[3].ID != 4 || doc.Members[4].State != ring.StateDraining || doc.Members[0].Weight != 1 {
		t.Fatalf("ring after the console: %+v", doc)
	}
	waitFor(t, "the movers on edge 4", func() (bool, string) {
		n := gauge(t, edges[4].admin, "push_edge_connections")
		return int(n) == len(movers), fmt.Sprintf("edge 4 holds %v of %d", n, len(movers))
	})
	// Bounded loads may also hand a few users from one old member to
	// another: those move too, and only those.
	for _, u := range users {
		moved := u.Moved()
		if changed := prev.LookupString(u.UID) != next.LookupString(u.UID); changed != (moved > 0) {
			t.Errorf("%s: %d 4003 closes, owner %d -> %d", u.UID, moved, prev.LookupString(u.UID), next.LookupString(u.UID))
		}
	}
	t.Logf("%d of %d users moved to edge 4; screenshots in %s", len(movers), len(users), shots)
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	c, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return c
}

// gauge reads one unlabelled series from an admin /metrics.
func gauge(t *testing.T, admin, name string) float64 {
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return f
		}
	}
	return -1
}

// user is a WebSocket client through the router that reconnects after
// every close, as the browser client does.

// waitFor polls cond every 100 ms for up to 60 s (a busy machine is slow,
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
		time.Sleep(100 * time.Millisecond)
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
