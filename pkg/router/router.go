package router

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pushcluster/push/pkg/evloop"
	"github.com/pushcluster/push/pkg/owner"
	"github.com/pushcluster/push/pkg/rawtcp"
	"github.com/pushcluster/push/pkg/ring"
	"github.com/pushcluster/push/pkg/store"
)

// ErrNoRing is returned by Start (and Ready) before the first view.
var ErrNoRing = errors.New("router: no ring set")

// ErrNoLiveMember is what Ready reports while the view in force has no
// live member to route to.
var ErrNoLiveMember = errors.New("router: no live member in the view")

// Router is the front door. Create it with New, give it the store's views
// with Follow (or one view with SetView or SetRing), run it with Start,
// stop it with Shutdown.
//
// Ownership is the view's (package owner, the one function edges, SDKs and
// the forwarder call too): a user goes to view.Owner, and when the dial to
// that member fails, to view.OwnerExcept with the members that failed so
// far (dispatch.go). The health check (Config.Check) does not decide
// routing: it feeds Up, the push_router_edge_up gauge and the logs, for
// operators. A member the view holds live is dialed even while its probe
// fails; one the view does not hold live is never dialed, even while its
// probe passes.
type Router struct {
	cfg Config
	key keySource
	log *slog.Logger
	m   *metrics

	ln    *rawtcp.Listener
	tlsLn *rawtcp.Listener // nil without TLSListen
	loops []*loop

	// table maps a descriptor to its session and hands out the
	// generations stored in epoll events; the slot is cleared before the
	// descriptor is closed so a reused number never sees a stale one.
	table *evloop.Table[session]
	// tlsTab holds the TLS state of TLS sessions by client descriptor
	// (set and cleared under the session's mu), so that the session
	// struct of a plaintext connection stays as small as it was.
	tlsTab *evloop.Table[tlsConn]

	routes atomic.Pointer[routes] // swapped whole by SetView

	// mu guards members, checkers and unfollow (SetView, Follow,
	// Shutdown); never taken on the data path.
	mu       sync.Mutex
	members  map[uint32]*member
	checkers map[*member]context.CancelFunc
	unfollow context.CancelFunc // stops the Follow goroutine

	// timers hold every session deadline; their lock is taken after
	// session.mu, never before.
	timers *evloop.Timers[*session]

	pipes pipePool

	// src4 and src6 are SourceAddrs by family: an edge is dialed from the
	// addresses of its own family (none: the kernel picks).
	src4, src6 []netip.Addr
	srcNext    atomic.Uint32 // rotation over them
	sessions   atomic.Int64  // sessions with open descriptors
	running    atomic.Bool   // Start was called
	draining   atomic.Bool
	stop       chan struct{}
	wg         sync.WaitGroup
	tlsWG      sync.WaitGroup // TLS handshake goroutines
	hsRunning  atomic.Int64   // and how many run now
}

// routes is one immutable ownership view with the ring's members resolved.
type routes struct {
	view    *owner.View
	members map[uint32]*member // every member of view.Ring(), active or draining
	live    int                // active members the view holds live: those that can own users
}

// member is one edge as the router dials it. The same *member survives view
// swaps while its id and addresses stay, so its resolved address, port
// rotation and health state do too.
type member struct {
	id       uint32
	label    string // id as a metric label
	ws, grpc string
	addr     atomic.Pointer[netip.AddrPort] // resolved ws address; re-resolved by the health checker
	up       atomic.Bool                    // the health check's verdict (Up), not used to route
	port     atomic.Uint32                  // rotation over EdgePortSpan
	routed   prometheus.Counter
	upGauge  prometheus.Gauge
}

// resolve turns a ws host:port into an address (names through DNS).
func resolve(hostport string) (netip.AddrPort, error) {
	ta, err := net.ResolveTCPAddr("tcp", hostport)
	if err != nil {
		return netip.AddrPort{}, err
	}
	ip, _ := netip.AddrFromSlice(ta.IP)
	return netip.AddrPortFrom(ip.Unmap(), uint16(ta.Port)), nil
}

// wsAddr is the member's current resolved address (invalid if none yet).
func (m *member) wsAddr() netip.AddrPort {
	if a := m.addr.Load(); a != nil {
		return *a
	}
	return netip.AddrPort{}
}

