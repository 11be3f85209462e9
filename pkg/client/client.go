// Package client is the Go SDK for backends: it follows the ring store
// (package store) and sends push.v1.Push calls straight to the edge that
// owns each user, so a publish costs one hop and no router.
//
// The router serves the same calls for backends that do not embed the SDK,
// through Client.Server.
package client

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"

	"github.com/pushcluster/push/pkg/ring"
	"github.com/pushcluster/push/pkg/store"
	"github.com/pushcluster/push/pkg/userid"
	pushv1 "github.com/pushcluster/push/proto/push/v1"
)

// DefaultTimeout bounds a call whose context has no deadline, retries
// included, so that an unreachable edge never hangs a caller forever.
const DefaultTimeout = 10 * time.Second

// Retry backoff: the first wait and the cap. Waits double from the first
// and are jittered (half fixed, half random) so that many callers failing
// together do not retry in lockstep.
// closeGrace is how long a connection to a member that left the ring stays
// open for the calls running on it (a variable for tests).
var closeGrace = 30 * time.Second

const (
	firstBackoff = 10 * time.Millisecond
	maxBackoff   = 500 * time.Millisecond
)

// ErrClosed is returned by calls on a closed Client. It is a gRPC
// UNAVAILABLE status (a forwarder that is shutting down tells its callers
// to go elsewhere) and is never retried.
var ErrClosed = status.Error(codes.Unavailable, "push client closed")

// Option configures New.
type Option func(*options)

type options struct {
	dial      []grpc.DialOption
	log       *slog.Logger
	up        func(id uint32) bool
	forwarded bool
}

// WithDialOptions adds gRPC dial options to every edge connection, after
// the defaults (plaintext, reconnect backoff of 100 ms growing to 3 s,
// keepalive pings every 30 s during calls), so they can override them:
// pass grpc.WithTransportCredentials for TLS.
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(o *options) { o.dial = append(o.dial, opts...) }
}

// WithLogger sets where ring changes and dropped documents are logged
// (slog.Default() otherwise).
func WithLogger(log *slog.Logger) Option { return func(o *options) { o.log = log } }

// WithUp sets the health filter: up reports whether the member with the
// given id is reachable, and a user owned by a member that is not up goes
// to the next live owner (ring.Ring.LookupLive). It is called concurrently
// and must be fast. By default every member is up.
func WithUp(up func(id uint32) bool) Option { return func(o *options) { o.up = up } }

// WithForwarded marks every request as forwarded, for an edge that hands
// a call for a user it neither holds nor owns to the owner: the owner then
// handles it itself and never forwards it again.
func WithForwarded() Option { return func(o *options) { o.forwarded = true } }

// Client sends push.v1.Push calls to the edges of a ring.
//
// The owner of a user is ring.Ring.LookupLive(user, up) on the newest ring
// document the store delivered, with up the WithUp filter: the active
// member the placement names, or, when that member is not up, the next
// live one. Draining members own nobody but still take broadcasts.
//
// Retries: a call that fails with gRPC UNAVAILABLE (edge down or refusing
// connections, a shutting-down edge refusing a broadcast, no live owner
// in the ring), or whose connection was
// closed because its member left the ring is tried again with the newest
// ring, after a backoff of 10 ms doubling to 500 ms with jitter, at once
// when the ring changes, until the context ends (DefaultTimeout without a
// deadline); it then returns the last failure. Nothing else is retried:
// INVALID_ARGUMENT in particular comes back at once, and bad user ids or
// empty payloads are refused locally without a network call. An
// UNAVAILABLE that cut a call short may hide a publish the edge had taken,
// so a retried publish may, rarely, arrive twice (with two seq numbers).
// A draining edge answers UNAVAILABLE, so a publish to it is retried on
// the next owner.
//
// Errors are gRPC status errors naming the edge (id, name, address).
//
// A Client is safe for concurrent use. It holds one gRPC connection per
// member gRPC address, made on first use and closed when the address
// leaves the ring; mu guards the pool, the ring pointer is atomic.
type Client struct {
	log       *slog.Logger
	up        func(id uint32) bool
	forwarded bool // WithForwarded
	dial      []grpc.DialOption
	stop      context.CancelFunc // ends the store watch
	loopDone  chan struct{}      // closed when follow returns

	ring atomic.Pointer[ring.Ring]

	mu      sync.Mutex
	closed  bool
	addrs   map[string]bool             // gRPC addresses of the current ring
	conns   map[string]*grpc.ClientConn // by gRPC address
	changed chan struct{}               // closed, and replaced, on every ring change

	streams   map[string]*pubStream // Publish streams by gRPC address (stream.go)
	unaryOnly map[string]bool       // edges without PublishStream
}

