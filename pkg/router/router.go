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

	"github.com/pushcluster/push/pkg/rawtcp"
	"github.com/pushcluster/push/pkg/ring"
	"github.com/pushcluster/push/pkg/wheel"
)

// ErrNoRing is returned by Start before the first SetRing.
var ErrNoRing = errors.New("router: no ring set")

// Router is the front door. Create it with New, give it a ring with
// SetRing, run it with Start, stop it with Shutdown.
type Router struct {
	cfg Config
	key keySource
	log *slog.Logger
	m   *metrics

	ln    *rawtcp.Listener
	tlsLn net.Listener
	loops []*loop
	gen   atomic.Uint32 // descriptor generation stored in epoll events

	// table maps a descriptor to its session; the slot is cleared before
	// the descriptor is closed so a reused number never sees a stale one.
	table []atomic.Pointer[session]
	maxFD atomic.Int64

	routes atomic.Pointer[routes] // swapped whole by SetRing

	// mu guards members and checkers (SetRing, Shutdown); never taken on
	// the data path.
	mu       sync.Mutex
	members  map[uint32]*member
	checkers map[*member]context.CancelFunc

	// wheelMu guards wheel; taken after session.mu, never before.
	wheelMu sync.Mutex
	wheel   *wheel.Wheel[*session]

	pipes pipePool

	// src4 and src6 are SourceAddrs by family: an edge is dialed from the
	// addresses of its own family (none: the kernel picks).
	src4, src6 []netip.Addr
	srcNext    atomic.Uint32 // rotation over them
	sessions   atomic.Int64  // sessions with open descriptors
	tlsOpen    atomic.Int64  // TLS connections being served
	running    atomic.Bool   // Start was called
	draining   atomic.Bool
	stop       chan struct{}
	wg         sync.WaitGroup
	tlsWG      sync.WaitGroup
	tls        tlsConns // TLS connections, closed at the end of a drain
}

// routes is one immutable view of the ring with resolved members.
type routes struct {
	ring    *ring.Ring
	members map[uint32]*member
}

// member is one edge as the router dials it. The same *member survives ring
// swaps while its id and addresses stay, so its health state does too.
type member struct {
	id       uint32
	label    string // id as a metric label
	ws, grpc string
	addr     atomic.Pointer[netip.AddrPort] // resolved ws address; re-resolved by the health checker
	up       atomic.Bool
	port     atomic.Uint32 // rotation over EdgePortSpan
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
	_, hard := rawtcp.FDLimit()
	size := hard
	if size == 0 || size > 1<<22 {
		size = 1 << 22
	}
	r.table = make([]atomic.Pointer[session], size)
	r.wheel = wheel.New[*session](cfg.Tick, 1024, time.Now())

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
		lc := net.ListenConfig{}
		if cfg.ReusePort {
			lc.Control = reusePortControl
		}
		tl, err := lc.Listen(context.Background(), "tcp", cfg.TLSListen)
		if err != nil {
			r.closeLoops()
			ln.Close()
			return nil, fmt.Errorf("listen tls %s: %w", cfg.TLSListen, err)
		}
		r.tlsLn = tl
	}
	return r, nil
}

func (r *Router) closeLoops() {
	for _, l := range r.loops {
		l.poll.Release()
	}
}

// Addr is the plaintext listener's address.
func (r *Router) Addr() *net.TCPAddr { return r.ln.Addr }

// TLSAddr is the TLS listener's address (nil without one).
func (r *Router) TLSAddr() net.Addr {
	if r.tlsLn == nil {
		return nil
	}
	return r.tlsLn.Addr()
}

// Ready reports nil while the router takes new connections and has a ring.
func (r *Router) Ready() error {
	if r.draining.Load() {
		return errors.New("draining")
	}
	if r.routes.Load() == nil {
		return ErrNoRing
	}
	return nil
}

// Sessions returns the connections that hold descriptors now (reading a
// head, dialing or relayed).
func (r *Router) Sessions() int64 { return r.sessions.Load() }

// Ring returns the ring in use (nil before SetRing).
func (r *Router) Ring() *ring.Ring {
	if t := r.routes.Load(); t != nil {
		return t.ring
	}
	return nil
}

