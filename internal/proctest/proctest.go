// Package proctest runs the cluster's real binaries in tests: it builds
// them once per test binary, picks free loopback ports, starts processes
// with their output captured, and waits for their admin ports.
package proctest

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var (
	buildMu  sync.Mutex
	buildDir string
	built    = map[string]bool{}
)

// Root is the module's root directory.
func Root() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// Build compiles the commands (cmd names: "edge", "router", "pushctl",
// "demo") into one directory shared by the test binary and returns it.
// Call Cleanup from TestMain to remove it.
func Build(t testing.TB, cmds ...string) string {
	t.Helper()
	buildMu.Lock()
	defer buildMu.Unlock()
	if buildDir == "" {
		d, err := os.MkdirTemp("", "proctest-bin-")
		if err != nil {
			t.Fatal(err)
		}
		buildDir = d
	}
	var pkgs []string
	for _, c := range cmds {
		if !built[c] {
			pkgs = append(pkgs, "./cmd/"+c)
		}
	}
	if len(pkgs) > 0 {
		cmd := exec.Command("go", append([]string{"build", "-o", buildDir + "/"}, pkgs...)...)
		cmd.Dir = Root()
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build %v: %v\n%s", pkgs, err, out)
		}
		for _, c := range cmds {
			built[c] = true
		}
	}
	return buildDir
}

// Cleanup removes what Build compiled.
func Cleanup() {
	buildMu.Lock()
	defer buildMu.Unlock()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
}

// FreePort returns a loopback port nobody listens on right now.
func FreePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// Addr is FreePort as "127.0.0.1:port".
func Addr(t testing.TB) string { return fmt.Sprintf("127.0.0.1:%d", FreePort(t)) }

// Proc is a started process with its stdout and stderr captured.
type Proc struct {
	Cmd    *exec.Cmd
	stdout syncBuffer
	stderr syncBuffer
	both   syncBuffer // stdout and stderr in the order written, as a terminal shows them
	done   chan struct{}
	err    error
}

// Start starts bin with args and env (added to the test's environment) in
// its own process group; the test's end kills what is still running.
func Start(t testing.TB, dir string, env []string, bin string, args ...string) *Proc {
	return start(t, false, dir, env, bin, args...)
}

// StartTerminal is Start with stdout and stderr on one pipe, in the order
// the process wrote them, as a terminal shows them: Output has both,
// Stdout and Stderr stay empty.
func StartTerminal(t testing.TB, dir string, env []string, bin string, args ...string) *Proc {
	return start(t, true, dir, env, bin, args...)
}

func start(t testing.TB, onePipe bool, dir string, env []string, bin string, args ...string) *Proc {
	t.Helper()
	p := &Proc{Cmd: exec.Command(bin, args...), done: make(chan struct{})}
	p.Cmd.Dir = dir
	p.Cmd.Env = append(os.Environ(), env...)
	if onePipe {
		p.Cmd.Stdout, p.Cmd.Stderr = &p.both, &p.both // one writer: os/exec gives both one pipe
	} else {
		p.Cmd.Stdout = io.MultiWriter(&p.stdout, &p.both)
		p.Cmd.Stderr = io.MultiWriter(&p.stderr, &p.both)
	}
	p.Cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := p.Cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = p.Cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			syscall.Kill(-p.Cmd.Process.Pid, syscall.SIGKILL)
			<-p.done
		}
	})
	return p
}

// Signal sends sig to the process alone (not its group).
func (p *Proc) Signal(sig syscall.Signal) error { return p.Cmd.Process.Signal(sig) }

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Wait waits up to d for the process to exit and returns its exit code
// (-1 if it was killed by a signal); it fails the test after d.
func (p *Proc) Wait(t testing.TB, d time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(d):
		t.Fatalf("%s did not exit within %v\nstdout:\n%s\nstderr:\n%s", p.Cmd.Path, d, p.Stdout(), p.Stderr())
	}
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		return ee.ExitCode()
	}
	if p.err != nil {
		t.Fatal(p.err)
	}
	return 0
}

// Stdout and Stderr are what the process printed so far.
func (p *Proc) Stdout() string { return p.stdout.String() }
func (p *Proc) Stderr() string { return p.stderr.String() }

// Output is stdout and stderr interleaved as they were written.
func (p *Proc) Output() string { return p.both.String() }

// WaitFor polls cond every 50ms until it is true, the process exits, or
// d passes (then the test fails with what is printed).
func (p *Proc) WaitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	end := time.Now().Add(d)
	for !cond() {
		select {
		case <-p.done:
			t.Fatalf("%s exited while waiting for %s\nstdout:\n%s\nstderr:\n%s", p.Cmd.Path, what, p.Stdout(), p.Stderr())
		default:
		}
		if time.Now().After(end) {
			t.Fatalf("no %s within %v\nstdout:\n%s\nstderr:\n%s", what, d, p.Stdout(), p.Stderr())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Ready reports whether url answers 200.
func Ready(url string) bool {
	c := http.Client{Timeout: time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// Contains is a condition: the process's output contains s.
func (p *Proc) Contains(s string) func() bool {
	return func() bool { return strings.Contains(p.Output(), s) }
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
