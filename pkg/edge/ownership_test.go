package edge_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/pushcluster/push/pkg/edge"
	"github.com/pushcluster/push/pkg/edge/edgetest"
	"github.com/pushcluster/push/pkg/owner"
	"github.com/pushcluster/push/pkg/ring"
	"github.com/pushcluster/push/pkg/store"
	pushv1 "github.com/pushcluster/push/proto/push/v1"
)

// emsg is a message with its epoch.
type emsg struct {
	Seq   uint64          `json:"seq"`
	Epoch string          `json:"epoch"`
	Raw   json.RawMessage `json:"data"`
	Data  string          `json:"-"`
	Gap   bool            `json:"gap"`
	From  uint64          `json:"from"`
	To    *uint64         `json:"to"`
	HB    bool            `json:"hb"`
}

// readE reads the next message or gap notice, skipping heartbeats.
func readE(t *testing.T, c *websocket.Conn) emsg {
	t.Helper()
	for {
		_, b, err := c.Read(ctx(t))
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		var e emsg
		if err := json.Unmarshal(b, &e); err != nil {
			t.Fatalf("frame %q: %v", b, err)
		}
		if e.HB {
			continue
		}
		e.Data = string(e.Raw)
		return e
	}
}

// member of the cluster under test.
type cnode struct {
	*edgetest.Edge
	id  uint32
	mem *edge.Membership
	pc  pushv1.PushClient
}

type ccluster struct {
	t     *testing.T
	st    store.Store
	nodes map[uint32]*cnode
}

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// newCluster starts edges 1..n in this process on a file ring of the given
// members (ids) with leases of ttl; ring is the placement of the first
// document.
func newCluster(t *testing.T, st store.Store, ids []uint32, inRing []uint32, ttl time.Duration) *ccluster {
	t.Helper()
	c := &ccluster{t: t, st: st, nodes: map[uint32]*cnode{}}
	for _, id := range ids {
		e := edgetest.Start(t, secret, edge.Config{ID: id, MigrateRate: 1000, GuestGrace: 2 * time.Second, MailboxTTL: time.Minute})
		cc, err := grpc.NewClient(e.GRPCAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cc.Close() })
		c.nodes[id] = &cnode{Edge: e, id: id, pc: pushv1.NewPushClient(cc)}
	}
	d := &ring.Document{Version: 1, Algorithm: ring.AlgorithmBounded}
	for _, id := range inRing {
		d.Members = append(d.Members, c.nodes[id].Member(id, 1))
	}
	if err := st.CompareAndSwap(ctx(t), 0, d, false); err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		mem, err := edge.Join(c.nodes[id].Srv, st, ttl)
		if err != nil {
			t.Fatal(err)
		}
		c.nodes[id].mem = mem
		t.Cleanup(mem.Close)
	}
	return c
}

// pairWithUserOn1 starts edges 1 and 2 on st (leases of a second), finds a
// user edge 1 owns while both are live, and connects it to edge 1: the
// common start of the tests of one user's stream.
func pairWithUserOn1(t *testing.T, st store.Store) (c *ccluster, uid string, ws *websocket.Conn) {
	t.Helper()
	c = newCluster(t, st, []uint32{1, 2}, []uint32{1, 2}, time.Second)
	all := viewOf(t, []uint32{1, 2}, []uint32{1, 2}, c.nodes)
	uid = userOwnedBy(t, all, all, 1, 1)
	c.waitOwner(uid, 1)
	ws = c.dial(1, uid, "")
	waitFor(t, "registration", func() bool { return c.nodes[1].Srv.Presence(uid) == 1 })
	return c, uid, ws
}

// waitOwner waits until every node's view gives uid to want.
func (c *ccluster) waitOwner(uid string, want uint32) {
	c.t.Helper()
	waitFor(c.t, fmt.Sprintf("every edge sees %d owning %s", want, uid), func() bool {
		for _, n := range c.nodes {
			if n.mem == nil {
				continue
			}
			v := n.Srv.View()
			if v == nil {
				return false
			}
			if id, _ := v.Owner(uid); id != want {
				return false
			}
		}
		return true
	})
}

func (c *ccluster) dial(id uint32, uid, extra string) *websocket.Conn {
	c.t.Helper()
	e := &env{t: c.t, addr: c.nodes[id].WS()}
	return e.dial(uid, extra)
}

