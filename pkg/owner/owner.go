// Package owner decides who owns a user: one pure function of the ring
// document and the members' liveness, called by the router, the edge, the
// Go SDK and the router's forwarder alike, so that every process answers
// the same question the same way from the same inputs.
//
// The rule (docs/protocol.md, "Ownership"):
//
//   - The owner of a user is the ring's owner (ring.Ring.Lookup) if that
//     member is live and active; otherwise the next live active member in
//     the ring's own order (ring.Ring.LookupLive: HAProxy's next server for
//     "haproxy", the next partition's owner for "bounded"). So when a
//     member dies only its own users move, and they come back when it is
//     live again.
//   - Draining members own nobody: members the document marks draining are
//     out of the placement, and a live member whose lease says draining (an
//     edge shutting down) is skipped like a dead one.
//   - Liveness comes from the store (etcd leases, or lease files beside a
//     file ring) through a Tracker, which keeps the last answer while the
//     store cannot be read and does not let leases that vanished together
//     make their members dead (see Tracker).
//
// The package is pure: no I/O, no clocks (time is an argument), no
// goroutines. store.Follower feeds it from a real store.
package owner

import (
	"maps"

	"github.com/pushcluster/push/pkg/ring"
)

// Trailer metadata of an edge's answer to a unary publish for a user it
// does not own: the owner it sees (decimal ring id) and its ring version.
// Edges set them, the Go SDK reads them.
const (
	OwnerTrailer       = "push-owner"
	RingVersionTrailer = "push-ring-version"
)

// Live is what a member's lease says about it.
type Live struct {
	// State is ring.StateActive, or ring.StateDraining while the edge
	// drains (it holds its users until they have moved but owns nobody).
	State ring.State `json:"state"`
	// Incarnation names one life of the edge: it changes when the edge
	// restarts or rejoins after fencing itself.
	Incarnation string `json:"incarnation,omitempty"`
	// Users is the number of connections the edge reported at its last
	// renewal (for operators; not used to decide anything).
	Users int64 `json:"users"`
	// Admin is the host:port of the edge's admin HTTP port (/metrics), for
	// operators' tools such as the cluster console; an empty or unspecified
	// host means the host of the member's ws address. Empty: not published.
	Admin string `json:"admin,omitempty"`
}

// View is one process's inputs to ownership: a ring and the live members.
// A View is immutable and safe for concurrent use.
type View struct {
	r    *ring.Ring
	live map[uint32]Live // nil: liveness not in use, every member is live
	gen  uint64
}

// NewView returns the view of r with the given live members. live nil
// means the store keeps no liveness (a file ring without a lease
// directory): every member of the document is live. NewView keeps its own
// copy of live. gen numbers the liveness readings of one process (it only
// grows) so that callers can tell views apart; it is not comparable across
// processes.
func NewView(r *ring.Ring, live map[uint32]Live, gen uint64) *View {
	if live != nil {
		live = maps.Clone(live)
	}
	return &View{r: r, live: live, gen: gen}
}

// Ring returns the ring of the view.
func (v *View) Ring() *ring.Ring { return v.r }

// Version returns the ring document's version.
func (v *View) Version() uint64 { return v.r.Version() }

// Gen returns the liveness generation NewView was given.
func (v *View) Gen() uint64 { return v.gen }

// HasLiveness reports whether the view uses liveness (false: every member
// is taken as live).
func (v *View) HasLiveness() bool { return v.live != nil }

// Live reports whether member id is live and active: able to own users.
func (v *View) Live(id uint32) bool {
	if v.live == nil {
		_, ok := v.r.Member(id)
		return ok
	}
	l, ok := v.live[id]
	return ok && l.State != ring.StateDraining
}

// Alive reports whether member id has a lease at all (active or draining):
// it may still hold users and streams.
func (v *View) Alive(id uint32) bool {
	if v.live == nil {
		_, ok := v.r.Member(id)
		return ok
	}
	_, ok := v.live[id]
	return ok
}

// LiveInfo returns what member id's lease says, if it has one.
func (v *View) LiveInfo(id uint32) (Live, bool) {
	l, ok := v.live[id]
	return l, ok
}

// Owner returns the owner of user uid: the ring's owner if live, else the
// next live active member in ring order; false if no member is live.
func (v *View) Owner(uid string) (uint32, bool) {
	return v.r.LookupLiveString(uid, v.Live)
}

// OwnerExcept is Owner with the members for which skip returns true taken
// as down too: where a router sends a connection whose owner refused it,
// and who owned a user while a member was away.
func (v *View) OwnerExcept(uid string, skip func(id uint32) bool) (uint32, bool) {
	return v.r.LookupLiveString(uid, func(id uint32) bool { return v.Live(id) && !skip(id) })
}

// Home returns the ring's owner of uid, live or not.
func (v *View) Home(uid string) uint32 { return v.r.LookupString(uid) }

// Member returns the document's member with the given id.
func (v *View) Member(id uint32) (ring.Member, bool) { return v.r.Member(id) }
