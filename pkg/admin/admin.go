// Package admin is the admin HTTP port every push daemon (edge, router,
// pushctl) runs next to its data-plane traffic: liveness and readiness
// probes for the orchestrator, Prometheus metrics, and pprof. Keeping it on a
// separate listener means it can stay on a private address and keeps
// responding when the public port is saturated.
//
// Probes (/healthz, /readyz) and /metrics are open to whoever reaches the
// port (the kubelet and Prometheus carry no credentials). Everything else —
// /debug/pprof (costly, and it reveals memory), /drain and any route a
// daemon adds (Config.Extra) — needs the admin token as
// "Authorization: Bearer <token>" (Auth: --admin-token-file or
// PUSH_ADMIN_TOKEN); without a token configured those routes are served
// only when the port listens on loopback, and answer 403 otherwise.
//
// All handlers live on the Server's own mux. Importing net/http/pprof also
// registers its handlers on http.DefaultServeMux as a side effect, so no
// daemon may ever serve http.DefaultServeMux on a public port.
package admin

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Timeouts for the admin server. Only operators and scrapers talk to this
// port, so they are generous where pprof needs it and tight elsewhere.
const (
	readHeaderTimeout = 5 * time.Second
	readTimeout       = 10 * time.Second
	// writeTimeout covers the longest pprof capture we allow plus time to
	// send it. (net/http/pprof also extends the deadline per capture
	// itself, but the cap below is what bounds how long a request, and so
	// Shutdown, can take.)
	writeTimeout = 70 * time.Second
	// maxCaptureSeconds caps ?seconds= on /debug/pprof/profile and
	// /debug/pprof/trace; longer captures pin a goroutine and delay
	// shutdown for no diagnostic gain.
	maxCaptureSeconds = 60
	idleTimeout       = 2 * time.Minute
	maxHeaderBytes    = 64 << 10
	// maxScrapesInFlight stops a misbehaving scraper from piling up
	// concurrent Gathers on a busy daemon.
	maxScrapesInFlight = 4
)

// Config configures a Server.
type Config struct {
	// Addr is the TCP address to listen on, e.g. "127.0.0.1:9100". ":0"
	// picks a free port (tests); read it back with Server.Addr.
	Addr string
	// Registry is gathered for /metrics. New does not register anything
	// into it except promhttp's own promhttp_metric_handler_errors_total
	// counter, so the daemon fully controls its contents; build it with
	// NewRegistry to get Go and process metrics. If nil, New uses a fresh
	// NewRegistry().
	Registry *prometheus.Registry
	// Ready reports readiness: nil error means ready. /readyz answers 503
	// with the error text otherwise. A nil Ready is always ready.
	Ready func() error
	// Live reports liveness; /healthz answers 200 "ok" when Live is nil or
	// returns nil, and 503 with the error text otherwise.
	Live func() error
	// Logger receives server errors (e.g. malformed requests, metric
	// gathering failures). Nil discards them.
	Logger *slog.Logger
	// Extra adds routes, keyed by ServeMux pattern (e.g. "/drain" or
	// "POST /dev/token"), for daemon-specific handlers; they need the admin
	// token, as pprof does.
	Extra map[string]http.Handler
	// Open adds routes that decide their own authorization (the cluster
	// console: its pages and GET endpoints are readable, its ring changes
	// check the admin token themselves); the admin guard does not wrap them.
	Open map[string]http.Handler
	// Auth is the admin token guarding pprof and Extra.
	Auth Auth
}

// Auth is the admin token: Token, or the contents of TokenFile (read on
// each guarded request, so a rotated Secret applies at once).
type Auth struct {
	Token, TokenFile string
}

// RegisterFlags adds a's flags to fs.
func (a *Auth) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&a.Token, "admin-token", "", "bearer token the admin port's /drain and /debug/pprof require (prefer $PUSH_ADMIN_TOKEN or --admin-token-file; without one they are served only on a loopback --admin)")
	fs.StringVar(&a.TokenFile, "admin-token-file", "", "file holding the admin token, read on each guarded request")
}

// Current returns the configured token ("" when none): Token, or the
// contents of TokenFile as they are now.
func (a Auth) Current() (string, error) { return a.token() }

// token is the configured token, "" when none.
func (a Auth) token() (string, error) {
	if a.TokenFile == "" {
		return a.Token, nil
	}
	b, err := os.ReadFile(a.TokenFile)
	if err != nil {
		return "", fmt.Errorf("admin token file: %w", err)
	}
	t := strings.TrimSpace(string(b))
	if t == "" {
		return "", fmt.Errorf("admin token file %s is empty", a.TokenFile)
	}
	return t, nil
}

