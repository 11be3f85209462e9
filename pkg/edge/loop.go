package edge

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net/http"
	"time"
	"unicode/utf8"

	"github.com/gobwas/ws"
	"golang.org/x/sys/unix"

	"github.com/pushcluster/push/pkg/evloop"
	"github.com/pushcluster/push/pkg/httphead"
	"github.com/pushcluster/push/pkg/poller"
	"github.com/pushcluster/push/pkg/proxyproto"
	"github.com/pushcluster/push/pkg/rawtcp"
)

// loop is one event loop (package evloop: an epoll instance, the
// goroutine that waits on it, accept batching) with the edge's own state.
// Reads, handshakes and frame parsing for its connections run on the
// loop's goroutine, on its scratch buffer, so an idle connection owns no
// buffer.
type loop struct {
	id   int
	s    *Server
	ev   *evloop.Loop
	poll *poller.Poller // ev.Poll
	buf  []byte         // read scratch, owned by this goroutine
	hs   handshake
	// Inflating compressed client messages (deflate.go): one
	// decompressor and output buffer per loop, made on first use.
	inf  io.ReadCloser
	zin  *inflateInput
	zout []byte
}

func newLoop(s *Server, id int) (*loop, error) {
	size := 64 << 10
	if need := 2*s.cfg.MaxMessageBytes + 64; need > size {
		size = need
	}
	if need := 2 * s.cfg.MaxHeaderBytes; need > size {
		size = need
	}
	if s.cfg.AcceptProxy {
		// The longest PROXY header and a whole request head behind it.
		size = max(size, proxyproto.MaxV2Len+s.cfg.MaxHeaderBytes+1)
	}
	l := &loop{id: id, s: s, buf: make([]byte, size)}
	ev, err := evloop.New(id, l)
	if err != nil {
		return nil, err
	}
	l.ev, l.poll = ev, ev.Poll
	l.hs.init(s)
	return l, nil
}

func (l *loop) run() {
	if err := l.ev.Run(); err != nil {
		l.s.log.Error("event loop", "loop", l.id, "err", err)
	}
}

// Event handles readiness of a connection's descriptor (evloop.Handler).
func (l *loop) Event(fd int, gen uint32, ev poller.Event) {
	s := l.s
	c := s.table.Load(fd)
	if c == nil || c.gen != gen {
		return // stale event for a closed descriptor
	}
	c.mu.Lock()
	if c.state == stClosed {
		c.mu.Unlock()
		return
	}
	if ev&poller.Write != 0 && c.out != nil {
		s.flushLocked(c)
	}
	if ev&(poller.Read|poller.Hup|poller.Err) != 0 && c.state != stClosed {
		l.readLocked(c)
	}
	if c.state != stClosed {
		want := c.interest(c.out != nil && (c.shutAfter || s.serving()))
		c.wantWrite = want&poller.Write != 0
		if err := l.poll.Resume(fd, c.gen, want); err != nil {
			s.closeNowLocked(c, -1)
		}
	}
	s.release(c)
}

// interest is what c's one-shot registration asks for: input until the
// client shut down its sending side (after that EPOLLIN would report the
// end of stream again and again; the kernel still reports EPOLLHUP once
// the edge has shut down its own side, and EPOLLERR on a reset), and
// output when write is set.
func (c *conn) interest(write bool) poller.Event {
	var ev poller.Event
	if !c.peerDone {
		ev = poller.Read
	}
	if write {
		ev |= poller.Write
	}
	return ev
}

// halfClosedLocked handles the end of the client's stream (a FIN, as
// from shutdown(SHUT_WR)) and reports whether the connection stays open.
// HTTP lets a client close its sending side once the request is out and
// still read the answer (RFC 9112 section 9.6), so:
//   - a held long-poll keeps waiting and gets the answer docs/protocol.md
//     promises: the JSON array with the first message, or [] at
//     PollTimeout;
//   - an SSE stream has no more request to wait for: it ends with its
//     close event (1000), like any stream the edge ends;
//   - a connection that is already closing (a long-poll answered, a close
//     frame or event queued) stays until its queued bytes are out; once
//     the edge has shut down its side too the kernel reports EPOLLHUP and
//     the next end of stream closes it.
//
// A WebSocket client that sends a FIN without a close frame is gone (RFC
// 6455 section 7.1.5, 1006): closed at once.
func (l *loop) halfClosedLocked(c *conn) bool {
	first := !c.peerDone
	c.peerDone = true
	switch {
	case c.state == stOpen && c.kind == kindPoll:
		return true
	case c.state == stOpen && c.kind == kindSSE:
		l.s.closeWithLocked(c, CloseNormal, "the client closed its side")
		return c.state != stClosed
	case c.state == stClosing:
		return first && c.out != nil
	}
	return false
}

