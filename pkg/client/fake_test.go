package client_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/pushcluster/push/pkg/client"
	"github.com/pushcluster/push/pkg/owner"
	"github.com/pushcluster/push/pkg/ring"
	"github.com/pushcluster/push/pkg/store"
	pushv1 "github.com/pushcluster/push/proto/push/v1"
)

// The tests run against fake edges: push.v1.Push servers on loopback that
// answer as the ownership contract says (proto/push/v1/push.proto), with
// knobs to refuse users, lose answers, hang or stall.

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// bound is the generous limit for anything that should happen soon.
const bound = 15 * time.Second

// maxFakePayload is the fake edge's --max-payload-bytes.
const maxFakePayload = 1 << 20

// call is one request as a fake edge saw it.
type call struct {
	method string // Publish, Stream (a publish on PublishStream), PublishMulti, Kick, Presence, Broadcast
	users  []string
	key    string
	budget time.Duration // time left before the call's deadline when it arrived (0: none)
}

// fakeEdge is a push.v1.Push server with a mailbox counter per user and an
// idempotency table, like an edge's.
type fakeEdge struct {
	pushv1.UnimplementedPushServer
	id   uint32
	addr string
	srv  *grpc.Server

	mu sync.Mutex
	// knobs
	noStream     bool                     // PublishStream and PublishBatchStream unimplemented
	noBatch      bool                     // PublishBatchStream unimplemented
	refuse       map[string]uint32        // user -> owner named in a not-owner answer
	lose         int                      // apply, then answer UNAVAILABLE, this many times
	hang         map[string]bool          // never answer publishes for these users
	delay        map[string]time.Duration // answer publishes for these users late
	stuckStreams bool                     // new streams never read a request
	kickErr      error
	echoUser     bool // set reason to the user id (to match answers)
	// state
	seq     map[string]uint64
	applied map[string]*pushv1.PublishResponse // "user\x00key" -> first answer
	conns   map[string]uint32                  // connections held per user
	calls   []call
	streams int   // PublishStreams and PublishBatchStreams opened
	batches []int // size of every PublishBatchStream message
}

func startFake(t testing.TB, id uint32) *fakeEdge {
	t.Helper()
	e := newFake(id)
	if err := e.start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.stop)
	return e
}

func newFake(id uint32) *fakeEdge {
	return &fakeEdge{id: id, refuse: map[string]uint32{}, hang: map[string]bool{}, delay: map[string]time.Duration{},
		seq: map[string]uint64{}, applied: map[string]*pushv1.PublishResponse{}, conns: map[string]uint32{}}
}

func (e *fakeEdge) start() error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	e.addr = ln.Addr().String()
	e.srv = grpc.NewServer(grpc.MaxRecvMsgSize(2 * maxFakePayload))
	pushv1.RegisterPushServer(e.srv, e)
	go e.srv.Serve(ln)
	return nil
}

// stop ends the server at once: calls fail, connections are refused.
func (e *fakeEdge) stop() { e.srv.Stop() }

func (e *fakeEdge) member() ring.Member {
	return ring.Member{ID: e.id, Name: fmt.Sprintf("e%d", e.id), WS: e.addr, GRPC: e.addr, Weight: 1}
}

func (e *fakeEdge) set(f func(e *fakeEdge)) {
	e.mu.Lock()
	defer e.mu.Unlock()
	f(e)
}

func (e *fakeEdge) record(ctx context.Context, method, key string, users ...string) {
	var budget time.Duration
	if d, ok := ctx.Deadline(); ok {
		budget = time.Until(d)
	}
	e.mu.Lock()
	e.calls = append(e.calls, call{method: method, users: users, key: key, budget: budget})
	e.mu.Unlock()
}

// seen returns the calls so far whose method is one of methods (all when
// none).
func (e *fakeEdge) seen(methods ...string) []call {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []call
	for _, c := range e.calls {
		if len(methods) == 0 || containsString(methods, c.method) {
			out = append(out, c)
		}
	}
	return out
}

