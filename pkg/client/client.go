// Package client is the Go SDK for backends: it follows the ring store
// (package store) and sends push.v1.Push calls straight to the edge that
// owns each user, so a publish costs one hop and no router.
//
// # Owner
//
// The owner of a user is owner.View.Owner on the view of a store.Follower:
// the ring's owner of the user if that member is live (it holds a lease in
// the store: an etcd lease, or a lease file beside a file ring), otherwise
// the next live member in the ring's own order; draining members own
// nobody. It is the one rule the router, the edges and the router's
// forwarder apply too, from the same document and the same leases (see
// package owner), so the SDK has no health checks or liveness of its own.
// New follows the store itself; a process that already follows it (the
// router, an edge) passes its Follower to NewWithFollower instead.
//
// An edge accepts a publish only for a user it owns or whose stream it
// still holds. Views of liveness may differ for a moment between processes;
// an edge that does not own the user answers at once with UNAVAILABLE and
// the owner it sees (trailer metadata push-owner and push-ring-version for
// unary calls, owner_id and ring_version in a PublishStream answer,
// OUTCOME_NOT_OWNER with owner_id per user in PublishMulti). The SDK then
// sends the next attempt straight to that member when the ring document it
// follows names it (live or not in its own view: the edge knows better
// right now), or otherwise waits for its view to change, or for the
// backoff, and asks its own view's owner again.
//
// # Retries and errors
//
// Every call runs until it is answered or its context ends; a context
// without a deadline gets DefaultTimeout. Within that bound, a call that
// fails with gRPC UNAVAILABLE (an edge down, refusing connections,
// draining, fenced or not the owner; no live member owning the user), or
// whose connection closed because its member left the ring, is tried
// again: at once when a not-owner answer names a member of the document (a
// second not-owner answer in a row waits like any failure), otherwise as
// soon as the view changes or after a backoff of 10 ms doubling to 500 ms
// with jitter, whichever comes first. A call waiting on an edge whose lease
// the view drops (the edge died or paused) is given up and sent to the new
// owner; the same idempotency key makes that safe. When the
// context ends, the call returns the last failure (UNAVAILABLE naming the
// edge, or DEADLINE_EXCEEDED if the last edge asked took the call but did
// not answer in time). Nothing else is retried: INVALID_ARGUMENT comes back
// at once, and bad user ids, empty payloads and bad idempotency keys are
// refused locally without a network call. Errors are gRPC status errors
// naming the edge (id, name, address). Calls on a closed Client return
// ErrClosed.
//
// So a publish to a user whose owner died fails with UNAVAILABLE if the
// caller's deadline passes first, and succeeds on the new owner as soon as
// the view moves the user: when the dead edge's lease expires (its TTL,
// store.DefaultLeaseTTL by default) and the Follower reads that (its poll).
//
// # Idempotency
//
// Every Publish and PublishMulti call carries an idempotency key: a random
// one per call (NewIdempotencyKey), or the caller's (WithIdempotencyKey).
// Every retry of the call sends the same key, and an edge applies a key
// once per user: a publish retried after an ambiguous UNAVAILABLE (the edge
// took it, the answer was lost) is answered with the first answer's seq and
// epoch and duplicate=true instead of being applied twice. The edge
// remembers a key for the user's mailbox TTL, and the key moves with the
// user's stream when the user moves to another edge. A backend that
// retries a call itself (after the SDK gave up, or after a crash) gets the
// same guarantee by setting the key itself and reusing it for the retries
// of the same message.
//
// # Batches
//
// Concurrent Publish calls to one edge travel together: the SDK sends them
// as one PublishBatchStream message, which the edge applies in one pass
// (each registry shard lock once, one write per connection). A batch
// leaves when it holds WithBatchSize requests (DefaultBatchSize) or
// MaxBatchBytes of payload, or once WithBatchLinger (DefaultBatchLinger,
// at most MaxBatchLinger) has passed since the previous batch to that edge
// left; a request after a quiet spell leaves at once, so a low rate adds
// no latency, and under load an edge gets at most one batch per linger. A
// linger of 0 sends what queued while the previous batch was being sent.
// Batching changes nothing a caller sees but latency (at most the linger) and the
// edge's CPU per message: every call keeps its own answer, error,
// deadline, retries, re-routes and idempotency key, and a call whose
// context ends before its batch leaves is not sent. A payload over
// MaxBatchBytes goes alone as a unary Publish, so an edge that refuses its
// size (RESOURCE_EXHAUSTED) refuses only that call. Against an edge
// without PublishBatchStream the SDK uses PublishStream, then unary calls.
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
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/pushcluster/push/pkg/grpcauth"
	"github.com/pushcluster/push/pkg/owner"
	"github.com/pushcluster/push/pkg/ring"
	"github.com/pushcluster/push/pkg/store"
	"github.com/pushcluster/push/pkg/userid"
	pushv1 "github.com/pushcluster/push/proto/push/v1"
)

