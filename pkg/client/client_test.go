package client_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/pushcluster/push/pkg/client"
	"github.com/pushcluster/push/pkg/owner"
	"github.com/pushcluster/push/pkg/ring"
	"github.com/pushcluster/push/pkg/store"
	"github.com/pushcluster/push/pkg/userid"
	pushv1 "github.com/pushcluster/push/proto/push/v1"
)

// keyShape is what the SDK's own keys look like: 16 bytes, base64url, no
// padding.
var keyShape = regexp.MustCompile(`^[A-Za-z0-9_-]{22}$`)

func TestPublishGoesToTheOwnerWithAKeyPerCall(t *testing.T) {
	cl := newCluster(t, 3)
	c := cl.client()
	v := c.View()
	perEdge := make(map[uint32]int)
	for _, u := range users(300) {
		resp, err := c.Publish(ctx(t), u, []byte(`{"n":1}`), time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		want, _ := v.Owner(u)
		if resp.EdgeId != want || resp.Outcome != pushv1.Outcome_OUTCOME_STORED || resp.Seq != 1 ||
			resp.Epoch != fmt.Sprintf("e%d", want) || resp.Duplicate || resp.RequestId != 0 {
			t.Fatalf("%s: %v, want stored seq 1 epoch e%d on edge %d", u, resp, want, want)
		}
		perEdge[want]++
	}
	if len(perEdge) != 3 {
		t.Fatalf("users spread over %v, want all 3 edges", perEdge)
	}
	keys := map[string]bool{}
	for _, e := range cl.edges {
		calls := e.seen()
		if len(calls) != perEdge[e.id] {
			t.Fatalf("edge %d saw %d calls for %d users", e.id, len(calls), perEdge[e.id])
		}
		for _, c := range calls {
			if c.method != "Stream" {
				t.Fatalf("edge %d: %s, want publishes on the PublishStream", e.id, c.method)
			}
			if !keyShape.MatchString(c.key) || keys[c.key] {
				t.Fatalf("key %q: want a new random 22-character base64url key per call", c.key)
			}
			keys[c.key] = true
		}
	}
}

// A not-owner answer in a unary call's trailer sends the next attempt
// straight to the member it names, even one this view has as dead.
func TestNotOwnerTrailerRedirectsToTheNamedOwner(t *testing.T) {
	cl := newCluster(t, 3, 1, 2) // 3 is in the ring, but has no lease
	for _, e := range cl.edges {
		e.set(func(e *fakeEdge) { e.noStream = true })
	}
	c := cl.client()
	v := c.View()
	if v.Live(3) {
		t.Fatal("member 3 live without a lease")
	}
	u := userOwnedBy(t, v, 1)
	cl.edges[1].set(func(e *fakeEdge) { e.refuse[u] = 3 })

	resp, err := c.Publish(ctx(t), u, []byte("x"), 0)
	if err != nil {
		t.Fatal(err)
	}
	if resp.EdgeId != 3 {
		t.Fatalf("answered by edge %d, want 3, the owner edge 1 named", resp.EdgeId)
	}
	first, second := cl.edges[1].seen("Publish"), cl.edges[3].seen("Publish")
	if len(first) != 1 || len(second) != 1 || len(cl.edges[2].seen()) != 0 {
		t.Fatalf("calls: edge 1 %d, edge 2 %d, edge 3 %d; want one refused and one extra hop",
			len(first), len(cl.edges[2].seen()), len(second))
	}
	if first[0].key != second[0].key {
		t.Fatalf("keys %q then %q, want the same key on the re-routed attempt", first[0].key, second[0].key)
	}
}

func TestNotOwnerStreamAnswerRedirectsToTheNamedOwner(t *testing.T) {
	cl := newCluster(t, 3)
	c := cl.client()
	u := userOwnedBy(t, c.View(), 1)
	cl.edges[1].set(func(e *fakeEdge) { e.refuse[u] = 2 })
	for n := 1; n <= 3; n++ {
		resp, err := c.Publish(ctx(t), u, []byte("x"), 0)
		if err != nil {
			t.Fatal(err)
		}
		if resp.EdgeId != 2 || resp.Seq != uint64(n) {
			t.Fatalf("publish %d: %v, want seq %d on edge 2", n, resp, n)
		}
	}
	if a, b := len(cl.edges[1].seen("Stream")), len(cl.edges[2].seen("Stream")); a != 3 || b != 3 {
		t.Fatalf("stream publishes: edge 1 %d, edge 2 %d; want 3 refused and 3 re-routed", a, b)
	}
	if k1, k2 := keysOf(cl.edges[1].seen()), keysOf(cl.edges[2].seen()); !slices.Equal(k1, k2) || allSame(k1) {
		t.Fatalf("keys %v and %v: want one key per call, the same on its re-routed attempt", k1, k2)
	}
}

// An owner the document does not name yet: the SDK waits for its view to
// change (asking its own owner again meanwhile) and then follows it.
func TestNotOwnerNamingAnUnknownMemberWaitsForTheView(t *testing.T) {
	cl := newCluster(t, 2)
	c := cl.client()
	u := userOwnedBy(t, c.View(), 1)
	cl.edges[1].set(func(e *fakeEdge) { e.refuse[u] = 9 })
	done := make(chan error, 1)
	var resp *pushv1.PublishResponse
	go func() {
		var err error
		resp, err = c.Publish(ctx(t), u, []byte("x"), 0)
		done <- err
	}()
	waitFor(t, "retries on edge 1", func() bool { return len(cl.edges[1].seen()) >= 3 })
	select {
	case err := <-done:
		t.Fatalf("publish ended while the named owner is unknown: %v", err)
	default:
	}
	e9 := cl.add(9)
	cl.setRing(1, 2, 9)
	cl.register(9)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(bound):
		t.Fatal("publish did not finish once member 9 joined")
	}
	if resp.EdgeId != 9 || len(e9.seen()) != 1 {
		t.Fatalf("%v after %d calls on edge 9, want it on edge 9", resp, len(e9.seen()))
	}
	if k := keysOf(append(cl.edges[1].seen(), e9.seen()...)); !allSame(k) {
		t.Fatalf("keys %v, want one key on every attempt", k)
	}
}

