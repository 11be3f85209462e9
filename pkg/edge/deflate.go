package edge

import (
	"bytes"
	"encoding/binary"
	"io"
	"sync"

	"github.com/gobwas/httphead"
	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsflate"
	"github.com/klauspost/compress/flate"
)

// permessage-deflate (RFC 7692). The edge accepts it with
// server_no_context_takeover and client_no_context_takeover whatever the
// offer, so every message is a DEFLATE stream of its own: no compressor or
// decompressor state stays with a connection between messages, and an idle
// connection that negotiated compression costs one bool more than one that
// did not. A message is compressed once, on first use by a connection that
// negotiated it, and the same bytes go to every such connection.

// rsv1 is the "Per-Message Compressed" bit of a frame's first byte.
const rsv1 = 0x40

// The answers to an accepted offer: no context takeover either way, and the
// window an offer limited the server to (only 15 is accepted, see
// acceptDeflate).
var (
	deflateAccept   = wsflate.Parameters{ServerNoContextTakeover: true, ClientNoContextTakeover: true}.Option()
	deflateAccept15 = wsflate.Parameters{ServerNoContextTakeover: true, ClientNoContextTakeover: true, ServerMaxWindowBits: 15}.Option()
)

// The Sec-WebSocket-Extensions answers to the offers acceptDeflate takes.
var (
	deflateAnswer   = []byte("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
	deflateAnswer15 = []byte("permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=15")
)

// negotiateDeflate answers a Sec-WebSocket-Extensions value (only the
// first such header line is read): the answer to the first offer, in the
// client's order of preference, that acceptDeflate accepts (RFC 7692
// section 5), or nil when none is accepted or the value does not parse.
func negotiateDeflate(v []byte) []byte {
	opts, ok := httphead.ParseOptions(v, nil)
	if !ok {
		return nil
	}
	for _, o := range opts {
		if a, ok := acceptDeflate(o); ok {
			if a.Equal(deflateAccept15) {
				return deflateAnswer15
			}
			return deflateAnswer
		}
	}
	return nil
}

// acceptDeflate is the edge's answer to one offer of a client's
// Sec-WebSocket-Extensions header (offers come in the client's order of
// preference; the upgrade takes the first accepted one). It declines, per
// RFC 7692 §5 and §7.1, an offer of another extension, one with an unknown,
// repeated or invalid parameter, and one that limits the server's window
// below 15 bits (the compressor always uses the full 32 KiB window). A
// declined offer does not fail the handshake: the connection is simply not
// compressed. client_max_window_bits needs no answer: the edge inflates
// with any window.
func acceptDeflate(offer httphead.Option) (httphead.Option, bool) {
	if !bytes.Equal(offer.Name, wsflate.ExtensionNameBytes) {
		return httphead.Option{}, false
	}
	var p wsflate.Parameters
	if err := p.Parse(offer); err != nil {
		return httphead.Option{}, false
	}
	switch p.ServerMaxWindowBits {
	case 0:
		return deflateAccept, true
	case 15:
		return deflateAccept15, true
	}
	return httphead.Option{}, false
}

// deflateLevel trades ratio for speed: klauspost's level 1 compressed a
// 1 KB JSON message to within 2% of level 9 at a fifth of its CPU.
const deflateLevel = flate.BestSpeed

// deflaters are compressors lent to one compression at a time, never kept
// by a connection.
var deflaters = sync.Pool{New: func() any {
	w, _ := flate.NewWriter(io.Discard, deflateLevel)
	return w
}}

// syncTail is what a sync flush ends with; RFC 7692 §7.2.1 has the sender
// remove it and the receiver add it back.
var syncTail = []byte{0, 0, 0xff, 0xff}

// deflate compresses the concatenation of parts as one message body of
// RFC 7692: a DEFLATE stream flushed to a byte boundary, without the
// trailing 00 00 ff ff. It returns nil when that is not smaller than the
// input (the message then goes uncompressed).
func deflate(parts ...[]byte) []byte {
	n := 0
	for _, p := range parts {
		n += len(p)
	}
	var buf bytes.Buffer
	buf.Grow(n/2 + 64)
	w := deflaters.Get().(*flate.Writer)
	w.Reset(&buf)
	var err error
	for _, p := range parts {
		if _, err = w.Write(p); err != nil {
			break
		}
	}
	if err == nil {
		err = w.Flush()
	}
	// The pooled writer keeps pointing at buf (one message's output)
	// until its next use, which Resets it first: one Reset per message.
	deflaters.Put(w)
	b := buf.Bytes()
	if err != nil || !bytes.HasSuffix(b, syncTail) || len(b)-len(syncTail) >= n {
		return nil
	}
	return b[:len(b)-len(syncTail)]
}

// body is a message's shared part: its tail (see messageTail) and, once a
// connection that negotiated compression needs it, that tail compressed
// once for every such connection of every user it goes to (a publish to
// several connections of one user, PublishMulti).
type body struct {
	tail []byte
	once sync.Once
	z    []byte // compressed tail; nil below the threshold or when it would not shrink
}

func newBody(tail []byte) *body { return &body{tail: tail} }

// zTail returns b's tail compressed, or nil when it goes uncompressed.
func (s *Server) zTail(b *body) []byte {
	b.once.Do(func() {
		if len(b.tail) >= s.cfg.CompressMinBytes {
			b.z = deflate(b.tail)
			s.m.compressions.Inc()
		}
	})
	return b.z
}

// deflatedPrefix writes the header of a compressed message frame and the
// part of its body that differs per user, `{"seq":N,"epoch":"E"`, as a
// stored (uncompressed) DEFLATE block, into b, for a compressed tail of
// zLen bytes to follow; it returns the length. The stored block ends on a
// byte boundary and is not final, so the tail's own compressed blocks
// (compressed once, without reference to the prefix) continue the same
// stream. b must hold maxHeader + 5 + 48 + len(epoch) bytes.
func deflatedPrefix(b []byte, seq uint64, epoch string, zLen int) int {
	var env [48 + maxEpochLen]byte
	e := envelope(env[:0], epoch, seq)
	h := putHeader(b, ws.OpText, 5+len(e)+zLen)
	b[0] |= rsv1
	b[h] = 0 // BFINAL 0, BTYPE 00 (stored), padding to the byte boundary
	binary.LittleEndian.PutUint16(b[h+1:], uint16(len(e)))
	binary.LittleEndian.PutUint16(b[h+3:], ^uint16(len(e)))
	return h + 5 + copy(b[h+5:], e)
}

// broadcastFrames is a broadcast's frame, plain and (computed once, on
// first use by the writers) compressed.
type broadcastFrames struct {
	plain []byte
	tail  []byte
	once  sync.Once
	z     []byte // the compressed frame; nil: connections get plain
}

func (s *Server) zBroadcast(f *broadcastFrames) []byte {
	f.once.Do(func() {
		if len(f.tail) < s.cfg.CompressMinBytes {
			return
		}
		s.m.compressions.Inc()
		if z := deflate(broadcastHead, f.tail); z != nil {
			f.z = frame(ws.OpText, z)
			f.z[0] |= rsv1
		}
	})
	return f.z
}
