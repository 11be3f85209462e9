package edge

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/pushcluster/push/pkg/owner"
	"github.com/pushcluster/push/pkg/registry"
	"github.com/pushcluster/push/pkg/ring"
	"github.com/pushcluster/push/pkg/store"
	pushv1 "github.com/pushcluster/push/proto/push/v1"
)

// Membership ties a running Server to a ring store: it keeps the edge's
// lease (both stores have leases, see store.Leaser), feeds the store's
// ownership view (store.Follower) to the server, and fences the edge when
// its lease is not valid by its own monotonic clock:
//
//   - The lease is valid until its last renewal's start plus TTL minus a
//     margin (a fifth of the TTL, at least 200ms); the store counts the TTL
//     from no earlier, so the edge stops before anybody can see it dead.
//   - When renewals fail and that time comes, the edge asks its peers
//     (Cluster.LeaseStatus). If every peer that answers cannot reach the
//     store either, the store is away for everybody: nobody can take this
//     edge's users, so it keeps serving (an outage is not a data-plane
//     event) and registers again as soon as the store is back, with the
//     same incarnation and streams. Otherwise — a peer reaches the store,
//     or no peer answers — it fences: closes every connection with 4003,
//     drops every stream, answers publishes UNAVAILABLE, writes nothing it
//     had queued, and rejoins with a new lease and a new incarnation.
//   - After a pause (SIGSTOP, a starved process) the write paths see the
//     lease expired by the clock and write nothing until the lease is
//     confirmed or the edge has fenced.
//
// mu guards lease, outage and the peers' answer.
type Membership struct {
	srv    *Server
	log    *slog.Logger
	st     store.Store
	leaser store.Leaser // nil: the store keeps no leases, no fencing
	f      *store.Follower
	ttl    time.Duration
	margin time.Duration
	stop   chan struct{}
	wg     sync.WaitGroup

	mu        sync.Mutex
	lease     store.Lease
	outage    bool
	backAt    time.Time // when the peers first reached the store again after an outage
	peersAt   time.Time // when the peers last answered
	peersDown bool      // their answer: nobody reaches the store
	closed    bool
}

// IDFromHostname derives a ring id from a StatefulSet pod name: the
// ordinal after the last '-' plus one ("edge-0" is 1), since ring ids start
// at 1.
func IDFromHostname(host string) (uint32, error) {
	host, _, _ = strings.Cut(host, ".")
	i := strings.LastIndexByte(host, '-')
	if i < 0 {
		return 0, fmt.Errorf("hostname %q has no -<ordinal> suffix", host)
	}
	n, err := strconv.ParseUint(host[i+1:], 10, 32)
	if err != nil || n+1 > ring.MaxID {
		return 0, fmt.Errorf("hostname %q: ordinal %q is not a number below %d", host, host[i+1:], ring.MaxID)
	}
	return uint32(n + 1), nil
}

// DesiredRing loads the desired document from st, to give a new Server its
// ring before it starts serving.
func DesiredRing(ctx context.Context, st store.Store) (*ring.Ring, error) {
	d, err := st.Load(ctx)
	if err != nil {
		return nil, fmt.Errorf("load the ring: %w", err)
	}
	r, err := ring.New(d)
	if err != nil {
		return nil, fmt.Errorf("ring version %d: %w", d.Version, err)
	}
	return r, nil
}

// leaseMargin is how long before the lease's end by the edge's clock it
// stops serving.
func leaseMargin(ttl time.Duration) time.Duration { return max(ttl/5, 200*time.Millisecond) }

