package edge

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"strconv"
	"unicode/utf8"

	"github.com/gobwas/ws"
)

// Close codes the edge sends; docs/protocol.md explains each.
const (
	CloseNormal       = 1000
	CloseGoingAway    = 1001 // edge shutting down: reconnect now
	CloseProtocol     = 1002
	CloseInvalidData  = 1007
	ClosePolicy       = 1008 // slow consumer
	CloseTooBig       = 1009
	CloseIdle         = 4000 // no frame within --idle-timeout
	CloseUnauthorized = 4001
	CloseReplaced     = 4002
	CloseMoved        = 4003
	CloseKicked       = 4004
)

// maxHeader is the longest server frame header we write (no mask).
const maxHeader = 10

// putHeader writes an unmasked final frame header for op and payload length n
// into b (len >= maxHeader) and returns its length.
func putHeader(b []byte, op ws.OpCode, n int) int {
	b[0] = 0x80 | byte(op)
	switch {
	case n < 126:
		b[1] = byte(n)
		return 2
	case n <= 0xffff:
		b[1] = 126
		binary.BigEndian.PutUint16(b[2:], uint16(n))
		return 4
	default:
		b[1] = 127
		binary.BigEndian.PutUint64(b[2:], uint64(n))
		return 10
	}
}

// frame builds a complete frame in a new slice.
func frame(op ws.OpCode, payload ...[]byte) []byte {
	n := 0
	for _, p := range payload {
		n += len(p)
	}
	b := make([]byte, maxHeader, maxHeader+n)
	h := putHeader(b, op, n)
	b = b[:h]
	for _, p := range payload {
		b = append(b, p...)
	}
	return b
}

// closeFrame builds a close frame with code and reason (reason truncated so
// the payload fits a control frame, on a rune boundary).
func closeFrame(code int, reason string) []byte {
	if len(reason) > 123 {
		reason = reason[:123]
		for len(reason) > 0 && !utf8.ValidString(reason) {
			reason = reason[:len(reason)-1]
		}
	}
	p := make([]byte, 2, 2+len(reason))
	binary.BigEndian.PutUint16(p, uint16(code))
	p = append(p, reason...)
	return frame(ws.OpClose, p)
}

var pingFrame = []byte{0x80 | byte(ws.OpPing), 0}

// messageTail encodes the shared part of a message after its sequence
// number: `,"data":<payload>}`. The payload is embedded as-is when it is
// valid JSON (and valid UTF-8, so the text frame stays valid), else as a JSON
// string.
func messageTail(data []byte) []byte {
	const head = `,"data":`
	if utf8.Valid(data) && json.Valid(data) {
		b := make([]byte, 0, len(head)+len(data)+1)
		b = append(b, head...)
		if bytes.ContainsAny(data, "\r\n") {
			// One line, so the same bytes also fit an SSE "data:" line;
			// only insignificant whitespace changes.
			var buf bytes.Buffer
			json.Compact(&buf, data)
			b = append(b, buf.Bytes()...)
		} else {
			b = append(b, data...)
		}
		return append(b, '}')
	}
	q, _ := json.Marshal(string(data)) // invalid UTF-8 becomes U+FFFD
	b := make([]byte, 0, len(head)+len(q)+1)
	b = append(b, head...)
	b = append(b, q...)
	return append(b, '}')
}

// seqPrefix writes the frame header and `{"seq":N,"epoch":"E"` for a
// message whose tail has tailLen bytes into b and returns its length. b
// must hold maxHeader + 40 + len(epoch) bytes; epoch is the stream's name
// (epochs are short tokens of [0-9a-z.], never needing JSON escapes).
func seqPrefix(b []byte, seq uint64, epoch string, tailLen int) int {
	var num [20]byte
	digits := strconv.AppendUint(num[:0], seq, 10)
	body := len(`{"seq":`) + len(digits)
	if epoch != "" {
		body += len(`,"epoch":""`) + len(epoch)
	}
	h := putHeader(b, ws.OpText, body+tailLen)
	n := h + copy(b[h:], `{"seq":`)
	n += copy(b[n:], digits)
	if epoch != "" {
		n += copy(b[n:], `,"epoch":"`)
		n += copy(b[n:], epoch)
		b[n] = '"'
		n++
	}
	return n
}

// broadcastHead starts every broadcast's envelope; its tail follows.
var broadcastHead = []byte(`{"seq":0,"broadcast":true`)

// broadcastFrame is the one frame every connection gets for a broadcast.
func broadcastFrame(tail []byte) []byte {
	return frame(ws.OpText, broadcastHead, tail)
}

// validCloseCode reports whether a client may send code: the codes RFC
// 6455 section 7.4.1 defines for endpoints to send (1000-1003, 1007-1011),
// the ones registered since in IANA's WebSocket Close Code Number Registry
// (RFC 6455 section 11.7: 1012 service restart, 1013 try again later, 1014
// bad gateway), and the ranges for libraries and applications (3000-4999).
// 1004-1006 and 1015 are reserved and never sent in a frame.
func validCloseCode(code int) bool {
	switch {
	case code >= 1000 && code <= 1003, code >= 1007 && code <= 1014:
		return true
	case code >= 3000 && code <= 4999:
		return true
	}
	return false
}

// utf8Tail validates b as the continuation of a text message whose previous
// fragment ended with the incomplete sequence carry. It returns the new
// incomplete tail (at most 3 bytes) and false if b can never become valid.
func utf8Tail(carry []byte, b []byte, final bool) ([]byte, bool) {
	if len(carry) > 0 {
		// Complete the carried rune with the first bytes of b.
		need := 4 - len(carry)
		if need > len(b) {
			need = len(b)
		}
		var tmp [8]byte
		n := copy(tmp[:], carry)
		n += copy(tmp[n:], b[:need])
		r, size := utf8.DecodeRune(tmp[:n])
		if r == utf8.RuneError && size <= 1 {
			if !utf8.FullRune(tmp[:n]) && !final && n == len(carry)+len(b) {
				return append(carry[:0], tmp[:n]...), true
			}
			return nil, false
		}
		b = b[size-len(carry):]
		carry = carry[:0]
	}
	// Find the start of a possibly incomplete last rune.
	cut := len(b)
	for i := len(b) - 1; i >= 0 && i >= len(b)-3; i-- {
		if utf8.RuneStart(b[i]) {
			if !utf8.FullRune(b[i:]) {
				cut = i
			}
			break
		}
	}
	if !utf8.Valid(b[:cut]) {
		return nil, false
	}
	if cut < len(b) {
		if final {
			return nil, false
		}
		return append(carry[:0], b[cut:]...), true
	}
	return carry[:0], true
}