// New watches st and sends calls straight to the owning edge over one
// pooled gRPC connection per edge (keyed by member gRPC address; closed
// when a member leaves the ring). It returns once the first document is
// loaded, or an error if none arrives before ctx ends; ctx bounds only
// that wait. The Client follows st until Close; st stays the caller's to
// close, after the Client.
func New(ctx context.Context, st store.Store, opts ...Option) (*Client, error) {
	o := options{log: slog.Default(), up: func(uint32) bool { return true }}
	for _, opt := range opts {
		opt(&o)
	}
	if o.log == nil {
		o.log = slog.Default()
	}
	if o.up == nil {
		o.up = func(uint32) bool { return true }
	}
	watchCtx, stop := context.WithCancel(context.Background())
	docs, err := st.Watch(watchCtx)
	if err != nil {
		stop()
		return nil, fmt.Errorf("push client: watch the ring store: %w", err)
	}
	var first *ring.Ring
	for first == nil {
		select {
		case d, ok := <-docs:
			if !ok {
				stop()
				return nil, errors.New("push client: the ring store closed before a document arrived")
			}
			r, err := ring.New(d)
			if err != nil {
				o.log.Warn("push client: ring document dropped", "version", d.Version, "err", err)
				continue
			}
			first = r
		case <-ctx.Done():
			stop()
			return nil, fmt.Errorf("push client: no ring document: %w", ctx.Err())
		}
	}
	c := &Client{
		log: o.log, up: o.up, forwarded: o.forwarded, stop: stop, loopDone: make(chan struct{}),
		dial: append([]grpc.DialOption{
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			// gRPC's default reconnect backoff grows to 2 minutes; an
			// edge that restarts should be usable again within seconds.
			grpc.WithConnectParams(grpc.ConnectParams{
				Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 3 * time.Second},
				MinConnectTimeout: 5 * time.Second,
			}),
			// The edges permit pings every 10 s; these find a dead peer
			// under a hung call.
			grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		}, o.dial...),
		conns:   make(map[string]*grpc.ClientConn),
		changed: make(chan struct{}),
		streams: make(map[string]*pubStream), unaryOnly: make(map[string]bool),
	}
	c.setRing(first)
	go c.follow(docs)
	return c, nil
}

// follow applies every newer document until the watch ends.
func (c *Client) follow(docs <-chan *ring.Document) {
	defer close(c.loopDone)
	for d := range docs {
		if d.Version <= c.ring.Load().Version() {
			continue
		}
		r, err := ring.New(d)
		if err != nil {
			c.log.Warn("push client: ring document dropped", "version", d.Version, "err", err)
			continue
		}
		c.setRing(r)
	}
	c.mu.Lock()
	closed := c.closed
	c.mu.Unlock()
	if !closed {
		c.log.Warn("push client: the ring store stopped; keeping the ring in use", "version", c.ring.Load().Version())
	}
}

// setRing makes r the ring in use, wakes retries waiting for a change, and
// closes the connections of addresses no member has any more.
func (c *Client) setRing(r *ring.Ring) {
	addrs := make(map[string]bool)
	for _, m := range r.Members() {
		addrs[m.GRPC] = true
	}
	var gone []*grpc.ClientConn
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.ring.Store(r)
	c.addrs = addrs
	for addr, cc := range c.conns {
		if !addrs[addr] {
			gone = append(gone, cc)
			delete(c.conns, addr)
			delete(c.streams, addr) // it ends with its connection, after the grace
		}
	}
	close(c.changed)
	c.changed = make(chan struct{})
	c.mu.Unlock()
	if len(gone) > 0 {
		// Let calls already running on them finish: cancelling one the edge
		// has taken would have it retried elsewhere and delivered twice.
		// New calls no longer use these connections.
		time.AfterFunc(closeGrace, func() {
			for _, cc := range gone {
				cc.Close()
			}
		})
	}
	c.log.Info("push client: ring in use", "version", r.Version(), "members", len(addrs), "closed_conns", len(gone))
}

// Ring returns the ring in use now.
func (c *Client) Ring() *ring.Ring { return c.ring.Load() }

// Close stops following the store and closes every connection. Calls
// running on them fail; later calls return ErrClosed.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	conns := c.conns
	c.conns = nil
	for _, st := range c.streams {
		st.cancel()
	}
	c.streams = nil
	c.mu.Unlock()
	c.stop()
	<-c.loopDone
	var errs []error
	for addr, cc := range conns {
		if err := cc.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close %s: %w", addr, err))
		}
	}
	return errors.Join(errs...)
}