func TestPublishMultiRetriesNotOwnerUsersAndKeepsOrder(t *testing.T) {
	cl := newCluster(t, 3)
	c := cl.client()
	v := c.View()
	uids := users(90)
	// Of edge 1's users, some are refused in favour of edge 2; one of those
	// edge 2 refuses too, in favour of edge 3.
	var refused []string
	for _, u := range uids {
		if o, _ := v.Owner(u); o == 1 && len(refused) < 5 {
			refused = append(refused, u)
		}
	}
	if len(refused) < 5 {
		t.Fatal("too few users on edge 1")
	}
	cl.edges[1].set(func(e *fakeEdge) {
		for _, u := range refused {
			e.refuse[u] = 2
		}
	})
	cl.edges[2].set(func(e *fakeEdge) { e.refuse[refused[0]] = 3 })
	want := make(map[string]uint32)
	for _, u := range uids {
		want[u], _ = v.Owner(u)
	}
	for _, u := range refused {
		want[u] = 2
	}
	want[refused[0]] = 3

	resp, err := c.PublishMulti(ctx(t), uids, []byte(`"hello"`), 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Results) != len(uids) {
		t.Fatalf("%d results for %d users", len(resp.Results), len(uids))
	}
	for i, res := range resp.Results {
		if res.UserId != uids[i] || res.Outcome != pushv1.Outcome_OUTCOME_STORED || res.EdgeId != want[uids[i]] || res.Seq != 1 {
			t.Fatalf("result %d: %v, want %s stored seq 1 on edge %d", i, res, uids[i], want[uids[i]])
		}
	}
	calls1, calls2, calls3 := cl.edges[1].seen("PublishMulti"), cl.edges[2].seen("PublishMulti"), cl.edges[3].seen("PublishMulti")
	if len(calls1) != 1 || len(calls2) != 2 || len(calls3) != 2 {
		t.Fatalf("PublishMulti calls: edge 1 %s, edge 2 %s, edge 3 %s", describeCalls(calls1), describeCalls(calls2), describeCalls(calls3))
	}
	if got := calls2[1].users; !slices.Equal(got, refused) {
		t.Fatalf("re-sent to edge 2: %v, want only the refused users %v", got, refused)
	}
	if got := calls3[1].users; !slices.Equal(got, refused[:1]) {
		t.Fatalf("re-sent to edge 3: %v, want %v", got, refused[:1])
	}
	all := append(append(calls1, calls2...), calls3...)
	if k := keysOf(all); !allSame(k) || !keyShape.MatchString(k[0]) {
		t.Fatalf("keys %v, want one key on every call of one PublishMulti", k)
	}
	// Another call, another key.
	if _, err := c.PublishMulti(ctx(t), uids[:3], []byte("again"), 0); err != nil {
		t.Fatal(err)
	}
	for _, e := range cl.edges {
		for _, call := range e.seen("PublishMulti") {
			if slices.Equal(call.users, uids[:3]) && call.key == all[0].key {
				t.Fatal("a second PublishMulti reused the first one's key")
			}
		}
	}
}

