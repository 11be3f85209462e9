package edge

import (
	"bytes"
	"encoding/binary"
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/pushcluster/push/pkg/auth"
	"github.com/pushcluster/push/pkg/userid"
	"github.com/pushcluster/push/pkg/wire"
)

const fuzzWS = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"

// FuzzRequest: the one request parser of /ws, /sse and /poll never panics
// and admits only what the protocol allows: a valid uid, a resume point
// within 2^53-1, an epoch only with last_seq, one valid WebSocket key.
// Seeded with the request-head findings of issue 11.
func FuzzRequest(f *testing.F) {
	for _, s := range []string{
		"GET /ws?uid=a&token=t HTTP/1.1\r\nHost: h\r\n" + fuzzWS + "\r\n",
		"GET http://h/ws?uid=a&token=t&last_seq=9007199254740991 HTTP/1.1\r\nHost: h\r\n" + fuzzWS + "\r\n",
		"GET /ws?uid=a&token=t HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: !!!!!!!!!!!!!!!!!!!!!!!!\r\nSec-WebSocket-Version: 13\r\n\r\n",
		"GET /ws?uid=a HTTP/1.1\r\nHost: h\r\n" + fuzzWS + "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n",
		"GET /sse?uid=a&token=t HTTP/1.1\r\nHost: h\r\nLast-Event-ID: k3f9a2q.1b:42\r\n\r\n",
		"GET /sse?uid=a&token=t FOO/1.1\r\nHost: h\r\n\r\n",
		"GET /sse?uid=a&token=t HTTP/1.1\r\nHost: h\r\nOrigin : http://h\r\n\r\n",
		"GET /poll?uid=a&token=t&last_seq=3&epoch=e.1 HTTP/1.1\r\nHost: h\r\nHost: h\r\n\r\n",
		"GET /poll?uid=a&token=t&epoch=e.1 HTTP/1.1\r\n\r\n",
		"POST /poll?uid=a HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	var h handshake
	f.Fuzz(func(t *testing.T, head []byte) {
		rq, err := h.parse(head)
		if err != nil {
			if err.Status < 400 || err.Status > 599 || err.Reason == "" {
				t.Fatalf("refusal %+v", err)
			}
			return
		}
		if !userid.Valid(string(rq.uid)) || rq.resume.seq > MaxSeq || (rq.resume.epoch != "" && !rq.resume.has) {
			t.Fatalf("admitted %q as %+v", head, rq)
		}
		if rq.kind == kindWS && (len(rq.wsKey) != 24 || !bytes.Contains(head, rq.wsKey)) {
			t.Fatalf("admitted WebSocket key %q", rq.wsKey)
		}
		if rq.kind != kindWS && rq.kind != kindSSE && rq.kind != kindPoll {
			t.Fatalf("kind %d", rq.kind)
		}
	})
}

// fuzzServer is an edge that is built but never started: its loop's frame
// reader is driven directly, on one end of a socket pair.
func fuzzServer(f testing.TB) *Server {
	v, err := auth.NewVerifier(auth.Config{HMACSecret: []byte(strings.Repeat("k", 40))})
	if err != nil {
		f.Fatal(err)
	}
	s, err := New(Config{Listen: "127.0.0.1:0", Verifier: v, Loops: 1, MaxMessageBytes: 200,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Metrics: prometheus.NewRegistry()})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { s.closeListeners(); s.loops[0].poll.Close() })
	return s
}

// feedFrames sends data to a fresh open WebSocket connection in chunks of
// at most chunk bytes, as readLocked would (unconsumed bytes are kept and
// prepended to the next read), and returns what the edge wrote back and
// the connection's final state.
func feedFrames(t *testing.T, l *loop, data []byte, chunk int) ([]byte, connState) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[1])
	s := l.s
	c := &conn{fd: int32(fds[0]), gen: s.table.Gen(), state: stOpen, kind: kindWS}
	c.m.Accept(&s.wire, wire.WebSocket, false, 1)
	c.tm.Value = c
	s.table.Store(fds[0], c)
	s.open.Add(1)
	c.mu.Lock()
	var pending []byte
	for off := 0; off < len(data) && c.state != stClosed; off += chunk {
		buf := append(pending, data[off:min(off+chunk, len(data))]...)
		used := l.feedLocked(c, buf, 1)
		if used > len(buf) || used < 0 {
			t.Fatalf("consumed %d of %d bytes", used, len(buf))
		}
		pending = append([]byte(nil), buf[used:]...)
		if c.m.Pending() != nil {
			t.Fatal("the frame reader kept input itself")
		}
	}
	var out []byte
	if c.out != nil {
		for _, b := range c.out.bufs {
			out = append(out, b...)
		}
	}
	end := c.state
	s.closeNowLocked(c, -1)
	c.mu.Unlock()
	var got []byte
	b := make([]byte, 64<<10)
	for {
		n, err := unix.Read(fds[1], b)
		if n <= 0 || err != nil {
			break
		}
		got = append(got, b[:n]...)
	}
	return append(got, out...), end
}

