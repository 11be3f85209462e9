// Package wire is the protocol of one client connection of an edge, as a
// state machine that never touches a socket or a clock (in the style of
// etcd's raft): the event loop feeds it the bytes it read (Protocol.Feed),
// the end of the client's stream (Machine.ReadEOF) and its deadlines
// (Machine.Tick), and gets back a Step: the bytes to write, at most one
// event for the server to act on, and the next deadline (Feed's Step is
// the Protocol's own, reused on every read). The server keeps
// everything that is not the protocol (registry, mailbox, ownership, the
// socket and its write queue) and answers the events: a request head is
// admitted (Machine.Accept) or refused, a client's text message is read, a
// close is accounted for.
//
// One machine serves all three transports. Its phases:
//
//	AwaitingHead --Head event, Accept--> Open(WebSocket | SSE | Poll)
//	AwaitingHead --refused head, handshake deadline--> Closed
//	Open --close frame / close event / poll answer written--> Closing
//	Open --client FIN (WebSocket), reset--> Closed
//	Closing --client's close frame, close deadline, FIN after the answer--> Closed
//
// A phase never goes back. Closed means the socket must be closed; the
// machine answers nothing after that.
//
// The rules and their sources (RFC 6455 for frames and closing, RFC 7692 for
// compressed client messages, RFC 9112 section 9.6 for half-closed HTTP
// requests) are documented at the functions that apply them, and
// docs/protocol.md lists what is accepted and refused with which code.
package wire

import (
	"net/netip"
	"time"
)

// Phase is where a connection is in its life; it only moves forward.
type Phase uint8

// The phases, in order.
const (
	AwaitingHead Phase = iota // accepted; the request head (and PROXY header) not complete yet
	Open                      // upgraded to WebSocket, or an SSE stream or long-poll answered 200
	Closing                   // the edge's close frame, close event or poll answer is written; waiting for the client
	Closed                    // finished: the caller closes the socket
)

// Transport is how an open connection speaks.
type Transport uint8

// The transports.
const (
	WebSocket Transport = iota // RFC 6455 frames
	SSE                        // text/event-stream
	Poll                       // one JSON array, then the response ends
)

// Close codes the machine sends or checks (RFC 6455 section 7.4.1; 4000 is
// the edge's own, docs/protocol.md).
const (
	CloseNormal      = 1000
	CloseProtocol    = 1002
	CloseInvalidData = 1007
	CloseTooBig      = 1009
	CloseIdle        = 4000
)

// Config is the protocol's limits and timeouts, shared by every
// connection (so a connection does not pay for them).
type Config struct {
	// MaxMessageBytes bounds a client's message (all fragments, and a
	// compressed one once inflated): over it, 1009.
	MaxMessageBytes int
	// MaxHeaderBytes bounds the request head: over it, 431.
	MaxHeaderBytes int
	// AcceptProxy: a PROXY protocol header (v1 or v2) precedes the head.
	AcceptProxy bool
	// HandshakeTimeout bounds the wait for a complete request head.
	HandshakeTimeout time.Duration
	// CloseTimeout bounds the wait for the client once the edge has closed
	// (its close frame, or the end of an SSE stream or poll answer).
	CloseTimeout time.Duration
	// PingInterval is the heartbeat period of WebSocket and SSE.
	PingInterval time.Duration
	// IdleTimeout closes a WebSocket with 4000 when no frame came for that
	// long (checked at heartbeats).
	IdleTimeout time.Duration
	// PollTimeout is how long a long-poll is held before its empty answer.
	PollTimeout time.Duration
}

// Machine is one connection's protocol state. The zero value awaits a
// request head. It is 24 bytes: everything a connection needs only while
// something is in progress (a partial frame or head, a fragmented message,
// a refused frame being discarded, the PROXY source during the handshake)
// hangs off x, which is nil while the connection is idle.
//
// A Machine is not safe for concurrent use; the caller serializes calls
// (the edge holds the connection's lock).
type Machine struct {
	phase    Phase
	kind     Transport
	flags    uint8
	lastSeen int64 // Unix ns of the last read from a WebSocket client
	x        *rare
}

const (
	flagDeflate  = 1 << iota // permessage-deflate negotiated (RFC 7692)
	flagPeerDone             // the client shut down its sending side
)

// rare is the state of a connection with something in progress.
type rare struct {
	pending  []byte         // input the caller could not complete yet (Keep)
	skip     uint64         // bytes of a refused or ignored frame still to discard
	frag     bool           // inside a fragmented message
	fragText bool           //
	fragZ    bool           // the fragmented message is compressed: its fragments wait in zbuf
	proxied  bool           // the PROXY header was read
	fragLen  int            // bytes of the fragmented message so far
	zbuf     []byte         // compressed fragments so far (at most MaxMessageBytes)
	carry    []byte         // incomplete UTF-8 sequence at the end of the last text fragment
	client   netip.AddrPort // the PROXY header's source, kept during the handshake
}