// readLocked drains the socket (bounded per event, so one busy client does
// not starve the others; the one-shot registration fires again if more is
// pending).
func (l *loop) readLocked(c *conn) {
	s := l.s
	for i := 0; i < 4 && c.state != stClosed; i++ {
		off := 0
		if c.rd != nil && len(c.rd.pending) > 0 {
			off = copy(l.buf, c.rd.pending)
			c.rd.pending = nil
		}
		n, err := rawtcp.Read(int(c.fd), l.buf[off:])
		if n <= 0 {
			if off > 0 {
				c.rs().pending = append([]byte(nil), l.buf[:off]...)
			}
			if err == unix.EAGAIN || err == unix.EINTR {
				return
			}
			if n == 0 && err == nil && l.halfClosedLocked(c) {
				return
			}
			// EOF or reset: the client is gone, no close frame to send.
			code := 0
			if err != nil {
				code = -1
			}
			s.closeNowLocked(c, code)
			return
		}
		data := l.buf[:off+n]
		var used int
		if c.state == stHandshake {
			used = l.handshakeLocked(c, data)
			if c.state == stOpen && c.kind == kindWS && used < len(data) {
				// Frames sent right behind the head (a client that did not
				// wait for the 101, or a router replaying both at once).
				used += l.framesLocked(c, data[used:])
			}
		} else if c.kind != kindWS {
			used = len(data) // an SSE or long-poll client has nothing more to say
		} else {
			c.lastSeen = time.Now().UnixNano()
			s.m.bytesIn.Add(float64(n))
			used = l.framesLocked(c, data)
		}
		if c.state == stClosed {
			return
		}
		if rest := data[used:]; len(rest) > 0 {
			c.rs().pending = append([]byte(nil), rest...)
		} else {
			c.dropReadState()
		}
		if n < len(l.buf)-off {
			return // the socket is drained
		}
	}
}

// framesLocked parses and handles complete client frames in data and
// returns how many bytes it consumed.
//
// A frame the edge refuses (a header that breaks RFC 6455: 1002; over
// MaxMessageBytes: 1009) starts the closing handshake, and the rest of
// that frame, exactly as long as its header announced, is discarded as it
// arrives (readState.skip), never parsed: bytes inside a refused payload
// that look like a frame (88 80 00 00 00 00, a close) must not end the
// connection before the client has read the edge's close frame, or the
// kernel resets it. While closing, every frame but the client's close is
// discarded the same way, without buffering. Discarding ends when the
// client's close arrives or at CloseTimeout, so it costs bounded time.
func (l *loop) framesLocked(c *conn, data []byte) int {
	s := l.s
	used := 0
	if c.rd != nil && c.rd.skip > 0 {
		n := min(uint64(len(data)), c.rd.skip)
		c.rd.skip -= n
		used = int(n)
	}
	for c.state == stOpen || c.state == stClosing {
		d := data[used:]
		if len(d) < 2 {
			return used
		}
		b0, b1 := d[0], d[1]
		fin, rsv, op := b0&0x80 != 0, b0&0x70, ws.OpCode(b0&0x0f)
		masked := b1&0x80 != 0
		length := uint64(b1 & 0x7f)
		hl := 2
		switch length {
		case 126:
			if len(d) < 4 {
				return used
			}
			length, hl = uint64(binary.BigEndian.Uint16(d[2:])), 4
		case 127:
			if len(d) < 10 {
				return used
			}
			length, hl = binary.BigEndian.Uint64(d[2:]), 10
		}
		if masked {
			hl += 4
		}
		if len(d) < hl {
			return used
		}
		discard := false
		if c.state == stClosing {
			// Waiting for the client's close: anything else is skipped.
			discard = op != ws.OpClose || !masked || length > 125
		} else if msg := l.checkHeader(c, fin, rsv, op, masked, length); msg != "" {
			code := CloseProtocol
			if msg == errTooBig {
				code = CloseTooBig
			}
			s.closeWithLocked(c, code, msg)
			discard = true
		}
		if discard {
			total := uint64(hl) + length
			if total < length { // a length with its top bit set: skip until the close wait ends
				total = ^uint64(0)
			}
			if uint64(len(d)) >= total {
				used += int(total)
				continue
			}
			if c.state != stClosed {
				c.rs().skip = total - uint64(len(d))
			}
			return len(data)
		}
		if uint64(len(d)) < uint64(hl)+length {
			return used
		}
		payload := d[hl : hl+int(length)]
		ws.Cipher(payload, [4]byte(d[hl-4:hl]), 0)
		used += hl + int(length)
		s.m.msgsIn.Inc()
		l.handleFrame(c, fin, rsv&rsv1 != 0, op, payload)
	}
	return len(data)
}