// DefaultTimeout bounds a call whose context has no deadline, retries and
// re-routes included, so that an unreachable edge never hangs a caller
// forever.
const DefaultTimeout = 10 * time.Second

// DefaultForwardTimeout is the forwarder's (Client.Server) cap on one
// forwarded call unless WithForwardTimeout sets another: a publish to the
// users of a dead or paused edge fails within it until their ownership has
// moved (docs/protocol.md, "What is guaranteed").
const DefaultForwardTimeout = time.Second

// Trailer metadata keys of an edge's not-owner answer to a unary call: the
// ring id of the owner the edge sees (decimal) and the ring version of its
// view.
const (
	OwnerTrailer       = owner.OwnerTrailer
	RingVersionTrailer = owner.RingVersionTrailer
)

// closeGrace is how long a connection to a member that left the ring stays
// open for the calls running on it (a variable for tests).
var closeGrace = 30 * time.Second

// Retry backoff: the first wait and the cap. Waits double from the first
// and are jittered (half fixed, half random) so that many callers failing
// together do not retry in lockstep.
const (
	firstBackoff = 10 * time.Millisecond
	maxBackoff   = 500 * time.Millisecond
)

// ErrClosed is returned by calls on a closed Client. It is a gRPC
// UNAVAILABLE status (a forwarder that is shutting down tells its callers
// to go elsewhere) and is never retried.
var ErrClosed = status.Error(codes.Unavailable, "push client closed")

// Option configures New and NewWithFollower.
type Option func(*options)

type options struct {
	dial       []grpc.DialOption
	log        *slog.Logger
	forwarded  bool
	fwdTimeout time.Duration
	batchSize  int
	linger     time.Duration
}

// Batching of Publish calls (see WithBatchSize and WithBatchLinger). The
// bounds are an edge's (edge.MaxBatchRequests, edge.MaxBatchBytes): a
// batch over them would be refused whole.
const (
	DefaultBatchSize   = 256
	DefaultBatchLinger = 200 * time.Microsecond
	MaxBatchLinger     = time.Millisecond
	MaxBatchSize       = 4096
	MaxBatchBytes      = 1 << 20
)

// WithBatchSize sets how many Publish calls to one edge may go in one
// batch (one PublishBatchStream message, which the edge applies in one
// pass): the batch is sent as soon as it holds n requests, or
// MaxBatchBytes of payload, or when the linger (WithBatchLinger) passes.
// n <= 0 means DefaultBatchSize (256); n is capped at MaxBatchSize (4096);
// n = 1 sends every call on its own. Every call still gets its own answer
// and error, retries and deadline.
func WithBatchSize(n int) Option {
	return func(o *options) { o.batchSize = n }
}

// WithBatchLinger sets the least time between two batches to one edge:
// a Publish call queued sooner than d after the previous batch left waits
// for the rest of d (or until its batch is full) so that others join it;
// one queued later leaves at once. At most MaxBatchLinger (1 ms; longer
// is capped). d = 0 waits for nobody: what
// queued while the previous batch was being sent goes at once (natural
// batching, no added latency). d < 0 means DefaultBatchLinger (200 µs),
// as does leaving it unset. A call whose context ends while it waits is
// not sent.
func WithBatchLinger(d time.Duration) Option {
	return func(o *options) { o.linger = min(d, MaxBatchLinger) }
}

