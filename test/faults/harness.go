package faults

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/pushcluster/push/pkg/ring"
	"github.com/pushcluster/push/pkg/store"
)

// Bins are the programs a scenario runs, built from this repository.
type Bins struct {
	Edge, Router, Pushctl, Etcd string
}

// binNames maps each binary to its package.
var binNames = []struct{ name, pkg string }{
	{"edge", "github.com/pushcluster/push/cmd/edge"},
	{"router", "github.com/pushcluster/push/cmd/router"},
	{"pushctl", "github.com/pushcluster/push/cmd/pushctl"},
	{"etcdserver", "github.com/pushcluster/push/test/faults/etcdserver"},
}

func binsIn(dir string) Bins {
	return Bins{
		Edge:    filepath.Join(dir, "edge"),
		Router:  filepath.Join(dir, "router"),
		Pushctl: filepath.Join(dir, "pushctl"),
		Etcd:    filepath.Join(dir, "etcdserver"),
	}
}

// Build runs `go build` for edge, router, pushctl and etcdserver into dir
// (run from inside the module). The build is bounded by ctx.
func Build(ctx context.Context, dir string) (Bins, error) {
	args := []string{"build", "-o", dir + string(filepath.Separator)}
	for _, b := range binNames {
		args = append(args, b.pkg)
	}
	cmd := exec.CommandContext(ctx, "go", args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return Bins{}, fmt.Errorf("go build: %v\n%s", err, out.String())
	}
	return binsIn(dir), nil
}

// UseBins takes the binaries from dir, building only those that are
// missing (etcdserver is not under cmd/, so `make build` does not make it).
func UseBins(ctx context.Context, dir string) (Bins, error) {
	var missing []string
	for _, b := range binNames {
		if _, err := os.Stat(filepath.Join(dir, b.name)); err != nil {
			missing = append(missing, b.pkg)
		}
	}
	if len(missing) > 0 {
		args := append([]string{"build", "-o", dir + string(filepath.Separator)}, missing...)
		cmd := exec.CommandContext(ctx, "go", args...)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err != nil {
			return Bins{}, fmt.Errorf("go build: %v\n%s", err, out.String())
		}
	}
	return binsIn(dir), nil
}

// Proc is one process of the cluster under test.
type Proc struct {
	Name string
	Log  string // path of its combined stdout/stderr
	cmd  *exec.Cmd
	done chan struct{}
	err  error
	once sync.Once
}

// startProc starts argv with its output in dir/<name>.log. The process
// dies with the harness (PDEATHSIG), so a killed harness leaves nothing
// behind.
func startProc(dir, name string, env []string, argv ...string) (*Proc, error) {
	logPath := filepath.Join(dir, name+".log")
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Proc{Name: name, Log: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	return p, nil
}

// Pid is the process id.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Exited reports whether the process has ended.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Signal sends sig (SIGSTOP, SIGCONT, ...) unless the process has ended.
func (p *Proc) Signal(sig syscall.Signal) error {
	if p.Exited() {
		return fmt.Errorf("%s has exited", p.Name)
	}
	return syscall.Kill(p.Pid(), sig)
}

// Kill sends SIGKILL (after SIGCONT, harmless if it was not stopped) and
// waits for the process to end.
func (p *Proc) Kill() {
	p.once.Do(func() {
		if !p.Exited() {
			syscall.Kill(p.Pid(), syscall.SIGKILL)
		}
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
		}
	})
}

// Term sends SIGTERM and waits up to grace, then kills; it reports
// whether the process ended by itself in time.
func (p *Proc) Term(grace time.Duration) bool {
	exited := true
	if !p.Exited() {
		syscall.Kill(p.Pid(), syscall.SIGCONT)
		syscall.Kill(p.Pid(), syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(grace):
			exited = false
		}
	}
	p.Kill()
	return exited
}

