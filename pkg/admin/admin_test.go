package admin

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// start runs a Server on 127.0.0.1:0 and stops it when the test ends,
// checking that Serve returned nil.
func start(t *testing.T, c Config) (*Server, string) {
	t.Helper()
	c.Addr = "127.0.0.1:0"
	s, err := New(c)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve() }()
	t.Cleanup(func() {
		if err := s.Shutdown(context.Background()); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if err := <-done; err != nil {
			t.Errorf("Serve returned %v after Shutdown, want nil", err)
		}
	})
	return s, "http://" + s.Addr().String()
}

// client's timeout is only a safety net so a regression fails the test
// instead of hanging it; no assertion depends on timing.
var client = &http.Client{Timeout: 30 * time.Second}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: read body: %v", url, err)
	}
	return resp.StatusCode, string(b)
}

func TestProbes(t *testing.T) {
	var notReady atomic.Pointer[error]
	var dead atomic.Bool
	_, base := start(t, Config{
		Ready: func() error {
			if e := notReady.Load(); e != nil {
				return *e
			}
			return nil
		},
		Live: func() error {
			if dead.Load() {
				return errors.New("event loop stuck")
			}
			return nil
		},
	})

	check := func(path string, wantCode int, wantBody string) {
		t.Helper()
		code, body := get(t, base+path)
		if code != wantCode || body != wantBody {
			t.Errorf("GET %s = %d %q, want %d %q", path, code, body, wantCode, wantBody)
		}
	}
	check("/healthz", http.StatusOK, "ok\n")
	check("/readyz", http.StatusOK, "ok\n")

	draining := errors.New("draining: 1200 connections left")
	notReady.Store(&draining)
	check("/readyz", http.StatusServiceUnavailable, "draining: 1200 connections left\n")
	check("/healthz", http.StatusOK, "ok\n") // readiness does not affect liveness

	notReady.Store(nil)
	check("/readyz", http.StatusOK, "ok\n")

	dead.Store(true)
	check("/healthz", http.StatusServiceUnavailable, "event loop stuck\n")
}

func TestProbesWithNilChecks(t *testing.T) {
	_, base := start(t, Config{})
	for _, p := range []string{"/healthz", "/readyz"} {
		if code, body := get(t, base+p); code != http.StatusOK || body != "ok\n" {
			t.Errorf("GET %s = %d %q, want 200 ok", p, code, body)
		}
	}
}

func TestMetrics(t *testing.T) {
	reg := NewRegistry()
	pushes := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "push_test_pushes_total",
		Help: "Pushes delivered in the test.",
	})
	reg.MustRegister(pushes)
	pushes.Add(3)

	_, base := start(t, Config{Registry: reg})
	code, body := get(t, base+"/metrics")
	if code != http.StatusOK {
		t.Fatalf("GET /metrics = %d", code)
	}
	want := []string{
		"push_test_pushes_total 3",
		"go_goroutines ",
		"go_memstats_heap_alloc_bytes ",  // classic MemStats
		"go_sched_gomaxprocs_threads ",   // runtime/metrics based
		"go_gc_heap_allocs_bytes_total ", // runtime/metrics based
		"promhttp_metric_handler_errors_total",
	}
	if runtime.GOOS == "linux" {
		want = append(want, "process_open_fds ", "process_resident_memory_bytes ")
	}
	for _, w := range want {
		if !strings.Contains(body, "\n"+w) {
			t.Errorf("/metrics lacks %q", w)
		}
	}
}

func TestDefaultRegistry(t *testing.T) {
	_, base := start(t, Config{})
	_, body := get(t, base+"/metrics")
	if !strings.Contains(body, "\ngo_goroutines ") {
		t.Errorf("nil Registry: /metrics lacks go_goroutines")
	}
}

func TestTwoServersShareRegistry(t *testing.T) {
	// promhttp registers its error counter into the registry; a second
	// server on the same registry (e.g. a restart in tests) must still work.
	reg := NewRegistry()
	start(t, Config{Registry: reg})
	start(t, Config{Registry: reg})
}

