// Package console serves the cluster console from a daemon's admin port
// (the router's): a page under /console/ (web/console, embedded; plain
// HTML, JavaScript and SVG, no build step) and the JSON API under /api/v1/
// that the page reads and that scripts can use as well
// (docs/console.md):
//
//	GET  /api/v1/cluster       the ring document, each member's share, state, liveness and lease
//	GET  /api/v1/edges         per edge: connections, publishes/s, moves, guests, fencing (scraped from its /metrics)
//	POST /api/v1/ring/preview  what a change would do: "pushctl ring simulate"'s figures
//	POST /api/v1/ring/apply    make the change, compare-and-swap on the previewed version
//
// The figures of a preview are computed by pushctl.Simulate, the code
// behind "pushctl ring simulate", so both always agree; apply is
// pushctl.Edit. GET endpoints and the preview only read. Apply changes the
// ring and is protected: with a token configured it needs
// "Authorization: Bearer <token>" (compared in constant time); without one
// only loopback clients may apply. Either way it must be a JSON request
// from the page's own origin (no cross-site form can post it).
package console

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"google.golang.org/grpc"
	"io"
	"io/fs"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/pushcluster/push/pkg/owner"
	"github.com/pushcluster/push/pkg/pushctl"
	"github.com/pushcluster/push/pkg/ring"
	"github.com/pushcluster/push/pkg/store"
	"github.com/pushcluster/push/web"
)

// MaxKeys bounds the keys a preview may count over (a preview costs about
// two ring lookups per key).
const MaxKeys = 10000000

// maxBody bounds a request body.
const maxBody = 64 << 10

// Config configures a Console.
type Config struct {
	// Follower is the daemon's ownership view (ring and liveness).
	// Required; its store is the one changes are written to.
	Follower *store.Follower
	// Token, when set, is required on mutating requests as
	// "Authorization: Bearer <Token>". Empty: only loopback clients may
	// change the ring.
	Token string
	// TokenSource, when set, is asked for the token on every mutating
	// request instead of Token (the admin token file, re-read so that a
	// rotation applies at once); "" means none.
	TokenSource func() (string, error)
	// Dial are the dial options of an added edge's health check (the
	// cluster's TLS and credential; plaintext when none).
	Dial []grpc.DialOption
	// Keys is how many user ids a preview counts moves over unless the
	// request says otherwise (default pushctl.DefaultSimulateKeys, as
	// "pushctl ring simulate").
	Keys int
	// ScrapeTimeout bounds one read of an edge's /metrics (default 1s).
	ScrapeTimeout time.Duration
	// ProbeTimeout bounds the health check of an added member's edge
	// (default 2s).
	ProbeTimeout time.Duration
	// Sessions, when set, reports the connections the daemon relays.
	Sessions func() int64
	// Logger receives ring changes made through the console (default
	// slog.Default()).
	Logger *slog.Logger
	// Client reads the edges' metrics (default: a client of its own).
	Client *http.Client
}

// Console serves the console's page and API. Create it with New.
type Console struct {
	cfg     Config
	f       *store.Follower
	st      store.Store
	static  http.Handler
	preview chan struct{} // one preview computes at a time
	log     *slog.Logger

	scrapeMu sync.Mutex // serialises scrapes; guards the fields below
	last     *edgesJSON
	prev     map[uint32]sample
}

