package wire

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"strings"
	"testing"
	"time"
	"unsafe"
)

var testCfg = Config{
	MaxMessageBytes:  200,
	MaxHeaderBytes:   512,
	HandshakeTimeout: 5 * time.Second,
	CloseTimeout:     3 * time.Second,
	PingInterval:     25 * time.Second,
	IdleTimeout:      60 * time.Second,
	PollTimeout:      30 * time.Second,
}

// masked is a client frame with first byte b0, payload p and mask key 0
// (RFC 6455 lets the key be anything; 0 leaves the payload readable).
func masked(b0 byte, p []byte) []byte {
	h := []byte{b0, 0x80 | byte(len(p)), 0, 0, 0, 0}
	if len(p) > 125 {
		h = []byte{b0, 0x80 | 126, byte(len(p) >> 8), byte(len(p)), 0, 0, 0, 0}
	}
	return append(h, p...)
}

// run is what the edge's loop does with a machine: it feeds data in chunks
// of at most chunk bytes (keeping what was not used in front of the next
// chunk), writes every step's bytes, answers a head by accepting it as
// kind, and stops at Closed. It returns the bytes written and the events.
type run struct {
	p      *Protocol
	m      Machine
	kind   Transport
	out    []byte
	events []Step
}

func newRun(cfg Config, kind Transport, open bool) *run {
	r := &run{p: NewProtocol(cfg), kind: kind}
	if open {
		r.m.Accept(&r.p.cfg, kind, false, 0)
	}
	return r
}

func (r *run) feed(t testing.TB, data []byte, chunk int) {
	for off := 0; off < len(data) && r.m.Phase() != Closed; off += chunk {
		buf := append(r.m.Pending(), data[off:min(off+chunk, len(data))]...)
		used := 0
		for r.m.Phase() != Closed {
			st := r.p.Feed(&r.m, buf[used:], 1)
			if st.Used < 0 || used+st.Used > len(buf) {
				t.Fatalf("used %d of %d", st.Used, len(buf)-used)
			}
			used += st.Used
			r.apply(*st)
			if st.Event == EventNone {
				break
			}
		}
		r.m.Keep(buf[used:])
	}
}

func (r *run) apply(st Step) {
	r.out = append(r.out, st.Write...)
	if st.Event != EventNone {
		st.Write, st.Payload = append([]byte(nil), st.Write...), append([]byte(nil), st.Payload...)
		r.events = append(r.events, st)
	}
	if st.Event == EventHead {
		r.m.Accept(&r.p.cfg, r.kind, false, 1)
	}
}

// closeCode is the code of the close frame that ends b, or 0.
func closeCode(b []byte) int {
	for len(b) >= 2 {
		n, hl := int(b[1]&0x7f), 2
		if n == 126 {
			n, hl = int(binary.BigEndian.Uint16(b[2:])), 4
		}
		if len(b) < hl+n {
			return 0
		}
		if b[0] == 0x88 && n >= 2 {
			return int(binary.BigEndian.Uint16(b[hl:]))
		}
		b = b[hl+n:]
	}
	return 0
}

// Finding 1 of issue 11: a frame over the limit whose payload, still
// arriving, holds bytes that look like a close (88 80 00 00 00 00). The
// machine answers 1009, discards exactly the announced remainder, and only
// the client's real close behind it finishes the connection; however the
// bytes are cut into reads.
func TestRefusedFrameDiscardsItsRemainder(t *testing.T) {
	big := bytes.Repeat([]byte{0x88, 0x80, 0, 0, 0, 0}, 60)
	in := append(masked(0x81, big), masked(0x88, []byte{0x03, 0xe8})...)
	for chunk := 1; chunk <= len(in); chunk++ {
		r := newRun(testCfg, WebSocket, true)
		r.feed(t, in, chunk)
		if got := closeCode(r.out); got != CloseTooBig || !bytes.Equal(r.out, CloseFrame(CloseTooBig, "message too big")) {
			t.Fatalf("chunks of %d: wrote %x, want only a 1009 close", chunk, r.out)
		}
		if len(r.events) != 2 || r.events[0].Event != EventClosing || r.events[1].Event != EventClosed || r.m.Phase() != Closed {
			t.Fatalf("chunks of %d: events %+v phase %d, want closing then closed", chunk, r.events, r.m.Phase())
		}
		if r.events[0].Deadline != 1+int64(testCfg.CloseTimeout) {
			t.Fatalf("close deadline %d", r.events[0].Deadline)
		}
	}
	// Without the client's close, the refused frame's remainder is all
	// discarded and the machine waits in Closing with nothing kept.
	r := newRun(testCfg, WebSocket, true)
	r.feed(t, masked(0x81, big)[:100], 7)
	if r.m.Phase() != Closing || r.m.x == nil || r.m.x.skip != uint64(len(big)+8-100) || len(r.m.x.pending) != 0 {
		t.Fatalf("phase %d state %+v", r.m.Phase(), r.m.x)
	}
}