// WithDialOptions adds gRPC dial options to every edge connection, after
// the defaults (plaintext, reconnect backoff of 100 ms growing to 3 s,
// keepalive pings every 30 s during calls), so they can override them:
// pass grpc.WithTransportCredentials for TLS.
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(o *options) { o.dial = append(o.dial, opts...) }
}

// CredentialsFromEnv returns the option that dials with the TLS and bearer
// token named by PUSH_GRPC_CA, PUSH_GRPC_CERT, PUSH_GRPC_KEY,
// PUSH_GRPC_TLS, PUSH_GRPC_SERVER_NAME, PUSH_GRPC_TOKEN and
// PUSH_GRPC_TOKEN_FILE (grpcauth.ClientConfig; pushctl's --grpc-* flags),
// and no option when none is set.
func CredentialsFromEnv() (Option, error) {
	opts, err := grpcauth.ClientFromEnv(nil).DialOptions(nil)
	if err != nil {
		return nil, fmt.Errorf("push client credentials: %w", err)
	}
	return WithDialOptions(opts...), nil
}

// WithLogger sets where ring changes and problems are logged
// (slog.Default() otherwise). New passes it to the Follower it starts.
func WithLogger(log *slog.Logger) Option { return func(o *options) { o.log = log } }

// WithForwarded marks every request as forwarded (the requests'
// forwarded field), for a process that hands on calls it received and
// wants the edge to handle them itself and never pass them on again. An
// authenticated edge honours it only from cluster members (the router's
// forwarder dials with its member credential); from anybody else the call
// is PERMISSION_DENIED.
func WithForwarded() Option { return func(o *options) { o.forwarded = true } }

// WithForwardTimeout sets the forwarder's (Client.Server) cap on each
// forwarded call, retries included: a call runs until the caller's
// deadline or d from its arrival, whichever comes first, so that nothing
// queued behind the forwarder waits on a dead edge. d <= 0 means
// DefaultForwardTimeout. It does not affect the Client's own methods.
func WithForwardTimeout(d time.Duration) Option { return func(o *options) { o.fwdTimeout = d } }

// Client sends push.v1.Push calls to the edges of a ring, each to the
// user's owner in the view of its store.Follower (see the package
// documentation for what owner, retries, errors and idempotency mean).
//
// A Client is safe for concurrent use. It holds one gRPC connection per
// member gRPC address, made on first use and closed (after a grace for the
// calls running on it) when no member of the document has that address
// any more, and one PublishBatchStream per edge that carries its Publish
// calls in batches (WithBatchSize, WithBatchLinger).
type Client struct {
	log        *slog.Logger
	f          *store.Follower
	ownF       bool // New started f: Close closes it
	forwarded  bool // WithForwarded
	fwdTimeout time.Duration
	dial       []grpc.DialOption
	done       chan struct{} // closed by Close: ends loop
	loopDone   chan struct{} // closed when loop returns

	mu        sync.Mutex // guards the fields below
	closed    bool
	version   uint64                      // ring version addrs comes from
	addrs     map[string]bool             // gRPC addresses of the document's members
	conns     map[string]*grpc.ClientConn // by gRPC address
	streams   map[string]*pubStream       // Publish streams by gRPC address (stream.go)
	unaryOnly map[string]bool             // edges without PublishStream
	noBatch   map[string]bool             // edges without PublishBatchStream
	batch     batchConfig                 // WithBatchSize, WithBatchLinger
}

// New follows st with store.Follow (liveness from the store's leases, if it
// keeps any) and sends calls straight to each user's owner. It returns once
// the Follower has its first document (and liveness reading), or an error
// if ctx ends first; ctx bounds only that wait. The Client follows st until
// Close; st stays the caller's to close, after the Client.
//
// A process that already runs a store.Follower should use NewWithFollower,
// so that it reads the store once and decides ownership from one view.
func New(ctx context.Context, st store.Store, opts ...Option) (*Client, error) {
	o := makeOptions(opts)
	f, err := store.Follow(ctx, st, store.FollowOptions{Log: o.log})
	if err != nil {
		return nil, fmt.Errorf("push client: %w", err)
	}
	return newClient(f, true, o), nil
}