// An UNAVAILABLE after the edge applied the publish: the retry carries the
// same key and is answered as a duplicate, so the message is applied once.
func TestRetriesCarryTheSameKey(t *testing.T) {
	for _, unary := range []bool{false, true} {
		t.Run(fmt.Sprintf("unary=%v", unary), func(t *testing.T) {
			cl := newCluster(t, 1)
			e := cl.edges[1]
			e.set(func(e *fakeEdge) { e.noStream = unary; e.lose = 2 })
			c := cl.client()
			resp, err := c.Publish(ctx(t), "alice", []byte("x"), 0)
			if err != nil {
				t.Fatal(err)
			}
			if resp.Seq != 1 || !resp.Duplicate || resp.Epoch != "e1" {
				t.Fatalf("%v, want the first answer (seq 1, epoch e1) as a duplicate", resp)
			}
			calls := e.seen("Publish", "Stream")
			if len(calls) != 3 || !allSame(keysOf(calls)) {
				t.Fatalf("calls %v with keys %v, want 3 attempts with one key", describeCalls(calls), keysOf(calls))
			}
			resp, err = c.Publish(ctx(t), "alice", []byte("y"), 0)
			if err != nil || resp.Seq != 2 || resp.Duplicate {
				t.Fatalf("the next call: %v %v, want seq 2, not a duplicate", resp, err)
			}
			if last := e.seen("Publish", "Stream")[3].key; last == calls[0].key {
				t.Fatal("the next call reused the key")
			}
		})
	}
	t.Run("multi", func(t *testing.T) {
		cl := newCluster(t, 1)
		e := cl.edges[1]
		e.set(func(e *fakeEdge) { e.lose = 1 })
		c := cl.client()
		resp, err := c.PublishMulti(ctx(t), []string{"a", "b"}, []byte("x"), 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range resp.Results {
			if r.Seq != 1 || !r.Duplicate {
				t.Fatalf("%v, want seq 1 as a duplicate", r)
			}
		}
		if calls := e.seen("PublishMulti"); len(calls) != 2 || !allSame(keysOf(calls)) {
			t.Fatalf("calls %v with keys %v, want 2 with one key", describeCalls(calls), keysOf(calls))
		}
	})
}

func TestWithIdempotencyKey(t *testing.T) {
	cl := newCluster(t, 2)
	c := cl.client()
	kctx := client.WithIdempotencyKey(ctx(t), "order-42")
	first, err := c.Publish(kctx, "alice", []byte("x"), 0)
	if err != nil {
		t.Fatal(err)
	}
	again, err := c.Publish(kctx, "alice", []byte("x"), 0)
	if err != nil || !again.Duplicate || again.Seq != first.Seq || again.Epoch != first.Epoch {
		t.Fatalf("the same key again: %v %v, want the first answer %v as a duplicate", again, err, first)
	}
	multi, err := c.PublishMulti(client.WithIdempotencyKey(ctx(t), "order-43"), users(20), []byte("x"), 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range multi.Results {
		if r.Duplicate {
			t.Fatalf("%v: a new key is no duplicate", r)
		}
	}
	for _, e := range cl.edges {
		for _, call := range e.seen() {
			if call.key != "order-42" && call.key != "order-43" {
				t.Fatalf("edge %d got key %q, want the caller's", e.id, call.key)
			}
		}
	}
	// An empty key means the SDK's own.
	if _, err := c.Publish(client.WithIdempotencyKey(ctx(t), ""), "bob", []byte("x"), 0); err != nil {
		t.Fatal(err)
	}
	before := len(cl.edges[1].seen()) + len(cl.edges[2].seen())
	long := strings.Repeat("k", client.MaxIdempotencyKeyLen+1)
	if _, err := c.Publish(client.WithIdempotencyKey(ctx(t), long), "alice", []byte("x"), 0); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("a key of 65 bytes: %v, want INVALID_ARGUMENT", err)
	}
	if _, err := c.PublishMulti(client.WithIdempotencyKey(ctx(t), "\xff"), []string{"a"}, []byte("x"), 0); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("a key that is not UTF-8: %v, want INVALID_ARGUMENT", err)
	}
	if _, err := c.Publish(client.WithIdempotencyKey(ctx(t), strings.Repeat("k", 64)), "alice", []byte("x"), 0); err != nil {
		t.Fatalf("a key of 64 bytes: %v", err)
	}
	if after := len(cl.edges[1].seen()) + len(cl.edges[2].seen()); after != before+1 {
		t.Fatalf("%d calls went out for keys refused locally", after-before-1)
	}
}

// An owner that is down while its lease holds: the publish fails with
// UNAVAILABLE within the caller's deadline; once the lease is gone the
// view moves the user and the publish succeeds on the new owner.
func TestDeadOwnerFailsWithinTheDeadlineThenMoves(t *testing.T) {
	cl := newCluster(t, 3)
	c := cl.client()
	u := userOwnedBy(t, c.View(), 3)
	cl.edges[3].stop()

	start := time.Now()
	cx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	_, err := c.Publish(cx, u, []byte("m"), 0)
	took := time.Since(start)
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "edge 3 e3 ("+cl.edges[3].addr+")") {
		t.Fatalf("publish to a stopped owner: %v, want UNAVAILABLE naming edge 3", err)
	}
	if took > 500*time.Millisecond+250*time.Millisecond {
		t.Fatalf("publish took %v with a 500ms deadline", took)
	}

	cl.expire(3)
	waitView(t, c, "the view without member 3", func(v *owner.View) bool { return !v.Alive(3) })
	resp, err := c.Publish(ctx(t), u, []byte("m"), 0)
	if err != nil {
		t.Fatal(err)
	}
	if want, _ := c.View().Owner(u); resp.EdgeId != want || want == 3 {
		t.Fatalf("answered by edge %d, the view's owner is %d", resp.EdgeId, want)
	}
}