// Finding 2 of issue 11: 1012-1014 are registered codes a client may send
// (echoed); 1004-1006 and 1015 are reserved (1002), as is a one-byte
// payload; a reason that is not UTF-8 is 1007.
func TestClientCloseCodes(t *testing.T) {
	for _, c := range []struct {
		payload []byte
		want    int
	}{
		{nil, 1000}, {[]byte{0x03, 0xe8}, 1000}, {[]byte{0x03, 0xf4}, 1012}, {[]byte{0x03, 0xf5}, 1013},
		{[]byte{0x03, 0xf6}, 1014}, {[]byte{0x0f, 0xa0}, 4000}, {[]byte{0x03, 0xec}, 1002}, {[]byte{0x03, 0xed}, 1002},
		{[]byte{0x03, 0xee}, 1002}, {[]byte{0x03, 0xf7}, 1002}, {[]byte{0x03}, 1002}, {[]byte{0x03, 0xe8, 0xff}, 1007},
		{[]byte{0x13, 0x88}, 1002},
	} {
		in := masked(0x88, c.payload)
		for chunk := 1; chunk <= len(in); chunk++ {
			r := newRun(testCfg, WebSocket, true)
			r.feed(t, in, chunk)
			if len(r.events) != 1 || r.events[0].Event != EventClosing || !r.events[0].Done || r.events[0].Code != c.want || closeCode(r.out) != c.want {
				t.Fatalf("close %x in chunks of %d: events %+v wrote %x, want %d", c.payload, chunk, r.events, r.out, c.want)
			}
		}
	}
}