// NewWithFollower returns a Client that takes ownership from f, a Follower
// the caller already runs (the router's, an edge's): f.View().Owner for
// every call, f.Changed() to wake retries. The caller keeps owning f: Close
// does not close it, and f must be closed only after the Client. f must not
// be nil.
func NewWithFollower(f *store.Follower, opts ...Option) *Client {
	if f == nil {
		panic("push client: NewWithFollower with a nil Follower")
	}
	return newClient(f, false, makeOptions(opts))
}

func makeOptions(opts []Option) options {
	o := options{log: slog.Default(), linger: -1}
	for _, opt := range opts {
		opt(&o)
	}
	if o.batchSize <= 0 {
		o.batchSize = DefaultBatchSize
	}
	o.batchSize = min(o.batchSize, MaxBatchSize)
	if o.linger < 0 {
		o.linger = DefaultBatchLinger
	}
	if o.log == nil {
		o.log = slog.Default()
	}
	if o.fwdTimeout <= 0 {
		o.fwdTimeout = DefaultForwardTimeout
	}
	return o
}

func newClient(f *store.Follower, own bool, o options) *Client {
	c := &Client{
		log: o.log, f: f, ownF: own, forwarded: o.forwarded, fwdTimeout: o.fwdTimeout,
		done: make(chan struct{}), loopDone: make(chan struct{}),
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
		streams: make(map[string]*pubStream), unaryOnly: make(map[string]bool), noBatch: make(map[string]bool),
		batch: batchConfig{maxItems: o.batchSize, maxBytes: MaxBatchBytes, linger: o.linger},
	}
	c.mu.Lock()
	c.syncLocked(f.View())
	c.mu.Unlock()
	go c.loop()
	return c
}

// loop keeps the pool in step with the document until Close.
func (c *Client) loop() {
	defer close(c.loopDone)
	for {
		changed := c.f.Changed()
		v := c.f.View()
		c.mu.Lock()
		c.syncLocked(v)
		c.mu.Unlock()
		select {
		case <-changed:
		case <-c.done:
			return
		}
	}
}

// syncLocked takes the member addresses of v's document if it is newer than
// the one in use, and closes the connections of addresses no member has any
// more, after closeGrace.
func (c *Client) syncLocked(v *owner.View) {
	if c.closed || (c.addrs != nil && v.Version() <= c.version) {
		return
	}
	addrs := make(map[string]bool)
	for _, m := range v.Ring().Members() {
		addrs[m.GRPC] = true
	}
	var gone []*grpc.ClientConn
	for addr, cc := range c.conns {
		if !addrs[addr] {
			gone = append(gone, cc)
			delete(c.conns, addr)
			delete(c.streams, addr) // it ends with its connection, after the grace
			delete(c.unaryOnly, addr)
			delete(c.noBatch, addr)
		}
	}
	c.version, c.addrs = v.Version(), addrs
	if len(gone) > 0 {
		// Let calls already running on them finish: cancelling one the edge
		// has taken would only have it retried elsewhere. New calls no
		// longer use these connections.
		time.AfterFunc(closeGrace, func() {
			for _, cc := range gone {
				cc.Close()
			}
		})
	}
	c.log.Info("push client: ring in use", "version", v.Version(), "members", len(addrs), "closed_conns", len(gone))
}

// View returns the ownership view in use now (the Follower's).
func (c *Client) View() *owner.View { return c.f.View() }

// Ring returns the ring document in use now.
func (c *Client) Ring() *ring.Ring { return c.f.View().Ring() }

// Close closes every connection, and the Follower if New started it.
// Calls running on the connections fail; later calls return ErrClosed.
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
	close(c.done)
	<-c.loopDone
	if c.ownF {
		c.f.Close()
	}
	var errs []error
	for addr, cc := range conns {
		if err := cc.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close %s: %w", addr, err))
		}
	}
	return errors.Join(errs...)
}