// New validates cfg and binds the listeners.
func New(cfg Config) (*Router, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	key, _ := parseHashKey(cfg.HashKey)
	r := &Router{cfg: cfg, key: key, log: cfg.Logger, m: newMetrics(cfg.Metrics), stop: make(chan struct{}),
		members: map[uint32]*member{}, checkers: map[*member]context.CancelFunc{}}
	r.pipes.max = 64 * cfg.Loops
	for _, a := range cfg.SourceAddrs {
		if a.Unmap().Is4() {
			r.src4 = append(r.src4, a.Unmap())
		} else {
			r.src6 = append(r.src6, a)
		}
	}
	r.table = evloop.NewTable[session]()
	r.timers = evloop.NewTimers[*session](cfg.Tick, 1024, time.Now())

	ln, err := rawtcp.Listen(cfg.Listen, rawtcp.Options{Backlog: cfg.Backlog, ReusePort: cfg.ReusePort,
		DeferAccept: cfg.HeadTimeout, NoDelay: true})
	if err != nil {
		return nil, err
	}
	if cfg.KeepAlive > 0 {
		// Accepted sockets inherit the listener's keepalive settings: no
		// setsockopt per client.
		setKeepAlive(ln.FD, int(max(cfg.KeepAlive/time.Second, 1)))
	}
	// Accepted sockets inherit the listener's buffer sizes (and the
	// window scale chosen from them at the SYN): no setsockopt per client.
	if err := setBuffers(ln.FD, cfg.RelayBuffer); err != nil {
		ln.Close()
		return nil, fmt.Errorf("listen %s: socket buffers: %w", cfg.Listen, err)
	}
	r.ln = ln
	for i := 0; i < cfg.Loops; i++ {
		l, err := newLoop(r, i)
		if err != nil {
			r.closeLoops()
			ln.Close()
			return nil, err
		}
		r.loops = append(r.loops, l)
	}
	if cfg.TLSListen != "" {
		// The TLS listener is accepted from by the same loops, and its
		// sockets inherit the same keepalive and buffer sizes, so
		// Config.RelayBuffer bounds that path as well.
		tl, err := rawtcp.Listen(cfg.TLSListen, rawtcp.Options{Backlog: cfg.Backlog, ReusePort: cfg.ReusePort,
			DeferAccept: cfg.HeadTimeout, NoDelay: true})
		if err == nil {
			if cfg.KeepAlive > 0 {
				setKeepAlive(tl.FD, int(max(cfg.KeepAlive/time.Second, 1)))
			}
			if err = setBuffers(tl.FD, cfg.RelayBuffer); err != nil {
				tl.Close()
			}
		}
		if err != nil {
			r.closeLoops()
			ln.Close()
			return nil, fmt.Errorf("listen tls %s: %w", cfg.TLSListen, err)
		}
		r.tlsLn = tl
		r.tlsTab = evloop.NewTable[tlsConn]()
	}
	return r, nil
}

func (r *Router) closeLoops() {
	for _, l := range r.loops {
		l.ev.Release()
	}
}

// Addr is the plaintext listener's address.
func (r *Router) Addr() *net.TCPAddr { return r.ln.Addr }

// TLSAddr is the TLS listener's address (nil without one).
func (r *Router) TLSAddr() net.Addr {
	if r.tlsLn == nil {
		return nil
	}
	return r.tlsLn.Addr
}

// Ready reports nil while the router takes new connections and has a view
// with at least one live member (ErrNoRing before the first view,
// ErrNoLiveMember while no member can own users).
func (r *Router) Ready() error {
	if r.draining.Load() {
		return errors.New("draining")
	}
	t := r.routes.Load()
	if t == nil {
		return ErrNoRing
	}
	if t.live == 0 {
		return ErrNoLiveMember
	}
	return nil
}

// Sessions returns the connections that hold descriptors now (reading a
// head, dialing or relayed).
func (r *Router) Sessions() int64 { return r.sessions.Load() }

// Ring returns the ring in use (nil before the first view).
func (r *Router) Ring() *ring.Ring {
	if t := r.routes.Load(); t != nil {
		return t.view.Ring()
	}
	return nil
}