func (m *Machine) rs() *rare {
	if m.x == nil {
		m.x = &rare{}
	}
	return m.x
}

// tidy drops the rare state once nothing is in progress.
func (m *Machine) tidy() {
	x := m.x
	if x != nil && len(x.pending) == 0 && x.skip == 0 && !x.frag &&
		(m.phase != AwaitingHead || !x.proxied) {
		m.x = nil
	}
}

// Phase is the connection's phase.
func (m *Machine) Phase() Phase { return m.phase }

// Transport is the open connection's transport (WebSocket before Accept).
func (m *Machine) Transport() Transport { return m.kind }

// Deflate reports whether permessage-deflate was negotiated.
func (m *Machine) Deflate() bool { return m.flags&flagDeflate != 0 }

// PeerDone reports whether the client shut down its sending side (ReadEOF
// kept the connection): the caller stops asking for input.
func (m *Machine) PeerDone() bool { return m.flags&flagPeerDone != 0 }

// LastSeen is the Unix ns of the last input from a WebSocket client (or of
// Accept).
func (m *Machine) LastSeen() int64 { return m.lastSeen }

// Client is the source address of the PROXY header, while the head is
// awaited; ok is false without one (no PROXY header, or a LOCAL one).
func (m *Machine) Client() (netip.AddrPort, bool) {
	if m.x == nil || !m.x.proxied || !m.x.client.IsValid() {
		return netip.AddrPort{}, false
	}
	return m.x.client, true
}

// Pending takes the input kept with Keep (nil if none): the caller puts it
// in front of what it reads next and feeds both.
func (m *Machine) Pending() []byte {
	if m.x == nil || len(m.x.pending) == 0 {
		return nil
	}
	p := m.x.pending
	m.x.pending = nil
	return p
}

// Keep copies rest, the input Feed did not consume (an incomplete frame or
// head), to be fed again with more; with rest empty it drops whatever
// state the connection no longer needs.
func (m *Machine) Keep(rest []byte) {
	if len(rest) > 0 {
		m.rs().pending = append([]byte(nil), rest...)
		return
	}
	m.tidy()
}

// Finish moves the machine to Closed and forgets what was in progress:
// the caller closed the socket (any phase; a write failed, the edge
// fenced, a reset).
func (m *Machine) Finish() {
	m.phase = Closed
	m.x = nil
}

// Event is what a Step asks of the server.
type Event uint8

// The events.
const (
	// EventNone: nothing to act on but Write (and Deadline); Feed returns EventNone
	// when it needs more input.
	EventNone Event = iota
	// EventHead: Payload is a complete request head (it aliases the input). The
	// server answers it: Accept and its own answer, or an HTTP error and
	// Finish.
	EventHead
	// EventRefused: the input before a head is refused; Code is the HTTP status
	// (400 for a bad PROXY header, 431 for a head over MaxHeaderBytes) and
	// Reason why. The server answers it and closes the socket.
	EventRefused
	// EventText: Payload is a client's whole text message, valid UTF-8 (it
	// aliases the input or the Protocol's scratch until the next Feed).
	EventText
	// EventClosing: Write holds the edge's close frame, SSE close event or poll
	// answer and the machine is Closing; Code and Reason are the close
	// code and reason. Once Write is written the caller shuts down its
	// sending side and sets Deadline. Done: the client already sent its
	// close, so the connection is finished once Write is out.
	EventClosing
	// EventClosed: the connection is finished; the caller closes the socket.
	// Code is 0 for a clean end of stream, -1 otherwise.
	EventClosed
)

// Step is the result of one call: bytes to write, at most one event, the
// next deadline.
type Step struct {
	// Used is how many bytes of the input Feed consumed; the caller feeds
	// the rest again (after acting on Event) or keeps it (Keep).
	Used int
	// Write is what to send to the client before acting on Event. It may
	// alias the Protocol's scratch (valid until the next Feed), so a caller
	// that queues it copies it.
	Write []byte
	// Event is what the server must act on.
	Event Event
	// Code and Reason: the close code (Closing, Closed) or HTTP status
	// (Refused).
	Code   int
	Reason string
	// Done (Closing): the client's close came first.
	Done bool
	// Payload is the request head (Head) or the message (Text).
	Payload []byte
	// Frames is how many complete client frames were read.
	Frames int
	// Deadline is the Unix ns of the connection's next deadline (0: none
	// set by this step). Open deadlines are heartbeats, the idle check and
	// the poll timeout; the server may bring one forward (a token's
	// expiry).
	Deadline int64
}