// guard serves h to requests with the admin token, or to anybody when no
// token is configured and the port is on loopback.
func guard(a Auth, loopback bool, log *slog.Logger, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		want, err := a.token()
		if err != nil {
			log.Error("admin request refused: admin token unreadable", "path", r.URL.Path, "err", err)
			http.Error(w, "admin token unreadable on the server", http.StatusServiceUnavailable)
			return
		}
		if want == "" {
			if loopback {
				// Without a token, a web page the operator has open could
				// still reach a loopback port (an <img> pointing at /drain):
				// requests a browser marks as cross-site are refused.
				if crossSite(r) {
					http.Error(w, "forbidden: a cross-site browser request to a guarded admin endpoint", http.StatusForbidden)
					return
				}
				h.ServeHTTP(w, r)
				return
			}
			http.Error(w, "forbidden: this endpoint needs an admin token and none is configured (--admin-token-file or PUSH_ADMIN_TOKEN)", http.StatusForbidden)
			return
		}
		got := r.Header.Get("Authorization")
		if len(got) < 7 || !strings.EqualFold(got[:7], "bearer ") {
			w.Header().Set("WWW-Authenticate", `Bearer realm="push-admin"`)
			http.Error(w, "unauthorized: send Authorization: Bearer <admin token>", http.StatusUnauthorized)
			return
		}
		// Compared as digests: equal length, so the time taken says
		// nothing about the token's length or its first differing byte.
		gs, ws := sha256.Sum256([]byte(strings.TrimSpace(got[7:]))), sha256.Sum256([]byte(want))
		if subtle.ConstantTimeCompare(gs[:], ws[:]) != 1 {
			log.Debug("admin request with a wrong token", "path", r.URL.Path, "remote", r.RemoteAddr)
			w.Header().Set("WWW-Authenticate", `Bearer realm="push-admin", error="invalid_token"`)
			http.Error(w, "unauthorized: wrong admin token", http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// crossSite reports whether a browser sent r from another site: its
// Sec-Fetch-Site is cross-site or same-site (Fetch Metadata, which browsers
// send on every request), or its Origin names another host than r.Host.
// Tools (curl, pushctl, Kubernetes hooks) send neither header.
func crossSite(r *http.Request) bool {
	switch r.Header.Get("Sec-Fetch-Site") {
	case "cross-site", "same-site":
		return true
	}
	if o := r.Header.Get("Origin"); o != "" {
		u, err := url.Parse(o)
		return err != nil || u.Host != r.Host
	}
	return false
}

// isLoopback reports whether a listen address is reachable from this host
// only.
func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Server is a running admin HTTP endpoint. Its listener is bound by New, so
// bind errors surface at start-up rather than when Serve runs in a
// goroutine.
type Server struct {
	srv *http.Server
	ln  net.Listener
}

// NewRegistry returns a registry with the Go collector (classic MemStats
// metrics plus runtime/metrics based GC, memory and scheduler series) and
// the process collector (CPU, RSS, open fds, ...) already registered.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		// Not MetricsAll: it adds hundreds of rarely useful series per
		// daemon (e.g. every godebug counter).
		collectors.NewGoCollector(collectors.WithGoCollectorRuntimeMetrics(
			collectors.MetricsGC, collectors.MetricsMemory, collectors.MetricsScheduler,
		)),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return reg
}

// New builds the admin server and binds its listener immediately. Routes:
// /healthz, /readyz, /metrics, /debug/pprof/ (with cmdline, profile, symbol,
// trace and the named profiles), plus c.Extra. pprof is registered on this
// server's own mux, never on http.DefaultServeMux.
func New(c Config) (*Server, error) {
	if c.Addr == "" {
		return nil, errors.New("admin: empty listen address")
	}
	logger := c.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	reg := c.Registry
	if reg == nil {
		reg = NewRegistry()
	}

	mux := http.NewServeMux()
	mux.Handle("/healthz", probe(c.Live))
	mux.Handle("/readyz", probe(c.Ready))
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog:            slog.NewLogLogger(logger.Handler(), slog.LevelError),
		ErrorHandling:       promhttp.ContinueOnError,
		Registry:            reg,
		MaxRequestsInFlight: maxScrapesInFlight,
	}))
	lo := isLoopback(c.Addr)
	if _, err := c.Auth.token(); err != nil {
		return nil, fmt.Errorf("admin: %w", err)
	}
	if c.Auth.Token == "" && c.Auth.TokenFile == "" && !lo {
		logger.Warn("admin port is not loopback and has no admin token: /drain and /debug/pprof answer 403 (set --admin-token-file or PUSH_ADMIN_TOKEN)", "addr", c.Addr)
	}
	g := func(h http.Handler) http.Handler { return guard(c.Auth, lo, logger, h) }
	mux.Handle("/debug/pprof/", g(http.HandlerFunc(pprof.Index)))
	mux.Handle("/debug/pprof/cmdline", g(http.HandlerFunc(pprof.Cmdline)))
	mux.Handle("/debug/pprof/profile", g(capSeconds(pprof.Profile)))
	mux.Handle("/debug/pprof/symbol", g(http.HandlerFunc(pprof.Symbol)))
	mux.Handle("/debug/pprof/trace", g(capSeconds(pprof.Trace)))
	for pattern, h := range c.Extra {
		if h != nil {
			h = g(h)
		}
		if err := handle(mux, pattern, h); err != nil {
			return nil, err
		}
	}
	for pattern, h := range c.Open {
		if err := handle(mux, pattern, h); err != nil {
			return nil, err
		}
	}

	ln, err := net.Listen("tcp", c.Addr)
	if err != nil {
		return nil, fmt.Errorf("admin: listen on %q: %w", c.Addr, err)
	}
	return &Server{
		ln: ln,
		srv: &http.Server{
			Handler:           mux,
			ReadHeaderTimeout: readHeaderTimeout,
			ReadTimeout:       readTimeout,
			WriteTimeout:      writeTimeout,
			IdleTimeout:       idleTimeout,
			MaxHeaderBytes:    maxHeaderBytes,
			ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
		},
	}, nil
}

