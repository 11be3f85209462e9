package edge

import (
	"bytes"
	"context"
	"encoding/json"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pushcluster/push/pkg/auth"
	"github.com/pushcluster/push/pkg/registry"
	"github.com/pushcluster/push/pkg/store"
)

// Token lifetime on open connections (docs/protocol.md, "Token lifetime").
//
// Every open connection keeps its token's exp and iat (conn.exp, conn.iat:
// 16 bytes). Its one wheel timer fires at the earlier of its next ping (or
// long-poll timeout) and its exp, so expiry costs no timer of its own; a
// connection whose token has expired by then is closed with 4001. A
// WebSocket client renews by sending {"type":"token","token":"<jwt>"}; a
// token that does not verify for the connection's user, or is revoked,
// closes the connection with 4001 too. SSE and long-poll clients renew by
// reconnecting.
//
// Revocations come from the ring store (store.Revoker) through the
// Membership: tokens of a user issued before a time are refused at the
// handshake and in a refresh, and the user's open connections holding
// such a token are closed with 4001.

// RevocationPoll is how often a member reads the store's revocations (as
// often as the store's leases).
const RevocationPoll = 250 * time.Millisecond

// tokenState is what the edge knows of revoked tokens, and its metrics.
// revoked is replaced whole (copy on write) by SetRevocations and read
// without a lock.
type tokenState struct {
	revoked atomic.Pointer[map[string]revocation]

	renewed, refused, expired, cut prometheus.Counter // push_edge_token_events_total by event
	inForce                        prometheus.Gauge
}

func (t *tokenState) init(reg prometheus.Registerer) {
	events := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "push_edge_token_events_total",
		Help: "Token lifetime on open connections: renewed (a renewal taken), refused (a renewal refused: 4001), expired (closed at exp: 4001), revoked (closed by a revocation: 4001)."},
		[]string{"event"})
	t.renewed = events.WithLabelValues("renewed")
	t.refused = events.WithLabelValues("refused")
	t.expired = events.WithLabelValues("expired")
	t.cut = events.WithLabelValues("revoked")
	t.inForce = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "push_edge_revocations", Help: "Users with a token revocation in force, as last read from the ring store."})
	if reg != nil {
		reg.MustRegister(events, t.inForce)
	}
}

// revocation is store.Revocation in Unix nanoseconds.
type revocation struct{ before, expires, seen int64 } // seen: when this edge first had it (Unix ns)

// recheckFor is how long after a revocation first arrives its user's
// connections are checked again on every reading: a handshake that
// verified its token just before the revocation arrived registers within
// it. Older revocations are only enforced at handshakes and renewals, so a
// reading costs the recent revocations, not all of them.
const recheckFor = 5 * time.Second

// Close reasons of 4001.
const (
	reasonExpired = "token expired"
	reasonRevoked = "token revoked"
)

// checkToken verifies a token for uid (at the handshake and in a refresh)
// and refuses one a revocation covers with auth.ErrRevoked.
func (s *Server) checkToken(token, uid string) (auth.Claims, error) {
	c, err := s.cfg.Verifier.VerifyClaims(token, uid)
	if err != nil {
		return auth.Claims{}, err
	}
	if s.revoked(uid, c.Iat, time.Now().UnixNano()) {
		return auth.Claims{}, auth.ErrRevoked
	}
	return c, nil
}

// revoked reports whether a token of uid issued at iat is revoked at now.
func (s *Server) revoked(uid string, iat, now int64) bool {
	m := s.tokens.revoked.Load()
	if m == nil {
		return false
	}
	r, ok := (*m)[uid]
	return ok && iat < r.before && now < r.expires
}

// scheduleOpen sets an open connection's deadline: at (its next ping or
// long-poll timeout), or its token's expiry if that comes first.
func (s *Server) scheduleOpen(c *conn, at time.Time) {
	if c.exp != 0 && c.exp < at.UnixNano() {
		at = time.Unix(0, c.exp)
	}
	s.schedule(c, at)
}

// tokenExpiredLocked closes an open connection whose token has expired by
// now with 4001 and reports whether it did. The wheel never fires early, so
// a deadline set for the expiry always finds it expired.
func (s *Server) tokenExpiredLocked(c *conn, now time.Time) bool {
	if c.exp == 0 || now.UnixNano() < c.exp {
		return false
	}
	s.tokens.expired.Inc()
	s.closeWithLocked(c, CloseUnauthorized, reasonExpired)
	return true
}

// tokenMessage is the client's token refresh.
type tokenMessage struct {
	Type  string  `json:"type"`
	Token *string `json:"token"`
}

