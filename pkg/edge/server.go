package edge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pushcluster/push/pkg/evloop"
	"github.com/pushcluster/push/pkg/rawtcp"
	"github.com/pushcluster/push/pkg/registry"
	"github.com/pushcluster/push/pkg/wire"
)

// Server is one edge. Create it with New, run it with Start, stop it with
// Shutdown.
type Server struct {
	cfg  Config
	wire wire.Config // the connection protocol's limits and timeouts (from cfg)
	log  *slog.Logger
	m    *metrics

	lns   []*rawtcp.Listener // Listen's port and the next ListenSpan-1 ones
	loops []*loop

	// table maps a descriptor to its conn and hands out the generations
	// stored in epoll events; the slot is cleared before the descriptor
	// is closed so a reused number never sees a stale conn.
	table *evloop.Table[conn]

	reg *registry.Registry[*conn]

	limiter *ipLimiter // nil unless HandshakesPerIP > 0
	tokens  tokenState // revoked tokens (tokens.go)

	own         ownState      // the ownership view and its history (ownership.go)
	streams     streams       // stream hand-over in flight, peers (streams.go)
	moves       moveLimiter   // users moved recently (cluster.go)
	ringChanged chan struct{} // wakes the migrator (buffered 1)

	// Fencing (member.go): the edge serves while time.Since(base) <
	// fenceAt (0: no lease, always) and it is not fenced.
	base          time.Time
	fenceAt       atomic.Int64
	fenced        atomic.Bool
	storeStatusFn atomic.Pointer[func(id uint32) (bool, bool)]

	// timers hold every connection deadline; their lock is taken after
	// conn.mu, never before.
	timers *evloop.Timers[*conn]

	open     atomic.Int64 // upgraded connections
	draining atomic.Bool
	stop     chan struct{}
	wg       sync.WaitGroup
}

// New validates cfg and binds the WebSocket listener.
func New(cfg Config) (*Server, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: cfg.Logger, m: newMetrics(cfg.Metrics), stop: make(chan struct{}), ringChanged: make(chan struct{}, 1)}
	s.table = evloop.NewTable[conn]()
	s.wire = cfg.wireConfig()
	s.reg = registry.New[*conn](256)
	s.tokens.init(cfg.Metrics)
	if cfg.HandshakesPerIP > 0 {
		s.limiter = newIPLimiter(cfg.HandshakesPerIP)
	}
	s.base = time.Now()
	s.own.inc = newIncarnation()
	s.streams.init()
	s.moves.init()
	s.timers = evloop.NewTimers[*conn](cfg.Tick, 4096, time.Now())

	if err := s.listen(); err != nil {
		return nil, err
	}
	for i := 0; i < cfg.Loops; i++ {
		l, err := newLoop(s, i)
		if err != nil {
			s.closeListeners()
			for _, l := range s.loops {
				l.ev.Release()
			}
			return nil, err
		}
		s.loops = append(s.loops, l)
	}
	return s, nil
}

// listen binds Listen and, with ListenSpan > 1, the following ports: one
// router-side address pair is capped by the ephemeral port range, so more
// edge ports let routers hold more connections to one edge.
func (s *Server) listen() error {
	opts := rawtcp.Options{Backlog: s.cfg.Backlog, ReusePort: s.cfg.ReusePort,
		DeferAccept: s.cfg.HandshakeTimeout, NoDelay: true}
	first, err := rawtcp.Listen(s.cfg.Listen, opts)
	if err != nil {
		return err
	}
	s.lns = append(s.lns, first)
	for i := 1; i < s.cfg.ListenSpan; i++ {
		if first.Addr.Port == 0 || first.Addr.Port+i > 65535 {
			s.closeListeners()
			return fmt.Errorf("%w: --listen-span needs a fixed port with room for %d more", ErrConfig, s.cfg.ListenSpan-1)
		}
		addr := net.JoinHostPort(first.Addr.IP.String(), strconv.Itoa(first.Addr.Port+i))
		ln, err := rawtcp.Listen(addr, opts)
		if err != nil {
			s.closeListeners()
			return err
		}
		s.lns = append(s.lns, ln)
	}
	return nil
}

func (s *Server) closeListeners() {
	for _, ln := range s.lns {
		ln.Close()
	}
}

// Addr is the (first) WebSocket listener's address.
func (s *Server) Addr() *net.TCPAddr { return s.lns[0].Addr }

