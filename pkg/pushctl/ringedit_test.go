package pushctl_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/pushcluster/push/pkg/admin"
	"github.com/pushcluster/push/pkg/auth"
	"github.com/pushcluster/push/pkg/daemon"
	"github.com/pushcluster/push/pkg/edge"
	"github.com/pushcluster/push/pkg/edge/edgetest"
	"github.com/pushcluster/push/pkg/pushctl"
	"github.com/pushcluster/push/pkg/ring"
)

// ringCmd runs "pushctl ring <args>" against the store at path.
func ringCmd(path string, args ...string) (int, string, string) {
	return runIn(map[string]string{"PUSH_RING": "file:" + path}, nil, append([]string{"ring"}, args...)...)
}

func mustRun(t *testing.T, path string, args ...string) string {
	t.Helper()
	code, out, errOut := ringCmd(path, args...)
	if code != 0 {
		t.Fatalf("ring %v: exit %d, stderr %q", args, code, errOut)
	}
	return out
}

func TestRingInitAddWeightDrainRemove(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ring.json")
	out := mustRun(t, path, "init", "--algorithm", "haproxy", "--id", "1", "--name", "e1", "--ws", "10.0.0.1:8080", "--grpc", "10.0.0.1:9090")
	if want := "version    1 (written)\nchanged    created a haproxy ring with member 1 (e1) ws=10.0.0.1:8080 grpc=10.0.0.1:9090 weight=1\n"; out != want {
		t.Fatalf("init printed %q, want %q", out, want)
	}
	if code, _, errOut := ringCmd(path, "init", "--id", "1", "--name", "e1", "--ws", "10.0.0.1:8080", "--grpc", "10.0.0.1:9090"); code != pushctl.ExitUsage ||
		!strings.Contains(errOut, "already holds a ring document (version 1)") {
		t.Fatalf("second init: exit %d %q", code, errOut)
	}

	// The member flags never come from the environment: PUSH_GRPC is
	// publish's edge address, PUSH_WEIGHT and PUSH_FORCE are nobody's. So
	// the add of a member without an edge is refused (exit 2) although
	// PUSH_FORCE is set, and needs --force on the command line.
	env := map[string]string{"PUSH_RING": path, "PUSH_GRPC": "10.9.9.9:9090", "PUSH_WEIGHT": "7", "PUSH_FORCE": "true", "PUSH_KEYS": "20000"}
	code, out, errOut := runIn(env, nil, "ring", "add", "--probe-timeout", "500ms", "--id", "2", "--name", "e2", "--ws", "10.0.0.2:8080", "--grpc", "10.0.0.2:9090")
	if code != pushctl.ExitUsage || out != "" ||
		!strings.HasPrefix(errOut, "pushctl ring add: not added: member 2 (e2): its edge at 10.0.0.2:9090 does not answer the gRPC health check with SERVING (within 500ms): ") {
		t.Fatalf("add of a member without an edge, PUSH_FORCE set: exit %d %q %q", code, out, errOut)
	}
	code, out, errOut = runIn(env, nil, "ring", "add", "--force", "--id", "2", "--name", "e2", "--ws", "10.0.0.2:8080", "--grpc", "10.0.0.2:9090")
	if code != 0 {
		t.Fatalf("add: exit %d %q", code, errOut)
	}
	if !strings.HasPrefix(out, "version    1 -> 2 (written)\nchanged    added member 2 (e2) ws=10.0.0.2:8080 grpc=10.0.0.2:9090 weight=1 (forced: its edge was not asked)\n") ||
		!strings.Contains(out, "of 20000 keys uid-0..uid-19999") {
		t.Fatalf("add printed:\n%s", out)
	}
	if moved, ideal := fractions(t, out); ideal != 50 || moved < 40 || moved > 60 {
		t.Fatalf("add moved %.2f%%, ideal %.2f%%", moved, ideal)
	}
	if code, _, errOut := runIn(env, nil, "ring", "add", "--id", "3", "--name", "e3", "--ws", "10.0.0.3:8080"); code != pushctl.ExitUsage ||
		!strings.Contains(errOut, "--grpc is required") {
		t.Fatalf("add without --grpc, PUSH_GRPC set: exit %d %q", code, errOut)
	}
	mustRun(t, path, "add", "--force", "--keys", "0", "--id", "3", "--name", "e3", "--ws", "10.0.0.3:8080", "--grpc", "10.0.0.3:9090", "--weight", "2")

	// Flags may follow the positional arguments.
	out = mustRun(t, path, "weight", "1", "3", "--keys", "20000")
	if !strings.Contains(out, "version    3 -> 4 (written)\nchanged    member 1 (e1) weight 1 -> 3\n") {
		t.Fatalf("weight printed:\n%s", out)
	}
	if _, ideal := fractions(t, out); ideal != 25 { // e1: 1/4 -> 3/6
		t.Fatalf("weight ideal %.2f%%\n%s", ideal, out)
	}
	out = mustRun(t, path, "drain", "--keys", "0", "2")
	if out != "version    4 -> 5 (written)\nchanged    member 2 (e2) draining\n" {
		t.Fatalf("drain printed %q", out)
	}

	// Changes that change nothing write nothing.
	before, _ := os.ReadFile(path)
	if out := mustRun(t, path, "drain", "2"); out != "member 2 (e2) is already draining in version 5; nothing written\n" {
		t.Fatalf("second drain printed %q", out)
	}
	if out := mustRun(t, path, "weight", "1", "3"); !strings.Contains(out, "already has weight 3") {
		t.Fatalf("same weight printed %q", out)
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
		t.Fatal("a change that changes nothing rewrote the document")
	}

	out = mustRun(t, path, "remove", "--force", "2", "--keys", "1000")
	if !strings.Contains(out, "version    5 -> 6 (written)\nchanged    removed member 2 (e2) (forced: connections not checked)\nmoved      0.00% (0 of 1000") {
		t.Fatalf("remove printed:\n%s", out)
	}

	d := loadRing(t, path).Document()
	want := []ring.Member{
		{ID: 1, Name: "e1", WS: "10.0.0.1:8080", GRPC: "10.0.0.1:9090", Weight: 3, State: ring.StateActive},
		{ID: 3, Name: "e3", WS: "10.0.0.3:8080", GRPC: "10.0.0.3:9090", Weight: 2, State: ring.StateActive},
	}
	if d.Version != 6 || d.Algorithm != ring.AlgorithmHAProxy || fmt.Sprint(d.Members) != fmt.Sprint(want) {
		t.Fatalf("document: version %d %s %v, want 6 haproxy %v", d.Version, d.Algorithm, d.Members, want)
	}
}