// View returns the ownership view in use (nil before the first view).
func (r *Router) View() *owner.View {
	if t := r.routes.Load(); t != nil {
		return t.view
	}
	return nil
}

// Follow routes by f's views from now on: the view in force is applied at
// once, and every later one as f.Changed reports it, until Shutdown or the
// next Follow. f stays the caller's: share it with the SDK of the gRPC
// forwarder, and close it after Shutdown. Follow does not block.
func (r *Router) Follow(f *store.Follower) {
	ctx, cancel := context.WithCancel(context.Background())
	r.mu.Lock()
	if r.unfollow != nil {
		r.unfollow()
	}
	r.unfollow = cancel
	r.mu.Unlock()
	changed := f.Changed() // before View: no change slips in between
	r.SetView(f.View())
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		for {
			select {
			case <-ctx.Done():
				return
			case <-changed:
			}
			changed = f.Changed()
			if ctx.Err() != nil {
				return
			}
			r.SetView(f.View())
		}
	}()
}

// SetRing routes by rg with every member taken as live: the view of a ring
// store that keeps no liveness (a file ring without lease files). It is
// SetView(owner.NewView(rg, nil, 0)), for tests and tools; a router in a
// cluster follows the store's views with Follow.
func (r *Router) SetRing(rg *ring.Ring) error {
	if rg == nil {
		return errors.New("router: nil ring")
	}
	return r.SetView(owner.NewView(rg, nil, 0))
}

// SetView swaps the ownership view atomically: new connections follow it,
// relayed ones stay where they are (moving users is the edge's job). The
// member table is rebuilt from v.Ring().Members(): members whose id and
// addresses are unchanged keep their resolved address and health state;
// new ones are resolved (one that does not resolve yet is dialed in vain,
// and so redispatched, until its health checker resolves it), start up for
// the health check like HAProxy's servers, and get a checker.
func (r *Router) SetView(v *owner.View) error {
	if v == nil || v.Ring() == nil {
		return errors.New("router: nil view")
	}
	rg := v.Ring()
	r.mu.Lock()
	defer r.mu.Unlock()
	prev := r.routes.Load()
	next := &routes{view: v, members: r.members}
	ringChanged := prev == nil || prev.view.Ring() != rg
	if ringChanged {
		next.members = map[uint32]*member{}
		for _, m := range rg.Members() {
			old := r.members[m.ID]
			if old != nil && old.ws == m.WS && old.grpc == m.GRPC {
				next.members[m.ID] = old
				continue
			}
			label := strconv.FormatUint(uint64(m.ID), 10)
			nm := &member{id: m.ID, label: label, ws: m.WS, grpc: m.GRPC,
				routed:  r.m.routed.WithLabelValues(label),
				upGauge: r.m.edgeUp.WithLabelValues(label)}
			if a, err := resolve(m.WS); err != nil {
				// A name that does not resolve yet (a pod being created) is
				// not a reason to refuse the whole ring: its health checker
				// resolves it again, and until then a dial to it fails and
				// is redispatched.
				r.log.Warn("edge address does not resolve yet", "edge", m.ID, "ws", m.WS, "err", err)
				nm.upGauge.Set(0)
			} else {
				nm.addr.Store(&a)
				nm.up.Store(true)
				nm.upGauge.Set(1)
			}
			next.members[m.ID] = nm
		}
		for id, old := range r.members {
			if next.members[id] != old {
				if cancel := r.checkers[old]; cancel != nil {
					cancel()
					delete(r.checkers, old)
				}
				if next.members[id] == nil {
					r.m.edgeUp.DeleteLabelValues(old.label)
				}
			}
		}
	}
	for _, m := range rg.Members() {
		live := m.Active() && v.Live(m.ID)
		if live {
			next.live++
		}
		if prev != nil && !ringChanged {
			if was := prev.view.Live(m.ID); was != v.Live(m.ID) {
				r.log.Info("edge liveness changed", "edge", m.ID, "live", v.Live(m.ID), "alive", v.Alive(m.ID),
					"version", v.Version(), "gen", v.Gen())
			}
		}
	}
	r.members = next.members
	r.routes.Store(next)
	r.m.ringVersion.Set(float64(v.Version()))
	r.m.viewGen.Set(float64(v.Gen()))
	r.m.liveMembers.Set(float64(next.live))
	if r.started() {
		r.startCheckersLocked()
	}
	if ringChanged {
		r.log.Info("ring set", "version", v.Version(), "gen", v.Gen(), "members", len(next.members),
			"live", next.live, "liveness", v.HasLiveness())
	} else {
		r.log.Debug("view set", "version", v.Version(), "gen", v.Gen(), "live", next.live)
	}
	if next.live == 0 {
		r.log.Warn("no live member in the view: new connections get 503", "version", v.Version(), "gen", v.Gen())
	}
	return nil
}

