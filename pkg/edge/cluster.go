package edge

import (
	"bytes"
	"context"
	"math/rand/v2"
	"time"

	"github.com/pushcluster/push/pkg/mailbox"
	"github.com/pushcluster/push/pkg/registry"
	"github.com/pushcluster/push/pkg/ring"
	pushv1 "github.com/pushcluster/push/proto/push/v1"
)

// Forwarder reaches the owner of a user this edge neither holds nor owns.
// pkg/client built with client.WithForwarded is one: the owner handles a
// forwarded call itself, so a call is forwarded at most once.
type Forwarder interface {
	Publish(ctx context.Context, userID string, data []byte, ttl time.Duration) (*pushv1.PublishResponse, error)
	PublishMulti(ctx context.Context, userIDs []string, data []byte, ttl time.Duration) (*pushv1.PublishMultiResponse, error)
	Kick(ctx context.Context, userID, reason string) (*pushv1.KickResponse, error)
	Presence(ctx context.Context, userIDs []string) (*pushv1.PresenceResponse, error)
}

// fwdBox holds the Forwarder behind an atomic pointer.
type fwdBox struct{ f Forwarder }

// SetForwarder sets (or replaces) how this edge reaches owners. An edge
// using the etcd store must register before an SDK can see a ring, so its
// forwarder comes after New.
func (s *Server) SetForwarder(f Forwarder) { s.fwd.Store(&fwdBox{f}) }

func (s *Server) forwarder() Forwarder {
	if b := s.fwd.Load(); b != nil {
		return b.f
	}
	return nil
}

// SetRing makes r the ring this edge follows (nil: standalone, it owns
// every user). Users it holds but no longer owns are then closed with 4003
// "moved" at MigrateRate, and messages stored for absent users it no longer
// owns are handed to their owner.
func (s *Server) SetRing(r *ring.Ring) {
	s.ring.Store(r)
	if r != nil {
		s.m.ringVersion.Set(float64(r.Version()))
	}
	select {
	case s.ringChanged <- struct{}{}:
	default:
	}
}

// Ring returns the ring this edge follows (nil when standalone).
func (s *Server) Ring() *ring.Ring { return s.ring.Load() }

// owns reports whether the ring names this edge as uid's owner. A draining
// edge, or one not in the ring, owns nobody.
func (s *Server) owns(uid string) bool {
	r := s.ring.Load()
	return r == nil || r.LookupString(uid) == s.cfg.ID
}

// local reports whether a call for uid is this edge's to handle: it owns
// the user, or still holds a connection of theirs (a user being moved is
// served where they are until they arrive at the new owner).
func (s *Server) local(uid string) bool {
	return s.owns(uid) || s.Presence(uid) > 0
}

// migrateLoop moves users this edge no longer owns, after every ring change
// and once a second (a user may connect here from a router whose ring is
// behind).
func (s *Server) migrateLoop() {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-s.ringChanged:
		case <-t.C:
		}
		if s.ring.Load() == nil || s.draining.Load() {
			continue
		}
		s.handOff()
		s.moveUsers()
	}
}

// moveUsers closes, at MigrateRate with jitter, every open connection whose
// user this edge does not own, so they reconnect through a router to the
// new owner without a storm.
func (s *Server) moveUsers() {
	var moving []*conn
	top := int(s.maxFD.Load()) + 1
	for i := 0; i < top; i++ {
		c := s.table[i].Load()
		if c == nil {
			continue
		}
		c.mu.Lock()
		if c.state == stOpen && !s.owns(c.uid) {
			moving = append(moving, c)
		}
		c.mu.Unlock()
	}
	if len(moving) == 0 {
		return
	}
	s.log.Info("moving users to their new owners", "users", len(moving), "rate", s.cfg.MigrateRate)
	// An absolute schedule keeps the rate exact whatever each wait
	// overshoots; the jitter keeps edges out of lockstep.
	gap := time.Second / time.Duration(s.cfg.MigrateRate)
	start := time.Now()
	for i, c := range moving {
		at := start.Add(time.Duration(i)*gap + rand.N(gap+1) - gap/2)
		if d := time.Until(at); d > 0 {
			select {
			case <-s.stop:
				return
			case <-time.After(d):
			}
		}
		if s.draining.Load() {
			return
		}
		c.mu.Lock()
		if c.state == stOpen && !s.owns(c.uid) {
			s.m.moved.Inc()
			s.closeWithLocked(c, CloseMoved, "moved")
		}
		s.release(c)
	}
}

// handOff forwards messages stored for absent users this edge no longer
// owns to their owner, in order, so a user who connects there gets them.
func (s *Server) handOff() {
	if s.forwarder() == nil {
		return
	}
	type parcel struct {
		uid  string
		msgs []mailbox.Message
	}
	var out []parcel
	now := time.Now().UnixNano()
	s.reg.Sweep(func(uid string, u *registry.User[*conn]) {
		if len(u.Conns) > 0 || u.Box == nil || s.owns(uid) {
			return
		}
		if msgs := u.Box.TakeUnsent(now); len(msgs) > 0 {
			out = append(out, parcel{uid, msgs})
		}
	})
	for _, p := range out {
		s.forwardStored(context.Background(), p.uid, p.msgs, now)
	}
}

// forwardStored publishes msgs, in order, to uid's owner, and returns the
// owner's answer to the last one. What cannot be handed over is stored
// back, for the next pass.
func (s *Server) forwardStored(ctx context.Context, uid string, msgs []mailbox.Message, now int64) *pushv1.PublishResponse {
	var last *pushv1.PublishResponse
	for i, m := range msgs {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		resp, err := s.forwarder().Publish(cctx, uid, tailData(m.Body), max(time.Duration(m.Expires-now), time.Second))
		cancel()
		if err != nil {
			s.log.Warn("hand-off to the new owner failed", "user", uid, "err", err)
			s.reg.Do(uid, true, func(u *registry.User[*conn]) {
				if u.Box == nil {
					u.Box = s.newBox()
				}
				for _, r := range msgs[i:] {
					u.Box.Push(r.Body, r.Expires, false)
				}
			})
			return nil
		}
		s.m.handedOff.Inc()
		last = resp
	}
	return last
}

// handOverNow runs right after a publish was stored for a user this edge
// does not own (the user left while it was published): what is stored goes
// to the owner at once, in order, so later publishes that reach the owner
// directly cannot overtake it. It returns the owner's answer to the newest
// message, or nil if nothing was handed over.
func (s *Server) handOverNow(ctx context.Context, uid string) *pushv1.PublishResponse {
	var msgs []mailbox.Message
	now := time.Now().UnixNano()
	s.reg.Do(uid, false, func(u *registry.User[*conn]) {
		if u != nil && len(u.Conns) == 0 && u.Box != nil {
			msgs = u.Box.TakeUnsent(now)
		}
	})
	if len(msgs) == 0 {
		return nil
	}
	return s.forwardStored(ctx, uid, msgs, now)
}

// tailData recovers the payload from a message tail `,"data":<json>}`.
// Embedding it again gives the same bytes: a payload that was not JSON is
// stored as a JSON string, which is valid JSON and is embedded as-is.
func tailData(tail []byte) []byte {
	return bytes.TrimSuffix(bytes.TrimPrefix(tail, []byte(`,"data":`)), []byte("}"))
}