// Tail returns the last n bytes of the process log.
func (p *Proc) Tail(n int) string {
	b, _ := os.ReadFile(p.Log)
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// freePort returns a port that was free on host a moment ago.
func freePort(host string) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func freeAddr(host string) (string, error) {
	p, err := freePort(host)
	if err != nil {
		return "", err
	}
	return net.JoinHostPort(host, strconv.Itoa(p)), nil
}

// waitHTTP polls url until it answers 200, the process exits or timeout.
func waitHTTP(p *Proc, url string, timeout time.Duration) error {
	c := &http.Client{Timeout: time.Second, Transport: &http.Transport{Proxy: nil}}
	defer c.CloseIdleConnections()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if p != nil && p.Exited() {
			return fmt.Errorf("%s exited: %v\n%s", p.Name, p.err, p.Tail(2000))
		}
		if r, err := c.Get(url); err == nil {
			r.Body.Close()
			if r.StatusCode == 200 {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	name := "?"
	tail := ""
	if p != nil {
		name, tail = p.Name, p.Tail(2000)
	}
	return fmt.Errorf("%s not ready at %s within %v\n%s", name, url, timeout, tail)
}

// Edge is one edge process and its addresses.
type Edge struct {
	ID               uint32
	WS, GRPC, Admin  string
	Proc             *Proc
	Netns            string // run inside this network namespace (scenario h)
	starts           int
	extraArgs, extEn []string
}

// Router is one router process.
type Router struct {
	Index               int
	Listen, GRPC, Admin string
	Proc                *Proc
}

// Cluster is the set of processes of one scenario, in its own directory.
type Cluster struct {
	Dir      string
	Bins     Bins
	Params   Params
	Secret   []byte
	StoreURL string
	Kind     string // "file" or "etcd"
	Host     string // address the cluster's services bind (127.0.0.1, or the veth address in scenario h)

	Etcd       *Proc
	EtcdClient string // host:port of etcd's client URL

	mu      sync.Mutex
	Edges   map[uint32]*Edge
	Routers []*Router
	procs   []*Proc
	cleanup []func()
	logf    func(format string, args ...any)

	unregister func() // from CloseAll's set
}

// NewCluster makes the scenario directory and, for kind "etcd", starts the
// etcd process. host is where services listen ("" = 127.0.0.1).
func NewCluster(dir string, bins Bins, p Params, kind, host string, logf func(string, ...any)) (*Cluster, error) {
	if host == "" {
		host = "127.0.0.1"
	}
	if logf == nil {
		logf = func(string, ...any) {}
	}
	c := &Cluster{Dir: dir, Bins: bins, Params: p, Kind: kind, Host: host, Edges: map[uint32]*Edge{}, logf: logf,
		Secret: []byte("fault-suite-secret-0123456789abcdef-" + strconv.FormatInt(time.Now().UnixNano(), 36))}
	switch kind {
	case "file":
		c.StoreURL = "file:" + filepath.Join(dir, "ring.json")
	case "etcd":
		if err := c.startEtcd(); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("unknown store kind %q", kind)
	}
	c.unregister = open.add(c.Close)
	return c, nil
}

func (c *Cluster) track(p *Proc) {
	c.mu.Lock()
	c.procs = append(c.procs, p)
	c.mu.Unlock()
}

// OnClose registers f to run at Close, before processes are killed.
func (c *Cluster) OnClose(f func()) {
	c.mu.Lock()
	c.cleanup = append(c.cleanup, f)
	c.mu.Unlock()
}

func (c *Cluster) startEtcd() error {
	var lastErr error
	for try := 0; try < 3; try++ {
		cp, err1 := freePort(c.Host)
		pp, err2 := freePort("127.0.0.1")
		if err := errors.Join(err1, err2); err != nil {
			return err
		}
		client := fmt.Sprintf("http://%s", net.JoinHostPort(c.Host, strconv.Itoa(cp)))
		peer := fmt.Sprintf("http://127.0.0.1:%d", pp)
		args := []string{c.Bins.Etcd, "--data-dir", filepath.Join(c.Dir, "etcd"), "--client-url", client, "--peer-url", peer}
		p, err := startProc(c.Dir, "etcd", nil, args...)
		if err != nil {
			return err
		}
		if err := waitHTTP(p, client+"/health", 30*time.Second); err != nil {
			p.Kill()
			lastErr = err
			continue
		}
		c.track(p)
		c.Etcd = p
		c.EtcdClient = net.JoinHostPort(c.Host, strconv.Itoa(cp))
		c.StoreURL = "etcd://" + c.EtcdClient + "/faults"
		return nil
	}
	return fmt.Errorf("etcd: %w", lastErr)
}

func (c *Cluster) env() []string {
	return []string{"PUSH_JWT_SECRET=" + string(c.Secret), "PUSH_RING=" + c.StoreURL}
}

// Pushctl runs pushctl with the cluster's ring and secret; it returns the
// combined output and the exit code.
func (c *Cluster) Pushctl(args ...string) (string, int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.Bins.Pushctl, args...)
	cmd.Env = append(os.Environ(), c.env()...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code, err = ee.ExitCode(), nil
	}
	c.logf("pushctl %s -> %d: %s", strings.Join(args, " "), code, strings.TrimSpace(out.String()))
	return out.String(), code, err
}

// mustPushctl is Pushctl that wants exit code 0.
func (c *Cluster) mustPushctl(args ...string) error {
	out, code, err := c.Pushctl(args...)
	if err != nil {
		return err
	}
	if code != 0 {
		return fmt.Errorf("pushctl %s: exit %d: %s", strings.Join(args, " "), code, strings.TrimSpace(out))
	}
	return nil
}

// NewEdge reserves addresses for edge id (not started, not in the ring).
// In a namespace, host is the namespace's address.
func (c *Cluster) NewEdge(id uint32, netns, host string) (*Edge, error) {
	if host == "" {
		host = c.Host
	}
	e := &Edge{ID: id, Netns: netns}
	// Ports are reserved on the root namespace's loopback; a namespace has
	// ports of its own, all free.
	var ports [3]int
	for i := range ports {
		p, err := freePort("127.0.0.1")
		if err != nil {
			return nil, err
		}
		ports[i] = p
	}
	e.WS = net.JoinHostPort(host, strconv.Itoa(ports[0]))
	e.GRPC = net.JoinHostPort(host, strconv.Itoa(ports[1]))
	e.Admin = net.JoinHostPort(host, strconv.Itoa(ports[2]))
	c.mu.Lock()
	c.Edges[id] = e
	c.mu.Unlock()
	return e, nil
}

// Member is the ring member spec of e as pushctl flags.
func (e *Edge) memberFlags() []string {
	return []string{"--id", strconv.Itoa(int(e.ID)), "--name", fmt.Sprintf("edge-%d", e.ID), "--ws", e.WS, "--grpc", e.GRPC}
}

// InitRing writes a ring of the given edges, not started yet, with
// pushctl (init, then add with --force where pushctl asks for it).
func (c *Cluster) InitRing(edges ...*Edge) error {
	for i, e := range edges {
		if i == 0 {
			if err := c.mustPushctl(append([]string{"ring", "init"}, e.memberFlags()...)...); err != nil {
				return err
			}
			continue
		}
		if _, err := c.RingAdd(e); err != nil {
			return err
		}
	}
	return nil
}

// RingAdd runs pushctl ring add for e; when pushctl refuses because the
// edge does not answer (exit 2, naming --force), it adds it again with
// --force and says so in note.
func (c *Cluster) RingAdd(e *Edge) (note string, err error) {
	args := append([]string{"ring", "add", "--keys", "0"}, e.memberFlags()...)
	out, code, err := c.Pushctl(args...)
	if err != nil {
		return "", err
	}
	if code == 0 {
		return "", nil
	}
	if code != 2 || !strings.Contains(out, "--force") {
		return "", fmt.Errorf("pushctl %s: exit %d: %s", strings.Join(args, " "), code, strings.TrimSpace(out))
	}
	note = fmt.Sprintf("pushctl ring add of edge %d refused (exit 2: %s); added with --force", e.ID, firstLine(out))
	return note, c.mustPushctl(append(args, "--force")...)
}

// StartEdge starts (or restarts, on the same addresses) edge e and, when
// wait, waits for its /readyz.
func (c *Cluster) StartEdge(e *Edge, wait bool) error {
	p := c.Params
	e.starts++
	name := fmt.Sprintf("edge-%d", e.ID)
	if e.starts > 1 {
		name = fmt.Sprintf("edge-%d.%d", e.ID, e.starts)
	}
	argv := []string{c.Bins.Edge, "--id", strconv.Itoa(int(e.ID)), "--listen", e.WS, "--grpc", e.GRPC, "--admin", e.Admin,
		"--ring", c.StoreURL, "--lease-ttl", p.LeaseTTL.String(), "--dev",
		"--ping-interval", p.Ping.String(), "--idle-timeout", (4 * p.Ping).String(),
		"--drain-period", "2s", "--log-format", "text"}
	if e.Netns != "" {
		argv = append([]string{"ip", "netns", "exec", e.Netns}, argv...)
	}
	proc, err := startProc(c.Dir, name, c.env(), argv...)
	if err != nil {
		return err
	}
	c.track(proc)
	e.Proc = proc
	if !wait {
		return nil
	}
	return waitHTTP(proc, "http://"+e.Admin+"/readyz", 30*time.Second)
}

// StartRouter starts one more router and waits for its /readyz.
func (c *Cluster) StartRouter() (*Router, error) {
	r := &Router{Index: len(c.Routers)}
	var err error
	if r.Listen, err = freeAddr("127.0.0.1"); err != nil {
		return nil, err
	}
	if r.GRPC, err = freeAddr("127.0.0.1"); err != nil {
		return nil, err
	}
	if r.Admin, err = freeAddr("127.0.0.1"); err != nil {
		return nil, err
	}
	proc, err := startProc(c.Dir, fmt.Sprintf("router-%d", r.Index), c.env(), c.Bins.Router,
		"--listen", r.Listen, "--grpc", r.GRPC, "--admin", r.Admin, "--ring", c.StoreURL,
		"--check-interval", "1s", "--drain-period", "2s", "--log-format", "text")
	if err != nil {
		return nil, err
	}
	c.track(proc)
	r.Proc = proc
	c.mu.Lock()
	c.Routers = append(c.Routers, r)
	c.mu.Unlock()
	return r, waitHTTP(proc, "http://"+r.Admin+"/readyz", 30*time.Second)
}

// RouterAddrs are the routers' WebSocket addresses, in index order.
func (c *Cluster) RouterAddrs() []string {
	var out []string
	for _, r := range c.Routers {
		out = append(out, r.Listen)
	}
	return out
}

// RouterGRPCs are the routers' gRPC forwarder addresses.
func (c *Cluster) RouterGRPCs() []string {
	var out []string
	for _, r := range c.Routers {
		out = append(out, r.GRPC)
	}
	return out
}

// OpenStore opens the cluster's ring store in this process.
func (c *Cluster) OpenStore() (store.Store, error) { return store.Open(c.StoreURL, quietLogger()) }

// DesiredRing loads the desired ring document (what pushctl wrote).
func (c *Cluster) DesiredRing() (*ring.Ring, error) {
	st, err := c.OpenStore()
	if err != nil {
		return nil, err
	}
	defer st.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d, err := st.Load(ctx)
	if err != nil {
		return nil, err
	}
	return ring.New(d)
}

// openSet holds the Close of every live cluster and namespace, for
// CloseAll.
type openSet struct {
	mu     sync.Mutex
	next   int
	closes map[int]func()
}

var open = &openSet{closes: map[int]func(){}}

func (o *openSet) add(f func()) func() {
	o.mu.Lock()
	defer o.mu.Unlock()
	id := o.next
	o.next++
	var once sync.Once
	o.closes[id] = func() { once.Do(f) }
	return func() {
		o.mu.Lock()
		delete(o.closes, id)
		o.mu.Unlock()
	}
}

// CloseAll kills every process and removes every namespace that a running
// scenario holds (for a harness that is interrupted).
func CloseAll() {
	open.mu.Lock()
	var fs []func()
	for _, f := range open.closes {
		fs = append(fs, f)
	}
	open.mu.Unlock()
	for _, f := range fs {
		f()
	}
}

// Close runs the cleanups and kills every process the cluster started.
func (c *Cluster) Close() {
	if c.unregister != nil {
		c.unregister()
	}
	c.mu.Lock()
	cleanup := c.cleanup
	c.cleanup = nil
	procs := c.procs
	c.mu.Unlock()
	for i := len(cleanup) - 1; i >= 0; i-- {
		cleanup[i]()
	}
	var wg sync.WaitGroup
	for _, p := range procs {
		wg.Add(1)
		go func() { defer wg.Done(); p.Kill() }()
	}
	wg.Wait()
}