func fileStore(t *testing.T) *store.File {
	t.Helper()
	st, err := store.OpenFile(filepath.Join(t.TempDir(), "ring.json"), quietLog())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// userOwnedBy finds a user id the view gives to want and, in the second
// view, to want2.
func userOwnedBy(t *testing.T, v1, v2 *owner.View, want, want2 uint32) string {
	for i := 0; i < 100000; i++ {
		uid := "u" + strconv.Itoa(i)
		a, _ := v1.Owner(uid)
		b, _ := v2.Owner(uid)
		if a == want && b == want2 {
			return uid
		}
	}
	t.Fatalf("no user owned by %d then %d", want, want2)
	return ""
}

func viewOf(t *testing.T, ids []uint32, live []uint32, nodes map[uint32]*cnode) *owner.View {
	d := &ring.Document{Version: 1, Algorithm: ring.AlgorithmBounded}
	for _, id := range ids {
		d.Members = append(d.Members, nodes[id].Member(id, 1))
	}
	r, err := ring.New(d)
	if err != nil {
		t.Fatal(err)
	}
	l := map[uint32]owner.Live{}
	for _, id := range live {
		l[id] = owner.Live{State: ring.StateActive}
	}
	return owner.NewView(r, l, 1)
}

func pub(t *testing.T, pc pushv1.PushClient, uid, data, key string) (*pushv1.PublishResponse, metadata.MD, error) {
	t.Helper()
	var tr metadata.MD
	r, err := pc.Publish(ctx(t), &pushv1.PublishRequest{UserId: uid, Data: []byte(data), IdempotencyKey: key}, grpc.Trailer(&tr))
	return r, tr, err
}

// A planned move hands the user's whole stream to the new owner: the epoch
// continues and a resume replays exactly what was missed; the old owner
// answers publishes with the new owner instead of taking them.
func TestPlannedMoveContinuesTheStream(t *testing.T) {
	st := fileStore(t)
	c := newCluster(t, st, []uint32{1, 2}, []uint32{1}, time.Second)
	uid := userOwnedBy(t, viewOf(t, []uint32{1}, []uint32{1, 2}, c.nodes), viewOf(t, []uint32{1, 2}, []uint32{1, 2}, c.nodes), 1, 2)
	c.waitOwner(uid, 1)
	ws := c.dial(1, uid, "")
	waitFor(t, "registration", func() bool { return c.nodes[1].Srv.Presence(uid) == 1 })
	var epoch string
	for i := 1; i <= 3; i++ {
		r, _, err := pub(t, c.nodes[1].pc, uid, fmt.Sprint(i), "")
		if err != nil {
			t.Fatal(err)
		}
		m := readE(t, ws)
		if m.Seq != uint64(i) || m.Epoch == "" || m.Epoch != r.Epoch {
			t.Fatalf("message %d: %+v, answer %+v", i, m, r)
		}
		epoch = m.Epoch
	}
	// Edge 2 joins the placement.
	d, _ := st.Load(ctx(t))
	d.Version = 2
	d.Members = append(d.Members, c.nodes[2].Member(2, 1))
	if err := st.CompareAndSwap(ctx(t), 1, d, false); err != nil {
		t.Fatal(err)
	}
	c.waitOwner(uid, 2)
	// The new owner takes the stream on the first publish: same epoch, next seq.
	r, _, err := pub(t, c.nodes[2].pc, uid, "4", "")
	if err != nil || r.Epoch != epoch || r.Seq != 4 {
		t.Fatalf("publish on the new owner: %+v %v, want epoch %s seq 4", r, err, epoch)
	}
	if _, _, err := pub(t, c.nodes[2].pc, uid, "5", ""); err != nil {
		t.Fatal(err)
	}
	// The old owner refuses at once and names the new one.
	_, tr, err := pub(t, c.nodes[1].pc, uid, "x", "")
	if status.Code(err) != codes.Unavailable || len(tr.Get(edge.TrailerOwner)) == 0 || tr.Get(edge.TrailerOwner)[0] != "2" {
		t.Fatalf("old owner: %v, trailer %v", err, tr)
	}
	// The user was moved (4003) and resumes on the new owner.
	_, _, err = ws.Read(ctx(t))
	if websocket.CloseStatus(err) != edge.CloseMoved {
		t.Fatalf("old connection: %v, want close 4003", err)
	}
	ws2 := c.dial(2, uid, "&last_seq=3&epoch="+epoch)
	for i := uint64(4); i <= 5; i++ {
		if m := readE(t, ws2); m.Seq != i || m.Epoch != epoch || m.Gap {
			t.Fatalf("after the move: %+v, want seq %d epoch %s", m, i, epoch)
		}
	}
}

// When the owner is gone for good, the next live member starts a new epoch:
// a client resuming the old one gets one open gap notice, then the new
// stream from seq 1.
func TestOwnerGoneStartsANewEpoch(t *testing.T) {
	st := fileStore(t)
	c, uid, ws := pairWithUserOn1(t, st)
	pub(t, c.nodes[1].pc, uid, "1", "")
	m := readE(t, ws)
	old := m.Epoch
	// Edge 1 dies: its gRPC service first, so nothing can be taken from it.
	c.nodes[1].GRPC.Server.Stop()
	c.nodes[1].mem.Close()
	c.nodes[1].mem = nil
	c.waitOwner(uid, 2)
	r, _, err := pub(t, c.nodes[2].pc, uid, "2", "")
	if err != nil || r.Epoch == old || r.Seq != 1 {
		t.Fatalf("publish on the successor: %+v %v", r, err)
	}
	ws2 := c.dial(2, uid, "&last_seq=1&epoch="+old)
	g := readE(t, ws2)
	if !g.Gap || g.Epoch != old || g.From != 2 || g.To != nil {
		t.Fatalf("want an open gap notice for %s from 2, got %+v", old, g)
	}
	if m := readE(t, ws2); m.Seq != 1 || m.Epoch != r.Epoch || m.Data != "2" {
		t.Fatalf("new stream: %+v", m)
	}
}

// A publish repeated with the same idempotency key is applied once and
// answered with the first answer.
func TestIdempotentPublish(t *testing.T) {
	e := start(t, nil)
	c := e.dial("ida", "")
	waitFor(t, "registration", func() bool { return e.srv.Presence("ida") == 1 })
	r1, err := e.push.Publish(ctx(t), &pushv1.PublishRequest{UserId: "ida", Data: []byte(`"a"`), IdempotencyKey: "k-1"})
	if err != nil {
		t.Fatal(err)
	}
	r2, err := e.push.Publish(ctx(t), &pushv1.PublishRequest{UserId: "ida", Data: []byte(`"a"`), IdempotencyKey: "k-1"})
	if err != nil || !r2.Duplicate || r2.Seq != r1.Seq || r2.Epoch != r1.Epoch || r2.Outcome != r1.Outcome {
		t.Fatalf("repeat: %+v %v, first %+v", r2, err, r1)
	}
	r3, _ := e.push.Publish(ctx(t), &pushv1.PublishRequest{UserId: "ida", Data: []byte(`"b"`), IdempotencyKey: "k-2"})
	if r3.Duplicate || r3.Seq != r1.Seq+1 {
		t.Fatalf("new key: %+v", r3)
	}
	if m := read(t, c); m.Seq != 1 {
		t.Fatalf("first: %+v", m)
	}
	if m := read(t, c); m.Seq != 2 || string(m.Data) != `"b"` {
		t.Fatalf("the repeat was delivered, or b lost: %+v", m)
	}
	long := make([]byte, 65)
	for i := range long {
		long[i] = 'k'
	}
	if _, err := e.push.Publish(ctx(t), &pushv1.PublishRequest{UserId: "ida", Data: []byte(`1`), IdempotencyKey: string(long)}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("65-byte key: %v", err)
	}
}

// An epoch from a client is checked.
func TestEpochParameter(t *testing.T) {
	e := start(t, nil)
	for _, extra := range []string{"&last_seq=1&epoch=", "&last_seq=1&epoch=a%22b", "&epoch=abc"} {
		_, resp, err := websocket.Dial(ctx(t), e.url("eve", token(t, "eve"), extra), nil)
		if err == nil || resp == nil || resp.StatusCode != 400 {
			t.Fatalf("%s: %v %v", extra, resp, err)
		}
	}
}

// ctlStore wraps a file store so a test decides whether leases renew and
// whether the store can be read.
type ctlStore struct {
	*store.File
	mu          sync.Mutex
	unreachable bool
	leases      []*ctlLease
}

type ctlLease struct {
	store.Lease
	s    *ctlStore
	id   uint32
	mu   sync.Mutex
	stop bool      // renewals "fail"
	at   time.Time // Renewed when stopped
	lost chan struct{}
}

func (s *ctlStore) Register(ctx context.Context, id uint32, ttl time.Duration, info owner.Live) (store.Lease, error) {
	s.mu.Lock()
	down := s.unreachable
	s.mu.Unlock()
	if down {
		return nil, errors.New("store unreachable")
	}
	l, err := s.File.Register(ctx, id, ttl, info)
	if err != nil {
		return nil, err
	}
	cl := &ctlLease{Lease: l, s: s, id: id, lost: make(chan struct{})}
	s.mu.Lock()
	s.leases = append(s.leases, cl)
	s.mu.Unlock()
	return cl, nil
}

func (s *ctlStore) ReadLive(ctx context.Context) (map[uint32]owner.Live, error) {
	s.mu.Lock()
	down := s.unreachable
	s.mu.Unlock()
	if down {
		return nil, errors.New("store unreachable")
	}
	return s.File.ReadLive(ctx)
}

func (l *ctlLease) Renewed() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stop {
		return l.at
	}
	return l.Lease.Renewed()
}