// An owner that took the call and hangs (paused): when its lease goes, the
// SDK stops waiting for it and sends the call to the new owner, well
// before the caller's deadline.
func TestHungOwnerIsLeftWhenItsLeaseGoes(t *testing.T) {
	cl := newCluster(t, 3)
	c := cl.client()
	u := userOwnedBy(t, c.View(), 3)
	cl.edges[3].set(func(e *fakeEdge) { e.hang[u] = true })
	cx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	type result struct {
		resp *pushv1.PublishResponse
		err  error
	}
	done := make(chan result, 1)
	start := time.Now()
	go func() {
		resp, err := c.Publish(cx, u, []byte("m"), 0)
		done <- result{resp, err}
	}()
	waitFor(t, "the call on edge 3", func() bool { return len(cl.edges[3].seen()) == 1 })
	cl.expire(3)
	select {
	case res := <-done:
		if res.err != nil {
			t.Fatal(res.err)
		}
		if res.resp.EdgeId == 3 {
			t.Fatal("answered by the hung edge")
		}
		if took := time.Since(start); took > 5*time.Second {
			t.Fatalf("took %v", took)
		}
	case <-time.After(bound):
		t.Fatal("the publish still waits for the hung edge")
	}
	var all []call
	for _, e := range cl.edges {
		all = append(all, e.seen()...)
	}
	if len(all) != 2 || !allSame(keysOf(all)) {
		t.Fatalf("calls %v keys %v, want the hung one and one on the new owner, with one key", describeCalls(all), keysOf(all))
	}
}

// Answers on a PublishStream come back in any order: each reaches its own
// caller, and a slow one holds nobody else.
func TestStreamAnswersOutOfOrderAreMatched(t *testing.T) {
	cl := newCluster(t, 1)
	e := cl.edges[1]
	e.set(func(e *fakeEdge) { e.echoUser = true; e.delay["slow"] = time.Second })
	c := cl.client()
	if _, err := c.Publish(ctx(t), "warm", []byte("x"), 0); err != nil { // opens the stream
		t.Fatal(err)
	}
	slowDone := make(chan time.Time, 1)
	go func() {
		resp, err := c.Publish(ctx(t), "slow", []byte("x"), 0)
		if err != nil || resp.Reason != "slow" {
			t.Errorf("slow: %v %v", resp, err)
		}
		slowDone <- time.Now()
	}()
	waitFor(t, "the slow request on the edge", func() bool { return len(e.seen()) == 2 })
	var wg sync.WaitGroup
	var mu sync.Mutex
	var lastFast time.Time
	for i := range 50 {
		wg.Go(func() {
			u := fmt.Sprintf("fast-%d", i)
			resp, err := c.Publish(ctx(t), u, []byte("x"), 0)
			if err != nil || resp.Reason != u || resp.Seq != 1 {
				t.Errorf("%s: got %v %v, want its own answer", u, resp, err)
			}
			mu.Lock()
			lastFast = time.Now()
			mu.Unlock()
		})
	}
	wg.Wait()
	if slow := <-slowDone; !lastFast.Before(slow) {
		t.Fatalf("the fast publishes finished at %v, after the slow one at %v", lastFast, slow)
	}
	e.mu.Lock()
	streams := e.streams
	e.mu.Unlock()
	if streams != 1 {
		t.Fatalf("%d streams, want every publish on one", streams)
	}
}