func (r *Router) started() bool { return r.running.Load() }

// Start runs the event loops (which also accept), the ticker, the health
// checks and the TLS listener in the background.
func (r *Router) Start() error {
	if r.routes.Load() == nil {
		return ErrNoRing
	}
	for _, l := range r.loops {
		if err := l.ev.Listen(r.ln); err != nil {
			return err
		}
		if r.tlsLn != nil {
			if err := l.ev.Listen(r.tlsLn); err != nil {
				return err
			}
		}
	}
	for _, l := range r.loops {
		r.wg.Add(1)
		go func(l *loop) { defer r.wg.Done(); l.run() }(l)
	}
	r.wg.Add(1)
	go func() { defer r.wg.Done(); r.tickLoop() }()
	r.mu.Lock()
	r.running.Store(true)
	r.startCheckersLocked()
	r.mu.Unlock()
	return nil
}

func (r *Router) schedule(s *session, at time.Time) {
	r.timers.Schedule(&s.tm, at)
}

func (r *Router) unschedule(s *session) {
	r.timers.Cancel(&s.tm)
}

// tickLoop is the one ticker behind every deadline (head, connect, fin).
func (r *Router) tickLoop() { r.timers.Run(r.stop, r.onTimer, nil) }

// Shutdown drains: readyz turns false, the listeners close, relayed
// connections stay until they end or DrainPeriod (bounded by ctx) passes,
// then the rest are closed and the loops stop.
func (r *Router) Shutdown(ctx context.Context) error {
	if !r.draining.CompareAndSwap(false, true) {
		return errors.New("already shut down")
	}
	for _, l := range r.loops {
		l.ev.Unlisten(r.ln)
		if r.tlsLn != nil {
			l.ev.Unlisten(r.tlsLn)
		}
	}
	r.ln.Close()
	if r.tlsLn != nil {
		r.tlsLn.Close()
	}
	r.log.Info("draining", "sessions", r.sessions.Load(), "period", r.cfg.DrainPeriod.String())
	deadline := time.Now().Add(r.cfg.DrainPeriod)
	for r.sessions.Load() > 0 && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(20 * time.Millisecond)
	}
	closed := 0
	r.table.Range(func(_ int, s *session) bool {
		s.mu.Lock()
		if s.state != stClosed {
			closed++
		}
		r.closeLocked(s)
		s.mu.Unlock()
		return true
	})
	if closed > 0 {
		r.log.Info("drain period over, closed the remaining connections", "closed", closed)
	}
	r.mu.Lock()
	for m, cancel := range r.checkers {
		cancel()
		delete(r.checkers, m)
	}
	if r.unfollow != nil {
		r.unfollow()
	}
	r.mu.Unlock()
	close(r.stop)
	for _, l := range r.loops {
		l.ev.Close()
	}
	r.wg.Wait()
	r.tlsWG.Wait()
	r.pipes.drain()
	return ctx.Err()
}

// Up reports whether the health check finds member id up (false for an id
// not in the ring; with Check none, whether its address resolved). It is
// the probe's view for operators (push_router_edge_up) and does not decide
// routing, nor does any SDK use it.
func (r *Router) Up(id uint32) bool {
	t := r.routes.Load()
	if t == nil {
		return false
	}
	m := t.members[id]
	return m != nil && m.up.Load()
}

// Logger is the router's logger.
func (r *Router) Logger() *slog.Logger { return r.log }
