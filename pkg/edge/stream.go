package edge

import (
	"net/http"
	"strconv"
	"time"

	"github.com/gobwas/ws"

	"github.com/pushcluster/push/pkg/mailbox"
	"github.com/pushcluster/push/pkg/wire"
)

// Transports. A conn's kind decides how a message is written; everything
// else (registry, mailbox, seq, timers, moves) is shared, so an idle SSE or
// long-poll request costs what an idle WebSocket does.
const (
	kindWS   = uint8(wire.WebSocket) // WebSocket frames
	kindSSE  = uint8(wire.SSE)       // text/event-stream: "id: N\ndata: {...}\n\n"
	kindPoll = uint8(wire.Poll)      // one JSON array, then the response ends
)

// sendMessage writes one message (epoch, seq, shared body) in c's
// transport, unless the edge is fenced (it writes nothing then). A long-poll
// answers with it and ends; the next poll resumes after it. A WebSocket
// that negotiated permessage-deflate gets the body's tail compressed (once
// for every connection it goes to) behind its own small prefix.
func (s *Server) sendMessage(c *conn, epoch string, seq uint64, m *body) bool {
	if !s.serving() {
		return false
	}
	tail := m.tail
	switch c.kind {
	case kindSSE:
		var b []byte
		b = append(b, "id: "...)
		if epoch != "" {
			b = append(b, epoch...)
			b = append(b, ':')
		}
		b = strconv.AppendUint(b, seq, 10)
		b = append(b, "\ndata: "...)
		b = envelope(b, epoch, seq)
		b = append(b, tail...)
		b = append(b, "\n\n"...)
		return s.writeLocked(c, b, nil)
	case kindPoll:
		return s.pollAnswer(c, pollBody(nil, epoch, seq, tail))
	}
	var pre [maxHeader + 5 + 48 + maxEpochLen]byte
	if c.m.Deflate() {
		if z := s.zTail(m); z != nil {
			n := deflatedPrefix(pre[:], seq, epoch, len(z))
			return s.writeLocked(c, pre[:n], z)
		}
	}
	n := seqPrefix(pre[:], seq, epoch, len(tail))
	return s.writeLocked(c, pre[:n], tail)
}

// envelope appends `{"seq":N,"epoch":"E"` to b.
func envelope(b []byte, epoch string, seq uint64) []byte {
	b = append(b, `{"seq":`...)
	b = strconv.AppendUint(b, seq, 10)
	if epoch != "" {
		b = append(b, `,"epoch":"`...)
		b = append(b, epoch...)
		b = append(b, '"')
	}
	return b
}

// pollBody appends a message envelope with its tail to b.
func pollBody(b []byte, epoch string, seq uint64, tail []byte) []byte {
	return append(envelope(b, epoch, seq), tail...)
}

// replayLocked writes what a connecting client missed: a gap notice, then
// the messages of epoch. A long-poll gets them all in one answer (or waits).
func (s *Server) replayLocked(c *conn, gap mailbox.Gap, epoch string, msgs []mailbox.Message) {
	if !s.serving() {
		return
	}
	if gap.From != 0 && gap.Epoch == "" {
		gap.Epoch = epoch
	}
	if c.kind == kindPoll {
		if gap.From == 0 && len(msgs) == 0 {
			return // hold the request until a message or PollTimeout
		}
		var b []byte
		if gap.From != 0 {
			b = gapJSON(b, gap)
		}
		for _, m := range msgs {
			if len(b) > 0 {
				b = append(b, ',')
			}
			b = pollBody(b, epoch, m.Seq, m.Body)
		}
		if s.pollAnswer(c, b) {
			s.m.msgsOut.Add(float64(len(msgs)))
		}
		return
	}
	if gap.From != 0 {
		s.m.gapNotices.Inc()
		if c.kind == kindSSE {
			s.writeLocked(c, append(append([]byte("data: "), gapJSON(nil, gap)...), "\n\n"...), nil)
		} else {
			s.writeLocked(c, frame(ws.OpText, gapJSON(nil, gap)), nil)
		}
	}
	for _, m := range msgs {
		// A replay is for this connection alone: its messages are
		// compressed (if at all) for it.
		if !s.sendMessage(c, epoch, m.Seq, newBody(m.Body)) {
			break
		}
		s.m.msgsOut.Inc()
	}
}

