package edge

import (
	"bytes"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/pushcluster/push/pkg/auth"
	"github.com/pushcluster/push/pkg/httphead"
	"github.com/pushcluster/push/pkg/mailbox"
	"github.com/pushcluster/push/pkg/rawtcp"
	"github.com/pushcluster/push/pkg/registry"
	"github.com/pushcluster/push/pkg/userid"
	"github.com/pushcluster/push/pkg/wire"
)

// MaxSeq is the largest sequence number a client may resume from (the
// largest integer a JavaScript number holds exactly).
const MaxSeq = 1<<53 - 1

// handshake is a loop's reusable request state: one parsed head whose
// field table is kept between requests and the buffer the 101 answer is
// written into, so parsing a head and answering it allocate nothing.
type handshake struct {
	s   *Server
	req httphead.Request
	out []byte
}

func (h *handshake) init(s *Server) { h.s = s }

// request is what any transport (/ws, /sse, /poll) takes from a head; the
// slices alias the head.
type request struct {
	kind   uint8
	uid    []byte
	token  []byte
	origin []byte // the one Origin field, nil without
	host   []byte // the request's own host: the absolute-form authority, else Host
	wsKey  []byte // Sec-WebSocket-Key (/ws only)
	resume resumePoint
	// deflate is the Sec-WebSocket-Extensions answer when an offer of
	// permessage-deflate was accepted (/ws only), nil otherwise.
	deflate []byte
	claims  auth.Claims // the verified token's lifetime, set by admitRequest
}

// Refusals of the edge's own rules (the syntax ones are httphead's).
var (
	errNotFound  = &httphead.Error{Status: http.StatusNotFound, Reason: "not found: the endpoints are /ws, /sse and /poll"}
	errMethod    = &httphead.Error{Status: http.StatusMethodNotAllowed, Reason: "only GET is served"}
	errUID       = &httphead.Error{Status: http.StatusBadRequest, Reason: "uid missing or invalid (" + userid.Rule + ")"}
	errLastSeq   = &httphead.Error{Status: http.StatusBadRequest, Reason: "last_seq must be an integer from 0 to 2^53-1"}
	errEpoch     = &httphead.Error{Status: http.StatusBadRequest, Reason: epochRule}
	errEpochSeq  = &httphead.Error{Status: http.StatusBadRequest, Reason: "epoch needs last_seq"}
	errLastEvent = &httphead.Error{Status: http.StatusBadRequest, Reason: "Last-Event-ID must be <epoch>:<seq> or <seq>, seq from 0 to 2^53-1 (" + epochRule + ")"}
	errOrigins   = &httphead.Error{Status: http.StatusBadRequest, Reason: "more than one Origin (RFC 6454 section 7.2)"}
	errForbidden = &httphead.Error{Status: http.StatusForbidden, Reason: "origin not allowed"}
	errBusy      = &httphead.Error{Status: http.StatusServiceUnavailable, Reason: "edge at capacity, draining or fenced"}
)

// parse reads a complete request head into h.req and returns what the
// transports need, or the refusal: httphead's syntax errors (400, 505),
// 405 for a method other than GET, 404 for a path other than /ws, /sse and
// /poll, 400 for a bad uid, last_seq, epoch, Last-Event-ID or two Origin
// lines, and for /ws the handshake errors of httphead.CheckUpgrade (400,
// 426). Parameters are read with httphead.QueryParam, the router's own
// rule, so both see the same user.
func (h *handshake) parse(head []byte) (request, *httphead.Error) {
	var rq request
	r := &h.req
	if err := httphead.Parse(head, r); err != nil {
		return rq, err.(*httphead.Error)
	}
	switch string(r.Path) {
	case "/ws":
		rq.kind = kindWS
	case "/sse":
		rq.kind = kindSSE
	case "/poll":
		rq.kind = kindPoll
	default:
		return rq, errNotFound
	}
	if string(r.Method) != "GET" {
		return rq, errMethod
	}
	var ok bool
	if rq.uid, ok = r.Param("uid"); !ok || !userid.Valid(string(rq.uid)) {
		return rq, errUID
	}
	rq.token, _ = r.Param("token")
	if v, ok := r.Param("last_seq"); ok {
		n, err := strconv.ParseUint(string(v), 10, 64)
		if err != nil || n > MaxSeq {
			return rq, errLastSeq
		}
		rq.resume.seq, rq.resume.has = n, true
	}
	if v, ok := r.Param("epoch"); ok {
		e, ok := parseEpoch(v)
		if !ok {
			return rq, errEpoch
		}
		rq.resume.epoch = e
	}
	if rq.resume.epoch != "" && !rq.resume.has {
		return rq, errEpochSeq
	}
	if rq.kind == kindSSE {
		if v, n := r.Get("Last-Event-ID"); n > 0 {
			// "E:N" (what the edge sends as the event id) or "N"; the
			// header wins over the URL, which is where the page started.
			rp, ok := parseLastEventID(v)
			if !ok {
				return rq, errLastEvent
			}
			rq.resume = rp
		}
	}
	var n int
	if rq.origin, n = r.Get("Origin"); n > 1 {
		return rq, errOrigins
	}
	rq.host = r.Host
	if r.Authority != nil {
		rq.host = r.Authority // RFC 9112 section 3.2.2: the target's authority wins
	}
	if rq.kind == kindWS {
		key, err := httphead.CheckUpgrade(r)
		if err != nil {
			return rq, err
		}
		rq.wsKey = key
		if v, n := r.Get("Sec-WebSocket-Extensions"); n > 0 && !h.s.cfg.NoCompression {
			rq.deflate = negotiateDeflate(v)
		}
	}
	return rq, nil
}

