package wire

import (
	"net/netip"
	"strconv"
)

// Start is the step of a connection just accepted: its handshake
// deadline, HandshakeTimeout after now (Unix ns).
func (m *Machine) Start(c *Config, now int64) Step {
	return Step{Deadline: now + int64(c.HandshakeTimeout)}
}

// Accept opens a connection whose head the server admitted, as transport
// kind (deflate: permessage-deflate was negotiated, WebSocket only). It
// returns the first deadline: a heartbeat after PingInterval, or a
// long-poll's empty answer after PollTimeout. The server writes its own
// answer (the 101, or the 200 head of a stream). Accept outside
// AwaitingHead does nothing.
func (m *Machine) Accept(c *Config, kind Transport, deflate bool, now int64) Step {
	if m.phase != AwaitingHead {
		return Step{}
	}
	m.phase, m.kind, m.lastSeen = Open, kind, now
	if deflate && kind == WebSocket {
		m.flags |= flagDeflate
	}
	if m.x != nil {
		m.x.proxied, m.x.client = false, netip.AddrPort{}
	}
	m.tidy()
	next := c.PingInterval
	if kind == Poll {
		next = c.PollTimeout
	}
	return Step{Deadline: now + int64(next)}
}

// Close starts the edge's side of closing an open connection with code and
// reason: a close frame (RFC 6455 section 5.5.1; the reason cut to fit a
// control frame), an SSE close event, or a long-poll answer holding the
// notice; then the machine waits for the client up to CloseTimeout.
// Outside Open it does nothing (Event None). Write is a new slice.
func (m *Machine) Close(c *Config, code int, reason string, now int64) Step {
	if m.phase != Open {
		return Step{}
	}
	var b []byte
	switch m.kind {
	case SSE:
		b = append([]byte("event: close\ndata: "), CloseNotice(code, reason)...)
		b = append(b, "\n\n"...)
	case Poll:
		b = pollArray(CloseNotice(code, reason))
	default:
		b = CloseFrame(code, reason)
	}
	m.phase = Closing
	return Step{Write: b, Event: EventClosing, Code: code, Reason: reason, Deadline: now + int64(c.CloseTimeout)}
}

// Answer ends an open long-poll with the JSON array of items (the
// comma-separated messages and notices the server encoded): the response
// ends with the connection (Event Closing, Code 0). On another transport
// or phase it does nothing.
func (m *Machine) Answer(c *Config, items []byte, now int64) Step {
	if m.phase != Open || m.kind != Poll {
		return Step{}
	}
	m.phase = Closing
	return Step{Write: pollArray(items), Event: EventClosing, Deadline: now + int64(c.CloseTimeout)}
}

func pollArray(items []byte) []byte {
	b := make([]byte, 0, len(items)+2)
	b = append(b, '[')
	b = append(b, items...)
	return append(b, ']')
}

// CloseNotice tells an SSE or long-poll client why the stream ends, with
// the WebSocket close codes: {"close":4003,"reason":"moved"}.
func CloseNotice(code int, reason string) []byte {
	b := []byte(`{"close":`)
	b = strconv.AppendInt(b, int64(code), 10)
	b = append(b, `,"reason":`...)
	b = strconv.AppendQuote(b, reason)
	return append(b, '}')
}

// Heartbeats a page can see: browsers hide WebSocket pings and SSE
// comments from scripts, and a client's watchdog needs something to reset
// it on an idle connection. The WebSocket ping (answered by the browser
// itself, which keeps the idle timer fed) goes in the same write.
var (
	Heartbeat   = []byte(`{"seq":0,"hb":true}`)
	WSHeartbeat = append(append([]byte(nil), PingFrame...), Frame(OpText, Heartbeat)...)
	SSEPing     = append(append([]byte("data: "), Heartbeat...), "\n\n"...)
)

// Tick runs the connection's deadline at now (Unix ns). The server calls
// it when the deadline it was given passes (after its own checks, such as
// a token's expiry):
//   - awaiting the head: the handshake timed out (Closed);
//   - an open long-poll: nothing came within PollTimeout, the empty answer
//     [] (Closing);
//   - an open SSE stream: a heartbeat, next one after PingInterval;
//   - an open WebSocket: no frame from the client within IdleTimeout
//     closes it with 4000 (Closing), else a heartbeat (ping and a visible
//     heartbeat message), next one after PingInterval;
//   - closing: the client did not finish within CloseTimeout (Closed).
func (m *Machine) Tick(c *Config, now int64) Step {
	switch m.phase {
	case AwaitingHead:
		m.Finish()
		return Step{Event: EventClosed, Code: -1, Reason: "handshake timeout"}
	case Open:
		switch m.kind {
		case Poll:
			return m.Answer(c, nil, now)
		case SSE:
			return Step{Write: SSEPing, Deadline: now + int64(c.PingInterval)}
		}
		if now-m.lastSeen >= int64(c.IdleTimeout) {
			return m.Close(c, CloseIdle, "idle timeout", now)
		}
		return Step{Write: WSHeartbeat, Deadline: now + int64(c.PingInterval)}
	case Closing:
		m.Finish()
		return Step{Event: EventClosed, Code: -1, Reason: "close timeout"}
	}
	return Step{}
}

// ReadEOF handles the end of the client's stream (a FIN, as from
// shutdown(SHUT_WR)); queued tells whether bytes to the client are still
// waiting to be written. HTTP lets a client close its sending side once
// the request is out and still read the answer (RFC 9112 section 9.6), so:
//   - a held long-poll keeps waiting and gets the answer docs/protocol.md
//     promises: the JSON array with the first message, or [] at
//     PollTimeout (Event None, PeerDone);
//   - an SSE stream has no more request to wait for: it ends with its
//     close event, 1000 (Closing);
//   - a closing connection stays until its queued bytes are out, once: the
//     next end of stream finishes it (Closed).
//
// A WebSocket client that sends a FIN without a close frame is gone (RFC
// 6455 section 7.1.5, 1006), as is a client that never finished its
// request head: Closed, Code 0.
func (m *Machine) ReadEOF(c *Config, queued bool, now int64) Step {
	first := m.flags&flagPeerDone == 0
	m.flags |= flagPeerDone
	switch {
	case m.phase == Open && m.kind == Poll:
		return Step{}
	case m.phase == Open && m.kind == SSE:
		return m.Close(c, CloseNormal, "the client closed its side", now)
	case m.phase == Closing && first && queued:
		return Step{}
	case m.phase == Closed:
		return Step{}
	}
	m.Finish()
	return Step{Event: EventClosed}
}