func (c *Client) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// conn returns the pooled connection to member m of v's document. An
// address that left the document meanwhile gets no new connection
// (nothing would ever close it); the caller retries with the newer view.
func (c *Client) conn(v *owner.View, m ring.Member) (pushv1.PushClient, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, ErrClosed
	}
	c.syncLocked(v) // v may be newer than what loop has seen
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

// noOwner is the error for a user no live member owns in v.
func noOwner(v *owner.View, uid string) error {
	return status.Errorf(codes.Unavailable, "no live member owns user %q in ring version %d", uid, v.Version())
}

// target picks the member to ask about uid: *hint (then cleared) if v's
// document names it, else v's owner.
func target(v *owner.View, uid string, hint *uint32) (ring.Member, error) {
	if h := *hint; h != 0 {
		*hint = 0
		if m, ok := v.Member(h); ok {
			return m, nil
		}
	}
	id, ok := v.Owner(uid)
	if !ok {
		return ring.Member{}, noOwner(v, uid)
	}
	m, _ := v.Member(id)
	return m, nil
}

// redirectTo reports whether a not-owner answer from member asked, naming
// named, can be followed at once: named is another member of v's document.
func redirectTo(v *owner.View, asked, named uint32) bool {
	if named == 0 || named == asked {
		return false
	}
	_, ok := v.Member(named)
	return ok
}

// trailerOwner reads the owner an edge named in a unary call's trailer (0:
// none).
func trailerOwner(md metadata.MD) uint32 {
	vals := md.Get(OwnerTrailer)
	if len(vals) == 0 {
		return 0
	}
	id, err := strconv.ParseUint(strings.TrimSpace(vals[0]), 10, 32)
	if err != nil {
		return 0
	}
	return uint32(id)
}

// errMemberGone is the cause of an attempt given up because the view
// dropped the member it waited on.
var errMemberGone = errors.New("the member lost its lease")

// watchAfter is how long a call runs before watchMember starts watching
// its member: most calls are answered sooner and cost no goroutine.
const watchAfter = 20 * time.Millisecond

// watchMember returns the context of one call to member id asked with view
// v: it ends with ctx, or when the view no longer has the member alive (its
// lease expired: it died or paused, and it fences itself, so it will not
// apply the call), so that the call goes to the new owner instead of
// waiting for the caller's deadline. A member v already had as dead (a
// not-owner answer sent the call there) is not watched. gone reports
// whether the context ended that way.
func (c *Client) watchMember(ctx context.Context, v *owner.View, id uint32) (actx context.Context, cancel func(), gone func() bool) {
	if !v.HasLiveness() || !v.Alive(id) {
		actx, cancel := context.WithCancel(ctx)
		return actx, cancel, func() bool { return false }
	}
	actx, cancelCause := context.WithCancelCause(ctx)
	t := time.AfterFunc(watchAfter, func() {
		for {
			changed := c.f.Changed()
			if !c.f.View().Alive(id) {
				cancelCause(errMemberGone)
				return
			}
			select {
			case <-changed:
			case <-actx.Done():
				return
			}
		}
	})
	return actx, func() { t.Stop(); cancelCause(context.Canceled) },
		func() bool { return errors.Is(context.Cause(actx), errMemberGone) }
}

// goneError is what an attempt given up by watchMember returns.
func goneError(m ring.Member) error {
	return status.Errorf(codes.Unavailable, "%s: lost its lease while the call waited", describe(m))
}

// retryable reports whether err may go away with another attempt: the
// edge was unavailable (down, draining, fenced, not the owner), or its
// connection was closed under the call by a ring change (CANCELED while
// the caller's context is still live).
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