const errTooBig = "message too big"

// checkHeader applies RFC 6455's rules to a frame header; it returns the
// close reason for a violation, or "".
func (l *loop) checkHeader(c *conn, fin bool, rsv byte, op ws.OpCode, masked bool, length uint64) string {
	switch {
	case !masked:
		return "unmasked client frame"
	case length > 1<<63-1:
		return "payload length with its most significant bit set" // RFC 6455 section 5.2
	case rsv != 0 && (rsv != rsv1 || !c.deflate || (op != ws.OpText && op != ws.OpBinary)):
		// With permessage-deflate, RSV1 marks the first frame of a
		// compressed message, and only that frame.
		return "reserved bits set"
	case op.IsControl():
		switch {
		case op > ws.OpPong:
			return "reserved opcode"
		case !fin:
			return "fragmented control frame"
		case length > 125:
			return "control frame over 125 bytes"
		}
	case op > ws.OpBinary:
		return "reserved opcode"
	default:
		frag := c.rd != nil && c.rd.frag
		if op == ws.OpContinuation && !frag {
			return "continuation without a message"
		}
		if op != ws.OpContinuation && frag {
			return "new message inside a fragmented one"
		}
		total := length
		if frag {
			total += uint64(c.rd.fragLen)
		}
		if total > uint64(l.s.cfg.MaxMessageBytes) {
			return errTooBig
		}
	}
	return ""
}

// handleFrame acts on one complete client frame; compressed: its RSV1 bit
// (the first frame of a compressed message, see checkHeader).
func (l *loop) handleFrame(c *conn, fin, compressed bool, op ws.OpCode, p []byte) {
	s := l.s
	switch op {
	case ws.OpPing:
		if c.state == stOpen {
			s.writeLocked(c, frame(ws.OpPong, p), nil)
		}
	case ws.OpPong:
		// lastSeen already moved; that is all a pong is for.
	case ws.OpClose:
		l.onClose(c, p)
	case ws.OpText, ws.OpBinary, ws.OpContinuation:
		if c.state != stOpen {
			return
		}
		text := op == ws.OpText || (op == ws.OpContinuation && c.rd.fragText)
		if op != ws.OpContinuation {
			if fin {
				if compressed {
					l.inflatedMessage(c, text, p)
					return
				}
				if text && !utf8.Valid(p) {
					s.closeWithLocked(c, CloseInvalidData, "invalid UTF-8")
				} else if text {
					s.clientTextLocked(c, p) // a token refresh; anything else is ignored
				}
				return
			}
			r := c.rs()
			r.frag, r.fragText, r.fragLen, r.fragZ = true, text, 0, compressed
		}
		r := c.rd
		r.fragLen += len(p)
		if r.fragZ {
			// Compressed fragments are kept (within MaxMessageBytes, as
			// checkHeader enforces on their total) and inflated whole.
			r.zbuf = append(r.zbuf, p...)
			if fin {
				z := r.zbuf
				r.frag, r.fragZ, r.zbuf = false, false, nil
				l.inflatedMessage(c, r.fragText, z)
			}
			return
		}
		if text {
			carry, ok := utf8Tail(r.carry, p, fin)
			if !ok {
				s.closeWithLocked(c, CloseInvalidData, "invalid UTF-8")
				return
			}
			r.carry = carry
		}
		if fin {
			r.frag, r.carry = false, nil
		}
	}
}

// inflatedMessage checks a whole compressed client message: it must
// inflate within MaxMessageBytes (1009) to valid DEFLATE (1007) and, as
// text, to valid UTF-8 (1007). A text message is then read like an
// uncompressed one (a token renewal; anything else is ignored): a browser
// that negotiated compression may compress what it sends.
func (l *loop) inflatedMessage(c *conn, text bool, z []byte) {
	s := l.s
	p, reason := l.inflate(z)
	switch {
	case reason == errTooBig:
		s.closeWithLocked(c, CloseTooBig, reason)
	case reason != "":
		s.closeWithLocked(c, CloseInvalidData, reason)
	case text && !utf8.Valid(p):
		s.closeWithLocked(c, CloseInvalidData, "invalid UTF-8")
	case text:
		s.clientTextLocked(c, p)
	}
}