func containsString(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// applyLocked applies one publish for uid with key, or returns the first
// answer for the key.
func (e *fakeEdge) applyLocked(uid, key string) *pushv1.PublishResponse {
	if key != "" {
		if first, ok := e.applied[uid+"\x00"+key]; ok {
			dup := proto.Clone(first).(*pushv1.PublishResponse)
			dup.Duplicate = true
			return dup
		}
	}
	e.seq[uid]++
	resp := &pushv1.PublishResponse{Outcome: pushv1.Outcome_OUTCOME_STORED, Seq: e.seq[uid], EdgeId: e.id,
		Epoch: fmt.Sprintf("e%d", e.id)}
	if n := e.conns[uid]; n > 0 {
		resp.Outcome, resp.Connections = pushv1.Outcome_OUTCOME_DELIVERED, n
	}
	if e.echoUser {
		resp.Reason = uid
	}
	if key != "" {
		e.applied[uid+"\x00"+key] = proto.Clone(resp).(*pushv1.PublishResponse)
	}
	return resp
}

// publish is the edge's answer to one publish: the response, or a gRPC
// status and the owner named in a not-owner answer.
func (e *fakeEdge) publish(ctx context.Context, req *pushv1.PublishRequest) (*pushv1.PublishResponse, *status.Status, uint32) {
	uid := req.GetUserId()
	if len(req.GetData()) == 0 || len(req.GetData()) > maxFakePayload {
		return nil, status.Newf(codes.InvalidArgument, "payload too big or empty: %d bytes", len(req.GetData())), 0
	}
	e.mu.Lock()
	if named, ok := e.refuse[uid]; ok {
		e.mu.Unlock()
		return nil, status.Newf(codes.Unavailable, "edge %d does not own user %q (owner %d)", e.id, uid, named), named
	}
	hang, delay := e.hang[uid], e.delay[uid]
	resp := e.applyLocked(uid, req.GetIdempotencyKey())
	lose := e.lose > 0
	if lose {
		e.lose--
	}
	e.mu.Unlock()
	if hang {
		<-ctx.Done()
		return nil, status.FromContextError(ctx.Err()), 0
	}
	if delay > 0 {
		select {
		case <-time.After(delay):
		case <-ctx.Done():
			return nil, status.FromContextError(ctx.Err()), 0
		}
	}
	if lose {
		return nil, status.New(codes.Unavailable, "answer lost"), 0
	}
	return resp, nil, 0
}

func (e *fakeEdge) Publish(ctx context.Context, req *pushv1.PublishRequest) (*pushv1.PublishResponse, error) {
	e.record(ctx, "Publish", req.GetIdempotencyKey(), req.GetUserId())
	resp, st, named := e.publish(ctx, req)
	if st != nil {
		if named != 0 {
			grpc.SetTrailer(ctx, metadata.Pairs(client.OwnerTrailer, strconv.FormatUint(uint64(named), 10),
				client.RingVersionTrailer, "1"))
		}
		return nil, st.Err()
	}
	return resp, nil
}

// PublishStream serves the requests of a stream concurrently, so answers
// go back in the order they are ready.
func (e *fakeEdge) PublishStream(stream pushv1.Push_PublishStreamServer) error {
	e.mu.Lock()
	if e.noStream {
		e.mu.Unlock()
		return status.Error(codes.Unimplemented, "no PublishStream")
	}
	e.streams++
	stuck := e.stuckStreams
	e.mu.Unlock()
	if stuck {
		<-stream.Context().Done() // never reads: the client's sends block
		return nil
	}
	var sendMu sync.Mutex
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		req, err := stream.Recv()
		if err != nil {
			return nil
		}
		wg.Go(func() {
			e.record(stream.Context(), "Stream", req.GetIdempotencyKey(), req.GetUserId())
			resp, st, named := e.publish(stream.Context(), req)
			if st != nil {
				resp = &pushv1.PublishResponse{ErrorCode: uint32(st.Code()), Error: st.Message(), OwnerId: named, RingVersion: 1}
			}
			resp.RequestId = req.GetRequestId()
			sendMu.Lock()
			defer sendMu.Unlock()
			stream.Send(resp)
		})
	}
}

