package edge

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/pushcluster/push/pkg/owner"
	"github.com/pushcluster/push/pkg/ring"
)

// How this edge takes part in ownership (docs/protocol.md, "Ownership"):
//
//   - Who owns a user is owner.View.Owner on the view this edge follows
//     (SetView), the same function routers and SDKs call.
//   - A user's stream (mailbox, epoch, seq, idempotency keys) lives on one
//     edge at a time. This edge accepts a publish for a user only if it
//     holds the stream, or owns the user and establishes the stream: it
//     takes it from whoever may hold it (the user's owners in the views it
//     held during the last MailboxTTL, and the member that owned the user
//     while this edge was away), or starts a new epoch when nobody has it.
//     Any other publish is answered at once with the owner (ErrNotOwner),
//     never forwarded, so nothing waits on another edge.
//   - An edge that lost its lease (fencing, member.go) writes nothing and
//     accepts nothing until it has rejoined with a new incarnation.

// ErrNotOwner is returned for a publish for a user this edge neither owns
// nor holds the stream of; errors.As finds a *NotOwnerError with the owner.
var ErrNotOwner = errors.New("not the owner of this user")

// ErrFenced is returned while the edge's lease is not valid: it must not
// serve, since another edge may own its users already.
var ErrFenced = errors.New("edge fenced: its lease is not valid, it serves nobody until it rejoins")

// NotOwnerError names the owner this edge sees for a user.
type NotOwnerError struct {
	User        string
	Owner       uint32 // 0: no live owner
	RingVersion uint64
}

func (e *NotOwnerError) Error() string {
	return fmt.Sprintf("%v: user %q is owned by edge %d (ring version %d)", ErrNotOwner, e.User, e.Owner, e.RingVersion)
}

func (e *NotOwnerError) Unwrap() error { return ErrNotOwner }

// maxEpochLen bounds an epoch a client sends back.
const maxEpochLen = 64

const epochRule = "epoch must be 1 to 64 characters of A-Z a-z 0-9 . _ -"

// parseEpoch checks an epoch from a client: 1 to 64 bytes of [A-Za-z0-9._-].
func parseEpoch(v []byte) (string, bool) {
	if len(v) == 0 || len(v) > maxEpochLen {
		return "", false
	}
	for _, c := range v {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '.', c == '_', c == '-':
		default:
			return "", false
		}
	}
	return string(v), true
}

// resumePoint is where a client says it stopped: the last seq it saw in
// epoch (empty: it gave last_seq alone), has false for a fresh client. A
// connection waiting for its user's stream to be established keeps it,
// with the time it arrived.
type resumePoint struct {
	epoch string
	seq   uint64
	has   bool
	at    int64 // Unix ns the connection arrived (set while waiting)
}

// ownState is what the edge knows about ownership; mu guards it.
type ownState struct {
	mu      sync.Mutex
	view    *owner.View // nil: standalone, this edge owns every user
	viewAt  time.Time   // when view was set
	history []pastView  // views held in the last MailboxTTL, oldest first
	joined  time.Time   // when this incarnation joined (zero: standalone)
	inc     string      // incarnation: names epochs started by this life
	epochs  uint64      // epochs started in this incarnation
}

type pastView struct {
	v     *owner.View
	until time.Time
}

func newIncarnation() string {
	var b [8]byte
	rand.Read(b[:])
	return strconv.FormatUint(binary.LittleEndian.Uint64(b[:])&(1<<40-1), 36)
}

// newEpoch names a new stream: the incarnation and a counter, unique
// across the cluster's lives.
func (s *Server) newEpoch() string {
	o := &s.own
	o.mu.Lock()
	defer o.mu.Unlock()
	o.epochs++
	return o.inc + "." + strconv.FormatUint(o.epochs, 36)
}

// SetView makes v the ownership view this edge follows (nil: standalone,
// it owns every user). Users it holds but no longer owns are then moved
// with 4003 at MigrateRate, and streams of absent users it no longer owns
// are offered to their owners.
func (s *Server) SetView(v *owner.View) {
	o := &s.own
	now := time.Now()
	o.mu.Lock()
	if o.view != nil && v != o.view {
		o.history = append(o.history, pastView{v: o.view, until: now.Add(s.cfg.MailboxTTL)})
	}
	i := 0
	for i < len(o.history) && o.history[i].until.Before(now) {
		i++
	}
	o.history = append(o.history[:0], o.history[i:]...)
	if len(o.history) > 64 {
		o.history = append(o.history[:0], o.history[len(o.history)-64:]...)
	}
	o.view, o.viewAt = v, now
	o.mu.Unlock()
	if v != nil {
		s.m.ringVersion.Set(float64(v.Version()))
	}
	select {
	case s.ringChanged <- struct{}{}:
	default:
	}
}

