package pushctl_test

import (
	"bytes"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/pushcluster/push/pkg/pushctl"
)

// addArgs is "ring add" of member id with the given addresses.
func addArgs(id, name, ws, grpc string, extra ...string) []string {
	return append(append([]string{"add", "--keys", "0"}, extra...), "--id", id, "--name", name, "--ws", ws, "--grpc", grpc)
}

// refusedLine is the start of the one line add prints when the new
// member's edge does not answer.
func refusedLine(id, name, grpc, within string) string {
	return "pushctl ring add: not added: member " + id + " (" + name + "): its edge at " + grpc +
		" does not answer the gRPC health check with SERVING (within " + within + "): "
}

const refusedTail = "; start the edge first, or pass --force to add it anyway\n"

// TestRingAddAsksTheEdge: "ring add" writes a member only when its edge
// answers the standard gRPC health check with SERVING, unless --force;
// "ring weight" and "ring drain" of a member ask nobody.
func TestRingAddAsksTheEdge(t *testing.T) {
	path := ringFile(t, nil) // version 4, members 1-3 on 10.0.0.x, no edges
	unchanged := func(what string) {
		t.Helper()
		if v := loadRing(t, path).Version(); v != 4 {
			t.Fatalf("%s: the ring is at version %d, want 4 (nothing written)", what, v)
		}
	}

	// Nothing listens on the address: refused at once, exit 2, one line.
	// PUSH_FORCE is not --force.
	dead := closedAddr(t)
	env := map[string]string{"PUSH_RING": path, "PUSH_FORCE": "true"}
	start := time.Now()
	code, out, errOut := runIn(env, nil, append([]string{"ring"}, addArgs("4", "edge-4", "127.0.0.1:8084", dead)...)...)
	if code != pushctl.ExitUsage || out != "" || !strings.HasPrefix(errOut, refusedLine("4", "edge-4", dead, "2s")) ||
		!strings.HasSuffix(errOut, refusedTail) || strings.Count(errOut, "\n") != 1 || !strings.Contains(errOut, "connection refused") {
		t.Fatalf("add of a dead edge: exit %d, stdout %q, stderr %q; want exit 2 and one line %q…connection refused…%q",
			code, out, errOut, refusedLine("4", "edge-4", dead, "2s"), refusedTail)
	}
	t.Logf("refused in %v: %s", time.Since(start).Round(time.Millisecond), errOut)
	unchanged("dead edge")

	// Something accepts connections but never speaks gRPC (a hung process):
	// the answer waits --probe-timeout, no longer.
	hung, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer hung.Close() // never accepted: the kernel completes the handshakes
	start = time.Now()
	code, _, errOut = ringCmd(path, addArgs("4", "edge-4", "127.0.0.1:8084", hung.Addr().String(), "--probe-timeout", "300ms")...)
	took := time.Since(start)
	if code != pushctl.ExitUsage || !strings.HasPrefix(errOut, refusedLine("4", "edge-4", hung.Addr().String(), "300ms")) ||
		!strings.Contains(errOut, "DeadlineExceeded") || !strings.HasSuffix(errOut, refusedTail) {
		t.Fatalf("add of a hung edge: exit %d %q", code, errOut)
	}
	if took > 5*time.Second { // 300 ms, and slack for a busy machine
		t.Fatalf("add of a hung edge took %v with --probe-timeout 300ms", took)
	}
	unchanged("hung edge")

	// An edge that answers NOT_SERVING (draining, or not ready) is refused too.
	notServing := startEdge(t, 6)
	notServing.g.Health.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	code, _, errOut = ringCmd(path, addArgs("6", "edge-6", notServing.ws, notServing.grpc)...)
	if code != pushctl.ExitUsage || errOut != refusedLine("6", "edge-6", notServing.grpc, "2s")+"it answers NOT_SERVING"+refusedTail {
		t.Fatalf("add of a NOT_SERVING edge: exit %d %q", code, errOut)
	}
	unchanged("NOT_SERVING edge")

	// A bad --probe-timeout is a usage error before anything is asked.
	if code, _, errOut := ringCmd(path, addArgs("4", "edge-4", "127.0.0.1:8084", dead, "--probe-timeout", "0s")...); code != pushctl.ExitUsage ||
		!strings.Contains(errOut, "--probe-timeout 0s must be positive") {
		t.Fatalf("--probe-timeout 0s: exit %d %q", code, errOut)
	}

	// A real edge answering SERVING: added, without --force.
	live := startEdge(t, 5)
	code, out, errOut = ringCmd(path, addArgs("5", "edge-5", live.ws, live.grpc)...)
	if want := "version    4 -> 5 (written)\nchanged    added member 5 (edge-5) ws=" + live.ws + " grpc=" + live.grpc +
		" weight=1 (its edge answers SERVING)\n"; code != 0 || out != want {
		t.Fatalf("add of a live edge: exit %d %q %q, want %q", code, out, errOut, want)
	}

	// --force adds the dead one without asking.
	code, out, errOut = ringCmd(path, addArgs("4", "edge-4", "127.0.0.1:8084", dead, "--force")...)
	if want := "version    5 -> 6 (written)\nchanged    added member 4 (edge-4) ws=127.0.0.1:8084 grpc=" + dead +
		" weight=1 (forced: its edge was not asked)\n"; code != 0 || out != want {
		t.Fatalf("add --force: exit %d %q %q, want %q", code, out, errOut, want)
	}

	// Weight and drain of a member whose edge does not answer ask nobody.
	mustRun(t, path, "weight", "--keys", "0", "4", "3")
	mustRun(t, path, "drain", "--keys", "0", "4")
	if m, ok := loadRing(t, path).Member(4); !ok || m.Weight != 3 || m.Active() {
		t.Fatalf("member 4 after weight and drain: %+v %v", m, ok)
	}

	// A duplicate is refused for what it is, before any edge is asked.
	if code, _, errOut := ringCmd(path, addArgs("7", "edge-7", "127.0.0.1:8087", live.grpc)...); code != pushctl.ExitUsage ||
		!strings.Contains(errOut, "duplicate grpc address") {
		t.Fatalf("add of a duplicate grpc address: exit %d %q", code, errOut)
	}
}

