// Package run_test runs `make run` (scripts/run.sh) the way a newcomer
// does, on free ports and in a state directory of its own: a second run
// refuses without touching the first, Ctrl-C drains every daemon once and
// exits 0, and the README's walkthrough runs as written.
package run_test

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/pushcluster/push/internal/proctest"
	"github.com/pushcluster/push/pkg/auth"
	pushv1 "github.com/pushcluster/push/proto/push/v1"
)

func TestMain(m *testing.M) {
	code := m.Run()
	proctest.Cleanup()
	os.Exit(code)
}

// cluster is one `make run`: its working directory (bin and .run inside),
// its port offset and the make process.
type cluster struct {
	work, runDir string
	offset       int
	make         *proctest.Proc
}

func (c *cluster) port(p int) string { return "127.0.0.1:" + strconv.Itoa(p+c.offset) }

// env is what make run and the commands run with.
func (c *cluster) env() []string {
	return []string{"PUSH_RUN_DIR=" + c.runDir, "PUSH_RUN_PORT_OFFSET=" + strconv.Itoa(c.offset)}
}

// ports of run.sh before the offset.
var ports = []int{8000, 8080, 8081, 8082, 8083, 9090, 9091, 9092, 9093, 9101, 9102, 9103, 9200}

// freeOffset finds an offset at which none of run.sh's ports is taken.
func freeOffset(t *testing.T) int {
	for range 200 {
		off := 20000 + 100*rand.IntN(350)
		free := true
		for _, p := range ports {
			ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p+off))
			if err != nil {
				free = false
				break
			}
			ln.Close()
		}
		if free {
			return off
		}
	}
	t.Fatal("no free port offset")
	return 0
}