func (l *ctlLease) Lost() <-chan struct{} { return l.lost }

// freeze stops member id's renewals as seen by its edge.
func (s *ctlStore) freeze(id uint32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, l := range s.leases {
		if l.id == id {
			l.mu.Lock()
			if !l.stop {
				l.stop, l.at = true, l.Lease.Renewed()
			}
			l.mu.Unlock()
		}
	}
}

// An edge that cannot renew its lease while a peer reaches the store fences
// itself: its users are closed with 4003, publishes are refused, and it
// rejoins with a new incarnation.
func TestFencingWhenOnlyThisEdgeLosesTheStore(t *testing.T) {
	st := &ctlStore{File: fileStore(t)}
	c, uid, ws := pairWithUserOn1(t, st)
	st.freeze(1)
	_, _, err := ws.Read(ctx(t))
	if websocket.CloseStatus(err) != edge.CloseMoved {
		t.Fatalf("fenced edge's user: %v, want 4003", err)
	}
	// While fenced, or once rejoined (the lease file went on renewing, so
	// it may be back at once), the stream is never the old one.
	waitFor(t, "rejoined", func() bool {
		r, _, err := pub(t, c.nodes[1].pc, uid, "x", "")
		return err == nil && r.Seq == 1
	})
}

// When nobody can read the store, nobody fences and nobody moves: the edge
// serves on past its lease.
func TestStoreOutageIsNotADataPlaneEvent(t *testing.T) {
	st := &ctlStore{File: fileStore(t)}
	c, uid, ws := pairWithUserOn1(t, st)
	st.mu.Lock()
	st.unreachable = true
	st.mu.Unlock()
	st.freeze(1)
	st.freeze(2)
	time.Sleep(3 * time.Second) // three lease TTLs
	for i := 1; i <= 3; i++ {
		r, _, err := pub(t, c.nodes[1].pc, uid, fmt.Sprint(i), "")
		if err != nil || r.Seq != uint64(i) {
			t.Fatalf("publish during the outage: %+v %v", r, err)
		}
		if m := readE(t, ws); m.Seq != uint64(i) {
			t.Fatalf("message during the outage: %+v", m)
		}
	}
	if c.nodes[1].Srv.Presence(uid) != 1 {
		t.Fatal("the user was moved during a store outage")
	}
}

