package registry

import (
	"fmt"
	"slices"
	"testing"
)

func TestDoGroups(t *testing.T) {
	r := New[*conn](4)
	a := &conn{1}
	r.Do("u0", true, func(u *User[*conn]) { u.Conns = append(u.Conns, a) })
	var uids []string
	for i := range 40 {
		uids = append(uids, fmt.Sprintf("u%d", i%20)) // every user twice
	}
	calls, seen := 0, make([]int, len(uids))
	r.DoGroups(uids, false, func(idx []int, users []*User[*conn]) {
		calls++
		if !slices.IsSorted(idx) || len(idx) != len(users) {
			t.Fatalf("group %v not in request order", idx)
		}
		for k, i := range idx {
			seen[i]++
			if (uids[i] == "u0") != (users[k] != nil) {
				t.Fatalf("user %s: entry %v", uids[i], users[k])
			}
		}
	})
	if calls > 4 {
		t.Fatalf("%d calls for 4 shards", calls)
	}
	for i, n := range seen {
		if n != 1 {
			t.Fatalf("index %d visited %d times", i, n)
		}
	}
	if r.Len() != 1 {
		t.Fatalf("lookups without create created entries: len %d", r.Len())
	}
	// With create, entries left empty are removed; one given a connection stays.
	r.DoGroups([]string{"x", "y", "x"}, true, func(idx []int, users []*User[*conn]) {
		for k, i := range idx {
			if users[k] == nil {
				t.Fatal("create gave nil")
			}
			if i == 1 {
				users[k].Conns = append(users[k].Conns, &conn{2})
			}
		}
	})
	if r.Len() != 2 {
		t.Fatalf("len %d, want u0 and y", r.Len())
	}
	r.DoGroups(nil, true, func([]int, []*User[*conn]) { t.Fatal("called for no users") })
}
