package edge

import (
	"bytes"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/gobwas/ws"

	"github.com/pushcluster/push/pkg/auth"
	"github.com/pushcluster/push/pkg/registry"
	"github.com/pushcluster/push/pkg/userid"
)

// MaxSeq is the largest sequence number a client may resume from (the
// largest integer a JavaScript number holds exactly).
const MaxSeq = 1<<53 - 1

// handshake is a loop's reusable upgrade state: one ws.Upgrader whose
// callbacks fill the fields below, so an upgrade allocates nothing for
// closures or buffers.
type handshake struct {
	s      *Server
	up     ws.Upgrader
	in     bytes.Reader
	out    bytes.Buffer
	uid    []byte
	token  []byte
	origin []byte
	host   []byte
	resume resumePoint
	claims auth.Claims // the verified token's lifetime, for the connection
}

// Read and Write let the upgrader read the head from memory and write its
// response into a buffer that is then written to the socket in one call.
func (h *handshake) Read(p []byte) (int, error)  { return h.in.Read(p) }
func (h *handshake) Write(p []byte) (int, error) { return h.out.Write(p) }

func (h *handshake) init(s *Server) {
	h.s = s
	h.up = ws.Upgrader{
		ReadBufferSize: s.cfg.MaxHeaderBytes,
		OnRequest:      h.onRequest,
		OnHost: func(host []byte) error {
			h.host = append(h.host[:0], host...)
			return nil
		},
		OnHeader: func(key, value []byte) error {
			if bytes.EqualFold(key, []byte("Origin")) {
				h.origin = append(h.origin[:0], value...)
			}
			return nil
		},
		OnBeforeUpgrade: h.onBeforeUpgrade,
	}
}

func reject(status int, reason string) error {
	return ws.RejectConnectionError(ws.RejectionStatus(status), ws.RejectionReason(reason))
}

// onRequest checks the path and reads uid, token and last_seq from the raw
// query (first occurrence of each wins, as in HAProxy's url_param).
func (h *handshake) onRequest(uri []byte) error {
	h.uid, h.token, h.origin, h.host = h.uid[:0], h.token[:0], h.origin[:0], h.host[:0]
	h.resume = resumePoint{}
	path, query, _ := bytes.Cut(uri, []byte("?"))
	if string(path) != "/ws" {
		h.s.m.hsNotFound.Inc()
		return reject(http.StatusNotFound, "not found: the WebSocket endpoint is /ws")
	}
	var seenUID, seenToken, seenLast, seenEpoch bool
	for len(query) > 0 {
		var kv []byte
		kv, query, _ = bytes.Cut(query, []byte("&"))
		k, v, _ := bytes.Cut(kv, []byte("="))
		switch string(k) {
		case "uid":
			if !seenUID {
				seenUID = true
				h.uid = append(h.uid[:0], v...)
			}
		case "token":
			if !seenToken {
				seenToken = true
				h.token = append(h.token[:0], v...)
			}
		case "last_seq":
			if !seenLast {
				seenLast = true
				n, err := strconv.ParseUint(string(v), 10, 64)
				if err != nil || n > MaxSeq {
					h.s.m.hsBadRequest.Inc()
					return reject(http.StatusBadRequest, "last_seq must be an integer from 0 to 2^53-1")
				}
				h.resume.seq, h.resume.has = n, true
			}
		case "epoch":
			if !seenEpoch {
				seenEpoch = true
				e, ok := parseEpoch(v)
				if !ok {
					h.s.m.hsBadRequest.Inc()
					return reject(http.StatusBadRequest, epochRule)
				}
				h.resume.epoch = e
			}
		}
	}
	if h.resume.epoch != "" && !h.resume.has {
		h.s.m.hsBadRequest.Inc()
		return reject(http.StatusBadRequest, "epoch needs last_seq")
	}
	if !seenUID || !userid.Valid(string(h.uid)) {
		h.s.m.hsBadRequest.Inc()
		return reject(http.StatusBadRequest, "uid missing or invalid ("+userid.Rule+")")
	}
	return nil
}

