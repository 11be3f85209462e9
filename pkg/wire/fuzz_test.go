package wire

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"
)

// checker follows what a machine writes and the phases it goes through and
// fails on anything the protocol forbids.
type checker struct {
	t      *testing.T
	kind   Transport
	phase  Phase
	ws     []byte // WebSocket bytes written so far, parsed as they complete
	closed bool   // a close frame, close event or poll answer was written
	writes int
}

func (c *checker) step(m *Machine, st Step, in int) {
	t := c.t
	if st.Used < 0 || st.Used > in {
		t.Fatalf("used %d of %d bytes", st.Used, in)
	}
	if m.Phase() < c.phase {
		t.Fatalf("phase went back from %d to %d", c.phase, m.Phase())
	}
	c.phase = m.Phase()
	if st.Event == EventText && !utf8.Valid(st.Payload) {
		t.Fatalf("text event with invalid UTF-8 %x", st.Payload)
	}
	if st.Event == EventClosing {
		if m.Phase() != Closing || len(st.Write) == 0 {
			t.Fatalf("closing step %+v in phase %d", st, m.Phase())
		}
		if st.Code != 0 && !ValidCloseCode(st.Code) && st.Code != CloseIdle {
			t.Fatalf("close code %d", st.Code)
		}
	}
	if len(st.Write) == 0 {
		return
	}
	if c.closed && (c.kind != WebSocket || c.phase == Closed) {
		t.Fatalf("wrote %q after the end", st.Write)
	}
	c.writes++
	switch c.kind {
	case SSE:
		w := string(st.Write)
		if !strings.HasSuffix(w, "\n\n") || (!strings.HasPrefix(w, "data: ") && !strings.HasPrefix(w, "event: close\ndata: ")) {
			t.Fatalf("SSE write %q", w)
		}
		c.closed = c.closed || st.Event == EventClosing
		var v any
		if json.Unmarshal([]byte(w[strings.Index(w, "data: ")+6:]), &v) != nil {
			t.Fatalf("SSE data %q is not JSON", w)
		}
	case Poll:
		var v []any
		if json.Unmarshal(st.Write, &v) != nil || st.Event != EventClosing {
			t.Fatalf("poll answer %q", st.Write)
		}
		c.closed = true
	default:
		c.ws = append(c.ws, st.Write...)
		c.frames(st)
	}
}

// frames checks the complete server frames written so far: unmasked,
// final, text, close, ping or pong, control frames within 125 bytes, a
// close frame with a code a client may act on, and nothing after it.
func (c *checker) frames(st Step) {
	t := c.t
	b := c.ws
	for len(b) >= 2 {
		op, n, hl := b[0]&0x0f, int(b[1]&0x7f), 2
		if n == 126 {
			n, hl = int(binary.BigEndian.Uint16(b[2:])), 4
		}
		if b[0]&0xf0 != 0x80 || b[1]&0x80 != 0 || n == 127 || (op != 1 && op != 8 && op != 9 && op != 10) {
			t.Fatalf("bad server frame %x", b)
		}
		if len(b) < hl+n {
			t.Fatalf("partial frame written: %x", b)
		}
		p := b[hl : hl+n]
		if op >= 8 && n > 125 {
			t.Fatalf("control frame of %d bytes", n)
		}
		if op == 1 && !utf8.Valid(p) {
			t.Fatalf("text frame %x", p)
		}
		if c.closed {
			t.Fatalf("frame %x after the close frame", b)
		}
		if op == 8 {
			code := int(binary.BigEndian.Uint16(p))
			if n < 2 || !utf8.Valid(p[2:]) || (!ValidCloseCode(code) && code != CloseIdle) || st.Event != EventClosing || code != st.Code {
				t.Fatalf("close frame %x for step %+v", p, st)
			}
			c.closed = true
		}
		b = b[hl+n:]
	}
	c.ws = b
}

