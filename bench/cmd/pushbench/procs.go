package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"

	"github.com/pushcluster/push/bench/loadgen"
)

// daemon is a process under test with an admin port.
type daemon struct {
	name    string
	cmd     *exec.Cmd
	admin   string // host:port
	logPath string
}

func startDaemon(name, bin string, args []string, env []string, admin string) (*daemon, error) {
	return startDaemonReady(name, bin, args, env, admin, "/readyz")
}

// startDaemonReady starts bin and waits (15 s at most) until GET
// http://admin+ready answers 200.
func startDaemonReady(name, bin string, args []string, env []string, admin, ready string) (*daemon, error) {
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	logf, err := os.CreateTemp("", "pushbench-"+name+"-*.log")
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	d := &daemon{name: name, cmd: cmd, admin: admin, logPath: logf.Name()}
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		if r, err := http.Get("http://" + admin + ready); err == nil {
			r.Body.Close()
			if r.StatusCode == 200 {
				progress("%s up (pid %d, log %s)", name, cmd.Process.Pid, logf.Name())
				return d, nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	d.stop()
	log, _ := os.ReadFile(logf.Name())
	return nil, fmt.Errorf("%s did not become ready; log:\n%s", name, log)
}

func (d *daemon) pid() int { return d.cmd.Process.Pid }

// exited reports an error if the process has ended (it is not waited for
// until stop, so it shows as a zombie, state Z, in /proc/<pid>/stat).
// A nil d is a server this run does not own.
func (d *daemon) exited() error {
	if d == nil || d.cmd.Process == nil {
		return nil
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", d.pid()))
	if err == nil {
		// pid (comm) state ...: comm may hold spaces, the state follows the last ')'.
		if i := bytes.LastIndexByte(b, ')'); i >= 0 && i+2 < len(b) && b[i+2] != 'Z' && b[i+2] != 'X' {
			return nil
		}
	}
	return fmt.Errorf("%s (pid %d) exited during the run; its log is in %s", d.name, d.pid(), d.logPath)
}

func (d *daemon) stop() {
	if d.cmd.Process == nil {
		return
	}
	d.cmd.Process.Signal(os.Interrupt)
	done := make(chan struct{})
	go func() { d.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		d.cmd.Process.Kill()
		<-done
	}
}

// worker is a load-generator child process (this binary, "worker").
type worker struct {
	cmd    *exec.Cmd
	in     io.WriteCloser
	events chan loadgen.Event
}

func startWorker(args []string) (*worker, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self, append([]string{"worker"}, args...)...)
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	w := &worker{cmd: cmd, in: in, events: make(chan loadgen.Event, 64)}
	go func() {
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 64<<20), 64<<20)
		for sc.Scan() {
			var e loadgen.Event
			if json.Unmarshal(sc.Bytes(), &e) == nil {
				w.events <- e
			}
		}
		close(w.events)
	}()
	return w, nil
}

func (w *worker) send(format string, a ...any) { fmt.Fprintf(w.in, format+"\n", a...) }

// await returns the next event of type typ, within timeout.
func (w *worker) await(typ string, timeout time.Duration) (loadgen.Event, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for {
		select {
		case e, ok := <-w.events:
			if !ok {
				return e, fmt.Errorf("worker exited")
			}
			if e.Type == typ {
				return e, nil
			}
		case <-ctx.Done():
			return loadgen.Event{}, fmt.Errorf("worker: no %q event within %v", typ, timeout)
		}
	}
}

func (w *worker) stop() {
	w.in.Close()
	done := make(chan struct{})
	go func() { w.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		w.cmd.Process.Kill()
	}
}

// openAll asks every worker to open count more clients at rate (total) and
// shows progress (open clients, rate, failures, last error) about once a
// second until all answered, within a bound.
func openAll(ws []*worker, count, rate int) (opened, failed int64, lastErr string, err error) {
	per := count / len(ws)
	for i, w := range ws {
		n := per
		if i == len(ws)-1 {
			n = count - per*(len(ws)-1)
		}
		w.send("open %d %d", n, rate/len(ws))
	}
	timeout := time.Duration(count/max(rate, 1)+120) * time.Second
	type state struct {
		last  loadgen.Event
		done  bool
		err   error
		final loadgen.Event
	}
	var mu sync.Mutex
	st := make([]state, len(ws))
	var wg sync.WaitGroup
	for i, w := range ws {
		wg.Add(1)
		go func(i int, w *worker) {
			defer wg.Done()
			deadline := time.After(timeout)
			for {
				select {
				case e, ok := <-w.events:
					if !ok {
						mu.Lock()
						st[i].err = fmt.Errorf("worker exited")
						mu.Unlock()
						return
					}
					mu.Lock()
					switch e.Type {
					case "progress":
						st[i].last = e
					case "opened":
						st[i].last, st[i].final, st[i].done = e, e, true
					}
					mu.Unlock()
					if e.Type == "opened" {
						return
					}
				case <-deadline:
					mu.Lock()
					st[i].err = fmt.Errorf("worker: no \"opened\" event within %v", timeout)
					mu.Unlock()
					return
				}
			}
		}(i, w)
	}
	finished := make(chan struct{})
	go func() { wg.Wait(); close(finished) }()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	t0, prevOpen, prevT := time.Now(), int64(-1), time.Now()
	for {
		select {
		case <-finished:
			for _, s := range st {
				if s.err != nil {
					return 0, 0, "", s.err
				}
				opened += s.final.Open
				failed += s.final.Failed
				if s.final.Err != "" {
					lastErr = s.final.Err
				}
			}
			return opened, failed, lastErr, nil
		case <-tick.C:
			mu.Lock()
			var open, fail int64
			var le string
			for _, s := range st {
				open += s.last.Open
				fail += s.last.Failed
				if s.last.Err != "" {
					le = s.last.Err
				}
			}
			mu.Unlock()
			if open == 0 && fail == 0 {
				continue
			}
			now := time.Now()
			rateNow := 0.0
			if prevOpen >= 0 {
				rateNow = float64(open-prevOpen) / now.Sub(prevT).Seconds()
			}
			prevOpen, prevT = open, now
			line := fmt.Sprintf("  … %d clients open (%.0f/s now), %d failed, %.0f s", open, rateNow, fail, now.Sub(t0).Seconds())
			if le != "" {
				line += ", last error: " + le
			}
			progress("%s", line)
		}
	}
}

func progress(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "pushbench: "+format+"\n", a...)
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