// onBeforeUpgrade runs once the head is read: Origin, capacity, then the
// token, so a forged token never costs a registry entry.
func (h *handshake) onBeforeUpgrade() (ws.HandshakeHeader, error) {
	s := h.s
	if len(h.origin) > 0 && !s.originAllowed(h.origin, h.host) {
		s.m.hsForbidden.Inc()
		return nil, reject(http.StatusForbidden, "origin not allowed")
	}
	if s.draining.Load() || s.open.Load() >= int64(s.cfg.MaxConns) || !s.serving() {
		s.m.hsOverloaded.Inc()
		return nil, reject(http.StatusServiceUnavailable, "edge at capacity, draining or fenced")
	}
	claims, err := s.checkToken(string(h.token), string(h.uid))
	if err != nil {
		s.m.hsUnauthorized.Inc()
		return nil, reject(http.StatusUnauthorized, auth.Reason(err))
	}
	h.claims = claims
	return nil, nil
}

// originAllowed applies the allowlist; with none configured only an Origin
// naming the request's own host passes (unless Dev).
func (s *Server) originAllowed(origin, host []byte) bool {
	if s.cfg.Dev {
		return true
	}
	o := string(origin)
	if _, rest, ok := strings.Cut(o, "://"); ok && rest == string(host) {
		return true
	}
	for _, a := range s.cfg.AllowedOrigins {
		if a == o {
			return true
		}
		if scheme, pat, ok := strings.Cut(a, "://*."); ok {
			if oscheme, ohost, ok := strings.Cut(o, "://"); ok && oscheme == scheme && strings.HasSuffix(ohost, "."+pat) {
				return true
			}
		}
	}
	return false
}

// upgradeLocked runs the upgrade on a complete head and, on success,
// attaches the connection to its user.
func (h *handshake) upgradeLocked(c *conn, head []byte) {
	s := h.s
	h.in.Reset(head)
	h.out.Reset()
	_, err := h.up.Upgrade(h)
	if err != nil {
		if _, ok := err.(*ws.ConnectionRejectedError); !ok {
			s.m.hsBadRequest.Inc() // malformed request, missing upgrade headers...
		}
		if h.out.Len() == 0 {
			h.out.Write(httpError(http.StatusBadRequest, err.Error()))
		}
		s.writeLocked(c, h.out.Bytes(), nil)
		s.closeNowLocked(c, -1)
		return
	}
	now := time.Now()
	c.state = stOpen
	s.m.handshaking.Dec()
	s.m.conns.Inc()
	s.open.Add(1)
	if !s.writeLocked(c, h.out.Bytes(), nil) {
		return
	}
	s.m.hsOK.Inc()
	c.uid = string(h.uid)
	c.lastSeen = now.UnixNano()
	c.exp, c.iat = h.claims.Exp, h.claims.Iat
	s.scheduleOpen(c, now.Add(s.cfg.PingInterval))
	s.attachLocked(c, h.resume)
}

// attachLocked registers c under its user: older connections beyond
// MaxConnsPerUser are closed with 4002, and what the user's stream holds for
// the client is written before any new publish can reach it (publishers
// wait on the same shard lock). When the stream is not here, the connection
// waits for it (c.resume): this edge establishes it if it owns the user, in
// the background when another member may hold it; otherwise the user is a
// guest here until its owner takes it (see moveUsers).
func (s *Server) attachLocked(c *conn, rp resumePoint) {
	now := time.Now().UnixNano()
	later := false
	s.reg.Do(c.uid, true, func(u *registry.User[*conn]) {
		for len(u.Conns) >= s.cfg.MaxConnsPerUser {
			old := u.Conns[0]
			old.mu.Lock()
			s.closeWithLocked(old, CloseReplaced, "replaced by a newer connection")
			old.registered = false
			old.mu.Unlock()
			u.Remove(old)
		}
		u.Conns = append(u.Conns, c)
		c.registered = true
		if u.Box == nil || u.Handed != nil {
			owns := s.owns(c.uid)
			if !owns || u.Handed != nil || len(s.candidates(c.uid)) > 0 {
				rp.at = now
				c.resume = &rp
				later = owns
				return
			}
			u.Box = s.newBox()
			s.m.epochsStarted.Inc()
			if rp.has && rp.epoch == "" {
				// A client that resumes without an epoch keeps its
				// numbering (the older rule).
				u.Box.Resume(nil, rp.seq, true, now)
				return
			}
		}
		msgs, gap := u.Box.ResumeEpoch(nil, rp.epoch, rp.seq, rp.has, now)
		s.replayLocked(c, gap, u.Box.Epoch, msgs)
		detachInShard(u, c)
	})
	if later {
		s.establishLater(c.uid)
	}
}

// httpError is a minimal HTTP error response for requests that never reach
// the upgrader's own error writer.
func httpError(status int, reason string) []byte {
	return []byte(fmt.Sprintf("HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s",
		status, http.StatusText(status), len(reason), reason))
}