// A stream whose edge stopped reading holds no call past its deadline, and
// once its send has been blocked for stuckAfter the next calls get a new
// stream.
func TestStuckStreamHoldsNoCallPastItsDeadline(t *testing.T) {
	restore := client.SetStuckAfter(time.Hour)
	defer restore()
	cl := newCluster(t, 1)
	e := cl.edges[1]
	e.set(func(e *fakeEdge) { e.stuckStreams = true })
	c := cl.client()
	big := make([]byte, 200<<10) // more than the stream's flow-control window
	publishAll := func(n int) []error {
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				cx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
				defer cancel()
				start := time.Now()
				_, errs[i] = c.Publish(cx, fmt.Sprintf("u%d", i), big, 0)
				if took := time.Since(start); took > 300*time.Millisecond+250*time.Millisecond {
					t.Errorf("publish %d took %v with a 300ms deadline", i, took)
				}
			})
		}
		wg.Wait()
		return errs
	}
	for i, err := range publishAll(6) {
		if status.Code(err) != codes.DeadlineExceeded {
			t.Fatalf("publish %d on a stuck stream: %v, want DEADLINE_EXCEEDED at its deadline", i, err)
		}
	}
	// The send has been blocked for longer than stuckAfter now: the next
	// calls drop the stream and open another.
	e.mu.Lock()
	e.stuckStreams = false
	stuck := e.streams
	e.mu.Unlock()
	client.SetStuckAfter(100 * time.Millisecond)
	for i, err := range publishAll(6) {
		if err != nil {
			t.Fatalf("publish %d after the stuck stream: %v", i, err)
		}
	}
	e.mu.Lock()
	streams := e.streams
	e.mu.Unlock()
	if streams == stuck {
		t.Fatalf("no new stream after the stuck one")
	}
	if n := len(e.seen("Stream")); n != 6 {
		t.Fatalf("%d publishes reached the edge, want the 6 on the new stream", n)
	}
}

func TestKickFansOutToTheOwnerAndEveryAliveMember(t *testing.T) {
	cl := newCluster(t, 4, 1, 2, 3) // 4 has no lease
	c := cl.client()
	u := userOwnedBy(t, c.View(), 1)
	cl.edges[1].set(func(e *fakeEdge) { e.conns[u] = 1 })
	cl.edges[2].set(func(e *fakeEdge) { e.conns[u] = 2 }) // still held while moving
	cl.edges[3].set(func(e *fakeEdge) { e.kickErr = status.Error(codes.Unavailable, "draining") })
	cl.edges[4].set(func(e *fakeEdge) { e.conns[u] = 5 })
	resp, err := c.Kick(ctx(t), u, "bye")
	if err != nil || resp.Connections != 3 {
		t.Fatalf("kick: %v %v, want 3 connections (owner 1, edge 2), edge 3's error ignored", resp, err)
	}
	for id, want := range map[uint32]int{1: 1, 2: 1, 3: 1, 4: 0} {
		if n := len(cl.edges[id].seen("Kick")); n != want {
			t.Fatalf("edge %d got %d kicks, want %d", id, n, want)
		}
	}

	// The owner unreachable: its error, with what the others closed.
	cl.edges[2].set(func(e *fakeEdge) { e.conns[u] = 4 })
	cl.edges[1].stop()
	cx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	resp, err = c.Kick(cx, u, "bye")
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "edge 1") || resp.GetConnections() != 4 {
		t.Fatalf("kick with the owner down: %v %v, want UNAVAILABLE naming edge 1 and the 4 connections edge 2 closed", resp, err)
	}
}

func TestPresenceAsksTheOwnerOnly(t *testing.T) {
	cl := newCluster(t, 3)
	c := cl.client()
	v := c.View()
	a, b := userOwnedBy(t, v, 1), userOwnedBy(t, v, 2)
	cl.edges[1].set(func(e *fakeEdge) { e.conns[a] = 2 })
	cl.edges[3].set(func(e *fakeEdge) { e.conns[b] = 1 }) // not the owner: not asked
	resp, err := c.Presence(ctx(t), []string{b, a})
	if err != nil {
		t.Fatal(err)
	}
	got := fmt.Sprintf("%s:%v:%d:%d %s:%v:%d:%d", resp.Users[0].UserId, resp.Users[0].Online, resp.Users[0].Connections, resp.Users[0].EdgeId,
		resp.Users[1].UserId, resp.Users[1].Online, resp.Users[1].Connections, resp.Users[1].EdgeId)
	if want := fmt.Sprintf("%s:false:0:0 %s:true:2:1", b, a); got != want {
		t.Fatalf("presence %s, want %s", got, want)
	}
	if n := len(cl.edges[3].seen()); n != 0 {
		t.Fatalf("edge 3 asked %d times", n)
	}
}

func TestBroadcastReachesEveryAliveMemberIncludingDraining(t *testing.T) {
	cl := newCluster(t, 4, 1, 2, 3) // 4 has no lease
	m3 := cl.edges[3].member()
	m3.State = ring.StateDraining
	cl.setMembers([]ring.Member{cl.edges[1].member(), cl.edges[2].member(), m3, cl.edges[4].member()})
	for id := uint32(1); id <= 4; id++ {
		cl.edges[id].set(func(e *fakeEdge) { e.conns[fmt.Sprintf("viewer-%d", id)] = 1 })
	}
	c := cl.client()
	waitView(t, c, "ring version 2", func(v *owner.View) bool { return v.Version() == 2 })
	resp, err := c.Broadcast(ctx(t), []byte(`"maintenance"`))
	if err != nil || resp.Connections != 3 || resp.Edges != 3 {
		t.Fatalf("broadcast: %v %v, want 3 connections on 3 edges", resp, err)
	}
	if n := len(cl.edges[4].seen()); n != 0 {
		t.Fatalf("edge 4, without a lease, got %d calls", n)
	}
	for id := uint32(1); id <= 3; id++ {
		if b := cl.edges[id].seen("Broadcast"); len(b) != 1 {
			t.Fatalf("edge %d got %d broadcasts", id, len(b))
		}
	}
}