// TestRingAddRefusedExitCode runs the pushctl binary: a refused add exits
// 2 with one line on stderr, --force exits 0.
func TestRingAddRefusedExitCode(t *testing.T) {
	if testing.Short() {
		t.Skip("builds cmd/pushctl")
	}
	bin := filepath.Join(t.TempDir(), "pushctl")
	if b, err := exec.Command("go", "build", "-o", bin, "github.com/pushcluster/push/cmd/pushctl").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, b)
	}
	path := ringFile(t, nil)
	dead := closedAddr(t)
	pushctlRun := func(args ...string) (int, string, string) {
		cmd := exec.Command(bin, args...)
		cmd.Env = append(os.Environ(), "PUSH_RING=file:"+path)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		var ee *exec.ExitError
		switch {
		case err == nil:
			return 0, out.String(), errb.String()
		case errors.As(err, &ee):
			return ee.ExitCode(), out.String(), errb.String()
		}
		t.Fatal(err)
		return 0, "", ""
	}
	code, out, errOut := pushctlRun(append([]string{"ring"}, addArgs("4", "edge-4", "127.0.0.1:8084", dead)...)...)
	if code != 2 || out != "" || strings.Count(errOut, "\n") != 1 || !strings.HasPrefix(errOut, refusedLine("4", "edge-4", dead, "2s")) ||
		!strings.HasSuffix(errOut, refusedTail) {
		t.Fatalf("pushctl ring add of a dead edge: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	code, out, errOut = pushctlRun(append([]string{"ring"}, addArgs("4", "edge-4", "127.0.0.1:8084", dead, "--force")...)...)
	if code != 0 || !strings.Contains(out, "added member 4 (edge-4)") {
		t.Fatalf("pushctl ring add --force: exit %d %q %q", code, out, errOut)
	}
}