// conn returns the pooled connection to member m. An address that left
// the ring meanwhile gets no new connection (nothing would ever close it);
// the caller retries with the newer ring.
func (c *Client) conn(m ring.Member) (pushv1.PushClient, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, ErrClosed
	}
	if !c.addrs[m.GRPC] {
		return nil, status.Error(codes.Unavailable, "left the ring")
	}
	cc := c.conns[m.GRPC]
	if cc == nil {
		var err error
		cc, err = grpc.NewClient(m.GRPC, c.dial...)
		if err != nil {
			return nil, status.Errorf(codes.Internal, "connection: %v", err)
		}
		c.conns[m.GRPC] = cc
	}
	return pushv1.NewPushClient(cc), nil
}

func describe(m ring.Member) string { return fmt.Sprintf("edge %d %s (%s)", m.ID, m.Name, m.GRPC) }

// edgeError names the edge in a call's error, keeping its gRPC code.
func edgeError(m ring.Member, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, ErrClosed) {
		return err
	}
	s := status.Convert(err)
	return status.Errorf(s.Code(), "%s: %s", describe(m), s.Message())
}

// owner returns the live owner of uid on r and its connection.
func (c *Client) owner(r *ring.Ring, uid string) (ring.Member, pushv1.PushClient, error) {
	id, ok := r.LookupLive([]byte(uid), c.up)
	if !ok {
		return ring.Member{}, nil, status.Errorf(codes.Unavailable, "no live member owns user %q in ring version %d", uid, r.Version())
	}
	m, _ := r.Member(id)
	pc, err := c.conn(m)
	return m, pc, edgeError(m, err)
}

// retryable reports whether err may go away with another attempt: the
// edge was unavailable, or its connection was closed under the call by a
// ring change (CANCELED while the caller's context is still live).
func retryable(ctx context.Context, err error) bool {
	if ctx.Err() != nil || errors.Is(err, ErrClosed) {
		return false
	}
	switch status.Code(err) {
	case codes.Unavailable, codes.Canceled:
		return true
	}
	return false
}

// withTimeout gives a context without a deadline DefaultTimeout.
func withTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, DefaultTimeout)
}

// retry calls try with the newest ring until it returns nil or an error
// retrying cannot fix, or ctx ends; then it returns try's last error,
// which says more than "deadline exceeded".
func (c *Client) retry(ctx context.Context, try func(r *ring.Ring) error) error {
	delay := firstBackoff
	for {
		c.mu.Lock()
		changed, closed := c.changed, c.closed
		c.mu.Unlock()
		if closed {
			return ErrClosed
		}
		err := try(c.ring.Load())
		if err == nil || !retryable(ctx, err) {
			return err
		}
		t := time.NewTimer(delay/2 + rand.N(delay/2+1))
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-changed: // a new ring may name another owner: go now
			t.Stop()
		case <-t.C:
		}
		delay = min(2*delay, maxBackoff)
	}
}

// Local checks, the edge's own rules, so that bad input costs no round trip.

func checkUser(uid string) error {
	if err := userid.Check(uid); err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	return nil
}

func checkUsers(uids []string) error {
	if len(uids) == 0 {
		return status.Error(codes.InvalidArgument, "user_ids is empty")
	}
	if len(uids) > userid.MaxPerCall {
		return status.Errorf(codes.InvalidArgument, "%v: %d, limit %d", userid.ErrTooMany, len(uids), userid.MaxPerCall)
	}
	for _, uid := range uids {
		if err := checkUser(uid); err != nil {
			return err
		}
	}
	return nil
}

func checkPayload(data []byte) error {
	if len(data) == 0 {
		return status.Error(codes.InvalidArgument, "empty payload")
	}
	return nil
}

// ttlSeconds rounds ttl up to whole seconds, so that a short ttl is not
// read as 0, the edge's default.
func ttlSeconds(ttl time.Duration) (uint32, error) {
	if ttl < 0 {
		return 0, status.Errorf(codes.InvalidArgument, "negative ttl %v", ttl)
	}
	s := (ttl + time.Second - 1) / time.Second
	return uint32(min(int64(s), math.MaxUint32)), nil
}