// New builds a Console.
func New(c Config) (*Console, error) {
	if c.Follower == nil {
		return nil, errors.New("console: no store follower")
	}
	if c.Keys <= 0 {
		c.Keys = pushctl.DefaultSimulateKeys
	}
	if c.Keys > MaxKeys {
		return nil, fmt.Errorf("console: keys %d above %d", c.Keys, MaxKeys)
	}
	if c.ScrapeTimeout <= 0 {
		c.ScrapeTimeout = time.Second
	}
	if c.ProbeTimeout <= 0 {
		c.ProbeTimeout = 2 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Client == nil {
		c.Client = &http.Client{Timeout: c.ScrapeTimeout}
	}
	page, err := fs.Sub(web.FS, "console")
	if err != nil {
		return nil, fmt.Errorf("console: %w", err)
	}
	return &Console{cfg: c, f: c.Follower, st: c.Follower.Store(),
		static:  http.StripPrefix("/console/", http.FileServerFS(page)),
		preview: make(chan struct{}, 1), log: c.Logger, prev: map[uint32]sample{}}, nil
}

// Routes returns the console's handlers keyed by http.ServeMux pattern,
// for admin.Config.Extra.
func (c *Console) Routes() map[string]http.Handler {
	return map[string]http.Handler{
		"GET /console/":             http.HandlerFunc(c.page),
		"GET /api/v1/cluster":       http.HandlerFunc(c.cluster),
		"GET /api/v1/edges":         http.HandlerFunc(c.edges),
		"POST /api/v1/ring/preview": http.HandlerFunc(c.previewRing),
		"POST /api/v1/ring/apply":   http.HandlerFunc(c.apply),
	}
}

func (c *Console) page(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'")
	c.static.ServeHTTP(w, r)
}

// apiError is the body of every error answer: {"error": "...", ...}.
type apiError struct {
	Error string `json:"error"`
	// Version is the ring version now stored (409 only).
	Version uint64 `json:"version,omitempty"`
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func fail(w http.ResponseWriter, code int, format string, args ...any) {
	writeJSON(w, code, apiError{Error: fmt.Sprintf(format, args...)})
}

// clusterJSON is GET /api/v1/cluster.
type clusterJSON struct {
	Version   uint64      `json:"version"`
	Algorithm string      `json:"algorithm"`
	Params    ring.Params `json:"params"`
	// Liveness is true when the store keeps leases (etcd, or a file
	// store with a lease directory); false: every member counts as live.
	Liveness bool `json:"liveness"`
	// StoreReachable is whether the last reading of the leases
	// succeeded; LastRead is when the last good one was.
	StoreReachable bool         `json:"store_reachable"`
	LastRead       time.Time    `json:"last_read"`
	Members        []memberJSON `json:"members"`
	// Unlisted are live edges (they hold a lease) that the ring does not
	// name, e.g. an edge started before "add".
	Unlisted []leaseJSON `json:"unlisted"`
	// Users is the sum of the connections the members' leases report.
	Users int64 `json:"users"`
	// Sessions is the connections this router relays (-1: unknown).
	Sessions int64 `json:"router_sessions"`
	// TokenRequired says whether apply needs a bearer token (else it is
	// open to loopback clients only).
	TokenRequired bool `json:"token_required"`
	// Keys is the preview's default key count.
	Keys int `json:"simulate_keys"`
	// Document is the ring document as stored.
	Document *ring.Document `json:"document"`
}

// memberJSON is one member of the ring in GET /api/v1/cluster.
type memberJSON struct {
	ring.Member
	// Share is the member's fraction of the key space (ring.Ring.Shares).
	Share float64 `json:"share"`
	// Live: able to own users in this router's view (a lease, active);
	// Alive: has a lease at all (may still hold users while draining).
	Live  bool `json:"live"`
	Alive bool `json:"alive"`
	// Lease is what the member's lease says (null without one).
	Lease *leaseJSON `json:"lease"`
}

// leaseJSON is a lease as read from the store.
type leaseJSON struct {
	ID          uint32     `json:"id"`
	State       ring.State `json:"state"`
	Incarnation string     `json:"incarnation,omitempty"`
	Users       int64      `json:"users"`
	Admin       string     `json:"admin,omitempty"`
}

// readLeases reads every lease now (nil, nil: the store keeps none).
func (c *Console) readLeases(ctx context.Context) (map[uint32]owner.Live, error) {
	ls, ok := c.st.(store.Leaser)
	if !ok {
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.ScrapeTimeout)
	defer cancel()
	return ls.ReadLive(ctx)
}

func (c *Console) cluster(w http.ResponseWriter, r *http.Request) {
	v := c.f.View()
	rg := v.Ring()
	d := rg.Document()
	leases, err := c.readLeases(r.Context())
	reachable, lastRead := c.f.Reachable()
	if err != nil {
		// Fall back on the view's last reading: the page keeps drawing.
		reachable = false
		leases = map[uint32]owner.Live{}
		for _, m := range d.Members {
			if l, ok := v.LiveInfo(m.ID); ok {
				leases[m.ID] = l
			}
		}
	}
	out := clusterJSON{Version: d.Version, Algorithm: d.Algorithm, Params: d.Params, Liveness: v.HasLiveness(),
		StoreReachable: reachable, LastRead: lastRead, Members: []memberJSON{}, Unlisted: []leaseJSON{}, Sessions: -1,
		TokenRequired: c.tokenSet(), Keys: c.cfg.Keys, Document: d}
	if c.cfg.Sessions != nil {
		out.Sessions = c.cfg.Sessions()
	}
	shares := rg.Shares()
	for _, m := range d.Members {
		mj := memberJSON{Member: m, Share: shares[m.ID], Live: v.Live(m.ID), Alive: v.Alive(m.ID)}
		if l, ok := leases[m.ID]; ok {
			mj.Lease = &leaseJSON{ID: m.ID, State: l.State, Incarnation: l.Incarnation, Users: l.Users, Admin: l.Admin}
			out.Users += l.Users
		}
		out.Members = append(out.Members, mj)
	}
	for id, l := range leases {
		if _, ok := rg.Member(id); !ok {
			out.Unlisted = append(out.Unlisted, leaseJSON{ID: id, State: l.State, Incarnation: l.Incarnation, Users: l.Users, Admin: l.Admin})
		}
	}
	sortLeases(out.Unlisted)
	writeJSON(w, http.StatusOK, out)
}

// changeRequest is the body of POST /api/v1/ring/preview and apply.
type changeRequest struct {
	// Version: apply writes only if the ring is still at this version
	// (required for apply; a preview names the version it used).
	Version uint64 `json:"version"`
	// Changes apply in order (usually one).
	Changes []pushctl.Change `json:"changes"`
	// Keys overrides the key count of the figures.
	Keys int `json:"keys"`
	// Force (apply) skips asking the cluster: the health check of an
	// added member's edge, the connections of a removed member's edge.
	Force bool `json:"force"`
}

// previewJSON is the answer to a preview (and, with Applied, to apply).
type previewJSON struct {
	*pushctl.Simulation
	// Text is what "pushctl ring simulate" prints for the same change.
	Text string `json:"text"`
	// Refused says why apply would refuse the change (empty: it would
	// not, as far as the document goes; apply also asks the edges).
	Refused string `json:"refused,omitempty"`
	// UsersConnected is the members' connections (their /metrics, else
	// their leases); UsersMoving estimates how many of them change owner:
	// each member's users times the fraction of its sampled keys that
	// leave it.
	UsersConnected int64 `json:"users_connected"`
	UsersMoving    int64 `json:"users_moving"`
	// Applied is true in apply's answer: the document was written.
	Applied bool `json:"applied,omitempty"`
}

func decodeChange(w http.ResponseWriter, r *http.Request) (changeRequest, bool) {
	var req changeRequest
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
		fail(w, http.StatusUnsupportedMediaType, "send the change as application/json")
		return req, false
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil {
		fail(w, http.StatusBadRequest, "bad change: reading the body: %v", err)
		return req, false
	}
	if len(body) > maxBody {
		fail(w, http.StatusRequestEntityTooLarge, "bad change: the body is over %d bytes", maxBody)
		return req, false
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		fail(w, http.StatusBadRequest, "bad change: %v", err)
		return req, false
	}
	if dec.More() {
		fail(w, http.StatusBadRequest, "bad change: data after the JSON object")
		return req, false
	}
	if len(req.Changes) == 0 {
		fail(w, http.StatusBadRequest, "bad change: name at least one change (op add, remove, drain or weight)")
		return req, false
	}
	for _, ch := range req.Changes {
		switch ch.Op {
		case pushctl.OpAdd:
			if ch.Member == nil {
				fail(w, http.StatusBadRequest, "bad change: add needs a member")
				return req, false
			}
			if ch.Member.Weight == 0 {
				ch.Member.Weight = 1
			}
			if ch.Member.State == "" {
				ch.Member.State = ring.StateActive
			}
		case pushctl.OpRemove, pushctl.OpDrain, pushctl.OpWeight:
			if ch.ID == 0 {
				fail(w, http.StatusBadRequest, "bad change: %s needs an id", ch.Op)
				return req, false
			}
		default:
			fail(w, http.StatusBadRequest, "bad change: op %q: want add, remove, drain or weight", ch.Op)
			return req, false
		}
	}
	if req.Keys < 0 || req.Keys > MaxKeys {
		fail(w, http.StatusBadRequest, "bad change: keys %d outside 1..%d", req.Keys, MaxKeys)
		return req, false
	}
	return req, true
}

// figures completes a simulation with pushctl's text and the connected
// users: each edge's connections from its /metrics, or what its lease
// last reported when those cannot be read.
func (c *Console) figures(ctx context.Context, sim *pushctl.Simulation) previewJSON {
	var b strings.Builder
	_ = sim.Print(&b)
	p := previewJSON{Simulation: sim, Text: b.String()}
	users := map[uint32]int64{}
	if leases, err := c.readLeases(ctx); err == nil {
		for id, l := range leases {
			users[id] = l.Users
		}
	}
	if e, err := c.readEdges(ctx); err == nil {
		for _, x := range e.Edges {
			if x.Error == "" {
				users[x.ID] = x.Connections
			}
		}
	}
	moving := 0.0
	for _, m := range sim.Members {
		n := users[m.ID]
		p.UsersConnected += n
		if m.KeysBefore > 0 {
			moving += float64(n) * float64(m.KeysOut) / float64(m.KeysBefore)
		}
	}
	p.UsersMoving = int64(moving + 0.5)
	return p
}

func (c *Console) previewRing(w http.ResponseWriter, r *http.Request) {
	req, ok := decodeChange(w, r)
	if !ok {
		return
	}
	if req.Keys == 0 {
		req.Keys = c.cfg.Keys
	}
	select {
	case c.preview <- struct{}{}:
		defer func() { <-c.preview }()
	case <-r.Context().Done():
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	cur, err := c.st.Load(ctx)
	if err != nil {
		fail(w, http.StatusBadGateway, "load the ring: %v", err)
		return
	}
	sim, err := pushctl.Simulate(cur, req.Changes, req.Keys)
	if errors.Is(err, pushctl.ErrRefused) {
		writeJSON(w, http.StatusUnprocessableEntity, apiError{Error: err.Error(), Version: cur.Version})
		return
	}
	if err != nil {
		fail(w, http.StatusInternalServerError, "%v", err)
		return
	}
	p := c.figures(ctx, sim)
	if err := pushctl.CheckEdit(cur, req.Changes); err != nil {
		p.Refused = err.Error()
	}
	writeJSON(w, http.StatusOK, p)
}

// authorize answers and returns false unless r may change the ring (see
// the package comment).
func (c *Console) authorize(w http.ResponseWriter, r *http.Request) bool {
	if origin := r.Header.Get("Origin"); origin != "" && origin != "http://"+r.Host && origin != "https://"+r.Host {
		fail(w, http.StatusForbidden, "cross-origin request refused (Origin %s, Host %s)", origin, r.Host)
		return false
	}
	want, err := c.token()
	if err != nil {
		fail(w, http.StatusInternalServerError, "admin token: %v", err)
		return false
	}
	if want == "" {
		// A loopback client, that asked for a loopback name: a page that
		// rebinds its own DNS name to 127.0.0.1 is not let in.
		if !loopback(r.RemoteAddr) || !loopbackHost(r.Host) {
			fail(w, http.StatusForbidden, "changes are open to loopback clients only (at a loopback address or localhost): start the router with --admin-token (PUSH_ADMIN_TOKEN) to allow others")
			return false
		}
		return true
	}
	got, ok := cutBearer(r.Header.Get("Authorization"))
	if !ok || got == "" {
		w.Header().Set("WWW-Authenticate", `Bearer realm="push console"`)
		fail(w, http.StatusUnauthorized, "this change needs the admin token: Authorization: Bearer <token>")
		return false
	}
	gotH, wantH := sha256.Sum256([]byte(got)), sha256.Sum256([]byte(want))
	if subtle.ConstantTimeCompare(gotH[:], wantH[:]) != 1 {
		fail(w, http.StatusForbidden, "wrong admin token")
		return false
	}
	return true
}

// loopbackHost reports whether a Host header names a loopback address or
// localhost.
func loopbackHost(host string) bool {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if strings.EqualFold(host, "localhost") {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.Unmap().IsLoopback()
}

func loopback(remote string) bool {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		return false
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.Unmap().IsLoopback()
}

func (c *Console) apply(w http.ResponseWriter, r *http.Request) {
	if !c.authorize(w, r) {
		return
	}
	req, ok := decodeChange(w, r)
	if !ok {
		return
	}
	if req.Version == 0 {
		fail(w, http.StatusBadRequest, "bad change: name the version the change was previewed on")
		return
	}
	if req.Keys == 0 {
		req.Keys = c.cfg.Keys
	}
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second+c.cfg.ProbeTimeout)
	defer cancel()
	sim, err := pushctl.Edit(ctx, c.st, req.Version, req.Changes, pushctl.EditOptions{Dial: c.cfg.Dial,
		Keys: req.Keys, Force: req.Force, ProbeTimeout: c.cfg.ProbeTimeout, Connections: c.connections})
	switch {
	case errors.Is(err, store.ErrVersionConflict):
		now := uint64(0)
		if d, lerr := c.st.Load(ctx); lerr == nil {
			now = d.Version
		}
		writeJSON(w, http.StatusConflict, apiError{Error: err.Error() + "; preview again", Version: now})
		return
	case errors.Is(err, pushctl.ErrRefused):
		fail(w, http.StatusUnprocessableEntity, "%v", err)
		return
	case err != nil:
		fail(w, http.StatusBadGateway, "%v", err)
		return
	}
	changes, _ := json.Marshal(req.Changes)
	c.log.Info("ring changed from the console", "client", r.RemoteAddr, "version", sim.Version, "next_version", sim.NextVersion,
		"changes", string(changes), "moved", sim.MovedFraction, "force", req.Force)
	p := c.figures(ctx, sim)
	p.Applied = true
	writeJSON(w, http.StatusOK, p)
}

// connections reads how many connections member id's edge holds, for a
// removal: from its /metrics when its lease names its admin port, else
// the count its lease reports. A member without a lease holds nobody.
func (c *Console) connections(ctx context.Context, id uint32) (int64, error) {
	leases, err := c.readLeases(ctx)
	if err != nil {
		return 0, fmt.Errorf("read the leases: %w", err)
	}
	l, ok := leases[id]
	if !ok {
		return 0, nil
	}
	m, _ := c.f.View().Member(id)
	if u := metricsURL(l.Admin, m.WS); u != "" {
		s, err := c.scrape(ctx, u)
		if err != nil {
			return 0, err
		}
		return int64(s.get("push_edge_connections")), nil
	}
	return l.Users, nil
}

// token is the admin token mutating requests need now ("" for none).
func (c *Console) token() (string, error) {
	if c.cfg.TokenSource != nil {
		return c.cfg.TokenSource()
	}
	return c.cfg.Token, nil
}

// tokenSet reports whether mutating requests need a token.
func (c *Console) tokenSet() bool {
	t, err := c.token()
	return err != nil || t != ""
}

// cutBearer returns the credentials of an Authorization header of the
// Bearer scheme, whose name is case-insensitive (RFC 9110 section 11.1).
func cutBearer(h string) (string, bool) {
	if len(h) < 7 || !strings.EqualFold(h[:7], "Bearer ") {
		return "", false
	}
	return h[7:], true
}