func TestRingChangesRefused(t *testing.T) {
	path := ringFile(t, func(d *ring.Document) { d.Members[2].State = ring.StateDraining })
	last := ringFile(t, func(d *ring.Document) { d.Members = d.Members[:1] })
	before, _ := os.ReadFile(path)
	add := func(spec ...string) []string { return append([]string{"add", "--keys", "0"}, spec...) }
	for _, tc := range []struct {
		path string
		args []string
		want string
	}{
		{path, add("--id", "1", "--name", "e9", "--ws", "h:1", "--grpc", "h:2"), `invalid ring document: members[3] "e9" (id 1): duplicate id 1, also used by members[0] "e1"`},
		{path, add("--id", "9", "--name", "e2", "--ws", "h:1", "--grpc", "h:2"), `members[3] "e2" (id 9): duplicate name, also used by members[1] "e2"`},
		{path, add("--id", "9", "--name", "e9", "--ws", "10.0.0.1:8080", "--grpc", "h:2"), `duplicate ws address "10.0.0.1:8080", also used by members[0] "e1"`},
		{path, add("--id", "9", "--name", "e9", "--ws", "h:1", "--grpc", "10.0.0.2:9090"), `duplicate grpc address "10.0.0.2:9090"`},
		{path, add("--id", "9", "--name", "e 9", "--ws", "h:1", "--grpc", "h:2"), "no spaces"},
		{path, add("--id", "9", "--name", "e9", "--ws", "h", "--grpc", "h:2"), `ws address "h": not host:port`},
		{path, add("--id", "9", "--name", "e9", "--ws", "h:1", "--grpc", "h:2", "--weight", "0"), "--weight 0 out of range 1..256"},
		{path, add("--id", "2000000", "--name", "e9", "--ws", "h:1", "--grpc", "h:2"), "--id 2000000: want 1..1048575"},
		{path, add("--name", "e9"), "--id, --ws, --grpc are required"},
		{path, add("--id", "9", "--name", "e9", "--ws", "h:1", "--grpc", "h:2", "extra"), `unexpected arguments ["extra"]`},
		{path, []string{"init", "--algorithm", "maglev", "--id", "1", "--name", "e1", "--ws", "h:1", "--grpc", "h:2"}, `--algorithm "maglev": want bounded or haproxy`},
		{path, []string{"drain", "9"}, "no member with id 9 in ring version 4"},
		{path, []string{"drain"}, "want one member id, got 0 argument(s)"},
		{path, []string{"drain", "1", "2"}, "want one member id, got 2 argument(s)"},
		{path, []string{"drain", "x"}, `member id "x": want 1..1048575`},
		{last, []string{"drain", "1"}, "member 1 (e1) is the last active member: add another before draining it"},
		{path, []string{"weight", "9", "2"}, "no member with id 9 in ring version 4"},
		{path, []string{"weight", "1", "257"}, "weight 257 out of range: want 1..256"},
		{path, []string{"weight", "1"}, "want a member id and a weight (ID W)"},
		{path, []string{"remove", "3"}, "not removed: pushctl cannot tell whether member 3 still holds users. Pass --metrics"},
		{path, []string{"remove", "--force", "9"}, "no member with id 9 in ring version 4"},
		{path, []string{"remove", "--force", "1"}, "member 1 (e1) is active: drain it first: pushctl ring drain 1"},
		{last, []string{"remove", "--force", "1"}, "member 1 (e1) is the last active member: add another, drain this one"},
		{path, []string{"remove", "--bogus", "3"}, "flag provided but not defined: -bogus"},
		{path, []string{"remove", "--force", "3", "--keys", "-1"}, "--keys -1 must not be negative"},
	} {
		code, _, errOut := ringCmd(tc.path, tc.args...)
		if code != pushctl.ExitUsage || !strings.Contains(errOut, tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want 2 and %q", tc.args, code, errOut, tc.want)
		}
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
		t.Fatal("a refused change wrote the document")
	}

	// Failures (exit 1): no document, an edge that cannot be asked.
	missing := filepath.Join(t.TempDir(), "ring.json")
	if code, _, errOut := ringCmd(missing, "drain", "1"); code != pushctl.ExitFailure ||
		!strings.Contains(errOut, "no ring document in file:"+missing+" (create one with 'pushctl ring init')") {
		t.Fatalf("drain without a document: exit %d %q", code, errOut)
	}
	closed := closedAddr(t)
	if code, _, errOut := ringCmd(path, "remove", "3", "--metrics", "http://"+closed+"/metrics"); code != pushctl.ExitFailure ||
		!strings.Contains(errOut, "connection refused (pass --force to remove it without checking)") {
		t.Fatalf("remove with an unreachable --metrics: exit %d %q", code, errOut)
	}
	// --force with --metrics: removed, and the failed check is noted.
	if code, out, errOut := ringCmd(path, "remove", "3", "--keys", "0", "--force", "--metrics", "http://"+closed+"/metrics"); code != 0 ||
		!strings.Contains(out, "removed member 3 (e3) (connections not checked: metrics:") {
		t.Fatalf("remove --force with an unreachable --metrics: exit %d %q %q", code, out, errOut)
	}
}