// parseLastEventID reads "E:N" or "N" (seq 0 to MaxSeq).
func parseLastEventID(v []byte) (resumePoint, bool) {
	ev, num := []byte(nil), v
	if i := bytes.LastIndexByte(v, ':'); i >= 0 {
		ev, num = v[:i], v[i+1:]
	}
	n, err := strconv.ParseUint(string(num), 10, 64)
	e, eok := parseEpoch(ev)
	if err != nil || n > MaxSeq || (ev != nil && !eok) {
		return resumePoint{}, false
	}
	return resumePoint{epoch: e, seq: n, has: true}, true
}

// admitRequest applies the checks every transport shares once the head is
// understood: Origin (403), capacity, draining and fencing (503), then the
// token (401), so a forged token never costs a registry entry.
func (s *Server) admitRequest(rq *request) *httphead.Error {
	if len(rq.origin) > 0 && !s.originAllowed(rq.origin, rq.host) {
		s.m.hsForbidden.Inc()
		return errForbidden
	}
	if s.draining.Load() || s.open.Load() >= int64(s.cfg.MaxConns) || !s.serving() {
		s.m.hsOverloaded.Inc()
		return errBusy
	}
	claims, err := s.checkToken(string(rq.token), string(rq.uid))
	if err != nil {
		s.m.hsUnauthorized.Inc()
		return &httphead.Error{Status: http.StatusUnauthorized, Reason: auth.Reason(err),
			Header: "WWW-Authenticate: Bearer realm=\"push\", error=\"invalid_token\"\r\n"}
	}
	rq.claims = claims
	return nil
}

// serveLocked answers a complete request head: a refusal, a WebSocket
// upgrade, or the start of an SSE stream or long-poll.
func (h *handshake) serveLocked(c *conn, head []byte) {
	s := h.s
	rq, herr := h.parse(head)
	if herr != nil {
		if herr.Status == http.StatusNotFound {
			s.m.hsNotFound.Inc()
		} else {
			s.m.hsBadRequest.Inc()
		}
		s.refuseLocked(c, herr)
		return
	}
	if rq.kind != kindWS {
		s.streamRequest(c, &rq)
		return
	}
	if herr := s.admitRequest(&rq); herr != nil {
		s.refuseLocked(c, herr)
		return
	}
	h.upgradeLocked(c, &rq)
}

// refuseLocked answers a handshake with e (and the headers its status
// needs) and closes.
func (s *Server) refuseLocked(c *conn, e *httphead.Error) {
	rawtcp.Write(int(c.fd), e.Append(nil))
	s.closeNowLocked(c, -1)
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

// upgradeLocked answers an admitted /ws request with 101 (RFC 6455
// section 4.2.2) and attaches the connection to its user.
func (h *handshake) upgradeLocked(c *conn, rq *request) {
	s := h.s
	now := time.Now()
	st := c.m.Accept(&s.wire, wire.WebSocket, rq.deflate != nil, now.UnixNano())
	c.state = c.m.Phase() // stOpen
	s.m.handshaking.Dec()
	s.m.conns.Inc()
	s.open.Add(1)
	h.out = appendSwitching(h.out[:0], rq.wsKey, rq.deflate) // writeLocked copies what it queues
	if !s.writeLocked(c, h.out, nil) {
		return
	}
	s.m.hsOK.Inc()
	c.uid = string(rq.uid)
	if c.m.Deflate() {
		s.m.deflateConns.Inc()
	}
	c.exp, c.iat = rq.claims.Exp, rq.claims.Iat
	s.scheduleOpen(c, time.Unix(0, st.Deadline))
	s.attachLocked(c, rq.resume)
}

// appendSwitching appends the 101 answer to a handshake with key, with
// the Sec-WebSocket-Extensions answer ext when it is not nil.
func appendSwitching(b, key, ext []byte) []byte {
	accept := httphead.AcceptKey(key)
	b = append(b, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: "...)
	b = append(b, accept[:]...)
	if ext != nil {
		b = append(b, "\r\nSec-WebSocket-Extensions: "...)
		b = append(b, ext...)
	}
	return append(b, "\r\n\r\n"...)
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
		msgs, gap := s.resumeInShard(u, rp, now)
		s.replayLocked(c, gap, u.Box.Epoch, msgs)
		detachInShard(u, c)
	})
	if later {
		s.establishLater(c.uid)
	}
}

// resumeInShard takes from the user's stream what a client resuming at rp
// gets (mailbox.Box.ResumeEpoch). A client that keeps its own numbering
// (last_seq without epoch) close enough to 2^53-1 that the stored messages
// renumbered after it would pass it gets a new epoch instead, numbered
// from 1 (docs/protocol.md: seq never exceeds 2^53-1), with what no
// connection took. Called with the shard lock held, u.Box set.
func (s *Server) resumeInShard(u *registry.User[*conn], rp resumePoint, now int64) ([]mailbox.Message, mailbox.Gap) {
	if rp.has && rp.epoch == "" && u.Box.ResumePasses(rp.seq) {
		u.Box.Rollover(s.newEpoch(), now)
		s.m.epochsStarted.Inc()
		return u.Box.Resume(nil, 0, false, now)
	}
	return u.Box.ResumeEpoch(nil, rp.epoch, rp.seq, rp.has, now)
}