// Join makes a started Server a member of the cluster behind st: it takes
// the edge's lease (leaseTTL; store.DefaultLeaseTTL when 0), follows the
// store's ownership view, and guards the lease (see Membership).
func Join(srv *Server, st store.Store, leaseTTL time.Duration) (*Membership, error) {
	if leaseTTL <= 0 {
		leaseTTL = store.DefaultLeaseTTL
	}
	m := &Membership{srv: srv, log: srv.log, st: st, ttl: leaseTTL, margin: leaseMargin(leaseTTL), stop: make(chan struct{})}
	srv.rejoined()
	if ls, ok := st.(store.Leaser); ok {
		m.leaser = ls
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		l, err := m.register(ctx)
		cancel()
		f, isFile := st.(*store.File)
		switch {
		case err != nil && isFile && readOnly(err) && !leaseDirExists(f):
			// A read-only file ring (a ConfigMap): nobody can write leases
			// beside it, so every process reads no liveness from it and
			// takes every member as live; this edge must not fence.
			srv.log.Warn("the file ring's directory is read-only: running without leases (every member counts as live, no fencing)",
				"lease_dir", f.LeaseDir(), "err", err)
			m.leaser = nil
		case err != nil:
			return nil, fmt.Errorf("register edge %d: %w", srv.cfg.ID, err)
		default:
			m.lease = l
			m.ttl = l.TTL()
			m.margin = leaseMargin(m.ttl)
			srv.setFenceAt(l.Renewed().Add(m.ttl - m.margin))
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	f, err := store.Follow(ctx, st, store.FollowOptions{Grace: 2 * m.ttl, Log: srv.log})
	cancel()
	if err != nil {
		m.closeLease()
		return nil, err
	}
	m.f = f
	srv.setStoreStatus(func(id uint32) (bool, bool) {
		ok, _ := f.Reachable()
		return ok, f.View().Alive(id)
	})
	srv.SetView(f.View())
	if rv, ok := st.(store.Revoker); ok {
		m.followRevocations(rv)
	}
	m.wg.Add(1)
	go m.follow()
	if m.leaser != nil {
		m.wg.Add(1)
		go m.guard()
	}
	return m, nil
}

func (m *Membership) register(ctx context.Context) (store.Lease, error) {
	return m.leaser.Register(ctx, m.srv.cfg.ID, m.ttl, owner.Live{State: ring.StateActive, Incarnation: m.srv.incarnation(), Users: m.srv.Open(), Admin: m.srv.cfg.AdminAddr})
}

// readOnly reports whether err says the file system refused a write.
func readOnly(err error) bool {
	return errors.Is(err, fs.ErrPermission) || errors.Is(err, syscall.EROFS)
}

func leaseDirExists(f *store.File) bool {
	st, err := os.Stat(f.LeaseDir())
	return err == nil && st.IsDir()
}

// Follower returns the store follower this membership runs (its view is the
// edge's).
func (m *Membership) Follower() *store.Follower { return m.f }

func (m *Membership) follow() {
	defer m.wg.Done()
	for {
		ch := m.f.Changed()
		select {
		case <-m.stop:
			return
		case <-ch:
		}
		v := m.f.View()
		if cur := m.srv.View(); cur == nil || cur.Version() != v.Version() {
			m.log.Info("ring changed", "version", v.Version(), "members", len(v.Ring().Members()))
		}
		m.srv.SetView(v)
	}
}

func (m *Membership) current() store.Lease {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.lease
}

// guard checks the lease every TTL/20 (see Membership).
func (m *Membership) guard() {
	defer m.wg.Done()
	t := time.NewTicker(max(m.ttl/20, 10*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-m.stop:
			return
		case <-t.C:
		}
		m.check(time.Now())
	}
}

func (m *Membership) check(now time.Time) {
	l := m.current()
	if l == nil {
		m.rejoin()
		return
	}
	l.SetUsers(m.srv.Open())
	select {
	case <-l.Lost():
		m.lost()
		return
	default:
	}
	valid := l.Renewed().Add(m.ttl - m.margin)
	if now.Before(valid) {
		m.mu.Lock()
		wasOutage := m.outage
		m.outage = false
		m.mu.Unlock()
		if wasOutage {
			m.log.Info("lease renewed: the store is back")
			m.srv.m.outage.Set(0)
		}
		m.srv.setFenceAt(valid)
		return
	}
	if m.peersCannotReachStore(now) {
		m.mu.Lock()
		first := !m.outage
		m.outage, m.backAt = true, time.Time{}
		m.mu.Unlock()
		if first {
			m.log.Warn("lease not renewed, but no peer reaches the store either: serving on until it is back")
			m.srv.m.outage.Set(1)
		}
		m.srv.setFenceAt(now.Add(m.ttl / 4))
		return
	}
	m.mu.Lock()
	outage := m.outage
	if outage && m.backAt.IsZero() {
		m.backAt = now
	}
	backAt := m.backAt
	m.mu.Unlock()
	if outage {
		// The store is back for the peers, which keep this edge live for
		// twice the TTL after they could read it again: register again
		// now, keeping everything, and fence only if that fails for a
		// whole TTL.
		if m.registerAgain(l) {
			return
		}
		if now.Sub(backAt) < m.ttl {
			m.srv.setFenceAt(now.Add(m.ttl / 4))
			return
		}
	}
	m.fence("lease not renewed in time and a peer reaches the store (or none answers)")
}

// registerAgain takes a new lease after a store outage, keeping the
// incarnation and every stream, and reports whether it did.
func (m *Membership) registerAgain(old store.Lease) bool {
	ctx, cancel := context.WithTimeout(context.Background(), m.ttl/4)
	l, err := m.register(ctx)
	cancel()
	if err != nil {
		return false
	}
	m.mu.Lock()
	m.lease, m.outage, m.backAt = l, false, time.Time{}
	m.mu.Unlock()
	m.srv.m.outage.Set(0)
	m.srv.setFenceAt(l.Renewed().Add(m.ttl - m.margin))
	if old != nil {
		go old.Close() // it ran out during the outage, or will
	}
	m.log.Info("registered again after the store outage; users and streams kept", "id", m.srv.cfg.ID)
	return true
}

// lost handles a lease the store says is gone: after an outage everybody
// saw, register again keeping everything; otherwise fence.
func (m *Membership) lost() {
	m.mu.Lock()
	outage := m.outage
	m.mu.Unlock()
	if !outage {
		m.fence("the store says the lease is gone")
		return
	}
	if !m.registerAgain(nil) {
		m.srv.setFenceAt(time.Now().Add(m.ttl / 4)) // still an outage: keep serving, retry
	}
}

// peersCannotReachStore asks the other live members how they see the store
// (answers are reused for a tenth of the TTL). With no other member alive
// nobody can take this edge's users, which counts as yes.
func (m *Membership) peersCannotReachStore(now time.Time) bool {
	m.mu.Lock()
	if now.Sub(m.peersAt) < m.ttl/10 {
		down := m.peersDown
		m.mu.Unlock()
		return down
	}
	m.mu.Unlock()
	v := m.srv.View()
	var peers []uint32
	for _, mem := range v.Ring().Members() {
		if mem.ID != m.srv.cfg.ID && v.Alive(mem.ID) {
			peers = append(peers, mem.ID)
		}
	}
	answered, reachable := 0, 0
	if len(peers) > 0 {
		var mu sync.Mutex
		var wg sync.WaitGroup
		for _, id := range peers {
			pc, ok := m.srv.peer(id)
			if !ok {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
				defer cancel()
				r, err := pc.LeaseStatus(ctx, &pushv1.LeaseStatusRequest{MemberId: m.srv.cfg.ID})
				if err != nil {
					return
				}
				mu.Lock()
				answered++
				if r.GetStoreReachable() {
					reachable++
				}
				mu.Unlock()
			}()
		}
		wg.Wait()
	}
	down := len(peers) == 0 || (answered > 0 && reachable == 0)
	m.mu.Lock()
	m.peersAt, m.peersDown = time.Now(), down
	m.mu.Unlock()
	return down
}

// fence stops serving (see Membership) and drops the lease; rejoin takes a
// new one.
func (m *Membership) fence(why string) {
	m.mu.Lock()
	l := m.lease
	m.lease, m.outage = nil, false
	m.mu.Unlock()
	m.log.Error("fencing: closing every connection and dropping every stream", "reason", why, "id", m.srv.cfg.ID)
	m.srv.fence()
	if l != nil {
		go l.Close() // best effort: the store may be unreachable
	}
}

// rejoin takes a new lease with a new incarnation after a fence.
func (m *Membership) rejoin() {
	m.srv.rejoined()
	ctx, cancel := context.WithTimeout(context.Background(), m.ttl/3)
	l, err := m.register(ctx)
	cancel()
	if err != nil {
		return
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		l.Close()
		return
	}
	m.lease = l
	m.mu.Unlock()
	m.srv.setFenceAt(l.Renewed().Add(m.ttl - m.margin))
	m.srv.unfence()
	m.log.Info("rejoined with a new lease and incarnation", "id", m.srv.cfg.ID, "incarnation", m.srv.incarnation())
}

// Drain marks the edge draining for everybody and waits, bounded by ctx,
// until its users have moved to their new owners (who take their streams);
// then it offers the streams of absent users to their owners.
func (m *Membership) Drain(ctx context.Context) {
	l := m.current()
	if l == nil {
		return
	}
	if err := l.SetState(ctx, ring.StateDraining); err != nil {
		m.log.Warn("could not mark this edge draining", "err", err)
		return
	}
	m.log.Info("marked draining; moving users", "connections", m.srv.Open())
	for m.srv.Open() > 0 && ctx.Err() == nil {
		time.Sleep(50 * time.Millisecond)
	}
	m.srv.offerStreams()
}

func (m *Membership) closeLease() {
	m.mu.Lock()
	l := m.lease
	m.lease, m.closed = nil, true
	m.mu.Unlock()
	if l != nil {
		l.Close()
	}
}

// Close stops following and guarding and removes the lease (the edge
// leaves everybody's live set at once).
func (m *Membership) Close() {
	select {
	case <-m.stop:
		return
	default:
	}
	close(m.stop)
	m.wg.Wait()
	if m.f != nil {
		m.f.Close()
	}
	m.closeLease()
	m.srv.closePeers()
}

// Fencing on the Server.

// setFenceAt lets the edge serve until t (by the monotonic clock). Moving
// the end from the past into the future flushes what waited meanwhile.
func (s *Server) setFenceAt(t time.Time) {
	at := int64(t.Sub(s.base))
	if at <= 0 {
		at = 1
	}
	prev := s.fenceAt.Swap(at)
	now := int64(time.Since(s.base))
	if prev != 0 && prev <= now && at > now && !s.fenced.Load() {
		s.resumeWrites()
	}
}

// serving reports whether the edge may deliver: not fenced, and its lease
// valid by its own clock (always, without a lease).
func (s *Server) serving() bool {
	if s.fenced.Load() {
		return false
	}
	at := s.fenceAt.Load()
	return at == 0 || int64(time.Since(s.base)) < at
}

// fence closes every connection with 4003 without writing what was queued,
// and forgets every stream: the edge's users belong to others now.
func (s *Server) fence() {
	s.fenced.Store(true)
	s.m.fences.Inc()
	s.m.fencedGauge.Set(1)
	s.eachConn(func(c *conn) {
		c.mu.Lock()
		c.out = nil
		c.resume = nil
		switch c.state {
		case stHandshake:
			s.closeNowLocked(c, -1)
		case stOpen:
			s.m.moved.Inc()
			s.closeWithLocked(c, CloseMoved, "moved")
		}
		s.release(c)
	})
	s.reg.Sweep(func(_ string, u *registry.User[*conn]) {
		u.Box, u.Handed = nil, nil
	})
}

func (s *Server) unfence() {
	s.fenced.Store(false)
	s.m.fencedGauge.Set(0)
}

// resumeWrites flushes the queues that waited while the lease was not
// confirmed.
func (s *Server) resumeWrites() {
	s.eachConn(func(c *conn) {
		c.mu.Lock()
		if c.state != stClosed && c.out != nil {
			s.flushLocked(c)
			if c.state != stClosed && c.out != nil && !c.wantWrite {
				c.wantWrite = true
				if err := s.loops[c.loop].poll.Resume(int(c.fd), c.gen, c.interest(true)); err != nil {
					s.closeNowLocked(c, -1)
				}
			}
		}
		s.release(c)
	})
}

// storeStatus answers Cluster.LeaseStatus: is the store reachable from
// here, and is member id alive in this edge's view.
func (s *Server) storeStatus(id uint32) (bool, bool) {
	if f := s.storeStatusFn.Load(); f != nil {
		return (*f)(id)
	}
	return false, false
}

func (s *Server) setStoreStatus(f func(id uint32) (bool, bool)) { s.storeStatusFn.Store(&f) }

func (s *Server) incarnation() string {
	s.own.mu.Lock()
	defer s.own.mu.Unlock()
	return s.own.inc
}