// Publish sends data to userID through its owner. ttl (rounded up to whole
// seconds; 0: the edge's default) bounds how long the message waits for a
// user who is not connected.
func (c *Client) Publish(ctx context.Context, userID string, data []byte, ttl time.Duration) (*pushv1.PublishResponse, error) {
	if err := checkUser(userID); err != nil {
		return nil, err
	}
	if err := checkPayload(data); err != nil {
		return nil, err
	}
	secs, err := ttlSeconds(ttl)
	if err != nil {
		return nil, err
	}
	ctx, cancel := withTimeout(ctx)
	defer cancel()
	req := &pushv1.PublishRequest{UserId: userID, Data: data, TtlSeconds: secs, Forwarded: c.forwarded}
	var resp *pushv1.PublishResponse
	err = c.retry(ctx, func(r *ring.Ring) error {
		m, pc, err := c.owner(r, userID)
		if err != nil {
			return err
		}
		resp, err = c.publishOn(ctx, m.GRPC, pc, req)
		return edgeError(m, err)
	})
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// Kick closes every connection of userID on its owner with 4004 and
// reason.
func (c *Client) Kick(ctx context.Context, userID, reason string) (*pushv1.KickResponse, error) {
	if err := checkUser(userID); err != nil {
		return nil, err
	}
	ctx, cancel := withTimeout(ctx)
	defer cancel()
	req := &pushv1.KickRequest{UserId: userID, Reason: reason, Forwarded: c.forwarded}
	var resp *pushv1.KickResponse
	err := c.retry(ctx, func(r *ring.Ring) error {
		m, pc, err := c.owner(r, userID)
		if err != nil {
			return err
		}
		resp, err = pc.Kick(ctx, req)
		return edgeError(m, err)
	})
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// PublishMulti sends data to several users: one PublishMulti per owner,
// concurrently, with the results merged back in request order. A share
// whose edge is unavailable is re-split on the newest ring and retried;
// the shares already answered are not sent again.
func (c *Client) PublishMulti(ctx context.Context, userIDs []string, data []byte, ttl time.Duration) (*pushv1.PublishMultiResponse, error) {
	if err := checkUsers(userIDs); err != nil {
		return nil, err
	}
	if err := checkPayload(data); err != nil {
		return nil, err
	}
	secs, err := ttlSeconds(ttl)
	if err != nil {
		return nil, err
	}
	out := make([]*pushv1.PublishResult, len(userIDs))
	err = c.split(ctx, userIDs, func(ctx context.Context, pc pushv1.PushClient, idx []int, uids []string) error {
		resp, err := pc.PublishMulti(ctx, &pushv1.PublishMultiRequest{UserIds: uids, Data: data, TtlSeconds: secs, Forwarded: c.forwarded})
		if err != nil {
			return err
		}
		if len(resp.GetResults()) != len(uids) {
			return status.Errorf(codes.Internal, "%d results for %d users", len(resp.GetResults()), len(uids))
		}
		for k, i := range idx {
			out[i] = resp.Results[k]
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return &pushv1.PublishMultiResponse{Results: out}, nil
}

// Presence asks each user's owner whether the user is connected: one call
// per owner, concurrently, merged back in request order.
func (c *Client) Presence(ctx context.Context, userIDs []string) (*pushv1.PresenceResponse, error) {
	if err := checkUsers(userIDs); err != nil {
		return nil, err
	}
	out := make([]*pushv1.UserPresence, len(userIDs))
	err := c.split(ctx, userIDs, func(ctx context.Context, pc pushv1.PushClient, idx []int, uids []string) error {
		resp, err := pc.Presence(ctx, &pushv1.PresenceRequest{UserIds: uids, Forwarded: c.forwarded})
		if err != nil {
			return err
		}
		if len(resp.GetUsers()) != len(uids) {
			return status.Errorf(codes.Internal, "%d answers for %d users", len(resp.GetUsers()), len(uids))
		}
		for k, i := range idx {
			out[i] = resp.Users[k]
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return &pushv1.PresenceResponse{Users: out}, nil
}

// split groups uids by owner and runs call once per owner, concurrently,
// with the users' indices in uids and the users. Groups that fail with a
// retryable error are re-grouped on the newest ring and tried again; call
// must store its results by index, and only on success.
func (c *Client) split(ctx context.Context, uids []string,
	call func(ctx context.Context, pc pushv1.PushClient, idx []int, uids []string) error) error {
	ctx, cancel := withTimeout(ctx)
	defer cancel()
	pending := make([]int, len(uids))
	for i := range pending {
		pending[i] = i
	}
	return c.retry(ctx, func(r *ring.Ring) error {
		type group struct {
			m   ring.Member
			idx []int
			err error
		}
		var groups []*group
		byOwner := make(map[uint32]*group)
		for _, i := range pending {
			id, ok := r.LookupLive([]byte(uids[i]), c.up)
			if !ok {
				return status.Errorf(codes.Unavailable, "no live member owns user %q in ring version %d", uids[i], r.Version())
			}
			g := byOwner[id]
			if g == nil {
				m, _ := r.Member(id)
				g = &group{m: m}
				byOwner[id] = g
				groups = append(groups, g)
			}
			g.idx = append(g.idx, i)
		}
		run := func(g *group) {
			pc, err := c.conn(g.m)
			if err == nil {
				part := make([]string, len(g.idx))
				for k, i := range g.idx {
					part[k] = uids[i]
				}
				err = call(ctx, pc, g.idx, part)
			}
			g.err = edgeError(g.m, err)
		}
		if len(groups) == 1 {
			run(groups[0])
		} else {
			var wg sync.WaitGroup
			for _, g := range groups {
				wg.Go(func() { run(g) })
			}
			wg.Wait()
		}
		var again []int
		var retryErr error
		for _, g := range groups {
			switch {
			case g.err == nil:
			case retryable(ctx, g.err):
				again = append(again, g.idx...)
				retryErr = g.err
			default:
				return g.err
			}
		}
		slices.Sort(again)
		pending = again
		return retryErr
	})
}

// Broadcast sends data to every member of the ring, active and draining,
// in parallel (members the WithUp filter reports down are skipped: their
// connections went down with them). Connections are summed and the edges
// that took it counted. A member that is unavailable is retried until it
// answers, leaves the ring, or ctx ends; members that joined meanwhile get
// it too. If some members failed, Broadcast returns the totals of those
// that took it together with an error naming the others.
func (c *Client) Broadcast(ctx context.Context, data []byte) (*pushv1.BroadcastResponse, error) {
	if err := checkPayload(data); err != nil {
		return nil, err
	}
	ctx, cancel := withTimeout(ctx)
	defer cancel()
	// forwarded: the SDK fans out itself, an edge must not fan out again.
	req := &pushv1.BroadcastRequest{Data: data, Forwarded: true}
	total := &pushv1.BroadcastResponse{}
	done := make(map[uint32]bool)      // took it, or failed for good
	failed := make(map[uint32]error)   // last failure of each member not done, or failed for good
	var mu sync.Mutex                  // guards total, done and failed while a round runs
	var members map[uint32]ring.Member // the newest ring's members
	err := c.retry(ctx, func(r *ring.Ring) error {
		// Between rounds only this goroutine touches the maps.
		members = make(map[uint32]ring.Member)
		var targets []ring.Member
		for _, m := range r.Members() {
			members[m.ID] = m
			switch {
			case done[m.ID]:
			case !c.up(m.ID):
				delete(failed, m.ID) // down now: nothing to wait for
			default:
				targets = append(targets, m)
			}
		}
		var wg sync.WaitGroup
		for _, m := range targets {
			wg.Go(func() {
				pc, err := c.conn(m)
				var resp *pushv1.BroadcastResponse
				if err == nil {
					resp, err = pc.Broadcast(ctx, req)
				}
				err = edgeError(m, err)
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err == nil:
					total.Connections += resp.GetConnections()
					total.Edges += resp.GetEdges()
					done[m.ID] = true
					delete(failed, m.ID)
				case retryable(ctx, err):
					failed[m.ID] = err
				default:
					failed[m.ID] = err
					done[m.ID] = true
				}
			})
		}
		wg.Wait()
		for id, err := range failed {
			if _, ok := members[id]; ok && !done[id] {
				return err // someone to retry
			}
		}
		return nil
	})
	var ids []uint32
	for id, ferr := range failed {
		if errors.Is(ferr, ErrClosed) {
			return nil, ErrClosed
		}
		if _, ok := members[id]; ok { // a member that left the ring needs nothing
			ids = append(ids, id)
		}
	}
	if errors.Is(err, ErrClosed) {
		return nil, err
	}
	if len(ids) == 0 {
		return total, nil
	}
	slices.Sort(ids)
	// UNAVAILABLE unless some edge refused for another reason, which
	// retrying through a forwarder would not fix either.
	msgs := make([]string, len(ids))
	code := codes.Unavailable
	for k, id := range ids {
		s := status.Convert(failed[id])
		msgs[k] = fmt.Sprintf("%s (%s)", s.Message(), s.Code())
		if s.Code() != codes.Unavailable && s.Code() != codes.Canceled {
			code = s.Code()
		}
	}
	return total, status.Errorf(code, "broadcast reached %d edges, failed on %d: %s", total.Edges, len(ids), strings.Join(msgs, "; "))
}