// SetRing swaps the ring atomically: new connections follow it, relayed
// ones stay where they are (moving users is the edge's job). Members whose
// id and addresses are unchanged keep their health state; new ones start up
// and get a health checker. A member whose ws address does not resolve
// makes SetRing fail and leaves the old ring in place.
func (r *Router) SetRing(rg *ring.Ring) error {
	if rg == nil {
		return errors.New("router: nil ring")
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	next := &routes{ring: rg, members: map[uint32]*member{}}
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
			// A name that does not resolve yet (a pod being created) is not
			// a reason to refuse the whole ring: the member starts down and
			// its health checker resolves it again.
			r.log.Warn("edge address does not resolve; marked down", "edge", m.ID, "ws", m.WS, "err", err)
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
	r.members = next.members
	r.routes.Store(next)
	r.m.ringVersion.Set(float64(rg.Version()))
	if r.started() {
		r.startCheckersLocked()
	}
	r.log.Info("ring set", "version", rg.Version(), "members", len(next.members))
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
		if err := l.poll.StartExclusive(r.ln.FD, listenTag); err != nil {
			return fmt.Errorf("watch listener: %w", err)
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
	if r.tlsLn != nil {
		r.wg.Add(1)
		go func() { defer r.wg.Done(); r.serveTLS() }()
	}
	return nil
}

func (r *Router) schedule(s *session, at time.Time) {
	r.wheelMu.Lock()
	r.wheel.Add(&s.tm, at)
	r.wheelMu.Unlock()
}

func (r *Router) unschedule(s *session) {
	r.wheelMu.Lock()
	r.wheel.Cancel(&s.tm)
	r.wheelMu.Unlock()
}

// tickLoop is the one ticker behind every deadline (head, connect, fin).
func (r *Router) tickLoop() {
	t := time.NewTicker(r.cfg.Tick)
	defer t.Stop()
	var fired []*session
	for {
		select {
		case <-r.stop:
			return
		case now := <-t.C:
			r.wheelMu.Lock()
			r.wheel.Advance(now, func(tm *wheel.Timer[*session]) { fired = append(fired, tm.Value) })
			r.wheelMu.Unlock()
			for i, s := range fired {
				r.onTimer(s, now)
				fired[i] = nil
			}
			fired = fired[:0]
		}
	}
}

// Shutdown drains: readyz turns false, the listeners close, relayed
// connections stay until they end or DrainPeriod (bounded by ctx) passes,
// then the rest are closed and the loops stop.
func (r *Router) Shutdown(ctx context.Context) error {
	if !r.draining.CompareAndSwap(false, true) {
		return errors.New("already shut down")
	}
	for _, l := range r.loops {
		l.poll.Stop(r.ln.FD)
	}
	r.ln.Close()
	if r.tlsLn != nil {
		r.tlsLn.Close()
	}
	r.log.Info("draining", "sessions", r.sessions.Load(), "tls", r.tlsOpen.Load(), "period", r.cfg.DrainPeriod.String())
	deadline := time.Now().Add(r.cfg.DrainPeriod)
	for (r.sessions.Load() > 0 || r.tlsOpen.Load() > 0) && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(20 * time.Millisecond)
	}
	top := int(r.maxFD.Load()) + 1
	closed := 0
	for i := 0; i < top; i++ {
		if s := r.table[i].Load(); s != nil {
			s.mu.Lock()
			if s.state != stClosed {
				closed++
			}
			r.closeLocked(s)
			s.mu.Unlock()
		}
	}
	r.closeTLS()
	if closed > 0 {
		r.log.Info("drain period over, closed the remaining connections", "closed", closed)
	}
	r.mu.Lock()
	for m, cancel := range r.checkers {
		cancel()
		delete(r.checkers, m)
	}
	r.mu.Unlock()
	close(r.stop)
	for _, l := range r.loops {
		l.poll.Close()
	}
	r.wg.Wait()
	r.tlsWG.Wait()
	r.pipes.drain()
	return ctx.Err()
}

// Up reports whether the health check finds member id up (false for an id
// not in the ring). The gRPC forwarder uses it so that backends and browsers
// skip the same members.
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

// Apply builds d and makes it the ring in use if it is newer than the
// current one (an older or equal version is ignored).
func (r *Router) Apply(d *ring.Document) error {
	if cur := r.Ring(); cur != nil && d.Version <= cur.Version() {
		return nil
	}
	rg, err := ring.New(d)
	if err != nil {
		return err
	}
	return r.SetRing(rg)
}

// Follow applies every document of docs (a ring store's Watch) until the
// channel closes; a document that does not build is logged and the previous
// ring stays in force.
func (r *Router) Follow(docs <-chan *ring.Document) {
	for d := range docs {
		if err := r.Apply(d); err != nil {
			r.log.Warn("ring document refused, keeping the previous one", "version", d.Version, "err", err)
		}
	}
}