func TestFramesAndMessages(t *testing.T) {
	euro := []byte("€") // e2 82 ac
	for _, c := range []struct {
		name string
		in   []byte
		out  []byte // written, exactly
		text string // the Text event's payload
		code int    // the close started, 0: none
	}{
		{"ping", masked(0x89, []byte("hi")), []byte{0x8a, 2, 'h', 'i'}, "", 0},
		{"text", masked(0x81, []byte(`{"type":"token"}`)), nil, `{"type":"token"}`, 0},
		{"binary ignored", masked(0x82, []byte{0xff}), nil, "", 0},
		{"fragments across a rune", append(masked(0x01, euro[:1]), masked(0x80, euro[1:])...), nil, "", 0},
		{"bad utf-8", masked(0x81, []byte{0xff}), nil, "", 1007},
		{"bad utf-8 fragment", append(masked(0x01, euro[:1]), masked(0x80, []byte{'a'})...), nil, "", 1007},
		{"unmasked", []byte{0x81, 0x01, 'a'}, nil, "", 1002},
		{"rsv without deflate", masked(0xc1, []byte("x")), nil, "", 1002},
		{"reserved opcode", masked(0x83, nil), nil, "", 1002},
		{"fragmented ping", masked(0x09, nil), nil, "", 1002},
		{"continuation alone", masked(0x80, []byte("x")), nil, "", 1002},
		{"new message inside", append(masked(0x01, []byte("x")), masked(0x81, []byte("y"))...), nil, "", 1002},
		{"fragments over the limit", append(masked(0x01, make([]byte, 150)), masked(0x80, make([]byte, 60))...), nil, "", 1009},
		{"top bit length", []byte{0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, nil, "", 1002},
	} {
		for chunk := 1; chunk <= len(c.in); chunk++ {
			r := newRun(testCfg, WebSocket, true)
			r.feed(t, append([]byte(nil), c.in...), chunk)
			out := r.out
			if c.code != 0 {
				if closeCode(out) != c.code || len(r.events) != 1 || r.events[0].Code != c.code || r.m.Phase() != Closing {
					t.Fatalf("%s in chunks of %d: wrote %x events %+v, want a %d close", c.name, chunk, out, r.events, c.code)
				}
				continue
			}
			if !bytes.Equal(out, c.out) || r.m.Phase() != Open {
				t.Fatalf("%s in chunks of %d: wrote %x phase %d, want %x", c.name, chunk, out, r.m.Phase(), c.out)
			}
			if c.text != "" && (len(r.events) != 1 || r.events[0].Event != EventText || string(r.events[0].Payload) != c.text) {
				t.Fatalf("%s: events %+v", c.name, r.events)
			}
			if r.m.x != nil {
				t.Fatalf("%s in chunks of %d: rare state kept after whole frames: %+v", c.name, chunk, r.m.x)
			}
		}
	}
}

func TestHead(t *testing.T) {
	head := "GET /ws?uid=a HTTP/1.1\r\nHost: h\r\n\r\n"
	frame := masked(0x89, nil)
	in := append([]byte(head), frame...)
	for chunk := 1; chunk <= len(in); chunk++ {
		r := newRun(testCfg, WebSocket, false)
		r.feed(t, in, chunk)
		if len(r.events) != 1 || r.events[0].Event != EventHead || string(r.events[0].Payload) != head {
			t.Fatalf("chunks of %d: events %+v", chunk, r.events)
		}
		if r.m.Phase() != Open || !bytes.Equal(r.out, []byte{0x8a, 0}) {
			t.Fatalf("chunks of %d: the ping behind the head: wrote %x", chunk, r.out)
		}
	}
	r := newRun(testCfg, WebSocket, false)
	r.feed(t, []byte("GET / HTTP/1.1\r\n"+strings.Repeat("X: y\r\n", 100)), 64)
	if len(r.events) != 1 || r.events[0].Event != EventRefused || r.events[0].Code != 431 || r.m.Phase() != Closed {
		t.Fatalf("a head over MaxHeaderBytes: %+v", r.events)
	}
	cfg := testCfg
	cfg.AcceptProxy = true
	proxied := "PROXY TCP4 192.0.2.1 192.0.2.2 5000 80\r\n" + head
	for chunk := 1; chunk <= len(proxied); chunk++ {
		r := newRun(cfg, WebSocket, false)
		r.kind = 99 // stay awaiting the answer: check what the head carries
		r.feed(t, []byte(proxied), chunk)
		if len(r.events) != 1 || string(r.events[0].Payload) != head {
			t.Fatalf("PROXY in chunks of %d: %+v", chunk, r.events)
		}
	}
	r = newRun(cfg, WebSocket, false)
	p := r.p
	st := p.Feed(&r.m, []byte("PROXY TCP4 192.0.2.1 192.0.2.2 5000 80\r\nGET"), 1)
	if a, ok := r.m.Client(); !ok || a.String() != "192.0.2.1:5000" || st.Event != EventNone {
		t.Fatalf("client %v %v step %+v", a, ok, st)
	}
	r = newRun(cfg, WebSocket, false)
	r.feed(t, []byte(head), 100)
	if len(r.events) != 1 || r.events[0].Event != EventRefused || r.events[0].Code != 400 {
		t.Fatalf("no PROXY header: %+v", r.events)
	}
}

// The deadlines: the handshake's, heartbeats and the idle check, a
// long-poll's, the close wait.
func TestDeadlines(t *testing.T) {
	c := &testCfg
	var m Machine
	if st := m.Start(c, 10); st.Deadline != 10+int64(c.HandshakeTimeout) {
		t.Fatalf("handshake deadline %d", st.Deadline)
	}
	if st := m.Tick(c, 10+int64(c.HandshakeTimeout)); st.Event != EventClosed || m.Phase() != Closed {
		t.Fatalf("handshake timeout: %+v", st)
	}
	if st := m.Accept(c, WebSocket, false, 20); st.Deadline != 0 || m.Phase() != Closed {
		t.Fatal("a closed machine opened again")
	}

	m = Machine{}
	st := m.Accept(c, WebSocket, false, 0)
	if st.Deadline != int64(c.PingInterval) {
		t.Fatalf("first heartbeat at %d", st.Deadline)
	}
	st = m.Tick(c, st.Deadline)
	if !bytes.Equal(st.Write, WSHeartbeat) || st.Deadline != 2*int64(c.PingInterval) {
		t.Fatalf("heartbeat %+v", st)
	}
	p := NewProtocol(*c)
	p.Feed(&m, masked(0x8a, nil), int64(c.PingInterval)) // a pong moves lastSeen
	if st = m.Tick(c, int64(c.IdleTimeout)); st.Event != EventNone {
		t.Fatalf("idle too early: %+v", st)
	}
	at := int64(c.PingInterval + c.IdleTimeout)
	st = m.Tick(c, at)
	if st.Event != EventClosing || st.Code != CloseIdle || closeCode(st.Write) != CloseIdle || st.Deadline != at+int64(c.CloseTimeout) {
		t.Fatalf("idle: %+v", st)
	}
	if st = m.Tick(c, st.Deadline); st.Event != EventClosed || m.Phase() != Closed {
		t.Fatalf("close wait: %+v", st)
	}

	m = Machine{}
	st = m.Accept(c, SSE, false, 0)
	if st = m.Tick(c, st.Deadline); !bytes.Equal(st.Write, SSEPing) {
		t.Fatalf("SSE heartbeat %+v", st)
	}
	m = Machine{}
	st = m.Accept(c, Poll, false, 0)
	if st.Deadline != int64(c.PollTimeout) {
		t.Fatalf("poll deadline %d", st.Deadline)
	}
	if st = m.Tick(c, st.Deadline); st.Event != EventClosing || string(st.Write) != "[]" || st.Code != 0 {
		t.Fatalf("poll timeout %+v", st)
	}
}

// Finding 4 of issue 11: a long-poll whose client shut down its sending
// side keeps waiting and gets the complete answer; an SSE stream ends with
// its close event; a WebSocket FIN ends the connection.
func TestHalfClose(t *testing.T) {
	c := &testCfg
	var m Machine
	m.Accept(c, Poll, false, 0)
	if st := m.ReadEOF(c, false, 1); st.Event != EventNone || !m.PeerDone() || m.Phase() != Open {
		t.Fatalf("half-closed poll: %+v", st)
	}
	st := m.Answer(c, []byte(`{"seq":1,"data":2}`), 2)
	var arr []map[string]int
	if st.Event != EventClosing || json.Unmarshal(st.Write, &arr) != nil || len(arr) != 1 || arr[0]["seq"] != 1 {
		t.Fatalf("answer %q", st.Write)
	}
	if st = m.ReadEOF(c, true, 3); st.Event != EventClosed {
		t.Fatalf("the end of stream after the answer: %+v", st)
	}

	m = Machine{}
	m.Accept(c, SSE, false, 0)
	st = m.ReadEOF(c, false, 1)
	if st.Event != EventClosing || st.Code != CloseNormal || string(st.Write) != "event: close\ndata: {\"close\":1000,\"reason\":\"the client closed its side\"}\n\n" {
		t.Fatalf("half-closed SSE: %+v %q", st, st.Write)
	}
	// The client's side is done already: the next end of stream (EPOLLHUP
	// once the edge shut down its side) finishes it.
	if st = m.ReadEOF(c, true, 2); st.Event != EventClosed {
		t.Fatalf("second end of stream: %+v", st)
	}
	// A connection closing by the edge's choice, with bytes queued, stays
	// for the first end of stream.
	m = Machine{}
	m.Accept(c, WebSocket, false, 0)
	m.Close(c, 4002, "replaced", 1)
	if st = m.ReadEOF(c, true, 2); st.Event != EventNone || m.Phase() != Closing {
		t.Fatalf("closing with bytes queued: %+v", st)
	}
	if st = m.ReadEOF(c, true, 3); st.Event != EventClosed {
		t.Fatalf("second end of stream: %+v", st)
	}

	m = Machine{}
	m.Accept(c, WebSocket, false, 0)
	if st = m.ReadEOF(c, false, 1); st.Event != EventClosed || st.Code != 0 {
		t.Fatalf("WebSocket FIN: %+v", st)
	}
}

func TestCloseByServer(t *testing.T) {
	c := &testCfg
	for _, k := range []struct {
		kind Transport
		want string
	}{
		{WebSocket, string(CloseFrame(4003, "moved"))},
		{SSE, "event: close\ndata: {\"close\":4003,\"reason\":\"moved\"}\n\n"},
		{Poll, `[{"close":4003,"reason":"moved"}]`},
	} {
		var m Machine
		m.Accept(c, k.kind, false, 0)
		st := m.Close(c, 4003, "moved", 5)
		if st.Event != EventClosing || string(st.Write) != k.want || st.Deadline != 5+int64(c.CloseTimeout) {
			t.Fatalf("%d: %+v %q", k.kind, st, st.Write)
		}
		if st = m.Close(c, 1000, "", 6); st.Event != EventNone {
			t.Fatalf("closed twice: %+v", st)
		}
	}
	if b := CloseFrame(1000, strings.Repeat("é", 100)); len(b) > 127 || closeCode(b) != 1000 {
		t.Fatalf("long reason: %d bytes", len(b))
	}
}

// A connection pays for its Machine while idle: three bytes of phase,
// transport and flags, lastSeen, and one pointer (nil while idle).
func TestMachineSize(t *testing.T) {
	if got := unsafe.Sizeof(Machine{}); got != 24 {
		t.Fatalf("Machine is %d bytes, want 24", got)
	}
	r := newRun(testCfg, WebSocket, true)
	r.feed(t, append(masked(0x89, nil), masked(0x01, []byte("a"))[:3]...), 100)
	if r.m.x == nil {
		t.Fatal("a partial frame left no state")
	}
	r.feed(t, append(masked(0x01, []byte("a"))[3:], masked(0x80, []byte("b"))...), 100)
	if r.m.x != nil {
		t.Fatalf("state kept once the message is whole: %+v", r.m.x)
	}
}
