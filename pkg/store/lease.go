package store

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pushcluster/push/pkg/owner"
	"github.com/pushcluster/push/pkg/ring"
)

// DefaultLeaseTTL is the lease an edge holds unless configured otherwise.
const DefaultLeaseTTL = 5 * time.Second

// Leaser is a Store whose members hold leases: the one definition of
// liveness for that store (package owner).
//
//   - etcd: a member is live while its key <prefix>/live/<id>, bound to an
//     etcd lease of the edge's TTL, exists.
//   - file: a member is live while the lease file <ring file>.live/<id>.json
//     says so: its "renewed" time plus its "ttl_ms" is after now, by the
//     reader's wall clock (the file store is one machine, or one shared file
//     system, so every process reads the same clock). A ring file without a
//     lease directory keeps no liveness: every member is live.
type Leaser interface {
	// Register takes member id's lease with the given TTL and renews it
	// every TTL/3 until Close (or until the store says it is gone, then
	// Lost is closed). info is published with it.
	Register(ctx context.Context, id uint32, ttl time.Duration, info owner.Live) (Lease, error)
	// ReadLive reads every member's lease once. A nil map with a nil error
	// means the store keeps no liveness.
	ReadLive(ctx context.Context) (map[uint32]owner.Live, error)
}

// Lease is one member's registration. An edge serves users only while its
// lease is valid by its own monotonic clock: Renewed()+TTL() minus a
// safety margin (docs/protocol.md, "Fencing").
type Lease interface {
	// TTL is the lease's time to live.
	TTL() time.Duration
	// Renewed is when the last successful renewal started, by this
	// process's monotonic clock: the store counts the TTL from no earlier.
	Renewed() time.Time
	// Lost is closed when the store says the lease is gone (it expired or
	// was revoked): others may already own this member's users.
	Lost() <-chan struct{}
	// SetState publishes the member's state (ring.StateDraining while it
	// drains) at once.
	SetState(ctx context.Context, st ring.State) error
	// SetUsers records the member's connection count, published with the
	// next renewal.
	SetUsers(n int64)
	// Close stops renewing and removes the lease: the member is no longer
	// live for anybody.
	Close() error
}

// renewEvery is how often a lease is renewed, and retryEvery how soon a
// failed renewal is tried again: a third and a tenth of the TTL, so two
// renewals may fail before the margin is reached.
func renewEvery(ttl time.Duration) time.Duration { return max(ttl/3, 10*time.Millisecond) }
func retryEvery(ttl time.Duration) time.Duration { return max(ttl/10, 10*time.Millisecond) }

// leaseCore is what the etcd and file leases share: the TTL, the last
// renewal, the published info, and the life of the renewal goroutine
// (stop asks it to end, done says it has, lost says the store dropped
// the lease). Embed it and call init before use.
type leaseCore struct {
	ttl      time.Duration
	lost     chan struct{}
	stop     chan struct{}
	done     chan struct{}
	lostOnce sync.Once
	users    atomic.Int64

	mu      sync.Mutex // guards info, renewed, closed and the embedding lease's own fields
	info    owner.Live
	renewed time.Time
	closed  bool
}

func (c *leaseCore) init(ttl time.Duration, info owner.Live) {
	if info.State == "" {
		info.State = ring.StateActive
	}
	c.ttl, c.info = ttl, info
	c.lost, c.stop, c.done = make(chan struct{}), make(chan struct{}), make(chan struct{})
	c.users.Store(info.Users)
}

// TTL implements Lease.
func (c *leaseCore) TTL() time.Duration { return c.ttl }

// Renewed implements Lease.
func (c *leaseCore) Renewed() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.renewed
}

// Lost implements Lease.
func (c *leaseCore) Lost() <-chan struct{} { return c.lost }

// SetUsers implements Lease.
func (c *leaseCore) SetUsers(n int64) { c.users.Store(n) }

// markLost closes Lost, once.
func (c *leaseCore) markLost() { c.lostOnce.Do(func() { close(c.lost) }) }

// setState records st for the next publication of the lease.
func (c *leaseCore) setState(st ring.State) {
	c.mu.Lock()
	c.info.State = st
	c.mu.Unlock()
}

// shutdown stops the renewal goroutine and waits for it; false if the
// lease was already closed.
func (c *leaseCore) shutdown() bool {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return false
	}
	c.closed = true
	c.mu.Unlock()
	close(c.stop)
	<-c.done
	return true
}
