package wire

import (
	"encoding/binary"
	"errors"
	"io"
	"unicode/utf8"

	"github.com/gobwas/ws"
	"github.com/klauspost/compress/flate"

	"github.com/pushcluster/push/pkg/httphead"
	"github.com/pushcluster/push/pkg/proxyproto"
)

// Protocol is the rules every connection shares and the scratch of the
// goroutine that feeds them: the bytes Feed asks to write and one
// decompressor for compressed client messages, so a connection owns no
// buffer. One Protocol per event loop; not safe for concurrent use.
type Protocol struct {
	cfg Config
	st  Step   // what Feed returns
	out []byte // Step.Write of Feed
	// Inflating compressed client messages, made on first use.
	inf  io.ReadCloser
	zin  *inflateInput
	zout []byte
}

// NewProtocol returns a Protocol for cfg.
func NewProtocol(cfg Config) *Protocol { return &Protocol{cfg: cfg} }

// Config is the protocol's configuration.
func (p *Protocol) Config() *Config { return &p.cfg }

// Feed hands the machine in, bytes read from the client (behind what
// Pending returned), at now (Unix ns). It consumes input until it needs
// more or until an event the server must act on, and reports how much it
// used; the caller acts on the event and feeds the rest again, or keeps
// it (Keep) when Event is None. in may be modified (client frames are
// unmasked in place). The Step is the Protocol's own, valid (like the
// slices in it) until the next Feed: no copy of it on the per-read path.
//
// Awaiting the head, it reads a PROXY header (Config.AcceptProxy) and
// then a request head, up to MaxHeaderBytes (Head, or Refused with 400 or
// 431). An open WebSocket reads frames (readFrames); an SSE or long-poll
// client has nothing more to say, so its input is dropped.
func (p *Protocol) Feed(m *Machine, in []byte, now int64) *Step {
	p.out = p.out[:0]
	st := &p.st
	switch m.phase {
	case AwaitingHead:
		*st = p.head(m, in)
	case Open, Closing:
		if m.kind == WebSocket {
			m.lastSeen = now
			*st = Step{}
			p.readFrames(m, in, now, st)
			break
		}
		fallthrough
	default:
		*st = Step{Used: len(in)}
	}
	return st
}

func (p *Protocol) head(m *Machine, data []byte) Step {
	used := 0
	if p.cfg.AcceptProxy && (m.x == nil || !m.x.proxied) {
		h, n, err := proxyproto.Parse(data)
		switch {
		case errors.Is(err, proxyproto.ErrIncomplete):
			return Step{} // wait for the rest, bounded by the handshake deadline
		case err != nil:
			m.Finish()
			return Step{Used: len(data), Event: EventRefused, Code: 400, Reason: "expected a PROXY protocol header: " + err.Error()}
		}
		x := m.rs()
		x.proxied, x.client = true, h.Source // kept while the head is incomplete
		data, used = data[n:], n
	}
	end, herr := httphead.HeadEnd(data)
	if herr != nil {
		m.Finish()
		return Step{Used: used + len(data), Event: EventRefused, Code: herr.Status, Reason: herr.Reason}
	}
	if end == 0 {
		if len(data) >= p.cfg.MaxHeaderBytes {
			m.Finish()
			return Step{Used: used + len(data), Event: EventRefused, Code: 431, Reason: "request head too large"}
		}
		return Step{Used: used}
	}
	head := data[:end]
	if len(head) > p.cfg.MaxHeaderBytes {
		m.Finish()
		return Step{Used: used + len(data), Event: EventRefused, Code: 431, Reason: "request head too large"}
	}
	return Step{Used: used + len(head), Event: EventHead, Payload: head}
}

// errTooBig is the reason of a 1009.
const errTooBig = "message too big"

// ErrBadDeflate is the close reason for a compressed client message that
// is not valid DEFLATE (1007).
const ErrBadDeflate = "invalid compressed data"

// rsv1 is the "Per-Message Compressed" bit of a frame's first byte (RFC
// 7692 section 6).
const rsv1 = 0x40

