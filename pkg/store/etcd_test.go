package store_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pushcluster/push/pkg/owner"
	"github.com/pushcluster/push/pkg/ring"
	"github.com/pushcluster/push/pkg/store"
	"github.com/pushcluster/push/pkg/store/etcdtest"
)

func openEtcd(t *testing.T, srv *etcdtest.Server) *store.Etcd {
	t.Helper()
	st, err := store.Open(srv.URL("/t"), quiet())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st.(*store.Etcd)
}

func cctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return c
}

// nextWith reads documents until one satisfies ok.
func nextWith(t *testing.T, ch <-chan *ring.Document, what string, ok func(*ring.Document) bool) *ring.Document {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		select {
		case d, open := <-ch:
			if !open {
				t.Fatalf("watch closed waiting for %s", what)
			}
			if ok(d) {
				return d
			}
		case <-deadline:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func ids(d *ring.Document) string {
	var b strings.Builder
	for _, m := range d.Members {
		b.WriteString(string(rune('0' + m.ID)))
		if m.State == ring.StateDraining {
			b.WriteString("d")
		}
	}
	return b.String()
}

func TestEtcdCompareAndSwap(t *testing.T) {
	srv := etcdtest.Start(t)
	st := openEtcd(t, srv)
	if _, err := st.Load(cctx(t)); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("empty store: %v", err)
	}
	if err := st.CompareAndSwap(cctx(t), 0, testDoc(1, 3), false); err != nil {
		t.Fatal(err)
	}
	if err := st.CompareAndSwap(cctx(t), 0, testDoc(2, 3), false); !errors.Is(err, store.ErrVersionConflict) {
		t.Fatalf("second create: %v, want version conflict", err)
	}
	if err := st.CompareAndSwap(cctx(t), 1, testDoc(2, 4), false); err != nil {
		t.Fatal(err)
	}
	d, err := st.Load(cctx(t))
	if err != nil || d.Version != 2 || len(d.Members) != 4 {
		t.Fatalf("load: %v %v", d, err)
	}
	// Two writers racing from version 2: exactly one wins.
	var wg sync.WaitGroup
	results := make([]error, 8)
	for i := range results {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			results[i] = st.CompareAndSwap(cctx(t), 2, testDoc(3, 2+i%3), false)
		}(i)
	}
	wg.Wait()
	wins := 0
	for _, err := range results {
		switch {
		case err == nil:
			wins++
		case !errors.Is(err, store.ErrVersionConflict):
			t.Fatalf("racing CAS: %v", err)
		}
	}
	if wins != 1 {
		t.Fatalf("%d racing writers won, want exactly 1", wins)
	}
	// Placement parameters are fixed unless forced.
	bad := testDoc(4, 3)
	bad.Params.Partitions = 271
	if err := st.CompareAndSwap(cctx(t), 3, bad, false); err == nil || !strings.Contains(err.Error(), "force") {
		t.Fatalf("partition change without force: %v", err)
	}
}