// A lease that flickers (its file removed by hand) sends a publish to the
// next owner for a moment; when the owner is back it takes that stream and
// its open connection gets the message: nothing acknowledged is stranded.
func TestFlickeringLeaseStrandsNothing(t *testing.T) {
	st := fileStore(t)
	c, uid, ws := pairWithUserOn1(t, st)
	if _, _, err := pub(t, c.nodes[1].pc, uid, "1", ""); err != nil {
		t.Fatal(err)
	}
	if m := readE(t, ws); m.Seq != 1 {
		t.Fatalf("first: %+v", m)
	}
	// Edge 1's lease file goes; edge 2 sees itself the owner and stores.
	lease := filepath.Join(st.LeaseDir(), "1.json")
	var r *pushv1.PublishResponse
	waitFor(t, "edge 2 takes a publish while edge 1's lease is gone", func() bool {
		os.Remove(lease)
		var err error
		r, _, err = pub(t, c.nodes[2].pc, uid, "2", "flicker")
		return err == nil
	})
	if r.Outcome != pushv1.Outcome_OUTCOME_STORED {
		t.Fatalf("edge 2: %+v", r)
	}
	// Edge 1 renews its lease, takes edge 2's stream back and delivers.
	m := readE(t, ws)
	if m.Data != "2" || m.Gap {
		t.Fatalf("after the flicker: %+v, want the stored message", m)
	}
}