func TestBroadcastNamesTheEdgesThatFailed(t *testing.T) {
	cl := newCluster(t, 3)
	c := cl.client()
	cl.edges[2].stop()
	cx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	resp, err := c.Broadcast(cx, []byte("x"))
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "failed on 1: edge 2 e2") {
		t.Fatalf("broadcast with edge 2 down: %v", err)
	}
	if resp == nil || resp.Edges != 2 {
		t.Fatalf("totals of the edges that took it: %v, want 2 edges", resp)
	}
	// Once its lease is gone, nobody waits for edge 2.
	cl.expire(2)
	waitView(t, c, "edge 2 dead", func(v *owner.View) bool { return !v.Alive(2) })
	if resp, err := c.Broadcast(ctx(t), []byte("y")); err != nil || resp.Edges != 2 {
		t.Fatalf("broadcast after edge 2 died: %v %v", resp, err)
	}
}

func TestRingChangeReroutesAndClosesConnections(t *testing.T) {
	defer client.SetCloseGrace(50 * time.Millisecond)()
	cl := newCluster(t, 3)
	cl.setRing(1, 2) // version 2: edge 3 not a member
	c := cl.client()
	waitView(t, c, "ring version 2", func(v *owner.View) bool { return v.Version() == 2 })
	uids := users(60)
	for _, u := range uids {
		if _, err := c.Publish(ctx(t), u, []byte("a"), 0); err != nil {
			t.Fatal(err)
		}
	}
	old := client.PooledConn(c, cl.edges[2].addr)
	if old == nil {
		t.Fatal("no pooled connection to edge 2")
	}
	cl.setRing(1, 3) // version 3: edge 2 leaves, edge 3 joins
	waitView(t, c, "ring version 3", func(v *owner.View) bool { return v.Version() == 3 })
	waitFor(t, "the connection to edge 2 closed", func() bool { return old.GetState() == connectivity.Shutdown })
	if client.PooledConn(c, cl.edges[2].addr) != nil {
		t.Fatal("edge 2 still pooled")
	}
	v := c.View()
	to3 := 0
	for _, u := range uids {
		resp, err := c.Publish(ctx(t), u, []byte("b"), 0)
		if err != nil {
			t.Fatal(err)
		}
		if want, _ := v.Owner(u); resp.EdgeId != want || want == 2 {
			t.Fatalf("%s went to edge %d, the view says %d", u, resp.EdgeId, want)
		}
		if resp.EdgeId == 3 {
			to3++
		}
	}
	if to3 == 0 {
		t.Fatal("no user moved to the new edge 3")
	}
}

func TestInvalidArgumentIsNotRetried(t *testing.T) {
	cl := newCluster(t, 3)
	c := cl.client()
	local := []struct {
		name string
		call func() error
	}{
		{"bad user", func() error { _, err := c.Publish(ctx(t), "no spaces", []byte("x"), 0); return err }},
		{"empty user", func() error { _, err := c.Publish(ctx(t), "", []byte("x"), 0); return err }},
		{"empty payload", func() error { _, err := c.Publish(ctx(t), "u", nil, 0); return err }},
		{"negative ttl", func() error { _, err := c.Publish(ctx(t), "u", []byte("x"), -time.Second); return err }},
		{"multi: no users", func() error { _, err := c.PublishMulti(ctx(t), nil, []byte("x"), 0); return err }},
		{"multi: a bad user", func() error {
			_, err := c.PublishMulti(ctx(t), []string{"ok", "n/o"}, []byte("x"), 0)
			return err
		}},
		{"multi: too many", func() error {
			_, err := c.PublishMulti(ctx(t), users(userid.MaxPerCall+1), []byte("x"), 0)
			return err
		}},
		{"presence: bad user", func() error { _, err := c.Presence(ctx(t), []string{"a b"}); return err }},
		{"kick: bad user", func() error { _, err := c.Kick(ctx(t), "é", ""); return err }},
		{"broadcast: empty", func() error { _, err := c.Broadcast(ctx(t), nil); return err }},
	}
	for _, tc := range local {
		if err := tc.call(); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: %v, want INVALID_ARGUMENT", tc.name, err)
		}
	}
	total := func() int {
		n := 0
		for _, e := range cl.edges {
			n += len(e.seen())
		}
		return n
	}
	if n := total(); n != 0 {
		t.Fatalf("%d calls went out for input refused locally", n)
	}
	// The edge's own limit: answered once, not retried.
	_, err := c.Publish(ctx(t), "u", make([]byte, maxFakePayload+1), 0)
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "payload too big") {
		t.Fatalf("oversized payload: %v", err)
	}
	if n := total(); n != 1 {
		t.Fatalf("%d calls for an INVALID_ARGUMENT answer, want 1", n)
	}
}

