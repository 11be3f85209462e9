// Package demo is the demo page's HTTP server: it serves the browser client
// and the page (web.FS), tells the page where the cluster's WebSocket
// endpoint is, and, in dev mode only, mints tokens for any user and
// publishes to any user through the Go SDK, so a person can try the cluster
// from a browser without a backend of their own.
package demo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/pushcluster/push/pkg/auth"
	"github.com/pushcluster/push/pkg/userid"
	pushv1 "github.com/pushcluster/push/proto/push/v1"
	"github.com/pushcluster/push/web"
)

// Publisher sends one message to a user: *client.Client (the SDK) is one.
type Publisher interface {
	Publish(ctx context.Context, userID string, data []byte, ttl time.Duration) (*pushv1.PublishResponse, error)
}

// Config configures a Server.
type Config struct {
	// Listen is the HTTP address, e.g. "127.0.0.1:8000" (":0" in tests).
	Listen string
	// WSURL is the WebSocket endpoint the page connects to (the router's),
	// e.g. "ws://127.0.0.1:8080/ws"; GET /config returns it.
	WSURL string
	// Dev enables POST /token and POST /publish; without it both are 404,
	// since they let anybody read and write any user's messages.
	Dev bool
	// Secret signs the tokens POST /token mints (HS256, as the edges check).
	Secret []byte
	// TokenTTL is the minted tokens' lifetime (default one hour).
	TokenTTL time.Duration
	// Publisher serves POST /publish (nil: 503).
	Publisher Publisher
	// Files are the static files (default web.FS).
	Files fs.FS
	// Logger receives request errors (nil: discarded).
	Logger *slog.Logger
}

// Server is the demo HTTP server; its listener is bound by New.
type Server struct {
	cfg Config
	ln  net.Listener
	srv *http.Server
}

// Limits of a request body.
const (
	maxTokenBody   = 1 << 10
	maxPublishBody = 80 << 10 // a payload of the edge's default 64 KiB limit, quoted
)

// New validates c and binds the listener.
func New(c Config) (*Server, error) {
	if c.WSURL == "" {
		return nil, errors.New("demo: no WebSocket URL")
	}
	if c.Dev && len(c.Secret) < auth.MinSecretLen {
		return nil, fmt.Errorf("demo: --dev needs the JWT secret (at least %d bytes) to mint tokens", auth.MinSecretLen)
	}
	if c.TokenTTL <= 0 {
		c.TokenTTL = time.Hour
	}
	if c.Files == nil {
		c.Files = web.FS
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	ln, err := net.Listen("tcp", c.Listen)
	if err != nil {
		return nil, fmt.Errorf("demo: listen %s: %w", c.Listen, err)
	}
	s := &Server{cfg: c, ln: ln}
	s.srv = &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second,
		WriteTimeout: 30 * time.Second, IdleTimeout: 2 * time.Minute, MaxHeaderBytes: 16 << 10}
	return s, nil
}

// Addr is the bound address.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Serve serves until Shutdown; it returns nil after a clean shutdown.
func (s *Server) Serve() error {
	if err := s.srv.Serve(s.ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// Shutdown stops accepting and waits for requests in flight until ctx ends.
func (s *Server) Shutdown(ctx context.Context) error { return s.srv.Shutdown(ctx) }

// Handler routes: GET / (the page), GET /push.js and the other files,
// GET /config, POST /token and POST /publish (dev only).
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	files := http.FileServerFS(s.cfg.Files)
	mux.Handle("GET /", noCache(files))
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-cache")
		http.ServeFileFS(w, r, s.cfg.Files, "demo/index.html")
	})
	mux.HandleFunc("GET /config", s.config)
	if s.cfg.Dev {
		mux.HandleFunc("POST /token", s.token)
		mux.HandleFunc("POST /publish", s.publish)
	}
	return secure(mux)
}

// noCache makes browsers revalidate, so a rebuilt binary's files are used at
// once (the embedded files carry no modification time to compare).
func noCache(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-cache")
		h.ServeHTTP(w, r)
	})
}

func secure(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("Referrer-Policy", "no-referrer")
		h.ServeHTTP(w, r)
	})
}

func (s *Server) config(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, map[string]any{"ws_url": s.cfg.WSURL, "dev": s.cfg.Dev})
}

// readJSON decodes a JSON body of at most limit bytes; it answers the
// request itself and returns false on failure. Only application/json is
// taken: a cross-site form cannot send it without a CORS preflight, which
// this server never grants.
func (s *Server) readJSON(w http.ResponseWriter, r *http.Request, limit int64, v any) bool {
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(strings.ToLower(ct), "application/json") {
		writeError(w, http.StatusUnsupportedMediaType, "Content-Type must be application/json")
		return false
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, limit))
	if err := dec.Decode(v); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("body over %d bytes", limit))
		} else {
			writeError(w, http.StatusBadRequest, "body must be a JSON object: "+err.Error())
		}
		return false
	}
	return true
}

func (s *Server) token(w http.ResponseWriter, r *http.Request) {
	var req struct {
		UID string `json:"uid"`
	}
	if !s.readJSON(w, r, maxTokenBody, &req) {
		return
	}
	if err := userid.Check(req.UID); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	now := time.Now()
	tok, err := auth.Mint(s.cfg.Secret, req.UID, s.cfg.TokenTTL, now)
	if err != nil {
		s.cfg.Logger.Error("mint token", "err", err)
		writeError(w, http.StatusInternalServerError, "cannot mint a token")
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, map[string]any{"uid": req.UID, "token": tok,
		"expires": now.Add(s.cfg.TokenTTL).UTC().Format(time.RFC3339)})
}

func (s *Server) publish(w http.ResponseWriter, r *http.Request) {
	var req struct {
		User string          `json:"user"`
		Data json.RawMessage `json:"data"`
		TTL  uint32          `json:"ttl_seconds"`
	}
	if !s.readJSON(w, r, maxPublishBody, &req) {
		return
	}
	if err := userid.Check(req.User); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if len(req.Data) == 0 || string(req.Data) == "null" {
		writeError(w, http.StatusBadRequest, "data is missing")
		return
	}
	if s.cfg.Publisher == nil {
		writeError(w, http.StatusServiceUnavailable, "no publisher configured")
		return
	}
	// Published as the JSON it is: the edge embeds valid JSON as-is, so a
	// JSON string arrives as that string.
	payload := []byte(req.Data)
	resp, err := s.cfg.Publisher.Publish(r.Context(), req.User, payload, time.Duration(req.TTL)*time.Second)
	if err != nil {
		s.cfg.Logger.Debug("publish", "user", req.User, "err", err)
		writeError(w, http.StatusBadGateway, "publish: "+err.Error())
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"outcome":     strings.TrimPrefix(resp.GetOutcome().String(), "OUTCOME_"),
		"seq":         resp.GetSeq(),
		"epoch":       resp.GetEpoch(),
		"edge":        resp.GetEdgeId(),
		"connections": resp.GetConnections(),
		"reason":      resp.GetReason(),
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"error": msg})
}
