package edge

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/http"
	"time"
	"unicode/utf8"

	"github.com/gobwas/ws"
	"golang.org/x/sys/unix"

	"github.com/pushcluster/push/pkg/poller"
	"github.com/pushcluster/push/pkg/proxyproto"
	"github.com/pushcluster/push/pkg/rawtcp"
)

// loop is one epoll instance and the goroutine that waits on it. Reads,
// handshakes and frame parsing for its connections run here, on the loop's
// scratch buffer, so an idle connection owns no buffer.
type loop struct {
	id   int
	s    *Server
	poll *poller.Poller
	buf  []byte // read scratch, owned by this goroutine
	hs   handshake
}

func newLoop(s *Server, id int) (*loop, error) {
	p, err := poller.New(256)
	if err != nil {
		return nil, err
	}
	size := 64 << 10
	if need := 2*s.cfg.MaxMessageBytes + 64; need > size {
		size = need
	}
	if need := 2 * s.cfg.MaxHeaderBytes; need > size {
		size = need
	}
	l := &loop{id: id, s: s, poll: p, buf: make([]byte, size)}
	l.hs.init(s)
	return l, nil
}

func (l *loop) run() {
	defer l.poll.Release()
	if err := l.poll.Run(l.onEvent); !errors.Is(err, poller.ErrClosed) {
		l.s.log.Error("event loop", "loop", l.id, "err", err)
	}
}

func (l *loop) onEvent(fd int, gen uint32, ev poller.Event) {
	s := l.s
	if gen == listenTag {
		if ln := s.listener(fd); ln != nil {
			l.acceptBatch(ln)
		}
		return
	}
	if fd >= len(s.table) {
		return
	}
	c := s.table[fd].Load()
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
		want := poller.Read
		if c.out != nil && (c.shutAfter || s.serving()) {
			want |= poller.Write
		}
		c.wantWrite = want&poller.Write != 0
		if err := l.poll.Resume(fd, c.gen, want); err != nil {
			s.closeNowLocked(c, -1)
		}
	}
	s.release(c)
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
func (l *loop) framesLocked(c *conn, data []byte) int {
	s := l.s
	used := 0
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
		if c.state == stClosing && op != ws.OpClose {
			// Waiting for the client's close: skip whatever else comes, but
			// still parse so the close frame is found.
		} else if msg := l.checkHeader(c, fin, rsv, op, masked, length); msg != "" {
			code := CloseProtocol
			if msg == errTooBig {
				code = CloseTooBig
			}
			s.closeWithLocked(c, code, msg)
			return len(data)
		}
		if !masked {
			if c.state == stClosing {
				s.closeNowLocked(c, -1)
			}
			return len(data)
		}
		hl += 4
		if uint64(len(d)) < uint64(hl)+length {
			if length > uint64(s.cfg.MaxMessageBytes) && c.state == stClosing {
				s.closeNowLocked(c, -1)
				return len(data)
			}
			return used
		}
		payload := d[hl : hl+int(length)]
		ws.Cipher(payload, [4]byte(d[hl-4:hl]), 0)
		used += hl + int(length)
		s.m.msgsIn.Inc()
		l.handleFrame(c, fin, op, payload)
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
	case rsv != 0:
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

func (l *loop) handleFrame(c *conn, fin bool, op ws.OpCode, p []byte) {
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
				if text && !utf8.Valid(p) {
					s.closeWithLocked(c, CloseInvalidData, "invalid UTF-8")
				} else if text {
					s.clientTextLocked(c, p) // a token refresh; anything else is ignored
				}
				return
			}
			r := c.rs()
			r.frag, r.fragText, r.fragLen = true, text, 0
		}
		r := c.rd
		r.fragLen += len(p)
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

// listenTag marks the listener's events; connection generations start at 1
// and would need 2^32-1 accepts to reach it.
const listenTag = ^uint32(0)

// acceptBatch takes pending connections (every loop watches the listener,
// EPOLLEXCLUSIVE wakes one) and starts each handshake right here: with
// TCP_DEFER_ACCEPT the request head has usually arrived already, so most
// upgrades finish without ever waiting in epoll. Bounded per event so a
// storm cannot starve established connections.
func (l *loop) acceptBatch(ln *rawtcp.Listener) {
	s := l.s
	for i := 0; i < 64; i++ {
		fd, err := ln.AcceptFD()
		if err != nil {
			if err == unix.EAGAIN {
				return
			}
			s.m.acceptErrors.Inc()
			if rawtcp.IsTemporary(err) {
				s.log.Warn("accept", "err", err)
				time.Sleep(5 * time.Millisecond) // let closes free descriptors
				return
			}
			s.log.Error("accept", "err", err)
			return
		}
		if fd >= len(s.table) || s.draining.Load() {
			unix.Close(fd)
			continue
		}
		now := time.Now()
		c := &conn{fd: int32(fd), gen: s.gen.Add(1), loop: uint8(l.id), lastSeen: now.UnixNano()}
		c.tm.Value = c
		s.table[fd].Store(c)
		for m := s.maxFD.Load(); int64(fd) > m && !s.maxFD.CompareAndSwap(m, int64(fd)); m = s.maxFD.Load() {
		}
		s.m.handshaking.Inc()
		s.schedule(c, now.Add(s.cfg.HandshakeTimeout))
		c.mu.Lock()
		l.readLocked(c)
		if c.state != stClosed {
			ev := poller.Read
			if c.out != nil {
				ev |= poller.Write
			}
			c.wantWrite = c.out != nil
			if err := l.poll.Start(fd, c.gen, ev); err != nil {
				s.log.Error("epoll add", "err", err)
				s.closeNowLocked(c, -1)
			} else {
				c.polled = true
			}
		}
		s.release(c)
	}
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
			l.reject(c, 400, "expected a PROXY protocol header")
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
	if kind, ok := streamPath(head); ok {
		l.streamRequest(c, kind, head)
	} else {
		l.hs.upgradeLocked(c, head)
	}
	return used + len(head)
}

// reject answers a handshake with an HTTP error and closes.
func (l *loop) reject(c *conn, status int, reason string) {
	rawtcp.Write(int(c.fd), httpError(status, reason))
	l.s.closeNowLocked(c, -1)
}