// handle turns ServeMux's panic on a bad or conflicting pattern into an
// error, so a daemon's misconfigured Extra route fails New instead of
// crashing the process.
func handle(mux *http.ServeMux, pattern string, h http.Handler) (err error) {
	if h == nil {
		return fmt.Errorf("admin: extra route %q: nil handler", pattern)
	}
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("admin: extra route %q: %v", pattern, r)
		}
	}()
	mux.Handle(pattern, h)
	return nil
}

// capSeconds rejects captures longer than maxCaptureSeconds. Unparsable
// values pass through so pprof reports them in its usual way.
func capSeconds(h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if sec, err := strconv.ParseFloat(r.FormValue("seconds"), 64); err == nil && sec > maxCaptureSeconds {
			http.Error(w, fmt.Sprintf("seconds=%g exceeds the admin port's limit of %d", sec, maxCaptureSeconds), http.StatusBadRequest)
			return
		}
		h(w, r)
	})
}

// probe serves a health check. Responses are plain text and uncacheable so a
// proxy can never serve a stale "ok".
func probe(check func() error) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Type", "text/plain; charset=utf-8")
		h.Set("Cache-Control", "no-store")
		h.Set("X-Content-Type-Options", "nosniff")
		if check != nil {
			if err := check(); err != nil {
				w.WriteHeader(http.StatusServiceUnavailable)
				_, _ = io.WriteString(w, strings.TrimSpace(err.Error())+"\n")
				return
			}
		}
		_, _ = io.WriteString(w, "ok\n")
	})
}

// Addr returns the bound address, which tells callers the real port when
// Config.Addr ended in ":0".
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Serve serves requests until Shutdown is called, then returns nil. Any
// other return is a real failure of the listener.
func (s *Server) Serve() error {
	err := s.srv.Serve(s.ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return fmt.Errorf("admin: serve on %s: %w", s.ln.Addr(), err)
}

// Shutdown stops accepting connections and waits for in-flight requests
// until ctx is done. A running pprof capture can take up to a minute, so if
// ctx expires first the remaining connections are closed forcibly and ctx's
// error is returned; either way the port is released.
func (s *Server) Shutdown(ctx context.Context) error {
	// http.Server only closes listeners that Serve has started using;
	// closing ours too releases the port even if Serve never ran.
	defer s.ln.Close()
	err := s.srv.Shutdown(ctx)
	if err != nil {
		_ = s.srv.Close()
		return fmt.Errorf("admin: shutdown: %w", err)
	}
	return nil
}