// SetRing is SetView for a ring without liveness: every member of r is
// live (tests, and stores that keep no leases).
func (s *Server) SetRing(r *ring.Ring) {
	if r == nil {
		s.SetView(nil)
		return
	}
	s.SetView(owner.NewView(r, nil, 0))
}

// viewSettle is how long after a change of view this edge waits before it
// moves users for it: every process reads the leases every 250 ms and
// follows the document's changes within a read, so by then routers see the
// change too and send a moved user to its owner, not back here. Two
// seconds leave room for a starved process (a 2-core machine running the
// whole test suite showed a router a second behind).
const viewSettle = 2 * time.Second

// viewAge returns how long the current view has been in force.
func (s *Server) viewAge() time.Duration {
	s.own.mu.Lock()
	defer s.own.mu.Unlock()
	return time.Since(s.own.viewAt)
}

// View returns the ownership view this edge follows (nil: standalone).
func (s *Server) View() *owner.View {
	s.own.mu.Lock()
	defer s.own.mu.Unlock()
	return s.own.view
}

// Ring returns the ring this edge follows (nil when standalone).
func (s *Server) Ring() *ring.Ring {
	if v := s.View(); v != nil {
		return v.Ring()
	}
	return nil
}

// rejoined records that this edge (re)joined the cluster now with a new
// incarnation: for MailboxTTL it also looks for its users' streams on the
// members that owned them while it was away.
func (s *Server) rejoined() {
	s.own.mu.Lock()
	s.own.joined = time.Now()
	s.own.inc = newIncarnation()
	s.own.epochs = 0
	s.own.mu.Unlock()
}

// ownerOf returns the owner of uid in this edge's view (this edge when
// standalone); 0 when no member is live.
func (s *Server) ownerOf(uid string) (uint32, *owner.View) {
	v := s.View()
	if v == nil {
		return s.cfg.ID, nil
	}
	id, _ := v.Owner(uid)
	return id, v
}

// owns reports whether this edge owns uid in its view. A draining edge, or
// one not in the ring, owns nobody.
func (s *Server) owns(uid string) bool {
	id, _ := s.ownerOf(uid)
	return id == s.cfg.ID && !s.draining.Load()
}

// notOwner builds the answer for a publish this edge does not take.
func (s *Server) notOwner(uid string, to uint32) *NotOwnerError {
	id, v := s.ownerOf(uid)
	if to != 0 {
		id = to
	}
	e := &NotOwnerError{User: uid, Owner: id}
	if v != nil {
		e.RingVersion = v.Version()
	}
	return e
}

// candidates returns the members that may hold uid's stream, other than
// this edge: its owners in the views this edge held during the last
// MailboxTTL, the member that would own it without this edge while this
// incarnation is young (it owned the user while this edge was away), and
// extra. Only members still alive in the current view are returned.
func (s *Server) candidates(uid string, extra ...uint32) []uint32 {
	o := &s.own
	now := time.Now()
	o.mu.Lock()
	defer o.mu.Unlock()
	v := o.view
	if v == nil {
		return nil
	}
	var out []uint32
	add := func(id uint32) {
		if id == 0 || id == s.cfg.ID || !v.Alive(id) {
			return
		}
		for _, x := range out {
			if x == id {
				return
			}
		}
		out = append(out, id)
	}
	for _, h := range o.history {
		if h.until.After(now) {
			id, _ := h.v.Owner(uid)
			add(id)
		}
	}
	if !o.joined.IsZero() && now.Sub(o.joined) < s.cfg.MailboxTTL {
		id, _ := v.OwnerExcept(uid, func(id uint32) bool { return id == s.cfg.ID })
		add(id)
	}
	for _, id := range extra {
		add(id)
	}
	return out
}

// member returns the view's member id.
func (s *Server) member(id uint32) (ring.Member, bool) {
	v := s.View()
	if v == nil {
		return ring.Member{}, false
	}
	return v.Member(id)
}