// Open returns the number of upgraded connections.
func (s *Server) Open() int64 { return s.open.Load() }

// Ready reports nil while the edge takes new connections.
func (s *Server) Ready() error {
	if s.draining.Load() {
		return errors.New("draining")
	}
	return nil
}

// Start runs the event loops (which also accept) and the ticker in the
// background.
func (s *Server) Start() error {
	for _, l := range s.loops {
		for _, ln := range s.lns {
			if err := l.ev.Listen(ln); err != nil {
				return err
			}
		}
	}
	for _, l := range s.loops {
		s.wg.Add(1)
		go func(l *loop) { defer s.wg.Done(); l.run() }(l)
	}
	s.wg.Add(2)
	go func() { defer s.wg.Done(); s.tickLoop() }()
	go func() { defer s.wg.Done(); s.migrateLoop() }()
	return nil
}

// schedule arms c's one deadline at at (see onTimer).
func (s *Server) schedule(c *conn, at time.Time) {
	s.timers.Schedule(&c.tm, at)
}

// tickLoop is the one ticker behind every deadline: it advances the timing
// wheel and, once a second, expires mailboxes.
func (s *Server) tickLoop() {
	lastSweep := time.Now()
	s.timers.Run(s.stop, s.onTimer, func(now time.Time) {
		if now.Sub(lastSweep) >= time.Second {
			lastSweep = now
			s.sweep(now)
			if s.limiter != nil {
				s.limiter.sweep(now)
			}
		}
	})
}

// sweep expires stored messages and forgets idle mailboxes.
func (s *Server) sweep(now time.Time) {
	ns := now.UnixNano()
	keep := int64(s.cfg.MailboxTTL)
	s.reg.Sweep(func(_ string, u *registry.User[*conn]) {
		if u.Box == nil {
			return
		}
		if n := u.Box.Expire(ns); n > 0 {
			s.m.expired.Add(float64(n))
		}
		if len(u.Conns) == 0 && u.Box.Idle(ns, keep) {
			u.Box = nil
		}
	})
}

// Shutdown drains the edge: readyz turns false, the listener closes, every
// connection is closed with 1001 spread over DrainPeriod (so clients do not
// reconnect in one storm), then the loops stop. ctx bounds the whole drain.
func (s *Server) Shutdown(ctx context.Context) error {
	if !s.draining.CompareAndSwap(false, true) {
		return errors.New("already shut down")
	}
	for _, l := range s.loops {
		for _, ln := range s.lns {
			l.ev.Unlisten(ln)
		}
	}
	s.closeListeners()

	var open []*conn
	s.table.Range(func(_ int, c *conn) bool { open = append(open, c); return true })
	s.log.Info("draining", "connections", len(open), "period", s.cfg.DrainPeriod)
	var pace time.Duration
	if len(open) > 0 {
		pace = s.cfg.DrainPeriod / time.Duration(len(open))
	}
	start := time.Now()
	for i, c := range open {
		if pace > 0 {
			if wait := time.Until(start.Add(pace * time.Duration(i))); wait > 0 {
				select {
				case <-time.After(wait):
				case <-ctx.Done():
					pace = 0
				}
			}
		}
		c.mu.Lock()
		if c.state == stHandshake {
			s.closeNowLocked(c, -1)
		} else {
			s.closeWithLocked(c, CloseGoingAway, "going away")
		}
		s.release(c)
	}
	// Streams of users who are gone now belong with their owners.
	s.offerStreams()
	// Wait for close handshakes, bounded by CloseTimeout and ctx.
	deadline := time.Now().Add(s.cfg.CloseTimeout + s.cfg.Tick)
	for s.liveDescriptors() > 0 && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
	}
	s.table.Range(func(_ int, c *conn) bool {
		c.mu.Lock()
		s.closeNowLocked(c, -1)
		s.release(c)
		return true
	})
	close(s.stop)
	for _, l := range s.loops {
		l.ev.Close()
	}
	s.wg.Wait()
	return ctx.Err()
}

// eachConn calls fn for every connection in the descriptor table (fn locks
// what it needs).
func (s *Server) eachConn(fn func(c *conn)) {
	s.table.Range(func(_ int, c *conn) bool { fn(c); return true })
}

func (s *Server) liveDescriptors() int { return s.table.Count() }
