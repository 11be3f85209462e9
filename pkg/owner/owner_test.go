package owner

import (
	"fmt"
	"testing"
	"time"

	"github.com/pushcluster/push/pkg/ring"
)

func testRing(t *testing.T, alg string, n int, draining ...uint32) *ring.Ring {
	t.Helper()
	d := &ring.Document{Version: 7, Algorithm: alg}
	for i := uint32(1); i <= uint32(n); i++ {
		st := ring.StateActive
		for _, x := range draining {
			if x == i {
				st = ring.StateDraining
			}
		}
		d.Members = append(d.Members, ring.Member{ID: i, Name: fmt.Sprintf("edge-%d", i),
			WS: fmt.Sprintf("127.0.0.1:%d", 8080+i), GRPC: fmt.Sprintf("127.0.0.1:%d", 9090+i), Weight: 1, State: st})
	}
	r, err := ring.New(d)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func liveSet(ids ...uint32) map[uint32]Live {
	m := map[uint32]Live{}
	for _, id := range ids {
		m[id] = Live{State: ring.StateActive}
	}
	return m
}

// TestOwnerMovesOnlyTheDeadMembersUsers: with one member down, exactly its
// users change owner, on both algorithms, and they return when it is live.
func TestOwnerMovesOnlyTheDeadMembersUsers(t *testing.T) {
	for _, alg := range []string{ring.AlgorithmBounded, ring.AlgorithmHAProxy} {
		r := testRing(t, alg, 4)
		all := NewView(r, liveSet(1, 2, 3, 4), 1)
		down := NewView(r, liveSet(1, 2, 4), 2)
		moved, was3 := 0, 0
		for i := 0; i < 5000; i++ {
			uid := fmt.Sprintf("u%d", i)
			a, ok := all.Owner(uid)
			if !ok || a != all.Home(uid) {
				t.Fatalf("%s: all live: owner %d %v, home %d", alg, a, ok, all.Home(uid))
			}
			b, _ := down.Owner(uid)
			if b == 3 {
				t.Fatalf("%s: dead member 3 owns %s", alg, uid)
			}
			if a == 3 {
				was3++
			}
			if a != b {
				moved++
				if a != 3 {
					t.Fatalf("%s: %s moved from live member %d to %d", alg, uid, a, b)
				}
			}
		}
		if moved != was3 || moved == 0 {
			t.Fatalf("%s: moved %d, member 3 owned %d", alg, moved, was3)
		}
	}
}

// TestDrainingOwnsNobody: a member draining by its lease, or by the
// document, owns nobody but is still Alive.
func TestDrainingOwnsNobody(t *testing.T) {
	r := testRing(t, ring.AlgorithmBounded, 3)
	live := liveSet(1, 2, 3)
	live[2] = Live{State: ring.StateDraining}
	v := NewView(r, live, 1)
	if v.Live(2) || !v.Alive(2) {
		t.Fatalf("draining lease: Live %v Alive %v", v.Live(2), v.Alive(2))
	}
	for i := 0; i < 2000; i++ {
		if id, _ := v.Owner(fmt.Sprintf("u%d", i)); id == 2 {
			t.Fatal("a draining member owns a user")
		}
	}
	rd := testRing(t, ring.AlgorithmBounded, 3, 3)
	vd := NewView(rd, nil, 1)
	for i := 0; i < 2000; i++ {
		if id, _ := vd.Owner(fmt.Sprintf("u%d", i)); id == 3 {
			t.Fatal("a member the document drains owns a user")
		}
	}
}

// TestNoLiveness: a nil live set means every member of the document is live.
func TestNoLiveness(t *testing.T) {
	r := testRing(t, ring.AlgorithmBounded, 3)
	v := NewView(r, nil, 0)
	if !v.Live(1) || !v.Live(3) || v.Live(9) || v.HasLiveness() {
		t.Fatal("nil liveness must take every member as live, and only members")
	}
	none := NewView(r, map[uint32]Live{}, 1)
	if _, ok := none.Owner("alice"); ok {
		t.Fatal("nobody live: no owner")
	}
}

// TestOwnerExcept is the router's redispatch: skipping the owner gives the
// member that would own the user if the owner were down.
func TestOwnerExcept(t *testing.T) {
	r := testRing(t, ring.AlgorithmBounded, 4)
	v := NewView(r, liveSet(1, 2, 3, 4), 1)
	for i := 0; i < 1000; i++ {
		uid := fmt.Sprintf("u%d", i)
		o, _ := v.Owner(uid)
		next, _ := v.OwnerExcept(uid, func(id uint32) bool { return id == o })
		live := map[uint32]Live{}
		for _, id := range []uint32{1, 2, 3, 4} {
			if id != o {
				live[id] = Live{State: ring.StateActive}
			}
		}
		want, _ := NewView(r, live, 2).Owner(uid)
		if next != want || next == o {
			t.Fatalf("%s: except %d gives %d, owner without it %d", uid, o, next, want)
		}
	}
}

var t0 = time.Unix(1_700_000_000, 0)

// TestTrackerOutage: an unreadable store keeps the live set; when it comes
// back with every lease gone, nobody dies during the grace, members that
// register again stay, and one that never does is dropped after it.
func TestTrackerOutage(t *testing.T) {
	tr := Tracker{Grace: 10 * time.Second}
	if !tr.Observe(t0, liveSet(1, 2, 3), true) {
		t.Fatal("first reading must change the set")
	}
	for i := 1; i <= 20; i++ {
		if tr.Observe(t0.Add(time.Duration(i)*time.Second), nil, false) {
			t.Fatal("an unreadable store changed the live set")
		}
	}
	if tr.Reachable() || len(tr.Live()) != 3 {
		t.Fatalf("during the outage: reachable %v live %v", tr.Reachable(), tr.Live())
	}
	back := t0.Add(21 * time.Second)
	if tr.Observe(back, liveSet(), true) || len(tr.Live()) != 3 || tr.Holding() != 3 {
		t.Fatalf("all leases gone after the outage: live %v holding %d", tr.Live(), tr.Holding())
	}
	tr.Observe(back.Add(2*time.Second), liveSet(1, 2), true)
	if len(tr.Live()) != 3 || tr.Holding() != 1 {
		t.Fatalf("two registered again: live %v holding %d", tr.Live(), tr.Holding())
	}
	if !tr.Observe(back.Add(11*time.Second), liveSet(1, 2), true) {
		t.Fatal("after the grace the member that never came back must go")
	}
	if _, ok := tr.Live()[3]; ok || len(tr.Live()) != 2 {
		t.Fatalf("after the grace: %v", tr.Live())
	}
}

// TestTrackerMassVanish: half the members vanishing in one reading, with
// the store readable, is held for the grace too; a single death is not.
func TestTrackerMassVanish(t *testing.T) {
	tr := Tracker{Grace: 5 * time.Second}
	tr.Observe(t0, liveSet(1, 2, 3, 4), true)
	if !tr.Observe(t0.Add(time.Second), liveSet(1, 2, 3), true) {
		t.Fatal("one member dying must change the set at once")
	}
	if _, ok := tr.Live()[4]; ok {
		t.Fatal("a single death was held")
	}
	tr.Observe(t0.Add(2*time.Second), liveSet(1), true)
	if len(tr.Live()) != 3 {
		t.Fatalf("two of three vanishing together: %v", tr.Live())
	}
	tr.Observe(t0.Add(8*time.Second), liveSet(1), true)
	if len(tr.Live()) != 1 {
		t.Fatalf("after the grace: %v", tr.Live())
	}
}

// TestTrackerUpdates: a new member and a state change apply at once, also
// during a grace.
func TestTrackerUpdates(t *testing.T) {
	tr := Tracker{Grace: 5 * time.Second}
	tr.Observe(t0, liveSet(1, 2), true)
	tr.Observe(t0.Add(time.Second), nil, false)
	next := liveSet(1, 2, 3)
	next[2] = Live{State: ring.StateDraining}
	if !tr.Observe(t0.Add(2*time.Second), next, true) {
		t.Fatal("no change")
	}
	if tr.Live()[2].State != ring.StateDraining || len(tr.Live()) != 3 || !tr.InGrace(t0.Add(3*time.Second)) {
		t.Fatalf("live %v", tr.Live())
	}
}

// TestTrackerIgnoresUserCounts: a renewal that only reports another user
// count is not a change of view; a new incarnation is.
func TestTrackerIgnoresUserCounts(t *testing.T) {
	tr := Tracker{Grace: time.Second}
	tr.Observe(t0, map[uint32]Live{1: {State: ring.StateActive, Incarnation: "a", Users: 1}}, true)
	if tr.Observe(t0.Add(time.Second), map[uint32]Live{1: {State: ring.StateActive, Incarnation: "a", Users: 99}}, true) {
		t.Fatal("a user count alone changed the view")
	}
	if !tr.Observe(t0.Add(2*time.Second), map[uint32]Live{1: {State: ring.StateActive, Incarnation: "b"}}, true) {
		t.Fatal("a new incarnation must change the view")
	}
}
