package edge

import (
	"math/rand/v2"
	"sync"
	"time"
)

// moveLimiter remembers how often this edge moved each user recently, so a
// user is moved at most MoveLimit times per MoveWindow (a last line of
// defence if views disagree: the user stays where it is and is counted).
// mu guards at.
type moveLimiter struct {
	mu sync.Mutex
	at map[string][]int64 // uid -> Unix ns of its recent moves
}

func (m *moveLimiter) init() { m.at = make(map[string][]int64) }

// allow reports whether uid may be moved at now, and records the move.
func (m *moveLimiter) allow(uid string, now int64, limit int, window time.Duration) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	recent := m.at[uid][:0]
	for _, t := range m.at[uid] {
		if now-t < int64(window) {
			recent = append(recent, t)
		}
	}
	if len(recent) >= limit {
		m.at[uid] = recent
		return false
	}
	m.at[uid] = append(recent, now)
	return true
}

// sweep forgets moves older than window.
func (m *moveLimiter) sweep(now int64, window time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for uid, ts := range m.at {
		if len(ts) == 0 || now-ts[len(ts)-1] >= int64(window) {
			delete(m.at, uid)
		}
	}
}

// migrateLoop moves users this edge no longer owns, after every view change
// and once a second (a user may connect here from a router whose view is
// behind), establishes the streams of waiting connections whose user this
// edge now owns, and offers stored streams to their owners.
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
		if s.View() == nil || s.draining.Load() || !s.serving() {
			continue
		}
		s.moves.sweep(time.Now().UnixNano(), s.cfg.MoveWindow)
		s.streams.sweepHanded(time.Now().UnixNano())
		s.moveUsers()
		s.offerStreams()
	}
}

// moveUsers closes, at MigrateRate with jitter, every open connection whose
// user another live edge owns, so they reconnect through a router to the
// owner without a storm. A connection still waiting for its stream (it came
// here while its owner was unreachable) gets GuestGrace first; one whose
// user this edge owns now gets its stream established instead.
func (s *Server) moveUsers() {
	var moving, handed []*conn
	var claim []string
	guests := 0
	now := time.Now().UnixNano()
	s.eachConn(func(c *conn) {
		c.mu.Lock()
		if c.state == stOpen {
			if c.resume != nil {
				guests++
			}
			owner, _ := s.ownerOf(c.uid)
			switch {
			case c.handedOff:
				// Its stream went to another edge: it moves a settling
				// time after the hand-over, whatever views do since.
				if s.streams.handedSince(c, now) >= viewSettle {
					handed = append(handed, c)
				}
			case owner == s.cfg.ID:
				if c.resume != nil {
					claim = append(claim, c.uid)
				}
			case owner == 0: // nobody live: stay
			case c.resume != nil && now-c.resume.at < int64(s.cfg.GuestGrace):
			default:
				moving = append(moving, c)
			}
		}
		c.mu.Unlock()
	})
	s.m.guests.Set(float64(guests))
	for _, uid := range claim {
		s.establishLater(uid)
	}
	if s.viewAge() < viewSettle {
		moving = nil // the next pass moves them, once every view has caught up
	}
	moving = append(handed, moving...)
	if len(moving) == 0 {
		return
	}
	s.log.Info("moving users to their owners", "users", len(moving), "rate", s.cfg.MigrateRate)
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
		if s.draining.Load() || !s.serving() {
			return
		}
		c.mu.Lock()
		if owner, _ := s.ownerOf(c.uid); c.state == stOpen && c.handedOff {
			// Its stream is elsewhere: it must go, whatever the limit.
			s.m.moved.Inc()
			s.closeWithLocked(c, CloseMoved, "moved")
			s.streams.forgetHanded(c)
		} else if c.state == stOpen && owner != s.cfg.ID && owner != 0 {
			if s.moves.allow(c.uid, time.Now().UnixNano(), s.cfg.MoveLimit, s.cfg.MoveWindow) {
				s.m.moved.Inc()
				s.closeWithLocked(c, CloseMoved, "moved")
			} else {
				s.m.moveLimited.Inc()
			}
		}
		s.release(c)
	}
}
