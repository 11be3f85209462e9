package edge

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pushcluster/push/pkg/client"
	"github.com/pushcluster/push/pkg/owner"
	"github.com/pushcluster/push/pkg/ring"
	"github.com/pushcluster/push/pkg/store"
)

// Membership ties a running Server to a ring store: it feeds every new
// ring to the server and, with the etcd store, keeps the edge's lease so
// that the edge is in the effective ring only while it is alive.
type Membership struct {
	srv  *Server
	log  *slog.Logger
	stop context.CancelFunc

	fwd *client.Client

	mu    sync.Mutex   // guards lease, replaced after a loss
	lease store.Lease // nil for stores without liveness
}

func (m *Membership) current() store.Lease {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.lease
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

// Join makes a started Server a member of the cluster behind st: it follows
// the store's (effective) ring, registers the edge's liveness when the store
// has leases (etcd), and then forwards calls for users it neither holds nor
// owns through an SDK marked forwarded, once that SDK has a ring (with etcd
// that needs a live member: this one, at least).
func Join(srv *Server, st store.Store, leaseTTL time.Duration) (*Membership, error) {
	ctx, stop := context.WithCancel(context.Background())
	docs, err := st.Watch(ctx)
	if err != nil {
		stop()
		return nil, fmt.Errorf("watch the ring: %w", err)
	}
	m := &Membership{srv: srv, log: srv.log, stop: stop}
	go m.follow(docs)
	if e, ok := st.(*store.Etcd); ok {
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		m.lease, err = e.Register(rctx, srv.cfg.ID, leaseTTL, owner.Live{})
		cancel()
		if err != nil {
			stop()
			return nil, fmt.Errorf("register edge %d: %w", srv.cfg.ID, err)
		}
		go m.keep(e, leaseTTL)
	}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	fwd, err := client.New(cctx, st, client.WithForwarded(), client.WithLogger(srv.log))
	cancel()
	if err != nil {
		m.Close()
		return nil, fmt.Errorf("forwarding client: %w", err)
	}
	m.fwd = fwd
	srv.SetForwarder(fwd)
	return m, nil
}

func (m *Membership) follow(docs <-chan *ring.Document) {
	for d := range docs {
		r, err := ring.New(d)
		if err != nil {
			m.log.Error("ring document refused", "version", d.Version, "err", err)
			continue
		}
		if cur := m.srv.Ring(); cur == nil || r.Version() != cur.Version() {
			m.log.Info("ring changed", "version", r.Version(), "members", len(r.Members()))
		}
		m.srv.SetRing(r)
	}
}

// keep registers again after a lost lease (etcd unreachable past the TTL):
// meanwhile the edge is out of the effective ring and moves its users.
func (m *Membership) keep(e *store.Etcd, ttl time.Duration) {
	for {
		select {
		case <-m.current().Lost():
		case <-m.srv.stop:
			return
		}
		for {
			select {
			case <-m.srv.stop:
				return
			case <-time.After(2 * time.Second):
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			l, err := e.Register(ctx, m.srv.cfg.ID, ttl, owner.Live{})
			cancel()
			if err == nil {
				m.mu.Lock()
				m.lease = l
				m.mu.Unlock()
				m.log.Info("registered again after losing the lease", "id", m.srv.cfg.ID)
				break
			}
		}
	}
}

// Drain marks the edge draining for everybody (etcd) and waits, bounded by
// ctx, until its users have moved to their new owners; without liveness it
// returns at once and Shutdown's 1001 closes move them.
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
}

// Close stops following and forwarding and revokes the lease (the edge
// leaves the effective ring at once).
func (m *Membership) Close() {
	m.stop()
	if m.fwd != nil {
		m.fwd.Close()
	}
	if l := m.current(); l != nil {
		l.Close()
	}
}