// clientTextLocked handles a whole, valid UTF-8 text message from a
// WebSocket client. The one message the protocol defines is the token
// refresh, {"type":"token","token":"<jwt>"}: a token that verifies for the
// connection's user (and is not revoked) replaces the connection's, which
// is answered {"seq":0,"token":true,"exp":<its exp, Unix seconds>};
// anything else about it closes the connection with 4001 and the reason.
// Every other message is ignored, as before.
func (s *Server) clientTextLocked(c *conn, p []byte) {
	if c.state != stOpen || !bytes.Contains(p, []byte(`"type"`)) {
		return
	}
	var m tokenMessage
	err := json.Unmarshal(p, &m)
	if m.Type != "token" {
		return
	}
	if err != nil || m.Token == nil {
		s.tokens.refused.Inc()
		s.closeWithLocked(c, CloseUnauthorized, `malformed token message: want {"type":"token","token":"<jwt>"}`)
		return
	}
	cl, err := s.checkToken(*m.Token, c.uid)
	if err != nil {
		s.tokens.refused.Inc()
		s.log.Debug("token refresh refused", "uid", c.uid, "reason", auth.Reason(err))
		s.closeWithLocked(c, CloseUnauthorized, auth.Reason(err))
		return
	}
	s.tokens.renewed.Inc()
	earlier := cl.Exp < c.exp
	c.exp, c.iat = cl.Exp, cl.Iat
	if earlier {
		// The deadline may sit after the new expiry; otherwise it stays
		// (a deadline for the old expiry finds it moved and pings).
		s.scheduleOpen(c, time.Now().Add(s.cfg.PingInterval))
	}
	b := make([]byte, 0, 64)
	b = append(b, `{"seq":0,"token":true,"exp":`...)
	b = strconv.AppendInt(b, cl.Exp/int64(time.Second), 10)
	b = append(b, '}')
	s.writeLocked(c, frame(ws.OpText, b), nil)
}

// SetRevocations replaces the revocations the edge enforces (expired ones
// are dropped) and closes, with 4001 "token revoked", every open connection
// of a listed user whose token was issued before the user's revocation. It
// returns how many it closed. A user is checked when its revocation is new
// or changed and on every call for recheckFor after that, so a handshake
// that verified its token just before a revocation arrived is cut off too.
func (s *Server) SetRevocations(list []store.Revocation) int {
	now := time.Now()
	ns := now.UnixNano()
	var prev map[string]revocation
	if p := s.tokens.revoked.Load(); p != nil {
		prev = *p
	}
	next := make(map[string]revocation, len(list))
	for _, r := range list {
		if !r.Expires.After(now) {
			continue
		}
		v := revocation{before: r.Before.UnixNano(), expires: r.Expires.UnixNano()}
		if o, ok := next[r.User]; ok {
			v.before, v.expires = max(v.before, o.before), max(v.expires, o.expires)
		}
		next[r.User] = v
	}
	for uid, v := range next {
		v.seen = ns
		if o, ok := prev[uid]; ok && o.before == v.before {
			v.seen = o.seen
		}
		next[uid] = v
	}
	s.tokens.revoked.Store(&next)
	s.tokens.inForce.Set(float64(len(next)))
	n := 0
	for uid, r := range next {
		if ns-r.seen < int64(recheckFor) {
			n += s.cutOff(uid, r.before)
		}
	}
	return n
}

// cutOff closes the open connections of uid whose token was issued before
// before.
func (s *Server) cutOff(uid string, before int64) int {
	n := 0
	s.reg.Do(uid, false, func(u *registry.User[*conn]) {
		if u == nil {
			return
		}
		for i := 0; i < len(u.Conns); {
			c := u.Conns[i]
			c.mu.Lock()
			if c.state == stOpen && c.iat < before {
				s.tokens.cut.Inc()
				s.closeWithLocked(c, CloseUnauthorized, reasonRevoked)
				n++
			}
			gone := c.registered && c.state >= stClosing
			if gone {
				c.registered = false
			}
			c.mu.Unlock()
			if gone {
				u.Remove(c)
				continue
			}
			i++
		}
	})
	return n
}

// followRevocations reads the store's revocations once now (so the edge
// enforces them from its first connections) and then every RevocationPoll
// until the Membership closes.
func (m *Membership) followRevocations(rv store.Revoker) {
	var problem string
	m.readRevocations(rv, &problem)
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		t := time.NewTicker(RevocationPoll)
		defer t.Stop()
		for {
			select {
			case <-m.stop:
				return
			case <-t.C:
			}
			m.readRevocations(rv, &problem)
		}
	}()
}

// readRevocations applies one reading; a failed one keeps the revocations
// in force and is logged once per distinct problem.
func (m *Membership) readRevocations(rv store.Revoker, problem *string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	list, err := rv.Revocations(ctx, time.Now())
	cancel()
	if err != nil {
		if err.Error() != *problem {
			*problem = err.Error()
			m.log.Warn("cannot read token revocations; the last ones read stay in force", "err", err)
		}
		return
	}
	if *problem != "" {
		*problem = ""
		m.log.Info("token revocations readable again")
	}
	if n := m.srv.SetRevocations(list); n > 0 {
		m.log.Info("closed connections holding revoked tokens", "connections", n)
	}
}