// readFrames parses and handles complete client frames in data.
//
// A frame the edge refuses (a header that breaks RFC 6455: 1002; over
// MaxMessageBytes: 1009) starts the closing handshake, and the rest of
// that frame, exactly as long as its header announced, is discarded as it
// arrives (rare.skip), never parsed: bytes inside a refused payload that
// look like a frame (88 80 00 00 00 00, a close) must not end the
// connection before the client has read the edge's close frame, or the
// kernel resets it. While closing, every frame but the client's close is
// discarded the same way, without buffering. Discarding ends when the
// client's close arrives or at CloseTimeout, so it costs bounded time.
//
// Pongs to pings collect in Write; the first event ends the call.
func (p *Protocol) readFrames(m *Machine, data []byte, now int64, st *Step) {
	used := 0
	if m.x != nil && m.x.skip > 0 {
		n := min(uint64(len(data)), m.x.skip)
		m.x.skip -= n
		used = int(n)
	}
	for m.phase == Open || m.phase == Closing {
		d := data[used:]
		if len(d) < 2 {
			break
		}
		b0, b1 := d[0], d[1]
		fin, rsv, op := b0&0x80 != 0, b0&0x70, ws.OpCode(b0&0x0f)
		masked := b1&0x80 != 0
		length := uint64(b1 & 0x7f)
		hl := 2
		switch length {
		case 126:
			if len(d) < 4 {
				p.done(st, used)
				return
			}
			length, hl = uint64(binary.BigEndian.Uint16(d[2:])), 4
		case 127:
			if len(d) < 10 {
				p.done(st, used)
				return
			}
			length, hl = binary.BigEndian.Uint64(d[2:]), 10
		}
		if masked {
			hl += 4
		}
		if len(d) < hl {
			break
		}
		discard := false
		if m.phase == Closing {
			// Waiting for the client's close: anything else is skipped.
			discard = op != ws.OpClose || !masked || length > 125
		} else if msg := p.checkHeader(m, fin, rsv, op, masked, length); msg != "" {
			code := CloseProtocol
			if msg == errTooBig {
				code = CloseTooBig
			}
			frames := st.Frames
			*st = m.Close(&p.cfg, code, msg, now)
			st.Frames = frames
			discard = true
		}
		if discard {
			total := uint64(hl) + length
			if total < length { // a length with its top bit set: skip until the close wait ends
				total = ^uint64(0)
			}
			if uint64(len(d)) >= total {
				used += int(total)
			} else {
				m.rs().skip = total - uint64(len(d))
				used = len(data)
			}
			if st.Event != EventNone {
				p.done(st, used)
				return
			}
			continue
		}
		if uint64(len(d)) < uint64(hl)+length {
			break
		}
		payload := d[hl : hl+int(length)]
		ws.Cipher(payload, [4]byte(d[hl-4:hl]), 0)
		used += hl + int(length)
		st.Frames++
		if p.onFrame(m, fin, rsv&rsv1 != 0, op, payload, now, st) {
			p.done(st, used)
			return
		}
	}
	if m.phase != Open && m.phase != Closing {
		used = len(data)
	}
	p.done(st, used)
}

// done completes readFrames' step: what was used, and the pongs collected
// so far in front of the step's own bytes.
func (p *Protocol) done(st *Step, used int) {
	st.Used = used
	if len(p.out) > 0 {
		if len(st.Write) > 0 {
			p.out = append(p.out, st.Write...)
		}
		st.Write = p.out
	}
}

// checkHeader applies RFC 6455's rules to a frame header; it returns the
// close reason for a violation, or "".
func (p *Protocol) checkHeader(m *Machine, fin bool, rsv byte, op ws.OpCode, masked bool, length uint64) string {
	switch {
	case !masked:
		return "unmasked client frame"
	case length > 1<<63-1:
		return "payload length with its most significant bit set" // RFC 6455 section 5.2
	case rsv != 0 && (rsv != rsv1 || !m.Deflate() || (op != ws.OpText && op != ws.OpBinary)):
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
		frag := m.x != nil && m.x.frag
		if op == ws.OpContinuation && !frag {
			return "continuation without a message"
		}
		if op != ws.OpContinuation && frag {
			return "new message inside a fragmented one"
		}
		total := length
		if frag {
			total += uint64(m.x.fragLen)
		}
		if total > uint64(p.cfg.MaxMessageBytes) {
			return errTooBig
		}
	}
	return ""
}

// onFrame acts on one complete, unmasked client frame; compressed: its
// RSV1 bit (the first frame of a compressed message, see checkHeader). It
// reports whether the frame made an event, which it puts in st (keeping
// st.Frames).
func (p *Protocol) onFrame(m *Machine, fin, compressed bool, op ws.OpCode, pl []byte, now int64, st *Step) bool {
	var ev Step
	switch op {
	case ws.OpPing:
		if m.phase == Open {
			p.out = AppendFrame(p.out, ws.OpPong, pl)
		}
		return false
	case ws.OpPong:
		return false // the read already moved lastSeen; that is all a pong is for
	case ws.OpClose:
		ev = p.onClose(m, pl, now)
	case ws.OpText, ws.OpBinary, ws.OpContinuation:
		if m.phase != Open {
			return false
		}
		text := op == ws.OpText || (op == ws.OpContinuation && m.x.fragText)
		if op != ws.OpContinuation && fin {
			switch {
			case compressed:
				ev = p.inflated(m, text, pl, now)
			case text && !utf8.Valid(pl):
				ev = m.Close(&p.cfg, CloseInvalidData, "invalid UTF-8", now)
			case text:
				st.Event, st.Payload = EventText, pl
				return true
			default:
				return false
			}
			break
		}
		ev = p.fragment(m, op, fin, compressed, text, pl, now)
	}
	if ev.Event == EventNone {
		return false
	}
	ev.Frames = st.Frames
	*st = ev
	return true
}