// PublishBatchStream serves every request of every batch concurrently,
// recorded as "Stream" like a PublishStream request, each answered in a
// message of its own as soon as it is ready.
func (e *fakeEdge) PublishBatchStream(stream pushv1.Push_PublishBatchStreamServer) error {
	e.mu.Lock()
	if e.noStream || e.noBatch {
		e.mu.Unlock()
		return status.Error(codes.Unimplemented, "no PublishBatchStream")
	}
	e.streams++
	stuck := e.stuckStreams
	e.mu.Unlock()
	if stuck {
		<-stream.Context().Done() // never reads: the client's sends block
		return nil
	}
	var sendMu sync.Mutex
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		batch, err := stream.Recv()
		if err != nil {
			return nil
		}
		e.mu.Lock()
		e.batches = append(e.batches, len(batch.GetRequests()))
		e.mu.Unlock()
		for _, req := range batch.GetRequests() {
			wg.Go(func() {
				e.record(stream.Context(), "Stream", req.GetIdempotencyKey(), req.GetUserId())
				resp, st, named := e.publish(stream.Context(), req)
				if st != nil {
					resp = &pushv1.PublishResponse{ErrorCode: uint32(st.Code()), Error: st.Message(), OwnerId: named, RingVersion: 1}
				}
				resp.RequestId = req.GetRequestId()
				sendMu.Lock()
				defer sendMu.Unlock()
				stream.Send(&pushv1.PublishBatchResponse{Responses: []*pushv1.PublishResponse{resp}})
			})
		}
	}
}

func (e *fakeEdge) PublishMulti(ctx context.Context, req *pushv1.PublishMultiRequest) (*pushv1.PublishMultiResponse, error) {
	e.record(ctx, "PublishMulti", req.GetIdempotencyKey(), req.GetUserIds()...)
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.lose > 0 {
		e.lose--
		for _, uid := range req.GetUserIds() {
			if _, ok := e.refuse[uid]; !ok {
				e.applyLocked(uid, req.GetIdempotencyKey())
			}
		}
		return nil, status.Error(codes.Unavailable, "answer lost")
	}
	out := &pushv1.PublishMultiResponse{}
	for _, uid := range req.GetUserIds() {
		if named, ok := e.refuse[uid]; ok {
			out.Results = append(out.Results, &pushv1.PublishResult{UserId: uid, Outcome: pushv1.Outcome_OUTCOME_NOT_OWNER,
				EdgeId: e.id, OwnerId: named})
			continue
		}
		r := e.applyLocked(uid, req.GetIdempotencyKey())
		out.Results = append(out.Results, &pushv1.PublishResult{UserId: uid, Outcome: r.Outcome, Seq: r.Seq,
			Connections: r.Connections, EdgeId: e.id, Epoch: r.Epoch, Duplicate: r.Duplicate})
	}
	return out, nil
}

func (e *fakeEdge) Kick(ctx context.Context, req *pushv1.KickRequest) (*pushv1.KickResponse, error) {
	e.record(ctx, "Kick", "", req.GetUserId())
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.kickErr != nil {
		return nil, e.kickErr
	}
	n := e.conns[req.GetUserId()]
	delete(e.conns, req.GetUserId())
	return &pushv1.KickResponse{Connections: n}, nil
}

func (e *fakeEdge) Presence(ctx context.Context, req *pushv1.PresenceRequest) (*pushv1.PresenceResponse, error) {
	e.record(ctx, "Presence", "", req.GetUserIds()...)
	e.mu.Lock()
	defer e.mu.Unlock()
	out := &pushv1.PresenceResponse{}
	for _, uid := range req.GetUserIds() {
		p := &pushv1.UserPresence{UserId: uid}
		if n := e.conns[uid]; n > 0 {
			p.Online, p.Connections, p.EdgeId = true, n, e.id
		}
		out.Users = append(out.Users, p)
	}
	return out, nil
}

func (e *fakeEdge) Broadcast(ctx context.Context, req *pushv1.BroadcastRequest) (*pushv1.BroadcastResponse, error) {
	e.record(ctx, "Broadcast", "")
	e.mu.Lock()
	defer e.mu.Unlock()
	var n uint64
	for _, c := range e.conns {
		n += uint64(c)
	}
	return &pushv1.BroadcastResponse{Connections: n, Edges: 1}, nil
}

// cluster is fake edges, a file store naming them and file leases.
type cluster struct {
	t      *testing.T
	st     *store.File
	edges  map[uint32]*fakeEdge
	leases map[uint32]store.Lease
}