// closedAddr returns a loopback address nobody listens on.
func closedAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// TestRingConcurrentChangesConflict races two "ring weight" commands on
// different members until they have collided at least once. Every round,
// both read the same version or one read after the other wrote: either
// way no change is lost, a loser exits 3 having written nothing, and the
// file on disk always parses.
func TestRingConcurrentChangesConflict(t *testing.T) {
	path := ringFile(t, nil)
	stop := make(chan struct{})
	var reads atomic.Int64
	readerDone := make(chan error, 1)
	go func() { // the document on disk is never half-written
		for {
			select {
			case <-stop:
				readerDone <- nil
				return
			default:
			}
			b, err := os.ReadFile(path)
			if err == nil {
				_, err = ring.Parse(b)
			}
			if err != nil {
				readerDone <- err
				return
			}
			reads.Add(1)
			time.Sleep(50 * time.Microsecond) // leave the racing commands a core
		}
	}()

	conflicts, round := 0, 0
	for ; round < 200 && conflicts < 3; round++ {
		prev := loadRing(t, path).Document()
		// Weights that differ from the stored ones, so each command writes.
		w1, w2 := 2+round%100, 2+(round+50)%100
		var codes [2]int
		var errs [2]string
		var ready, start sync.WaitGroup
		ready.Add(2)
		start.Add(1)
		var wg sync.WaitGroup
		for i, args := range [][]string{{"weight", "1", fmt.Sprint(w1)}, {"weight", "2", fmt.Sprint(w2)}} {
			wg.Go(func() {
				ready.Done()
				start.Wait()
				codes[i], _, errs[i] = ringCmd(path, append(args, "--keys", "0")...)
			})
		}
		ready.Wait()
		start.Done()
		wg.Wait()

		d := loadRing(t, path).Document()
		got1, got2 := d.Members[0].Weight == w1, d.Members[1].Weight == w2
		switch {
		case codes == [2]int{0, 0}: // one ran after the other: both changes are in
			if d.Version != prev.Version+2 || !got1 || !got2 {
				t.Fatalf("round %d: both succeeded but version %d -> %d, weights %v (lost update)", round, prev.Version, d.Version, d.Members)
			}
		case codes == [2]int{0, pushctl.ExitConflict} || codes == [2]int{pushctl.ExitConflict, 0}:
			conflicts++
			winner, loser := 0, 1
			if codes[0] != 0 {
				winner, loser = 1, 0
			}
			want := fmt.Sprintf("pushctl ring weight: version conflict: the ring changed (now version %d); re-run\n", prev.Version+1)
			if errs[loser] != want {
				t.Fatalf("round %d: loser said %q, want %q", round, errs[loser], want)
			}
			if d.Version != prev.Version+1 || got1 != (winner == 0) || got2 != (winner == 1) {
				t.Fatalf("round %d: winner %d, but version %d -> %d, weights %v", round, winner, prev.Version, d.Version, d.Members)
			}
		default:
			t.Fatalf("round %d: exit codes %v, stderr %q", round, codes, errs)
		}
	}
	close(stop)
	if err := <-readerDone; err != nil {
		t.Fatalf("a reader saw a broken document: %v", err)
	}
	if conflicts == 0 {
		t.Fatal("no version conflict in 200 rounds of racing changes")
	}
	t.Logf("%d conflicts in %d rounds; %d reads of the file while it was being replaced", conflicts, round, reads.Load())
}