// onClose answers a client's close frame (echoing its code) or completes a
// close the edge started.
func (l *loop) onClose(c *conn, p []byte) {
	s := l.s
	if c.state == stClosing {
		s.closeNowLocked(c, -1)
		return
	}
	code, reason := CloseNormal, ""
	switch {
	case len(p) == 1:
		code, reason = CloseProtocol, "close payload of one byte"
	case len(p) >= 2:
		got := int(binary.BigEndian.Uint16(p))
		switch {
		case !validCloseCode(got):
			code, reason = CloseProtocol, "invalid close code"
		case !utf8.Valid(p[2:]):
			code, reason = CloseInvalidData, "invalid UTF-8 in close reason"
		default:
			code = got
		}
	}
	s.closeWithLocked(c, code, reason)
	// The client already sent its close: nothing more to wait for once ours
	// is out.
	if c.state == stClosing && c.out == nil {
		s.closeNowLocked(c, -1)
	}
}

// AcceptError counts a failed accept (evloop.Handler).
func (l *loop) AcceptError(err error, temporary bool) {
	l.s.m.acceptErrors.Inc()
	if temporary {
		l.s.log.Warn("accept", "err", err)
	} else {
		l.s.log.Error("accept", "err", err)
	}
}

// Accept starts a new connection's handshake right here (evloop.Handler):
// with TCP_DEFER_ACCEPT the request head has usually arrived already, so
// most upgrades finish without ever waiting in epoll.
func (l *loop) Accept(_ *evloop.Loop, _ *rawtcp.Listener, fd int) {
	s := l.s
	if !s.table.Fits(fd) || s.draining.Load() {
		unix.Close(fd)
		return
	}
	now := time.Now()
	c := &conn{fd: int32(fd), gen: s.table.Gen(), loop: uint8(l.id), lastSeen: now.UnixNano()}
	c.tm.Value = c
	s.table.Store(fd, c)
	s.m.handshaking.Inc()
	s.schedule(c, now.Add(s.cfg.HandshakeTimeout))
	c.mu.Lock()
	l.readLocked(c)
	if c.state != stClosed {
		c.wantWrite = c.out != nil
		if err := l.poll.Start(fd, c.gen, c.interest(c.wantWrite)); err != nil {
			s.log.Error("epoll add", "err", err)
			s.closeNowLocked(c, -1)
		} else {
			c.polled = true
		}
	}
	s.release(c)
}

var headEnd = []byte("\r\n\r\n")

// handshakeLocked waits for a complete request head (bounded by
// MaxHeaderBytes and the handshake deadline), then upgrades or rejects.
func (l *loop) handshakeLocked(c *conn, data []byte) int {
	s := l.s
	used := 0
	if s.cfg.AcceptProxy && !c.proxied {
		h, n, err := proxyproto.Parse(data)
		switch {
		case errors.Is(err, proxyproto.ErrIncomplete):
			return 0 // wait for the rest, bounded by the handshake deadline
		case err != nil:
			s.m.hsBadRequest.Inc()
			l.reject(c, 400, "expected a PROXY protocol header: "+err.Error())
			return len(data)
		}
		c.proxied = true
		c.rs().client = h.Source // kept while the head is incomplete
		data, used = data[n:], n
	}
	end := bytes.Index(data, headEnd)
	if end < 0 {
		if len(data) >= s.cfg.MaxHeaderBytes {
			s.m.hsTooLarge.Inc()
			l.reject(c, 431, "request head too large")
		}
		return used
	}
	head := data[:end+4]
	if len(head) > s.cfg.MaxHeaderBytes {
		s.m.hsTooLarge.Inc()
		l.reject(c, 431, "request head too large")
		return used + len(data)
	}
	if !l.admitClient(c) {
		l.reject(c, http.StatusTooManyRequests, "too many new connections from this address")
		return used + len(data)
	}
	l.hs.serveLocked(c, head)
	return used + len(head)
}

// reject answers a handshake with an HTTP error and closes.
func (l *loop) reject(c *conn, status int, reason string) {
	l.s.refuseLocked(c, &httphead.Error{Status: status, Reason: reason})
}