// forwarder serves c.Server() on loopback and returns a client of it.
func forwarder(t *testing.T, c *client.Client) pushv1.PushClient {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	pushv1.RegisterPushServer(g, c.Server())
	go g.Serve(ln)
	t.Cleanup(g.Stop)
	cc, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return pushv1.NewPushClient(cc)
}

func TestServerForwardsEveryCall(t *testing.T) {
	cl := newCluster(t, 3)
	c := cl.client()
	router := forwarder(t, c)
	v := c.View()

	for _, u := range users(30) {
		resp, err := router.Publish(ctx(t), &pushv1.PublishRequest{UserId: u, Data: []byte("x"), Forwarded: true})
		if want, _ := v.Owner(u); err != nil || resp.EdgeId != want {
			t.Fatalf("publish %s through the forwarder: %v %v, want edge %d", u, resp, err, want)
		}
	}
	uids := users(40)
	multi, err := router.PublishMulti(ctx(t), &pushv1.PublishMultiRequest{UserIds: uids, Data: []byte("y")})
	if err != nil {
		t.Fatal(err)
	}
	for i, res := range multi.Results {
		if want := uint64(1); i >= 30 && res.Seq != want || i < 30 && res.Seq != 2 || res.UserId != uids[i] {
			t.Fatalf("multi result %d: %v", i, res)
		}
	}
	alice, _ := v.Owner("alice")
	cl.edges[alice].set(func(e *fakeEdge) { e.conns["alice"] = 1 })
	p, err := router.Presence(ctx(t), &pushv1.PresenceRequest{UserIds: []string{"alice", "bob"}})
	if err != nil || !p.Users[0].Online || p.Users[0].EdgeId != alice || p.Users[1].Online {
		t.Fatalf("presence: %v %v", p, err)
	}
	b, err := router.Broadcast(ctx(t), &pushv1.BroadcastRequest{Data: []byte(`"all"`), Forwarded: true})
	if err != nil || b.Edges != 3 || b.Connections != 1 {
		t.Fatalf("broadcast: %v %v", b, err)
	}
	k, err := router.Kick(ctx(t), &pushv1.KickRequest{UserId: "alice", Reason: "bye"})
	if err != nil || k.Connections != 1 {
		t.Fatalf("kick: %v %v", k, err)
	}
	_, err = router.Publish(ctx(t), &pushv1.PublishRequest{UserId: "bad id", Data: []byte("x")})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("invalid user through the forwarder: %v", err)
	}
	cl.edges[2].stop()
	cx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	// UNAVAILABLE once the retries give up, or DEADLINE_EXCEEDED when the
	// second runs out first on a busy machine: either way edge 2 is named.
	if _, err := router.Broadcast(cx, &pushv1.BroadcastRequest{Data: []byte("z")}); (status.Code(err) != codes.Unavailable &&
		status.Code(err) != codes.DeadlineExceeded) || !strings.Contains(err.Error(), "edge 2") {
		t.Fatalf("broadcast with edge 2 down through the forwarder: %v", err)
	}
}