// retry calls try with the newest view until it returns nil or an error
// retrying cannot fix, or ctx ends; then it returns try's last error,
// which says more than "deadline exceeded". try reports redirect when its
// failure named the members to ask next: the next attempt then goes at
// once, unless the attempt before was a redirect too (two edges naming
// each other wait the backoff). Otherwise the next attempt waits for the
// backoff or a change of the view, whichever comes first.
func (c *Client) retry(ctx context.Context, try func(v *owner.View) (redirect bool, err error)) error {
	delay := firstBackoff
	redirected := false
	for {
		if c.isClosed() {
			return ErrClosed
		}
		changed := c.f.Changed()
		redirect, err := try(c.f.View())
		if err == nil || !retryable(ctx, err) {
			return err
		}
		if redirect && !redirected {
			redirected = true
			continue
		}
		redirected = redirect
		t := time.NewTimer(delay/2 + rand.N(delay/2+1))
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-changed: // the new view may name another owner: go now
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
// user who is not connected. The answer names the edge that took it
// (edge_id) and the message's place in the user's stream (epoch, seq);
// duplicate is set when the call's idempotency key had been applied already
// and the answer is the first one's.
//
// The call carries the context's idempotency key (WithIdempotencyKey) or a
// new random one, the same on every retry; see the package documentation
// for retries, re-routes and errors.
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
	key, err := keyFor(ctx)
	if err != nil {
		return nil, err
	}
	ctx, cancel := withTimeout(ctx)
	defer cancel()
	req := &pushv1.PublishRequest{UserId: userID, Data: data, TtlSeconds: secs, Forwarded: c.forwarded, IdempotencyKey: key}
	var resp *pushv1.PublishResponse
	var hint uint32
	err = c.retry(ctx, func(v *owner.View) (bool, error) {
		m, err := target(v, userID, &hint)
		if err != nil {
			return false, err
		}
		pc, err := c.conn(v, m)
		if err != nil {
			return false, edgeError(m, err)
		}
		actx, cancel, gone := c.watchMember(ctx, v, m.ID)
		r, named, err := c.publishOn(actx, m.GRPC, pc, req)
		cancel()
		switch {
		case err == nil:
			resp = r
			return false, nil
		case gone():
			return false, goneError(m)
		case status.Code(err) == codes.Unavailable && redirectTo(v, m.ID, named):
			hint = named
			return true, edgeError(m, err)
		}
		return false, edgeError(m, err)
	})
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// PublishMulti sends data to several users: one PublishMulti per owner,
// concurrently, with the results merged back in request order. A share
// whose edge is unavailable is re-split on the newest view and retried,
// and users an edge answered OUTCOME_NOT_OWNER for are sent again to the
// owner it named (or to the owner in the newest view); results already
// answered are kept and never sent again. Every call of one PublishMulti,
// retries included, carries the same idempotency key (WithIdempotencyKey,
// or a new random one), which the edges apply per user.
//
// If some users could still not be sent when ctx ends, PublishMulti
// returns only the error: others may have got the message. To finish the
// job, call again with the same key (WithIdempotencyKey): users who got it
// are answered duplicate=true and not sent it twice.
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
	key, err := keyFor(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]*pushv1.PublishResult, len(userIDs))
	err = c.split(ctx, userIDs, func(ctx context.Context, pc pushv1.PushClient, idx []int, uids []string) (map[int]uint32, error) {
		resp, err := pc.PublishMulti(ctx, &pushv1.PublishMultiRequest{UserIds: uids, Data: data, TtlSeconds: secs,
			Forwarded: c.forwarded, IdempotencyKey: key})
		if err != nil {
			return nil, err
		}
		if len(resp.GetResults()) != len(uids) {
			return nil, status.Errorf(codes.Internal, "%d results for %d users", len(resp.GetResults()), len(uids))
		}
		var notOwner map[int]uint32
		for k, i := range idx {
			res := resp.Results[k]
			if res.GetOutcome() == pushv1.Outcome_OUTCOME_NOT_OWNER {
				if notOwner == nil {
					notOwner = make(map[int]uint32)
				}
				notOwner[i] = res.GetOwnerId()
				continue
			}
			out[i] = res
		}
		return notOwner, nil
	})
	if err != nil {
		return nil, err
	}
	return &pushv1.PublishMultiResponse{Results: out}, nil
}