// A publish retried with its idempotency key on the user's owner after
// another edge applied it (during a lease flicker edge 2 took it, and the
// answer did not reach the caller) is applied on both; when the owner then
// takes edge 2's stream, the message is kept once: the user's connection
// gets it once, not a second time under a new seq.
func TestRetryAppliedOnTwoEdgesIsDeliveredOnce(t *testing.T) {
	st := fileStore(t)
	c, uid, ws := pairWithUserOn1(t, st)
	if _, _, err := pub(t, c.nodes[1].pc, uid, "1", "k1"); err != nil {
		t.Fatal(err)
	}
	if m := readE(t, ws); m.Seq != 1 {
		t.Fatalf("first: %+v", m)
	}
	lease := filepath.Join(st.LeaseDir(), "1.json")
	waitFor(t, "edge 2 takes a publish while edge 1's lease is gone", func() bool {
		os.Remove(lease)
		r, _, err := pub(t, c.nodes[2].pc, uid, "2", "k2")
		return err == nil && r.Outcome == pushv1.Outcome_OUTCOME_STORED
	})
	// The caller's retry reaches the owner, which still holds the stream
	// the user reads.
	if _, _, err := pub(t, c.nodes[1].pc, uid, "2", "k2"); err != nil {
		t.Fatal(err)
	}
	// Edge 2 offers its stream to the owner once it sees edge 1 live
	// again; edge 1 merges it into the one the user reads. Probing with
	// the key applies nothing new on edge 2 while it still holds it.
	waitFor(t, "edge 1 takes edge 2's stream", func() bool {
		_, err := c.nodes[2].Srv.PublishKey(context.Background(), uid, []byte("2"), 0, "k2")
		var no *edge.NotOwnerError
		return errors.As(err, &no)
	})
	if r, _, err := pub(t, c.nodes[1].pc, uid, "2", "k2"); err != nil || !r.Duplicate {
		t.Fatalf("the key after the merge: %+v %v, want a duplicate", r, err)
	}
	if _, _, err := pub(t, c.nodes[1].pc, uid, "3", "k3"); err != nil {
		t.Fatal(err)
	}
	var got []string
	for {
		m := readE(t, ws)
		if m.Gap {
			t.Fatalf("gap notice %+v", m)
		}
		got = append(got, m.Data)
		if m.Data == "3" {
			break
		}
	}
	if fmt.Sprint(got) != "[2 3]" {
		t.Fatalf("after the retry the user read %v, want [2 3]: each message once", got)
	}
}