// The forwarder passes the caller's idempotency key through, and sets one
// for a caller that gave none.
func TestServerPassesIdempotencyKeys(t *testing.T) {
	cl := newCluster(t, 1)
	e := cl.edges[1]
	c := cl.client()
	router := forwarder(t, c)
	req := &pushv1.PublishRequest{UserId: "alice", Data: []byte("x"), IdempotencyKey: "backend-key-1"}
	first, err := router.Publish(ctx(t), req)
	if err != nil {
		t.Fatal(err)
	}
	again, err := router.Publish(ctx(t), req)
	if err != nil || !again.Duplicate || again.Seq != first.Seq {
		t.Fatalf("the caller's retry: %v %v, want a duplicate of %v", again, err, first)
	}
	if _, err := router.PublishMulti(ctx(t), &pushv1.PublishMultiRequest{UserIds: []string{"a", "b"}, Data: []byte("x"),
		IdempotencyKey: "backend-key-2"}); err != nil {
		t.Fatal(err)
	}
	if _, err := router.Publish(ctx(t), &pushv1.PublishRequest{UserId: "bob", Data: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	if _, err := router.Publish(ctx(t), &pushv1.PublishRequest{UserId: "bob", Data: []byte("x"),
		IdempotencyKey: strings.Repeat("k", 65)}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("a 65-byte key through the forwarder: %v, want INVALID_ARGUMENT", err)
	}
	keys := keysOf(e.seen())
	if len(keys) != 4 || keys[0] != "backend-key-1" || keys[1] != "backend-key-1" || keys[2] != "backend-key-2" || !keyShape.MatchString(keys[3]) {
		t.Fatalf("keys at the edge %q", keys)
	}
}

// Each forwarded call runs with the caller's deadline capped at the
// forward timeout, and calls do not wait for one another.
func TestServerCapsEachCallsDeadline(t *testing.T) {
	cl := newCluster(t, 1)
	e := cl.edges[1]
	e.set(func(e *fakeEdge) { e.hang["stuck"] = true })
	c := cl.client(client.WithForwardTimeout(300 * time.Millisecond))
	router := forwarder(t, c)

	hung := make(chan error, 1)
	start := time.Now()
	go func() {
		cx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := router.Publish(cx, &pushv1.PublishRequest{UserId: "stuck", Data: []byte("x")})
		hung <- err
	}()
	waitFor(t, "the hung call on the edge", func() bool { return len(e.seen()) == 1 })
	// Meanwhile other calls go through at once.
	for _, u := range users(20) {
		if _, err := router.Publish(ctx(t), &pushv1.PublishRequest{UserId: u, Data: []byte("x")}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := router.PublishMulti(ctx(t), &pushv1.PublishMultiRequest{UserIds: users(5), Data: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-hung:
		if took := time.Since(start); err == nil || took > 300*time.Millisecond+700*time.Millisecond {
			t.Fatalf("the call on a hung edge: %v after %v, want an error after about 300ms", err, took)
		}
	case <-time.After(bound):
		t.Fatal("the forwarded call outlived the forward timeout")
	}
	// Unary calls carry the capped deadline to the edge (a PublishStream
	// request has none of its own: the forwarder stops waiting for it).
	multi := e.seen("PublishMulti")
	if budget := multi[0].budget; budget <= 0 || budget > 300*time.Millisecond {
		t.Fatalf("the edge saw a deadline %v away, want at most the 300ms forward timeout", budget)
	}
	// A caller's deadline shorter than the forward timeout wins.
	if _, err := router.Kick(ctx(t), &pushv1.KickRequest{UserId: "x"}); err != nil {
		t.Fatal(err)
	}
	cx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := router.Presence(cx, &pushv1.PresenceRequest{UserIds: []string{"x"}}); err != nil {
		t.Fatal(err)
	}
	calls := e.seen()
	if kick, pres := calls[len(calls)-2], calls[len(calls)-1]; kick.budget > 300*time.Millisecond || pres.budget > 100*time.Millisecond || pres.budget <= 0 {
		t.Fatalf("deadlines at the edge: kick %v, presence %v", kick.budget, pres.budget)
	}
}

func TestNewWaitsForTheFirstDocument(t *testing.T) {
	st, err := store.OpenFile(filepath.Join(t.TempDir(), "ring.json"), quiet())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	cx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := client.New(cx, st, client.WithLogger(quiet())); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("New without a document: %v", err)
	}
	e := startFake(t, 1)
	got := make(chan error, 1)
	go func() {
		c, err := client.New(ctx(t), st, client.WithLogger(quiet()))
		if err == nil {
			if v := c.View().Version(); v != 1 {
				err = fmt.Errorf("ring version %d", v)
			} else if _, err = c.Publish(ctx(t), "u", []byte("x"), 0); err == nil {
				err = c.Close()
			}
		}
		got <- err
	}()
	if err := st.CompareAndSwap(ctx(t), 0, &ring.Document{Version: 1, Members: []ring.Member{e.member()}}, false); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(bound):
		t.Fatal("New did not return after the document was written")
	}
}

func TestClose(t *testing.T) {
	cl := newCluster(t, 2)
	f := cl.follower()
	c := client.NewWithFollower(f, client.WithLogger(quiet()))
	if _, err := c.Publish(ctx(t), "u", []byte("x"), 0); err != nil {
		t.Fatal(err)
	}
	o, _ := c.View().Owner("u")
	cc := client.PooledConn(c, cl.edges[o].addr)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if cc.GetState() != connectivity.Shutdown {
		t.Fatalf("connection %v after Close", cc.GetState())
	}
	if _, err := c.Publish(ctx(t), "u", []byte("x"), 0); !errors.Is(err, client.ErrClosed) {
		t.Fatalf("publish after Close: %v", err)
	}
	if _, err := c.Broadcast(ctx(t), []byte("x")); !errors.Is(err, client.ErrClosed) {
		t.Fatalf("broadcast after Close: %v", err)
	}
	if _, err := c.Kick(ctx(t), "u", ""); !errors.Is(err, client.ErrClosed) {
		t.Fatalf("kick after Close: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	// The Follower was the caller's: it still follows.
	cl.setRing(1)
	waitFor(t, "the Follower to see version 2", func() bool { return f.View().Version() == 2 })
}