// newCluster starts n fake edges with ids 1..n, writes ring version 1
// naming them all and registers a lease for each id in live (all when live
// is nil).
func newCluster(t *testing.T, n int, live ...uint32) *cluster {
	t.Helper()
	st, err := store.OpenFile(filepath.Join(t.TempDir(), "ring.json"), quiet())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	cl := &cluster{t: t, st: st, edges: map[uint32]*fakeEdge{}, leases: map[uint32]store.Lease{}}
	var ids []uint32
	for id := uint32(1); id <= uint32(n); id++ {
		cl.edges[id] = startFake(t, id)
		ids = append(ids, id)
	}
	cl.setRing(ids...)
	if live == nil {
		live = ids
	}
	for _, id := range live {
		cl.register(id)
	}
	return cl
}

// register takes member id's lease.
func (cl *cluster) register(id uint32) {
	cl.t.Helper()
	l, err := cl.st.Register(context.Background(), id, 10*time.Second, owner.Live{})
	if err != nil {
		cl.t.Fatal(err)
	}
	cl.leases[id] = l
	cl.t.Cleanup(func() { l.Close() })
}

// expire removes member id's lease: the member is dead for everybody.
func (cl *cluster) expire(id uint32) {
	cl.t.Helper()
	if err := cl.leases[id].Close(); err != nil {
		cl.t.Fatal(err)
	}
}

// add starts a fake edge with id (not yet in the ring).
func (cl *cluster) add(id uint32) *fakeEdge {
	e := startFake(cl.t, id)
	cl.edges[id] = e
	return e
}

// setRing writes the next version naming the given edges, all active.
func (cl *cluster) setRing(ids ...uint32) *ring.Document {
	cl.t.Helper()
	var ms []ring.Member
	for _, id := range ids {
		ms = append(ms, cl.edges[id].member())
	}
	return cl.setMembers(ms)
}

// setMembers writes the next version with exactly these members.
func (cl *cluster) setMembers(ms []ring.Member) *ring.Document {
	cl.t.Helper()
	ctx := context.Background()
	var prev uint64
	if d, err := cl.st.Load(ctx); err == nil {
		prev = d.Version
	}
	d := &ring.Document{Version: prev + 1, Members: ms}
	if err := cl.st.CompareAndSwap(ctx, prev, d, false); err != nil {
		cl.t.Fatal(err)
	}
	return d
}

// follower follows the store with a fast liveness poll.
func (cl *cluster) follower() *store.Follower {
	cl.t.Helper()
	f, err := store.Follow(ctx(cl.t), cl.st, store.FollowOptions{Poll: 10 * time.Millisecond, Log: quiet()})
	if err != nil {
		cl.t.Fatal(err)
	}
	cl.t.Cleanup(f.Close)
	return f
}

// client is an SDK on a fast Follower of the cluster's store.
func (cl *cluster) client(opts ...client.Option) *client.Client {
	cl.t.Helper()
	c := client.NewWithFollower(cl.follower(), append([]client.Option{client.WithLogger(quiet())}, opts...)...)
	cl.t.Cleanup(func() { c.Close() })
	return c
}

// waitView waits until c's view satisfies cond.
func waitView(t *testing.T, c *client.Client, what string, cond func(v *owner.View) bool) {
	t.Helper()
	waitFor(t, what, func() bool { return cond(c.View()) })
}

func ctx(t testing.TB) context.Context {
	c, cancel := context.WithTimeout(context.Background(), bound)
	t.Cleanup(cancel)
	return c
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(bound)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func users(n int) []string {
	u := make([]string, n)
	for i := range u {
		u[i] = fmt.Sprintf("user-%d", i)
	}
	return u
}

// userOwnedBy returns a user the view gives to id, other than those in not.
func userOwnedBy(t testing.TB, v *owner.View, id uint32, not ...string) string {
	t.Helper()
	for _, u := range users(10000) {
		if o, ok := v.Owner(u); ok && o == id && !containsString(not, u) {
			return u
		}
	}
	t.Fatalf("no user owned by %d", id)
	return ""
}

// keysOf returns the idempotency keys of calls.
func keysOf(calls []call) []string {
	var out []string
	for _, c := range calls {
		out = append(out, c.key)
	}
	return out
}

func allSame(keys []string) bool {
	for _, k := range keys {
		if k != keys[0] {
			return false
		}
	}
	return len(keys) > 0
}

func describeCalls(calls []call) string {
	var b strings.Builder
	for _, c := range calls {
		fmt.Fprintf(&b, "%s%v ", c.method, c.users)
	}
	return b.String()
}
