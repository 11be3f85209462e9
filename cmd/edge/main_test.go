package main_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pushcluster/push/internal/proctest"
	"github.com/pushcluster/push/pkg/daemon"
	"github.com/pushcluster/push/pkg/ring"
	"github.com/pushcluster/push/pkg/store"
)

func TestMain(m *testing.M) {
	code := m.Run()
	proctest.Cleanup()
	os.Exit(code)
}

const secretEnv = "PUSH_JWT_SECRET=edge-main-test-secret-edge-main-test-secret"

type edgeAddrs struct{ ws, grpc, admin string }

func newAddrs(t *testing.T) edgeAddrs {
	return edgeAddrs{proctest.Addr(t), proctest.Addr(t), proctest.Addr(t)}
}

func (a edgeAddrs) args(id string, extra ...string) []string {
	return append([]string{"--id", id, "--listen", a.ws, "--grpc", a.grpc, "--admin", a.admin, "--drain-period", "200ms", "--log-format", "text"}, extra...)
}

// ringFile writes a ring with the given members to a file store.
func ringFile(t *testing.T, members ...ring.Member) string {
	url := "file:" + filepath.Join(t.TempDir(), "ring.json")
	st, err := store.Open(url, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	doc := &ring.Document{Version: 1, Algorithm: ring.AlgorithmBounded, Members: members}
	if err := st.CompareAndSwap(ctx, 0, doc, false); err != nil {
		t.Fatal(err)
	}
	return url
}

func member(id uint32, a edgeAddrs) ring.Member {
	return ring.Member{ID: id, Name: "edge-" + string(rune('0'+id)), WS: a.ws, GRPC: a.grpc, Weight: 1, State: ring.StateActive}
}

// startEdge starts an edge and waits until it is ready.
func startEdge(t *testing.T, bin string, args ...string) *proctest.Proc {
	p := proctest.Start(t, t.TempDir(), []string{secretEnv}, bin, args...)
	var admin string
	for i, a := range args {
		if a == "--admin" {
			admin = args[i+1]
		}
	}
	p.WaitFor(t, 60*time.Second, "readyz", func() bool { return proctest.Ready("http://" + admin + "/readyz") })
	return p
}

// refused runs an edge that must exit with code and print want.
func refused(t *testing.T, bin string, code int, want string, args ...string) {
	t.Helper()
	p := proctest.Start(t, t.TempDir(), []string{secretEnv}, bin, args...)
	if got := p.Wait(t, 60*time.Second); got != code {
		t.Fatalf("exit code %d, want %d\nstderr:\n%s", got, code, p.Stderr())
	}
	if !strings.Contains(p.Stderr(), want) {
		t.Fatalf("stderr does not say %q:\n%s", want, p.Stderr())
	}
}

func TestStartChecks(t *testing.T) {
	bin := proctest.Build(t, "edge") + "/edge"
	a1, other := newAddrs(t), newAddrs(t)
	url := ringFile(t, member(1, a1))

	t.Run("listen differs from the ring entry", func(t *testing.T) {
		args := other.args("1", "--ring", url)
		refused(t, bin, daemon.ExitRefused, "the ring names other addresses for this edge: ring version 1 names member 1 (edge-1) at ws "+a1.ws+" (this edge: "+other.ws+") and grpc "+a1.grpc+" (this edge: "+other.grpc+")", args...)
	})
	t.Run("grpc differs from the ring entry", func(t *testing.T) {
		args := edgeAddrs{a1.ws, other.grpc, other.admin}.args("1", "--ring", url)
		refused(t, bin, daemon.ExitRefused, "at grpc "+a1.grpc+" (this edge: "+other.grpc+")", args...)
	})
	t.Run("advertised address differs", func(t *testing.T) {
		args := other.args("1", "--ring", url, "--advertise-ws", a1.ws, "--advertise-grpc", other.grpc)
		refused(t, bin, daemon.ExitRefused, "at grpc "+a1.grpc+" (this edge: "+other.grpc+")", args...)
	})

	// A long lease: the restart below comes well within it, however
	// slow the machine.
	first := startEdge(t, bin, a1.args("1", "--ring", url, "--lease-ttl", "20s")...)
	t.Run("an edge with this id is live", func(t *testing.T) {
		args := edgeAddrs{a1.ws, a1.grpc, other.admin}.args("1", "--ring", url)
		refused(t, bin, daemon.ExitRefused, "another edge with this id is live: member 1 (edge-1) holds a live lease", args...)
	})
	t.Run("an id outside the ring is live", func(t *testing.T) {
		a9, b9 := newAddrs(t), newAddrs(t)
		// A lease that stays valid through a starved second or two.
		startEdge(t, bin, a9.args("9", "--ring", url, "--lease-ttl", "3s")...)
		refused(t, bin, daemon.ExitRefused, "id 9 is not in ring version 1 but holds a lease", b9.args("9", "--ring", url, "--lease-ttl", "3s")...)
	})

	// The refused edges touched nothing: the first still serves, and a
	// restart of it after SIGKILL (its lease still in the store, nobody
	// answering at its address) takes its place again.
	if !proctest.Ready("http://" + a1.admin + "/readyz") {
		t.Fatalf("the first edge stopped being ready:\n%s", first.Stderr())
	}
	first.Cmd.Process.Kill()
	first.Wait(t, 30*time.Second)
	again := startEdge(t, bin, a1.args("1", "--ring", url, "--lease-ttl", "20s")...)
	if !strings.Contains(again.Stderr(), "taking over the lease of this id's previous life") {
		t.Fatalf("restart within the lease TTL did not take the old lease over:\n%s", again.Stderr())
	}
}

func TestFlags(t *testing.T) {
	bin := proctest.Build(t, "edge") + "/edge"
	t.Run("a stray word before the flags", func(t *testing.T) {
		a := newAddrs(t)
		refused(t, bin, daemon.ExitUsage, `edge: unexpected argument "stray": edge takes flags only (see edge --help); nothing after it was read ("--id 1 --listen `+a.ws,
			append([]string{"stray"}, a.args("1")...)...)
	})
	t.Run("an unknown flag", func(t *testing.T) {
		refused(t, bin, daemon.ExitUsage, "flag provided but not defined: -nope", "--nope")
	})
	t.Run("a bad value is a usage error", func(t *testing.T) {
		a := newAddrs(t)
		refused(t, bin, daemon.ExitUsage, "idle timeout 10s must exceed the ping interval 20s", a.args("1", "--ping-interval", "20s", "--idle-timeout", "10s")...)
	})
	t.Run("--ping-interval alone derives the idle timeout", func(t *testing.T) {
		a := newAddrs(t)
		p := startEdge(t, bin, a.args("1", "--ping-interval", "100s")...)
		p.Signal(2) // SIGINT drains like SIGTERM
		if code := p.Wait(t, 60*time.Second); code != 0 {
			t.Fatalf("exit %d after SIGINT:\n%s", code, p.Stderr())
		}
	})
	t.Run("--help lists every flag and exits 0", func(t *testing.T) {
		p := proctest.Start(t, t.TempDir(), nil, bin, "--help")
		if code := p.Wait(t, 30*time.Second); code != 0 {
			t.Fatalf("exit %d", code)
		}
		for _, f := range []string{"-listen", "-ping-interval", "-idle-timeout", "0: 2.5 × --ping-interval", "Exit codes:"} {
			if !strings.Contains(p.Stderr(), f) {
				t.Errorf("--help does not show %q", f)
			}
		}
	})
}