// FuzzMachine drives a machine the way the edge's loop does, with input
// cut into reads, deadlines and ends of stream at any point, and checks
// that it never panics, never goes back a phase, never uses more input
// than it got, does bounded work per byte, and writes only valid frames
// (WebSocket), events (SSE) or one JSON array (long-poll), a close always
// with a code a client may see, nothing after it. Seeded with issue 11's
// findings: a refused frame whose remainder holds 88 80 00 00 00 00,
// client close codes 1012-1015, half-closed long-poll and SSE, the
// handshake and close deadlines.
//
// mode: bits 0-1 the transport a head is accepted as, bit 2 compression,
// bit 3 open from the start (else a request head comes first), bit 4 a
// PROXY header first. Each byte of ops: low 2 bits the action (0: feed
// the next 1-64 bytes of data, 1: a deadline passes, 2: the client's end
// of stream, 3: the server closes with 4003); the rest its size.
func FuzzMachine(f *testing.F) {
	head := "GET /ws?uid=a HTTP/1.1\r\nHost: h\r\n\r\n"
	big := bytes.Repeat([]byte{0x88, 0x80, 0, 0, 0, 0}, 60)
	feed := func(n int) byte { return byte((n-1)<<2) | 0 }
	for _, s := range []struct {
		mode byte
		data []byte
		ops  []byte
	}{
		{8, append(masked(0x81, big), masked(0x88, []byte{0x03, 0xe8})...), []byte{feed(3), feed(64), feed(7), feed(64), feed(64), feed(64), feed(64), feed(64), feed(64)}},
		{8, masked(0x88, []byte{0x03, 0xf4}), nil},
		{8, masked(0x88, []byte{0x03, 0xf6}), []byte{feed(1), feed(1), feed(1)}},
		{8, masked(0x88, []byte{0x03, 0xf7}), nil},
		{8, masked(0x88, []byte{0x03, 0xed}), nil},
		{8, append(masked(0x89, []byte("ping")), masked(0x01, []byte{0xe2})...), []byte{feed(10), 1 | 63<<2, 1 | 63<<2}},
		{8 | 2, nil, []byte{2, 1 | 63<<2}},                 // half-closed long-poll, then PollTimeout
		{8 | 1, nil, []byte{2, 2}},                         // half-closed SSE
		{0, []byte("GET /ws"), []byte{feed(7), 1 | 40<<2}}, // handshake deadline
		{0, append([]byte(head), masked(0x89, nil)...), nil},
		{16, append([]byte("PROXY TCP4 192.0.2.1 192.0.2.2 5000 80\r\n"), head...), nil},
		{8, []byte{0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, []byte{feed(5), 1 | 63<<2, 1 | 63<<2}}, // close deadline
		{8 | 4, append(masked(0xc1, []byte{0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00}), masked(0x8a, nil)...), nil},
		{8, masked(0x81, []byte("x")), []byte{3, feed(64)}},
	} {
		f.Add(s.mode, s.data, s.ops)
	}
	f.Fuzz(func(t *testing.T, mode byte, data, ops []byte) {
		cfg := testCfg
		cfg.AcceptProxy = mode&16 != 0
		p := NewProtocol(cfg)
		kind := Transport(mode & 3 % 3)
		var m Machine
		now := int64(1)
		if mode&8 != 0 {
			m.Accept(&cfg, kind, mode&4 != 0, now)
		}
		c := &checker{t: t, kind: kind, phase: m.Phase()}
		feedN := func(n int) {
			n = min(n, len(data))
			chunk := data[:n]
			data = data[n:]
			buf := append(m.Pending(), chunk...)
			used, calls := 0, 0
			for m.Phase() != Closed {
				calls++
				if calls > len(buf)+4 {
					t.Fatalf("%d steps for %d bytes", calls, len(buf))
				}
				st := p.Feed(&m, buf[used:], now)
				c.step(&m, *st, len(buf)-used)
				used += st.Used
				if st.Event == EventHead {
					m.Accept(&cfg, kind, mode&4 != 0, now)
					c.phase = m.Phase()
				}
				if st.Event == EventNone {
					break
				}
			}
			if m.Phase() != Closed {
				m.Keep(buf[used:])
			}
		}
		for _, op := range ops {
			arg := int(op >> 2)
			switch op & 3 {
			case 0:
				feedN(arg + 1)
			case 1:
				now += int64(arg) * int64(cfg.PingInterval) / 16
				c.step(&m, m.Tick(&cfg, now), 0)
			case 2:
				c.step(&m, m.ReadEOF(&cfg, arg&1 != 0, now), 0)
			case 3:
				c.step(&m, m.Close(&cfg, 4003, "moved", now), 0)
			}
		}
		for len(data) > 0 && m.Phase() != Closed {
			feedN(64)
		}
		// An SSE stream lives on heartbeats until the edge ends it.
		c.step(&m, m.Close(&cfg, 1001, "going away", now), 0)
		for i := 0; i < 3; i++ {
			now += int64(cfg.IdleTimeout + cfg.CloseTimeout + cfg.PollTimeout)
			c.step(&m, m.Tick(&cfg, now), 0)
		}
		if m.Phase() != Closed {
			t.Fatalf("phase %d after every deadline passed", m.Phase())
		}
	})
}