// fragment takes one frame of a fragmented message: compressed fragments
// are kept (within MaxMessageBytes, as checkHeader enforces on their
// total) and inflated whole; a fragmented text message is validated as it
// arrives (UTF-8 carried across fragments) but not read, since a token
// renewal fits one frame.
func (p *Protocol) fragment(m *Machine, op ws.OpCode, fin, compressed, text bool, pl []byte, now int64) Step {
	if op != ws.OpContinuation {
		x := m.rs()
		x.frag, x.fragText, x.fragLen, x.fragZ = true, text, 0, compressed
	}
	x := m.x
	x.fragLen += len(pl)
	if x.fragZ {
		x.zbuf = append(x.zbuf, pl...)
		if fin {
			z := x.zbuf
			x.frag, x.fragZ, x.zbuf = false, false, nil
			return p.inflated(m, x.fragText, z, now)
		}
		return Step{}
	}
	if text {
		carry, ok := utf8Tail(x.carry, pl, fin)
		if !ok {
			return m.Close(&p.cfg, CloseInvalidData, "invalid UTF-8", now)
		}
		x.carry = carry
	}
	if fin {
		x.frag, x.carry = false, nil
	}
	return Step{}
}

// inflated checks a whole compressed client message: it must inflate
// within MaxMessageBytes (1009) to valid DEFLATE (1007) and, as text, to
// valid UTF-8 (1007). A text message is then a Text event like an
// uncompressed one: a browser that negotiated compression may compress
// what it sends.
func (p *Protocol) inflated(m *Machine, text bool, z []byte, now int64) Step {
	pl, reason := p.Inflate(z)
	switch {
	case reason == errTooBig:
		return m.Close(&p.cfg, CloseTooBig, reason, now)
	case reason != "":
		return m.Close(&p.cfg, CloseInvalidData, reason, now)
	case text && !utf8.Valid(pl):
		return m.Close(&p.cfg, CloseInvalidData, "invalid UTF-8", now)
	case text:
		return Step{Event: EventText, Payload: pl}
	}
	return Step{}
}

// onClose answers a client's close frame, echoing its code (RFC 6455
// section 5.5.1), or completes a close the edge started. A payload of one
// byte or a code no endpoint may send (ValidCloseCode) is answered 1002, a
// reason that is not UTF-8 1007.
func (p *Protocol) onClose(m *Machine, pl []byte, now int64) Step {
	if m.phase == Closing {
		m.Finish()
		return Step{Event: EventClosed, Code: -1}
	}
	code, reason := CloseNormal, ""
	switch {
	case len(pl) == 1:
		code, reason = CloseProtocol, "close payload of one byte"
	case len(pl) >= 2:
		got := int(binary.BigEndian.Uint16(pl))
		switch {
		case !ValidCloseCode(got):
			code, reason = CloseProtocol, "invalid close code"
		case !utf8.Valid(pl[2:]):
			code, reason = CloseInvalidData, "invalid UTF-8 in close reason"
		default:
			code = got
		}
	}
	st := m.Close(&p.cfg, code, reason, now)
	st.Done = true
	return st
}

// deflateEnd follows a compressed message from a client: the sync flush
// trailer the sender removed (RFC 7692 section 7.2.2), then an empty final
// stored block so that the stream ends (io.EOF) rather than running out of
// input.
var deflateEnd = []byte{0, 0, 0xff, 0xff, 1, 0, 0, 0xff, 0xff}

// inflateInput reads a compressed message and then deflateEnd; it is an
// io.ByteReader so the decompressor reads exactly what it needs without a
// buffer of its own.
type inflateInput struct {
	p, end []byte
}

func (r *inflateInput) Read(b []byte) (int, error) {
	if len(r.p) == 0 {
		r.p, r.end = r.end, nil
		if len(r.p) == 0 {
			return 0, io.EOF
		}
	}
	n := copy(b, r.p)
	r.p = r.p[n:]
	return n, nil
}

func (r *inflateInput) ReadByte() (byte, error) {
	if len(r.p) == 0 {
		r.p, r.end = r.end, nil
		if len(r.p) == 0 {
			return 0, io.EOF
		}
	}
	c := r.p[0]
	r.p = r.p[1:]
	return c, nil
}

// Inflate decompresses a client's compressed message (RFC 7692: the
// DEFLATE stream without its sync-flush tail) into the Protocol's scratch
// and returns it, valid until the next call, or the close reason: "message
// too big" (1009) or ErrBadDeflate (1007). Its cost is bounded by the
// limit: decompression stops at MaxMessageBytes + 1 bytes of output, so a
// deflate bomb costs what a message at the limit does.
func (p *Protocol) Inflate(z []byte) ([]byte, string) {
	limit := p.cfg.MaxMessageBytes
	if p.zout == nil {
		p.zout = make([]byte, limit+1)
		p.zin = &inflateInput{}
	}
	p.zin.p, p.zin.end = z, deflateEnd
	if p.inf == nil {
		p.inf = flate.NewReader(p.zin)
	} else if err := p.inf.(flate.Resetter).Reset(p.zin, nil); err != nil {
		return nil, ErrBadDeflate
	}
	n := 0
	for {
		k, err := p.inf.Read(p.zout[n:])
		n += k
		switch {
		case n > limit:
			return nil, errTooBig
		case err == io.EOF:
			return p.zout[:n], ""
		case err != nil:
			return nil, ErrBadDeflate
		}
	}
}