// testEdge is a real in-process edge: WebSocket listener, gRPC with
// health, and the admin port with /metrics.
type testEdge struct {
	ws, grpc, metrics string
	g                 *daemon.GRPC
}

func startEdge(t *testing.T, id uint32) *testEdge {
	t.Helper()
	reg := admin.NewRegistry()
	e := edgetest.Start(t, []byte(secret), edge.Config{ID: id, Metrics: reg, DrainPeriod: time.Millisecond})
	srv, g := e.Srv, e.GRPC
	adm, err := admin.New(admin.Config{Addr: "127.0.0.1:0", Registry: reg, Ready: srv.Ready})
	if err != nil {
		t.Fatal(err)
	}
	go adm.Serve()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		adm.Shutdown(ctx)
	})
	return &testEdge{ws: srv.Addr().String(), grpc: g.Addr().String(), metrics: "http://" + adm.Addr().String() + "/metrics", g: g}
}

// TestRingShowLiveUsersAndRemove runs show and remove against real edges:
// e1 serving with one connected user, e2 answering NOT_SERVING, e3 gone.
func TestRingShowLiveUsersAndRemove(t *testing.T) {
	e1, e2 := startEdge(t, 1), startEdge(t, 2)
	e2.g.Health.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	gone := closedAddr(t)
	path := filepath.Join(t.TempDir(), "ring.json")
	mustRun(t, path, "init", "--id", "1", "--name", "e1", "--ws", e1.ws, "--grpc", e1.grpc)
	// Neither e2 (NOT_SERVING) nor e3 (gone) passes add's health check.
	mustRun(t, path, "add", "--force", "--keys", "0", "--id", "2", "--name", "e2", "--ws", e2.ws, "--grpc", e2.grpc)
	mustRun(t, path, "add", "--force", "--keys", "0", "--id", "3", "--name", "e3", "--ws", gone, "--grpc", gone)
	mustRun(t, path, "drain", "--keys", "0", "1")

	tok, err := auth.Mint([]byte(secret), "alice", time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, fmt.Sprintf("ws://%s/ws?uid=alice&token=%s", e1.ws, tok), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()

	// The edge counts the connection once the upgrade is done on its side.
	var out string
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		out = mustRun(t, path, "show", "--live-timeout", "2s", "--metrics", "1="+e1.metrics+",2="+e2.metrics)
		if strings.Contains(singleSpaced(out), "% - yes 1\n") || time.Now().After(deadline) {
			break
		}
	}
	for _, want := range []string{
		"ID NAME STATE WEIGHT WS GRPC SHARE LEASE LIVE USERS",
		fmt.Sprintf("1 e1 draining 1 %s %s 0.00%% - yes 1", e1.ws, e1.grpc),
		fmt.Sprintf("2 e2 active 1 %s %s", e2.ws, e2.grpc),
		fmt.Sprintf("3 e3 active 1 %s %s", gone, gone),
	} {
		if !strings.Contains(singleSpaced(out), want) {
			t.Errorf("show lacks %q:\n%s", want, out)
		}
	}
	for _, want := range []string{"% - no 0\n", "% - unreachable -\n"} {
		if !strings.Contains(singleSpaced(out), want) {
			t.Errorf("show lacks %q:\n%s", want, out)
		}
	}

	// e1 still holds alice: refused until she has gone.
	code, _, errOut := ringCmd(path, "remove", "1", "--metrics", e1.metrics)
	if want := "member 1 (e1) still holds 1 connection(s) (push_edge_connections at " + e1.metrics + "): wait until its drain has moved them, or pass --force"; code != pushctl.ExitUsage || !strings.Contains(errOut, want) {
		t.Fatalf("remove while holding a user: exit %d %q, want 2 and %q", code, errOut, want)
	}
	c.Close(websocket.StatusNormalClosure, "")
	deadline := time.Now().Add(10 * time.Second)
	for {
		code, out, errOut = ringCmd(path, "remove", "1", "--keys", "0", "--metrics", e1.metrics)
		if code == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if code != 0 || !strings.Contains(out, "removed member 1 (e1) (its edge holds no connections)") {
		t.Fatalf("remove after the user left: exit %d %q %q", code, out, errOut)
	}
	if _, ok := loadRing(t, path).Member(1); ok {
		t.Fatal("member 1 still in the document")
	}
}

// TestRingShowMetricsParsing checks the USERS column against /metrics
// answers that are not a plain edge's.
func TestRingShowMetricsParsing(t *testing.T) {
	bodies := map[string]string{
		"/labels":  "# HELP push_edge_connections x\npush_edge_connections_total 99\npush_edge_connections{loop=\"0\"} 3\npush_edge_connections{loop=\"1\"} 4 1700000000\n",
		"/plain":   "push_edge_connectionsx 5\npush_edge_connections 1.2e3\n",
		"/absent":  "go_goroutines 12\n",
		"/garbage": "push_edge_connections many\n",
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, ok := bodies[r.URL.Path]
		if !ok {
			http.NotFound(w, r)
			return
		}
		io.WriteString(w, body)
	}))
	defer srv.Close()
	path := ringFile(t, func(d *ring.Document) {
		for i := 4; i <= 5; i++ {
			d.Members = append(d.Members, ring.Member{ID: uint32(i), Name: fmt.Sprintf("e%d", i),
				WS: fmt.Sprintf("10.0.0.%d:8080", i), GRPC: fmt.Sprintf("10.0.0.%d:9090", i), Weight: 1})
		}
	})
	code, out, errOut := ringCmd(path, "show", "--live-timeout", "0",
		"--metrics", "1="+srv.URL+"/labels,2="+srv.URL+"/plain", "--metrics", "3="+srv.URL+"/absent,4="+srv.URL+"/garbage,5="+srv.URL+"/missing")
	if code != 0 {
		t.Fatalf("exit %d %q", code, errOut)
	}
	for id, users := range map[int]string{1: "7", 2: "1200", 3: "?", 4: "?", 5: "?"} {
		row := regexp.MustCompile(fmt.Sprintf(`\n%d e%d active 1 10\.0\.0\.%d:8080 10\.0\.0\.%d:9090 [0-9.]+%% - - (\S+)\n`, id, id, id, id))
		if m := row.FindStringSubmatch(singleSpaced(out)); m == nil || m[1] != users {
			t.Errorf("member %d: want USERS %s:\n%s", id, users, out)
		}
	}
	for _, want := range []string{
		"member 3: metrics " + srv.URL + "/absent: no push_edge_connections in the answer: is this an edge's admin /metrics?",
		`member 4: metrics ` + srv.URL + `/garbage: push_edge_connections value "many"`,
		"member 5: metrics " + srv.URL + "/missing: 404 Not Found",
	} {
		if !strings.Contains(errOut, want) {
			t.Errorf("stderr lacks %q:\n%s", want, errOut)
		}
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"show", "--metrics", "1"}, `"1": want ID=URL`},
		{[]string{"show", "--metrics", "1=a,1=b"}, "member 1 given twice"},
		{[]string{"show", "--live-timeout", "-1s"}, "--live-timeout -1s must not be negative"},
	} {
		if code, _, errOut := ringCmd(path, tc.args...); code != pushctl.ExitUsage || !strings.Contains(errOut, tc.want) {
			t.Errorf("%v: exit %d %q, want 2 and %q", tc.args, code, errOut, tc.want)
		}
	}
}