// gapJSON appends a gap notice: {"gap":true,"epoch":"E","from":A,"to":B},
// without "to" when the gap is open-ended.
func gapJSON(b []byte, g mailbox.Gap) []byte {
	b = append(b, `{"gap":true`...)
	if g.Epoch != "" {
		b = append(b, `,"epoch":"`...)
		b = append(b, g.Epoch...)
		b = append(b, '"')
	}
	b = append(b, `,"from":`...)
	b = strconv.AppendUint(b, g.From, 10)
	if !g.Open {
		b = append(b, `,"to":`...)
		b = strconv.AppendUint(b, g.To, 10)
	}
	return append(b, '}')
}

// pollAnswer ends a held long-poll with a JSON array of items (the head
// went out when the poll was accepted, so the client knows at once that it
// is connected; the body ends with the connection, wire.Machine.Answer)
// and reports whether it was written.
func (s *Server) pollAnswer(c *conn, items []byte) bool {
	if c.state != stOpen {
		return false
	}
	s.closingLocked(c, c.m.Answer(&s.wire, items, time.Now().UnixNano()))
	return c.state == stClosing
}

// streamHead is the response head of an SSE stream or a long-poll (length
// < 0: the body runs until the connection closes) or of an error answer,
// with CORS for origin, the allowed Origin the request had (nil: none).
func streamHead(status int, ctype string, length int, origin []byte) []byte {
	b := []byte("HTTP/1.1 ")
	b = strconv.AppendInt(b, int64(status), 10)
	b = append(b, ' ')
	b = append(b, http.StatusText(status)...)
	b = append(b, "\r\nContent-Type: "...)
	b = append(b, ctype...)
	b = append(b, "\r\nCache-Control: no-cache, no-store\r\nX-Accel-Buffering: no\r\n"...)
	if len(origin) > 0 {
		b = append(b, "Access-Control-Allow-Origin: "...)
		b = append(b, origin...)
		b = append(b, "\r\nVary: Origin\r\n"...)
	}
	if length >= 0 {
		b = append(b, "Content-Length: "...)
		b = strconv.AppendInt(b, int64(length), 10)
		b = append(b, "\r\n"...)
	}
	// Every answer ends with its connection: an SSE stream or long-poll
	// body runs until the edge closes it.
	b = append(b, "Connection: close\r\n"...)
	return append(b, "\r\n"...)
}

// streamRequest starts GET /sse and GET /poll: the same uid, token and
// last_seq as /ws (SSE also resumes from the Last-Event-ID header its
// EventSource sends on reconnect), the same checks and answers (400, 401,
// 403, 503), then the connection joins its user like a WebSocket. Once the
// Origin is allowed every answer carries CORS, or the page's script could
// not see a 401 and would retry instead of asking for a new token.
func (s *Server) streamRequest(c *conn, rq *request) {
	if herr := s.admitRequest(rq); herr != nil {
		if herr.Status != http.StatusForbidden && len(rq.origin) > 0 {
			e := *herr
			e.Header += corsLines(rq.origin)
			herr = &e
		}
		s.refuseLocked(c, herr)
		return
	}
	now := time.Now()
	c.kind = rq.kind
	st := c.m.Accept(&s.wire, wire.Transport(rq.kind), false, now.UnixNano())
	c.state = c.m.Phase() // stOpen
	s.m.handshaking.Dec()
	s.m.conns.Inc()
	s.open.Add(1)
	ctype := "text/event-stream"
	if rq.kind == kindPoll {
		ctype = "application/json" // the array follows when there is something to say
	}
	if !s.writeLocked(c, streamHead(http.StatusOK, ctype, -1, rq.origin), nil) {
		return
	}
	s.m.hsOK.Inc()
	c.uid = string(rq.uid)
	c.exp, c.iat = rq.claims.Exp, rq.claims.Iat
	s.scheduleOpen(c, time.Unix(0, st.Deadline))
	s.attachLocked(c, rq.resume)
}

// corsLines are the header lines that let a page from origin read an
// answer.
func corsLines(origin []byte) string {
	return "Access-Control-Allow-Origin: " + string(origin) + "\r\nVary: Origin\r\n"
}
