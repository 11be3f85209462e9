package store_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

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

// The effective ring is the desired members that are live: an edge whose
// lease ends leaves it for every watcher, and comes back when it
// registers again; a draining registration marks it draining.
func TestEtcdLivenessShapesTheEffectiveRing(t *testing.T) {
	srv := etcdtest.Start(t)
	st := openEtcd(t, srv)
	if err := st.CompareAndSwap(cctx(t), 0, testDoc(1, 3), false); err != nil {
		t.Fatal(err)
	}
	var leases []*store.Lease
	for id := uint32(1); id <= 3; id++ {
		l, err := st.Register(cctx(t), id, 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		leases = append(leases, l)
	}
	docs, err := st.Watch(cctx(t))
	if err != nil {
		t.Fatal(err)
	}
	first := nextWith(t, docs, "three live members", func(d *ring.Document) bool { return ids(d) == "123" })

	if err := leases[1].SetDraining(cctx(t)); err != nil {
		t.Fatal(err)
	}
	d := nextWith(t, docs, "member 2 draining", func(d *ring.Document) bool { return ids(d) == "12d3" })
	if d.Version <= first.Version {
		t.Fatalf("effective version did not grow: %d then %d", first.Version, d.Version)
	}

	// Member 3 dies without revoking: its lease expires.
	other, err := store.Open(srv.URL("/t"), quiet())
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	l3, err := other.(*store.Etcd).Register(cctx(t), 3, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	leases[2].Close() // the first registration of 3 goes; the second keeps it live
	nextWith(t, docs, "member 3 still live through its second lease", func(d *ring.Document) bool { return ids(d) == "12d3" })
	other.Close() // the process "dies": no keep-alive, no revoke
	_ = l3
	nextWith(t, docs, "member 3 gone after its lease expired", func(d *ring.Document) bool { return ids(d) == "12d" })

	// It comes back.
	l, err := st.Register(cctx(t), 3, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	nextWith(t, docs, "member 3 back", func(d *ring.Document) bool { return ids(d) == "12d3" })

	// Desired changes show through too; Load still gives the desired document.
	if err := st.CompareAndSwap(cctx(t), 1, testDoc(2, 4), false); err != nil {
		t.Fatal(err)
	}
	nextWith(t, docs, "member 4 desired but not live: absent", func(d *ring.Document) bool { return ids(d) == "12d3" && d.Version > first.Version })
	want, _ := st.Load(cctx(t))
	if want.Version != 2 || len(want.Members) != 4 {
		t.Fatalf("Load must return the desired document, got version %d with %d members", want.Version, len(want.Members))
	}
	live, err := st.Live(cctx(t))
	if err != nil || len(live) != 3 || live[2] != ring.StateDraining {
		t.Fatalf("live %v %v", live, err)
	}
}