func TestRingChangeHelp(t *testing.T) {
	for _, sub := range []string{"init", "add", "drain", "weight", "remove"} {
		code, out, errOut := runIn(nil, nil, "ring", sub, "--help")
		if code != 0 || !strings.Contains(errOut, "pushctl ring "+sub) {
			t.Errorf("ring %s --help: exit %d %q %q", sub, code, out, errOut)
		}
		if sub != "init" && !strings.Contains(errOut, "exit code is 3") {
			t.Errorf("ring %s --help does not document exit code 3:\n%s", sub, errOut)
		}
	}
	_, _, errOut := runIn(nil, nil, "ring", "remove", "--help")
	for _, want := range []string{"drain it first", "--metrics", "push_edge_connections", "-force\n", "env: none (command line only)"} {
		if !strings.Contains(errOut, want) {
			t.Errorf("ring remove --help lacks %q:\n%s", want, errOut)
		}
	}
	_, _, errOut = runIn(nil, nil, "ring", "add", "--help")
	for _, want := range []string{"gRPC health check", "refuses the change, exit code 2", "SERVING within --probe-timeout",
		"-probe-timeout duration", "default: 2s", "-force\n"} {
		if !strings.Contains(errOut, want) {
			t.Errorf("ring add --help lacks %q:\n%s", want, errOut)
		}
	}
	// --force is never read from PUSH_FORCE.
	if force := regexp.MustCompile(`-force\n(?:\s+.*\n){2}\s+env: (.*)\n`).FindStringSubmatch(errOut); force == nil || force[1] != "none (command line only)" {
		t.Errorf("ring add --help: --force must be command line only:\n%s", errOut)
	}
	if code, out, _ := runIn(nil, nil, "ring", "--help"); code != 0 || !strings.Contains(out, "3 version conflict") {
		t.Errorf("ring --help: %d %q", code, out)
	}
	if code, out, _ := runIn(nil, nil, "--help"); code != 0 || !strings.Contains(out, "3 version conflict") {
		t.Errorf("--help: %d %q", code, out)
	}
}