// Presence asks each user's owner, and only the owner, whether the user is
// connected: one call per owner, concurrently, merged back in request
// order. A user whose connections are still held by another edge (while
// moving to its owner) may be reported offline for that moment.
func (c *Client) Presence(ctx context.Context, userIDs []string) (*pushv1.PresenceResponse, error) {
	if err := checkUsers(userIDs); err != nil {
		return nil, err
	}
	out := make([]*pushv1.UserPresence, len(userIDs))
	err := c.split(ctx, userIDs, func(ctx context.Context, pc pushv1.PushClient, idx []int, uids []string) (map[int]uint32, error) {
		resp, err := pc.Presence(ctx, &pushv1.PresenceRequest{UserIds: uids, Forwarded: c.forwarded})
		if err != nil {
			return nil, err
		}
		if len(resp.GetUsers()) != len(uids) {
			return nil, status.Errorf(codes.Internal, "%d answers for %d users", len(resp.GetUsers()), len(uids))
		}
		for k, i := range idx {
			out[i] = resp.Users[k]
		}
		return nil, nil
	})
	if err != nil {
		return nil, err
	}
	return &pushv1.PresenceResponse{Users: out}, nil
}

// groupCall sends one owner's share: the users' indices in the request and
// the users. It stores its results by index, only for users it succeeded
// for, and returns the users (by index) the edge does not own, with the
// owner it named (0: none).
type groupCall func(ctx context.Context, pc pushv1.PushClient, idx []int, uids []string) (notOwner map[int]uint32, err error)