// Cluster calls from outside the ring are refused: nobody but a live member
// can take a user's stream or make an edge claim one.
func TestClusterCallsOnlyFromMembers(t *testing.T) {
	st := fileStore(t)
	c := newCluster(t, st, []uint32{1, 2}, []uint32{1, 2}, time.Second)
	cc, err := grpc.NewClient(c.nodes[1].GRPCAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	cl := pushv1.NewClusterClient(cc)
	waitFor(t, "edge 1 sees edge 2 live", func() bool { return c.nodes[1].Srv.View().Alive(2) })
	if _, err := cl.Take(ctx(t), &pushv1.TakeRequest{ClaimantId: 999, RingVersion: 1 << 62, UserIds: []string{"victim"}}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("take by a non-member: %v", err)
	}
	if _, err := cl.Take(ctx(t), &pushv1.TakeRequest{ClaimantId: 1, UserIds: []string{"victim"}}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("take by itself: %v", err)
	}
	if _, err := cl.Claim(ctx(t), &pushv1.ClaimRequest{HolderId: 999, UserIds: []string{"victim"}}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("claim for a non-member: %v", err)
	}
	// A member's claim for users nobody holds starts nothing.
	ids := make([]string, 1000)
	for i := range ids {
		ids[i] = fmt.Sprint("ghost", i)
	}
	if _, err := cl.Claim(ctx(t), &pushv1.ClaimRequest{HolderId: 2, UserIds: ids}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	for _, uid := range ids[:50] {
		if r, _, err := pub(t, c.nodes[1].pc, uid, "x", ""); err == nil && r.Seq != 1 {
			t.Fatalf("%s: %+v", uid, r)
		}
	}
}

// Back-to-back planned moves (drain 1, add 3, drain 3 within goneKeep) bring
// the stream back to an edge that held it before: edge 1, which handed it to
// 2 first, answers 2's Take again with its old copy. That copy is behind the
// stream that went on through 2 and 3 and must not be restored: the epoch
// continues at the next seq and the client gets every message once.
func TestBackToBackMovesKeepTheStream(t *testing.T) {
	st := fileStore(t)
	c := newCluster(t, st, []uint32{1, 2, 3}, []uint32{1, 2}, time.Second)
	uid := userOwnedBy(t, viewOf(t, []uint32{1, 2}, []uint32{1, 2}, c.nodes), viewOf(t, []uint32{2, 3}, []uint32{2, 3}, c.nodes), 1, 3)
	c.waitOwner(uid, 1)
	ws := c.dial(1, uid, "")
	waitFor(t, "registration", func() bool { return c.nodes[1].Srv.Presence(uid) == 1 })
	seq, epoch := uint64(0), ""
	publishOn := func(id uint32) {
		t.Helper()
		seq++
		r, _, err := pub(t, c.nodes[id].pc, uid, fmt.Sprint(seq), "")
		if err != nil {
			t.Fatalf("publish %d on edge %d: %v", seq, id, err)
		}
		if epoch == "" {
			epoch = r.Epoch
		}
		if r.Seq != seq || r.Epoch != epoch {
			t.Fatalf("publish %d on edge %d: seq %d epoch %s, want seq %d epoch %s", seq, id, r.Seq, r.Epoch, seq, epoch)
		}
	}
	// readTo reads the connection's messages up to seq in order.
	readTo := func(ws *websocket.Conn, from uint64) {
		t.Helper()
		for i := from; i <= seq; i++ {
			if m := readE(t, ws); m.Seq != i || m.Epoch != epoch || m.Gap {
				t.Fatalf("got %+v, want seq %d of epoch %s", m, i, epoch)
			}
		}
	}
	// follow waits for the 4003 of the edge the user was on and resumes on
	// edge to from the last seq read.
	follow := func(ws *websocket.Conn, to uint32, last uint64) *websocket.Conn {
		t.Helper()
		if _, _, err := ws.Read(ctx(t)); websocket.CloseStatus(err) != edge.CloseMoved {
			t.Fatalf("want close 4003, got %v", err)
		}
		next := c.dial(to, uid, fmt.Sprintf("&last_seq=%d&epoch=%s", last, epoch))
		readTo(next, last+1)
		return next
	}
	change := func(version uint64, edit func(d *ring.Document)) {
		t.Helper()
		d, err := st.Load(ctx(t))
		if err != nil {
			t.Fatal(err)
		}
		d.Version = version + 1
		edit(d)
		if err := st.CompareAndSwap(ctx(t), version, d, false); err != nil {
			t.Fatal(err)
		}
	}
	setState := func(id uint32, s ring.State) func(d *ring.Document) {
		return func(d *ring.Document) {
			for i := range d.Members {
				if d.Members[i].ID == id {
					d.Members[i].State = s
				}
			}
		}
	}
	for range 3 {
		publishOn(1)
	}
	readTo(ws, 1)
	change(1, setState(1, ring.StateDraining)) // 1 drains: 2 owns the user
	c.waitOwner(uid, 2)
	publishOn(2)
	publishOn(2)
	ws = follow(ws, 2, 3)
	change(2, func(d *ring.Document) { d.Members = append(d.Members, c.nodes[3].Member(3, 1)) }) // 3 joins: it owns the user
	c.waitOwner(uid, 3)
	publishOn(3)
	publishOn(3)
	ws = follow(ws, 3, 5)
	change(3, setState(3, ring.StateDraining)) // 3 drains: back to 2, which handed the stream on
	c.waitOwner(uid, 2)
	publishOn(2)
	follow(ws, 2, 7)
}