func TestPprof(t *testing.T) {
	_, base := start(t, Config{})
	tests := []struct{ path, want string }{
		{"/debug/pprof/", "goroutine"},
		{"/debug/pprof/cmdline", "admin.test"},
		{"/debug/pprof/symbol", "num_symbols"},
		{"/debug/pprof/goroutine?debug=1", "goroutine profile:"},
		{"/debug/pprof/heap?debug=1", "heap profile:"},
	}
	for _, tc := range tests {
		code, body := get(t, base+tc.path)
		if code != http.StatusOK || !strings.Contains(body, tc.want) {
			t.Errorf("GET %s = %d, body %.80q; want 200 containing %q", tc.path, code, body, tc.want)
		}
	}
	for _, p := range []string{"/debug/pprof/profile?seconds=600", "/debug/pprof/trace?seconds=60.5"} {
		if code, _ := get(t, base+p); code != http.StatusBadRequest {
			t.Errorf("GET %s: got %d, want 400 (capture too long)", p, code)
		}
	}
	if testing.Short() {
		return
	}
	// A real one-second CPU profile exercises the profile handler.
	code, body := get(t, base+"/debug/pprof/profile?seconds=1")
	if code != http.StatusOK || len(body) == 0 {
		t.Errorf("CPU profile: %d, %d bytes", code, len(body))
	}
}

func TestExtraRoutes(t *testing.T) {
	_, base := start(t, Config{Extra: map[string]http.Handler{
		"GET /dev/token": http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.WriteString(w, "tok-for-"+r.URL.Query().Get("uid"))
		}),
	}})
	if code, body := get(t, base+"/dev/token?uid=alice"); code != http.StatusOK || body != "tok-for-alice" {
		t.Errorf("GET /dev/token = %d %q", code, body)
	}
	if code, _ := get(t, base+"/nope"); code != http.StatusNotFound {
		t.Errorf("GET /nope = %d, want 404", code)
	}
}

func TestNewErrors(t *testing.T) {
	ok := http.NotFoundHandler()
	for name, c := range map[string]Config{
		"empty addr":       {},
		"conflicting path": {Addr: "127.0.0.1:0", Extra: map[string]http.Handler{"/metrics": ok}},
		"bad pattern":      {Addr: "127.0.0.1:0", Extra: map[string]http.Handler{"GET": ok}},
		"nil handler":      {Addr: "127.0.0.1:0", Extra: map[string]http.Handler{"/x": nil}},
	} {
		t.Run(name, func(t *testing.T) {
			if s, err := New(c); err == nil {
				s.Shutdown(context.Background())
				t.Fatal("New succeeded, want error")
			}
		})
	}
}

func TestNewReportsBindError(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	addr := ln.Addr().String()
	_, err = New(Config{Addr: addr})
	if err == nil || !strings.Contains(err.Error(), addr) {
		t.Fatalf("New on busy %s: got %v, want bind error naming the address", addr, err)
	}
}

func TestShutdownWithoutServeReleasesPort(t *testing.T) {
	s, err := New(Config{Addr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	addr := s.Addr().String()
	if err := s.Shutdown(context.Background()); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("port not released: %v", err)
	}
	ln.Close()
	if err := s.Serve(); err != nil {
		t.Errorf("Serve after Shutdown = %v, want nil", err)
	}
}

func TestShutdownDeadlineClosesStuckRequests(t *testing.T) {
	entered := make(chan struct{})
	s, err := New(Config{Addr: "127.0.0.1:0", Extra: map[string]http.Handler{
		"/stuck": http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			close(entered)
			<-r.Context().Done() // like a long pprof capture
		}),
	}})
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve() }()

	reqDone := make(chan error, 1)
	go func() {
		resp, err := client.Get("http://" + s.Addr().String() + "/stuck")
		if err == nil {
			resp.Body.Close()
		}
		reqDone <- err
	}()
	<-entered

	ctx, cancel := context.WithCancel(context.Background())
	cancel() // deadline already passed
	if err := s.Shutdown(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Shutdown = %v, want context.Canceled", err)
	}
	if err := <-served; err != nil {
		t.Errorf("Serve = %v, want nil", err)
	}
	if err := <-reqDone; err == nil {
		t.Errorf("stuck request completed normally; want it cut off")
	}
}