// newCluster prepares a working directory whose bin holds the built
// binaries, as `make build` leaves a checkout.
func newCluster(t *testing.T) *cluster {
	bin := proctest.Build(t, "edge", "router", "pushctl", "demo")
	c := &cluster{work: t.TempDir(), offset: freeOffset(t)}
	c.runDir = filepath.Join(c.work, ".run")
	if err := os.Symlink(bin, filepath.Join(c.work, "bin")); err != nil {
		t.Fatal(err)
	}
	// Whatever a failed test leaves running (the daemons run in sessions
	// of their own) is stopped after the make process is.
	t.Cleanup(func() {
		pids, _ := filepath.Glob(filepath.Join(c.runDir, "*.pid"))
		for _, f := range pids {
			if pid, err := strconv.Atoi(strings.TrimSpace(readFileQuiet(f))); err == nil {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	})
	return c
}

func readFileQuiet(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

// interrupt sends SIGINT to run.sh, as "kill -INT $(cat .run/run.pid)"
// does (make itself, without a terminal, would wait for run.sh forever:
// it leaves forwarding the signal to the terminal).
func (c *cluster) interrupt(t *testing.T) {
	pid, err := strconv.Atoi(strings.TrimSpace(readFile(t, filepath.Join(c.runDir, "run.pid"))))
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
}

// makeRun is the command line of `make run` with the binaries already
// built (-o build) in the cluster's bin.
func (c *cluster) makeRun() []string {
	return []string{"make", "-s", "-o", "build", "run", "BIN=" + filepath.Join(c.work, "bin")}
}

// start runs `make run` (on a terminal when tty, through script(1), so
// that Ctrl-C can be sent the way a terminal sends it) and waits until
// the cluster is up.
func (c *cluster) start(t *testing.T, tty bool) {
	args := c.makeRun()
	if tty {
		if _, err := exec.LookPath("script"); err != nil {
			t.Skip("script(1) is not installed")
		}
		args = []string{"script", "-qfec", strings.Join(args, " "), "/dev/null"}
	}
	c.make = proctest.Start(t, proctest.Root(), c.env(), args[0], args[1:]...)
	c.make.WaitFor(t, 120*time.Second, "push cluster is up", c.make.Contains("push cluster is up"))
}

func readFile(t *testing.T, path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// pushctl runs bin/pushctl in the working directory with the dev
// environment the README exports.
func (c *cluster) pushctl(t *testing.T, args ...string) string {
	p := proctest.Start(t, c.work, append(c.env(), "PUSH_JWT_SECRET_FILE=.run/secret", "PUSH_RING=file:.run/ring.json",
		"PUSH_GRPC="+c.port(9090), "PUSH_WS_URL=ws://"+c.port(8080)+"/ws"), "bin/pushctl", args...)
	if code := p.Wait(t, 60*time.Second); code != 0 {
		t.Fatalf("pushctl %v: exit %d\n%s%s", args, code, p.Stdout(), p.Stderr())
	}
	return p.Stdout()
}

// TestSecondRunRefuses: a second make run beside a running cluster (same
// state directory, or same ports) refuses with a clear message and leaves
// the running cluster's ring and logs as they are.
func TestSecondRunRefuses(t *testing.T) {
	c := newCluster(t)
	c.start(t, false)
	c.pushctl(t, "ring", "weight", "1", "2") // version 4, in force
	ringBefore := readFile(t, filepath.Join(c.runDir, "ring.json"))
	logs, _ := filepath.Glob(filepath.Join(c.runDir, "*.log"))
	logsBefore := map[string]string{}
	for _, l := range logs {
		logsBefore[l] = readFile(t, l)
	}

	second := proctest.Start(t, proctest.Root(), c.env(), c.makeRun()[0], c.makeRun()[1:]...)
	if code := second.Wait(t, 60*time.Second); code == 0 {
		t.Fatalf("a second make run exited 0:\n%s%s", second.Stdout(), second.Stderr())
	}
	for _, want := range []string{"run.sh: a push cluster is already running from " + c.runDir + ": run (pid ",
		"edge-1 (pid ", "router (pid ", "Stop it with Ctrl-C in its terminal",
		"Nothing was started or changed: the running cluster's ring and logs in " + c.runDir + " are untouched."} {
		if !strings.Contains(second.Stderr(), want) {
			t.Errorf("second run's message lacks %q:\n%s", want, second.Stderr())
		}
	}
	if strings.Contains(second.Stdout(), "push cluster is up") {
		t.Errorf("second run claims a cluster is up:\n%s", second.Stdout())
	}

	// Another state directory, same ports: refused by the port probe.
	other := *c
	other.runDir = filepath.Join(t.TempDir(), ".run")
	third := proctest.Start(t, proctest.Root(), other.env(), c.makeRun()[0], c.makeRun()[1:]...)
	if code := third.Wait(t, 60*time.Second); code == 0 || !strings.Contains(third.Stderr(), "is taken (a cluster of another checkout or state directory") {
		t.Errorf("a run on taken ports: exit %d\n%s", code, third.Stderr())
	}

	if got := readFile(t, filepath.Join(c.runDir, "ring.json")); got != ringBefore {
		t.Errorf("the running cluster's ring was rewritten:\n%s\nwas:\n%s", got, ringBefore)
	}
	for l, before := range logsBefore {
		if got := readFile(t, l); !strings.HasPrefix(got, before) {
			t.Errorf("%s was truncated or rewritten", l)
		}
	}
	show := c.pushctl(t, "ring", "show")
	if !strings.Contains(show, "version    4\n") {
		t.Errorf("ring show after the refused runs:\n%s", show)
	}
	c.interrupt(t)
	if code := c.make.Wait(t, 60*time.Second); code != 0 {
		t.Errorf("make run after SIGINT: exit %d\n%s", code, c.make.Stderr())
	}
}

// TestWalkthrough runs the README's "Try it" commands as written (each
// terminal's block; PUSH_WS_URL and PUSH_GRPC point them at the test's
// ports) and checks what alice's terminal prints: both messages, in
// order, in one stream, across the live resize.
func TestWalkthrough(t *testing.T) {
	blocks := walkthrough(t)
	if len(blocks) != 3 || strings.TrimSpace(blocks[0]) != "make run" {
		t.Fatalf("README walkthrough: want three sh blocks, the first `make run`; got %q", blocks)
	}
	c := newCluster(t)
	c.start(t, false)
	t.Logf("terminal 1 $ make run\n%s", c.make.Stdout())
	env := append(c.env(), "PUSH_GRPC="+c.port(9090), "PUSH_WS_URL=ws://"+c.port(8080)+"/ws")

	listen := proctest.StartTerminal(t, c.work, env, "bash", "-c", "set -e\n"+blocks[1])
	listen.WaitFor(t, 30*time.Second, "alice connected", listen.Contains("# connected to ws://"+c.port(8080)+"/ws as alice"))

	script := "set -e\n"
	for line := range strings.Lines(blocks[2]) {
		script += fmt.Sprintf("echo %q\n%s", "$ "+strings.TrimSpace(line), line)
	}
	term3 := proctest.StartTerminal(t, c.work, env, "bash", "-c", script)
	if code := term3.Wait(t, 120*time.Second); code != 0 {
		t.Fatalf("terminal 3: exit %d\n%s", code, term3.Output())
	}
	t.Logf("terminal 3\n%s", term3.Output())
	listen.WaitFor(t, 30*time.Second, "alice's second message", listen.Contains(`data={"hi":2}`))
	t.Logf("terminal 2 $ bin/pushctl listen --user alice\n%s", listen.Output())

	// Messages are the lines that are not connection events ("# …").
	var lines []string
	for l := range strings.Lines(listen.Output()) {
		if !strings.HasPrefix(l, "#") {
			lines = append(lines, strings.TrimSuffix(l, "\n"))
		}
	}
	if len(lines) != 2 {
		t.Fatalf("alice printed %d messages, want 2:\n%s", len(lines), listen.Output())
	}
	var epoch1, epoch2 string
	if _, err := fmt.Sscanf(lines[0], "seq=1 epoch=%s data={\"hi\":1}", &epoch1); err != nil || !strings.HasSuffix(lines[0], ` data={"hi":1}`) {
		t.Errorf("first line %q, want seq=1 … data={\"hi\":1}", lines[0])
	}
	if _, err := fmt.Sscanf(lines[1], "seq=2 epoch=%s data={\"hi\":2}", &epoch2); err != nil || !strings.HasSuffix(lines[1], ` data={"hi":2}`) {
		t.Errorf("second line %q, want seq=2 … data={\"hi\":2}", lines[1])
	}
	if epoch1 != epoch2 {
		t.Errorf("the resize started a new stream (%s, then %s)", epoch1, epoch2)
	}
	if !strings.Contains(term3.Output(), "changed    member 1 (edge-1) weight 1 -> 3") {
		t.Errorf("terminal 3 did not resize:\n%s", term3.Output())
	}
	// What the README says happened: the resize gave alice to edge 1 and
	// she moved there (the ring is deterministic: same names, same weights).
	if !strings.Contains(listen.Output(), "# moved (close 4003): reconnecting") || !regexp.MustCompile(`(?m)^(delivered|stored) seq=2 .* edge=1$`).MatchString(term3.Output()) {
		t.Errorf("the README says the resize moves alice to edge 1; it did not (update the README):\n%s\n%s", term3.Output(), listen.Output())
	}
	listen.Signal(syscall.SIGINT)
	if code := listen.Wait(t, 30*time.Second); code != 0 {
		t.Errorf("listen after Ctrl-C: exit %d", code)
	}
	c.interrupt(t)
	if code := c.make.Wait(t, 60*time.Second); code != 0 {
		t.Errorf("make run after SIGINT: exit %d\n%s", code, c.make.Stderr())
	}
}

// walkthrough returns the sh blocks of the README's "Try it" section.
func walkthrough(t *testing.T) []string {
	f, err := os.Open(filepath.Join(proctest.Root(), "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var blocks []string
	in, section := false, false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "## "):
			section = strings.HasPrefix(line, "## Try it")
		case !section:
		case line == "```sh":
			in = true
			blocks = append(blocks, "")
		case line == "```":
			in = false
		case in:
			blocks[len(blocks)-1] += line + "\n"
		}
	}
	return blocks
}

// TestCtrlCDrains presses Ctrl-C on the terminal of a `make run` with
// clients connected: every daemon gets one SIGTERM and drains, every
// client gets a close frame (1001 going away, or 4003 moved while the
// edges leave together), never a dropped connection, and make exits 0
// without an error.
func TestCtrlCDrains(t *testing.T) {
	c := newCluster(t)
	c.start(t, true)
	secret := []byte(strings.TrimSpace(readFile(t, filepath.Join(c.runDir, "secret"))))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cc, err := grpc.NewClient(c.port(9090), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	pub := pushv1.NewPushClient(cc)
	var conns []*websocket.Conn
	for i := range 12 {
		uid := fmt.Sprintf("user-%d", i)
		tok, err := auth.Mint(secret, uid, time.Hour, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		ws, _, err := websocket.Dial(ctx, "ws://"+c.port(8080)+"/ws?uid="+uid+"&token="+tok, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer ws.CloseNow()
		// A message through the whole path: the client is on its edge.
		if _, err := pub.Publish(ctx, &pushv1.PublishRequest{UserId: uid, Data: []byte(`"hello"`)}); err != nil {
			t.Fatal(err)
		}
		if _, b, err := ws.Read(ctx); err != nil || !strings.Contains(string(b), `"hello"`) {
			t.Fatalf("%s: %q %v", uid, b, err)
		}
		conns = append(conns, ws)
	}

	// A rebuild while the cluster runs (make build in another terminal)
	// replaces the edge binary: /proc/<pid>/exe of the running edges then
	// ends in " (deleted)", and they must still be drained.
	edgeBin := filepath.Join(c.work, "bin", "edge")
	data, err := os.ReadFile(edgeBin)
	if err != nil {
		t.Fatal(err)
	}
	real, err := filepath.EvalSymlinks(edgeBin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(real+".new", data, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(real+".new", real); err != nil {
		t.Fatal(err)
	}

	ctrlC(t, c.make)
	codes := map[websocket.StatusCode]int{}
	defer func() { t.Logf("close codes the %d clients saw: %v", len(conns), codes) }()
	for i, ws := range conns {
		_, b, err := ws.Read(ctx)
		for err == nil && strings.Contains(string(b), `"hb":true`) {
			_, b, err = ws.Read(ctx)
		}
		code := websocket.CloseStatus(err)
		codes[code]++
		switch code {
		case websocket.StatusGoingAway, 4003:
		default:
			t.Errorf("user-%d: %v (close status %d), want a close frame 1001 or 4003", i, err, code)
		}
	}
	if code := c.make.Wait(t, 90*time.Second); code != 0 {
		t.Errorf("make run after Ctrl-C: exit %d\n%s", code, c.make.Stdout())
	}
	out := c.make.Stdout() + c.make.Stderr()
	if strings.Contains(out, "Error") || !strings.Contains(out, "stopped") {
		t.Errorf("make run's output after Ctrl-C:\n%s", out)
	}
	for name, line := range map[string]string{
		"edge-1": `msg=draining why="signal terminated"`, "edge-2": `msg=draining why="signal terminated"`,
		"edge-3": `msg=draining why="signal terminated"`, "router": `msg="shutting down" signal=terminated`, "demo": `msg="shutting down" signal=terminated`,
	} {
		log := readFile(t, filepath.Join(c.runDir, name+".log"))
		if n := strings.Count(log, line); n != 1 || strings.Contains(log, "signal=interrupt") || strings.Contains(log, `why="signal interrupt"`) {
			t.Errorf("%s: %d × %q, want one SIGTERM and no SIGINT:\n%s", name, n, line, log)
		}
		if !strings.Contains(log, "stopped") {
			t.Errorf("%s did not stop after draining:\n%s", name, log)
		}
	}
}

// ctrlC sends SIGINT to the terminal's foreground process group, as a
// terminal does on Ctrl-C. p is script(1); make is its child.
func ctrlC(t *testing.T, p *proctest.Proc) {
	children := readFile(t, fmt.Sprintf("/proc/%d/task/%d/children", p.Cmd.Process.Pid, p.Cmd.Process.Pid))
	makePid, err := strconv.Atoi(strings.Fields(children)[0])
	if err != nil {
		t.Fatal(err)
	}
	stat := func() (pgrp, tpgid int) {
		s := readFile(t, fmt.Sprintf("/proc/%d/stat", makePid))
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
		pgrp, _ = strconv.Atoi(f[2])
		tpgid, _ = strconv.Atoi(f[5])
		return pgrp, tpgid
	}
	// run.sh waits in a foreground job of its own: the terminal's
	// foreground group is that job's, not make's.
	p.WaitFor(t, 30*time.Second, "run.sh's foreground job", func() bool { pgrp, tpgid := stat(); return tpgid > 0 && tpgid != pgrp })
	_, tpgid := stat()
	if err := syscall.Kill(-tpgid, syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
}