// split groups uids by owner and runs call once per owner, concurrently.
// Users of groups that failed with a retryable error, and users an edge
// said it does not own, are re-grouped on the newest view and tried again
// (those with a named owner in the document go there next).
func (c *Client) split(ctx context.Context, uids []string, call groupCall) error {
	ctx, cancel := withTimeout(ctx)
	defer cancel()
	pending := make([]int, len(uids))
	for i := range pending {
		pending[i] = i
	}
	hints := make(map[int]uint32) // user index -> owner named by an edge
	return c.retry(ctx, func(v *owner.View) (bool, error) {
		type group struct {
			m        ring.Member
			idx      []int
			notOwner map[int]uint32
			err      error
		}
		var groups []*group
		byMember := make(map[uint32]*group)
		for _, i := range pending {
			h := hints[i]
			delete(hints, i)
			m, err := target(v, uids[i], &h)
			if err != nil {
				return false, err
			}
			g := byMember[m.ID]
			if g == nil {
				g = &group{m: m}
				byMember[m.ID] = g
				groups = append(groups, g)
			}
			g.idx = append(g.idx, i)
		}
		run := func(g *group) {
			pc, err := c.conn(v, g.m)
			if err != nil {
				g.err = edgeError(g.m, err)
				return
			}
			part := make([]string, len(g.idx))
			for k, i := range g.idx {
				part[k] = uids[i]
			}
			actx, cancel, gone := c.watchMember(ctx, v, g.m.ID)
			g.notOwner, err = call(actx, pc, g.idx, part)
			cancel()
			if err != nil && gone() {
				g.err = goneError(g.m)
				return
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
		var lastErr error
		redirect := true // every user left has a member to go to at once
		for _, g := range groups {
			switch {
			case g.err == nil:
				for i, named := range g.notOwner {
					again = append(again, i)
					if redirectTo(v, g.m.ID, named) {
						hints[i] = named
						if lastErr == nil {
							lastErr = status.Errorf(codes.Unavailable, "%s: not the owner of user %q (it sees edge %d)", describe(g.m), uids[i], named)
						}
					} else {
						redirect = false
						lastErr = status.Errorf(codes.Unavailable, "%s: not the owner of user %q (it sees owner %d, not in ring version %d)",
							describe(g.m), uids[i], named, v.Version())
					}
				}
			case retryable(ctx, g.err):
				again = append(again, g.idx...)
				redirect = false
				lastErr = g.err
			default:
				return false, g.err
			}
		}
		slices.Sort(again)
		pending = again
		if len(again) == 0 {
			return false, nil
		}
		return redirect, lastErr
	})
}

// Kick closes every connection of userID with close code 4004 and reason.
// It asks the owner and, concurrently, every other member the view has
// alive (active or draining): while a user moves, a connection may still be
// held by an edge that no longer owns the user. The connections closed are
// summed. Errors from members other than the owner are ignored; the owner
// is retried like a publish. If the owner could not be reached before ctx
// ends, Kick returns the connections the others closed with the owner's
// error.
func (c *Client) Kick(ctx context.Context, userID, reason string) (*pushv1.KickResponse, error) {
	if err := checkUser(userID); err != nil {
		return nil, err
	}
	ctx, cancel := withTimeout(ctx)
	defer cancel()
	req := &pushv1.KickRequest{UserId: userID, Reason: reason, Forwarded: c.forwarded}
	var total uint32
	answered := make(map[uint32]bool) // members that kicked
	asked := make(map[uint32]bool)    // members other than the owner asked once
	err := c.retry(ctx, func(v *owner.View) (bool, error) {
		own, hasOwner := v.Owner(userID)
		type call struct {
			m    ring.Member
			resp *pushv1.KickResponse
			err  error
		}
		var calls []*call
		for _, m := range v.Ring().Members() {
			switch {
			case answered[m.ID]:
			case hasOwner && m.ID == own:
				calls = append(calls, &call{m: m})
			case !asked[m.ID] && v.Alive(m.ID):
				asked[m.ID] = true
				calls = append(calls, &call{m: m})
			}
		}
		var wg sync.WaitGroup
		for _, k := range calls {
			wg.Go(func() {
				pc, err := c.conn(v, k.m)
				if err == nil {
					k.resp, err = pc.Kick(ctx, req)
				}
				k.err = edgeError(k.m, err)
			})
		}
		wg.Wait()
		var ownerErr error
		for _, k := range calls {
			switch {
			case k.err == nil:
				answered[k.m.ID] = true
				total += k.resp.GetConnections()
			case hasOwner && k.m.ID == own:
				ownerErr = k.err
			case errors.Is(k.err, ErrClosed):
				ownerErr = k.err
			}
		}
		if !hasOwner {
			return false, noOwner(v, userID)
		}
		return false, ownerErr
	})
	if err != nil {
		if errors.Is(err, ErrClosed) {
			return nil, err
		}
		return &pushv1.KickResponse{Connections: total}, err
	}
	return &pushv1.KickResponse{Connections: total}, nil
}

// Broadcast sends data to every member of the document, active and
// draining, that the view has alive, in parallel (a member without a lease
// has no connections: it fenced itself or died). Connections are summed
// and the edges that took it counted. A member that is unavailable is
// retried until it answers, leaves the ring or loses its lease, or ctx
// ends; members that joined meanwhile get it too. If some members failed,
// Broadcast returns the totals of those that took it together with an
// error naming the others.
func (c *Client) Broadcast(ctx context.Context, data []byte) (*pushv1.BroadcastResponse, error) {
	if err := checkPayload(data); err != nil {
		return nil, err
	}
	ctx, cancel := withTimeout(ctx)
	defer cancel()
	// Edges never fan a broadcast out (the SDK does); forwarded is set only
	// by a member forwarding for others (WithForwarded): an edge refuses
	// it from anybody else.
	req := &pushv1.BroadcastRequest{Data: data, Forwarded: c.forwarded}
	total := &pushv1.BroadcastResponse{}
	done := make(map[uint32]bool)      // took it, or failed for good
	failed := make(map[uint32]error)   // last failure of each member not done, or failed for good
	var mu sync.Mutex                  // guards total, done and failed while a round runs
	var members map[uint32]ring.Member // the newest view's members
	err := c.retry(ctx, func(v *owner.View) (bool, error) {
		// Between rounds only this goroutine touches the maps.
		members = make(map[uint32]ring.Member)
		var targets []ring.Member
		for _, m := range v.Ring().Members() {
			members[m.ID] = m
			switch {
			case done[m.ID]:
			case !v.Alive(m.ID):
				delete(failed, m.ID) // down now: nothing to wait for
			default:
				targets = append(targets, m)
			}
		}
		var wg sync.WaitGroup
		for _, m := range targets {
			wg.Go(func() {
				pc, err := c.conn(v, m)
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
				return false, err // someone to retry
			}
		}
		return false, nil
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