// Liveness is the leases: a Follower's view sees an edge whose lease ends
// as not live (its users, and only its users, go to the next live member),
// sees it again when it registers, and sees a draining registration as
// alive but owning nobody. Watch delivers the desired document alone.
func TestEtcdLivenessThroughTheFollower(t *testing.T) {
	srv := etcdtest.Start(t)
	st := openEtcd(t, srv)
	if err := st.CompareAndSwap(cctx(t), 0, testDoc(1, 3), false); err != nil {
		t.Fatal(err)
	}
	var leases []store.Lease
	for id := uint32(1); id <= 3; id++ {
		l, err := st.Register(cctx(t), id, 2*time.Second, owner.Live{Incarnation: fmt.Sprint("i", id)})
		if err != nil {
			t.Fatal(err)
		}
		leases = append(leases, l)
	}
	f, err := store.Follow(cctx(t), st, store.FollowOptions{Poll: 50 * time.Millisecond, Log: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	waitView := func(what string, ok func(v *owner.View) bool) *owner.View {
		t.Helper()
		deadline := time.After(20 * time.Second)
		for {
			ch := f.Changed()
			if v := f.View(); ok(v) {
				return v
			}
			select {
			case <-ch:
			case <-deadline:
				t.Fatalf("timed out waiting for %s", what)
			}
		}
	}
	waitView("three live members", func(v *owner.View) bool { return v.Live(1) && v.Live(2) && v.Live(3) })
	if l, _ := f.View().LiveInfo(2); l.Incarnation != "i2" {
		t.Fatalf("lease info %+v", l)
	}

	if err := leases[1].SetState(cctx(t), ring.StateDraining); err != nil {
		t.Fatal(err)
	}
	waitView("member 2 draining", func(v *owner.View) bool { return !v.Live(2) && v.Alive(2) })

	// Member 3 dies without revoking: its lease expires.
	other, err := store.Open(srv.URL("/t"), quiet())
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if _, err := other.(*store.Etcd).Register(cctx(t), 3, time.Second, owner.Live{}); err != nil {
		t.Fatal(err)
	}
	leases[2].Close() // the first registration of 3 goes; the second keeps it live
	time.Sleep(200 * time.Millisecond)
	if !f.View().Live(3) {
		t.Fatal("member 3 must stay live through its second lease")
	}
	other.Close() // the process "dies": no keep-alive, no revoke
	v := waitView("member 3 gone after its lease expired", func(v *owner.View) bool { return !v.Alive(3) })
	for i := 0; i < 500; i++ {
		if id, _ := v.Owner(fmt.Sprint("u", i)); id != 1 {
			t.Fatalf("with 2 draining and 3 dead, user u%d is owned by %d", i, id)
		}
	}

	// It comes back.
	l, err := st.Register(cctx(t), 3, 2*time.Second, owner.Live{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	waitView("member 3 back", func(v *owner.View) bool { return v.Live(3) })

	// Desired changes show through; a member desired but not live owns nobody.
	if err := st.CompareAndSwap(cctx(t), 1, testDoc(2, 4), false); err != nil {
		t.Fatal(err)
	}
	v = waitView("version 2", func(v *owner.View) bool { return v.Version() == 2 })
	if v.Live(4) {
		t.Fatal("member 4 is desired but has no lease: not live")
	}
	live, err := st.Live(cctx(t))
	if err != nil || len(live) != 3 || live[2] != ring.StateDraining {
		t.Fatalf("live %v %v", live, err)
	}
}

// A lost etcd lease (expired while the edge could not renew it) closes
// Lost; Renewed never runs ahead of the renewals.
func TestEtcdLeaseLost(t *testing.T) {
	srv := etcdtest.Start(t)
	st := openEtcd(t, srv)
	l, err := st.Register(cctx(t), 1, time.Second, owner.Live{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	first := l.Renewed()
	time.Sleep(700 * time.Millisecond)
	if !l.Renewed().After(first) {
		t.Fatal("not renewed within 0.7 s with a 1 s lease")
	}
	// Someone revokes it (what expiry does): the next renewal finds it gone.
	other := openEtcd(t, srv)
	live, _ := other.ReadLive(cctx(t))
	if _, ok := live[1]; !ok {
		t.Fatal("registered member not live")
	}
	if err := other.RevokeAll(cctx(t)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-l.Lost():
	case <-time.After(5 * time.Second):
		t.Fatal("Lost not closed after the lease was revoked")
	}
}

// Follow gives up on an etcd that does not answer when its context ends
// (the router's --ring-wait), instead of waiting in the watch's first read.
func TestFollowUnreachableEtcdEndsWithItsContext(t *testing.T) {
	st, err := store.OpenEtcd("etcd://127.0.0.1:1/push-unreachable", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := store.Follow(ctx, st, store.FollowOptions{})
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "no ring document") {
			t.Fatalf("Follow: %v, want a no-ring-document error", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Follow still waiting 30 s after its context ended")
	}
}
