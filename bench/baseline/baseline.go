// Package baseline is the design most Go WebSocket services use, kept as
// the yardstick for the edge: github.com/gorilla/websocket on net/http,
// one goroutine per connection blocked in ReadMessage, writes under a
// per-connection mutex. It speaks the edge's contract — the same JWT check
// (pkg/auth) before the upgrade, the same {"seq":N,"data":...} envelope,
// and push.v1.Push Publish and Broadcast over gRPC — so the same load
// generator and publishers drive both (`pushbench baseline`).
package baseline

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"runtime"
	"strconv"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"

	"github.com/pushcluster/push/pkg/auth"
	pushv1 "github.com/pushcluster/push/proto/push/v1"
)

// Config says where to listen.
type Config struct {
	Listen, GRPC, Admin string
	Secret              []byte
	WriteTimeout        time.Duration // per frame; a slower client is closed
}

// conn is one client. mu serialises writes (gorilla allows one writer);
// seq is the user's last sequence number, guarded by mu.
type conn struct {
	mu  sync.Mutex
	ws  *websocket.Conn
	seq uint64
}

// server holds the registry: users guards the map, each conn its writes.
type server struct {
	pushv1.UnimplementedPushServer
	cfg   Config
	ver   *auth.Verifier
	up    websocket.Upgrader
	mu    sync.RWMutex
	users map[string]*conn
}

// Serve runs until ctx ends.
func Serve(ctx context.Context, cfg Config) error {
	if cfg.WriteTimeout == 0 {
		cfg.WriteTimeout = 10 * time.Second
	}
	ver, err := auth.NewVerifier(auth.Config{HMACSecret: cfg.Secret})
	if err != nil {
		return err
	}
	s := &server{cfg: cfg, ver: ver, users: map[string]*conn{},
		// Zero buffer sizes: gorilla reuses the HTTP server's 4 KiB
		// buffers, its documented default.
		up: websocket.Upgrader{CheckOrigin: func(*http.Request) bool { return true }}}

	wsMux := http.NewServeMux()
	wsMux.HandleFunc("/ws", s.serveWS)
	wsSrv := &http.Server{Handler: wsMux, ReadHeaderTimeout: 10 * time.Second}
	admMux := http.NewServeMux()
	admMux.Handle("/metrics", promhttp.Handler())
	admMux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok\n")) })
	admMux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok\n")) })
	admMux.HandleFunc("/debug/pprof/", pprof.Index)
	admSrv := &http.Server{Handler: admMux, ReadHeaderTimeout: 10 * time.Second}
	gs := grpc.NewServer()
	pushv1.RegisterPushServer(gs, s)

	lws, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return err
	}
	lg, err := net.Listen("tcp", cfg.GRPC)
	if err != nil {
		return err
	}
	la, err := net.Listen("tcp", cfg.Admin)
	if err != nil {
		return err
	}
	errc := make(chan error, 3)
	go func() { errc <- wsSrv.Serve(lws) }()
	go func() { errc <- gs.Serve(lg) }()
	go func() { errc <- admSrv.Serve(la) }()
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	gs.Stop()
	wsSrv.Close()
	admSrv.Close()
	return err
}

func (s *server) serveWS(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	uid := q.Get("uid")
	if err := s.ver.Verify(q.Get("token"), uid); err != nil {
		http.Error(w, auth.Reason(err), http.StatusUnauthorized)
		return
	}
	ws, err := s.up.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	c := &conn{ws: ws}
	s.mu.Lock()
	old := s.users[uid]
	s.users[uid] = c
	s.mu.Unlock()
	if old != nil {
		old.ws.Close()
	}
	// The connection's goroutine: read (and answer pings, gorilla's
	// default handler) until the client goes.
	for {
		if _, _, err := ws.ReadMessage(); err != nil {
			break
		}
	}
	s.mu.Lock()
	if s.users[uid] == c {
		delete(s.users, uid)
	}
	s.mu.Unlock()
	ws.Close()
}

// envelope frames data as the edge does: embedded as-is when it is JSON.
func envelope(seq uint64, broadcast bool, data []byte) []byte {
	b := make([]byte, 0, len(data)+48)
	b = append(b, `{"seq":`...)
	b = strconv.AppendUint(b, seq, 10)
	if broadcast {
		b = append(b, `,"broadcast":true`...)
	}
	b = append(b, `,"data":`...)
	if json.Valid(data) {
		b = append(b, data...)
	} else {
		q, _ := json.Marshal(string(data))
		b = append(b, q...)
	}
	return append(b, '}')
}

func (c *conn) write(pm *websocket.PreparedMessage, msg []byte, timeout time.Duration) error {
	c.ws.SetWriteDeadline(time.Now().Add(timeout))
	if pm != nil {
		return c.ws.WritePreparedMessage(pm)
	}
	return c.ws.WriteMessage(websocket.TextMessage, msg)
}

// Publish delivers to the user's connection if it is here.
func (s *server) Publish(_ context.Context, req *pushv1.PublishRequest) (*pushv1.PublishResponse, error) {
	s.mu.RLock()
	c := s.users[req.UserId]
	s.mu.RUnlock()
	if c == nil {
		return &pushv1.PublishResponse{Outcome: pushv1.Outcome_OUTCOME_REJECTED, Reason: "not connected"}, nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seq++
	if err := c.write(nil, envelope(c.seq, false, req.Data), s.cfg.WriteTimeout); err != nil {
		c.ws.Close()
		return &pushv1.PublishResponse{Outcome: pushv1.Outcome_OUTCOME_REJECTED, Reason: err.Error()}, nil
	}
	return &pushv1.PublishResponse{Outcome: pushv1.Outcome_OUTCOME_DELIVERED, Seq: c.seq, Connections: 1}, nil
}

// Broadcast frames once (a PreparedMessage) and writes to everybody from
// one goroutine per CPU.
func (s *server) Broadcast(_ context.Context, req *pushv1.BroadcastRequest) (*pushv1.BroadcastResponse, error) {
	pm, err := websocket.NewPreparedMessage(websocket.TextMessage, envelope(0, true, req.Data))
	if err != nil {
		return nil, fmt.Errorf("prepare: %w", err)
	}
	s.mu.RLock()
	all := make([]*conn, 0, len(s.users))
	for _, c := range s.users {
		all = append(all, c)
	}
	s.mu.RUnlock()
	workers := runtime.GOMAXPROCS(0)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var sent uint64
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			var n uint64
			for i := w; i < len(all); i += workers {
				c := all[i]
				c.mu.Lock()
				if c.write(pm, nil, s.cfg.WriteTimeout) == nil {
					n++
				} else {
					c.ws.Close()
				}
				c.mu.Unlock()
			}
			mu.Lock()
			sent += n
			mu.Unlock()
		}(w)
	}
	wg.Wait()
	return &pushv1.BroadcastResponse{Connections: sent, Edges: 1}, nil
}
