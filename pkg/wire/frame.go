package wire

import (
	"encoding/binary"
	"unicode/utf8"

	"github.com/gobwas/ws"
)

// Opcodes of RFC 6455 section 5.2 that the machine writes.
const (
	OpText  = ws.OpText
	OpClose = ws.OpClose
	OpPing  = ws.OpPing
	OpPong  = ws.OpPong
)

// MaxHeader is the longest server frame header (no mask).
const MaxHeader = 10

// PutHeader writes an unmasked final frame header for op and payload
// length n into b (len(b) >= MaxHeader) and returns its length.
func PutHeader(b []byte, op ws.OpCode, n int) int {
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

// AppendFrame appends an unmasked final frame of op with payload p to b.
func AppendFrame(b []byte, op ws.OpCode, p []byte) []byte {
	var h [MaxHeader]byte
	n := PutHeader(h[:], op, len(p))
	b = append(b, h[:n]...)
	return append(b, p...)
}

// Frame builds a frame of op with payload p in a new slice.
func Frame(op ws.OpCode, p []byte) []byte {
	return AppendFrame(make([]byte, 0, MaxHeader+len(p)), op, p)
}

// CloseFrame builds a close frame with code and reason (the reason cut on
// a rune boundary so the payload fits a control frame's 125 bytes).
func CloseFrame(code int, reason string) []byte {
	return appendClose(make([]byte, 0, 4+min(len(reason), 123)), code, reason)
}

func appendClose(b []byte, code int, reason string) []byte {
	if len(reason) > 123 {
		reason = reason[:123]
		for len(reason) > 0 && !utf8.ValidString(reason) {
			reason = reason[:len(reason)-1]
		}
	}
	b = append(b, 0x80|byte(ws.OpClose), byte(2+len(reason)), byte(code>>8), byte(code))
	return append(b, reason...)
}

// PingFrame is an empty ping.
var PingFrame = []byte{0x80 | byte(ws.OpPing), 0}

// ValidCloseCode reports whether a client may send code: the codes RFC
// 6455 section 7.4.1 defines for endpoints to send (1000-1003, 1007-1011),
// the ones registered since in IANA's WebSocket Close Code Number Registry
// (RFC 6455 section 11.7: 1012 service restart, 1013 try again later, 1014
// bad gateway), and the ranges for libraries and applications (3000-4999).
// 1004-1006 and 1015 are reserved and never sent in a frame.
func ValidCloseCode(code int) bool {
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