// The frame reader's harness sees what a socket client sees: the
// answers the fuzz target compares are real.
func TestFeedFrames(t *testing.T) {
	l := fuzzServer(t).loops[0]
	big := bytes.Repeat([]byte{0x88, 0x80, 0, 0, 0, 0}, 60)
	in := append([]byte{0x81, 0x80 | 126, byte(len(big) >> 8), byte(len(big)), 0, 0, 0, 0}, big...)
	for _, chunk := range []int{len(in), 1, 7} {
		out, st := feedFrames(t, l, append([]byte(nil), in...), chunk)
		if len(out) < 4 || out[0] != 0x88 || binary.BigEndian.Uint16(out[2:]) != CloseTooBig || st != stClosing {
			t.Fatalf("chunks of %d: %x state %d, want a 1009 close and closing", chunk, out, st)
		}
	}
	out, st := feedFrames(t, l, []byte{0x88, 0x82, 0, 0, 0, 0, 0x03, 0xf5}, 8) // 1013
	if len(out) < 4 || binary.BigEndian.Uint16(out[2:]) != 1013 || st != stClosed {
		t.Fatalf("client close 1013: %x state %d", out, st)
	}
}

// FuzzFrameReader: the frame reader never panics and its answer does not
// depend on how the client's bytes were cut into reads: the bytes written
// back (pongs, the close frame) and the final state are the same whole and
// in chunks. After a close frame the edge writes nothing more. Seeded with
// the frame findings: a refused frame whose remainder holds 88 80 00 00 00
// 00, client close codes 1012-1014, and the RFC 6455 violation classes.
func FuzzFrameReader(f *testing.F) {
	masked := func(b0 byte, p []byte) []byte {
		h := []byte{b0, 0x80 | byte(len(p)), 0, 0, 0, 0}
		if len(p) > 125 {
			h = []byte{b0, 0x80 | 126, byte(len(p) >> 8), byte(len(p)), 0, 0, 0, 0}
		}
		return append(h, p...)
	}
	big := bytes.Repeat([]byte{0x88, 0x80, 0, 0, 0, 0}, 60)
	for _, seed := range [][]byte{
		masked(0x81, big), // over the 200-byte limit: 1009, then the fake closes are payload
		append(masked(0x82, big), masked(0x88, []byte{0x03, 0xe8})...),
		masked(0x88, []byte{0x03, 0xf4}), // 1012
		masked(0x88, []byte{0x03, 0xf6}), // 1014
		masked(0x88, []byte{0x03, 0xf7}), // 1015: 1002
		masked(0x89, []byte("ping")),
		{0x81, 0x02, 'h', 'i'}, // unmasked
		masked(0xc1, []byte("x")),
		masked(0x01, []byte{0xe2, 0x82}),
		append(masked(0x01, []byte{0xe2}), masked(0x80, []byte{0x82, 0xac})...),
		{0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0},
	} {
		f.Add(seed, uint8(3))
	}
	s := fuzzServer(f)
	l := s.loops[0]
	f.Fuzz(func(t *testing.T, data []byte, cut uint8) {
		whole, endWhole := feedFrames(t, l, append([]byte(nil), data...), max(len(data), 1))
		chunked, endChunked := feedFrames(t, l, append([]byte(nil), data...), int(cut)%17+1)
		if !bytes.Equal(whole, chunked) || endWhole != endChunked {
			t.Fatalf("whole: %x (state %d); in chunks of %d: %x (state %d)", whole, endWhole, int(cut)%17+1, chunked, endChunked)
		}
		// Nothing follows a close frame.
		for b := whole; len(b) >= 2; {
			n := int(b[1] & 0x7f)
			hl := 2
			switch n {
			case 126:
				n, hl = int(binary.BigEndian.Uint16(b[2:])), 4
			case 127:
				t.Fatalf("the edge wrote a frame over 64 KiB to a fuzz input")
			}
			if b[0]&0x0f == 0x8 && len(b) > hl+n {
				t.Fatalf("bytes after the close frame: %x", b[hl+n:])
			}
			if len(b) < hl+n {
				break
			}
			b = b[hl+n:]
		}
	})
}
