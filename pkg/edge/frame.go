package edge

import (
	"bytes"
	"encoding/json"
	"strconv"
	"unicode/utf8"

	"github.com/gobwas/ws"

	"github.com/pushcluster/push/pkg/wire"
)

// Close codes the edge sends; docs/protocol.md explains each.
const (
	CloseNormal       = wire.CloseNormal
	CloseGoingAway    = 1001 // edge shutting down: reconnect now
	CloseProtocol     = wire.CloseProtocol
	CloseInvalidData  = wire.CloseInvalidData
	ClosePolicy       = 1008 // slow consumer
	CloseTooBig       = wire.CloseTooBig
	CloseIdle         = wire.CloseIdle // no frame within --idle-timeout
	CloseUnauthorized = 4001
	CloseReplaced     = 4002
	CloseMoved        = 4003
	CloseKicked       = 4004
)

// maxHeader is the longest server frame header we write (no mask).
const maxHeader = wire.MaxHeader

// putHeader writes an unmasked final frame header for op and payload length n
// into b (len >= maxHeader) and returns its length (wire.PutHeader).
func putHeader(b []byte, op ws.OpCode, n int) int { return wire.PutHeader(b, op, n) }

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
