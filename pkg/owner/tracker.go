package owner

import (
	"maps"
	"time"
)

// Tracker turns readings of the store's leases into the live set a View
// uses, so that a control-plane outage is not a data-plane event:
//
//   - While the store cannot be read, the last live set stays in force:
//     losing the store is not losing members.
//   - When the store can be read again after it could not, and whenever at
//     least half of the live members (two or more) vanish from one reading
//     to the next, a Grace period starts. During it a member that was live
//     stays live even if its lease is missing: leases that expired together
//     during an outage mean the store was away, not the members. A member
//     whose lease reappears is updated at once; new members are added at
//     once. Once Grace has passed, the readings rule again, so a member that
//     really died with the store away is dropped then.
//
// Grace should exceed the time an edge needs to register again after the
// store returns (a third of its lease TTL in this project), with margin:
// store.Follower uses twice the lease TTL.
//
// A Tracker is pure (time is an argument) and not safe for concurrent use.
type Tracker struct {
	// Grace is how long vanished members stay live after an outage or a
	// mass disappearance.
	Grace time.Duration

	known      bool
	reachable  bool
	live       map[uint32]Live // in force
	read       map[uint32]Live // the last successful reading
	graceUntil time.Time
	// Holding counts the members kept live only by the grace at the last
	// Observe (for metrics).
	holding int
}

// Observe feeds one reading taken at now: ok false means the store could
// not be read (live is then ignored); live (nil when the store keeps no
// liveness) is every member whose lease exists. It reports whether the live
// set changed.
func (t *Tracker) Observe(now time.Time, live map[uint32]Live, ok bool) bool {
	if !ok {
		t.reachable = false
		return false
	}
	if !t.known {
		t.known, t.reachable = true, true
		t.live, t.read = maps.Clone(live), maps.Clone(live)
		return true
	}
	if !t.reachable {
		t.reachable = true
		t.graceUntil = now.Add(t.Grace)
	}
	prev := t.read
	t.read = maps.Clone(live)
	if live == nil || t.live == nil {
		changed := (live == nil) != (t.live == nil) || !sameMembers(live, t.live)
		t.live = maps.Clone(live)
		t.holding = 0
		return changed
	}
	vanished := 0
	for id := range prev {
		if _, ok := live[id]; !ok {
			vanished++
		}
	}
	if vanished >= 2 && 2*vanished >= len(prev) && !now.Before(t.graceUntil) {
		t.graceUntil = now.Add(t.Grace)
	}
	next := maps.Clone(live)
	t.holding = 0
	if now.Before(t.graceUntil) {
		for id, l := range t.live {
			if _, ok := next[id]; !ok {
				next[id] = l
				t.holding++
			}
		}
	}
	changed := !sameMembers(next, t.live)
	t.live = next
	return changed
}

// sameMembers compares live sets by what ownership depends on (who, state,
// incarnation), not by the informational user counts, so a renewal that
// only reports another count is not a change of view.
func sameMembers(a, b map[uint32]Live) bool {
	if len(a) != len(b) {
		return false
	}
	for id, x := range a {
		y, ok := b[id]
		if !ok || x.State != y.State || x.Incarnation != y.Incarnation {
			return false
		}
	}
	return true
}

// Live returns the live set in force (nil: the store keeps no liveness).
// The map is the Tracker's: do not modify it.
func (t *Tracker) Live() map[uint32]Live { return t.live }

// Known reports whether any reading succeeded yet.
func (t *Tracker) Known() bool { return t.known }

// Reachable reports whether the last reading succeeded.
func (t *Tracker) Reachable() bool { return t.reachable }

// Holding returns how many members are live only because of the grace.
func (t *Tracker) Holding() int { return t.holding }

// InGrace reports whether the grace period runs at now.
func (t *Tracker) InGrace(now time.Time) bool { return now.Before(t.graceUntil) }
