package edgetest

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

// rawWS is an upgraded connection driven byte by byte, for what client
// libraries refuse to send.
type rawWS struct {
	net.Conn
	br *bufio.Reader
}

func dialRaw(t *testing.T, addr, uid, tok string) *rawWS {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(30 * time.Second))
	fmt.Fprintf(c, "GET /ws?uid=%s&token=%s HTTP/1.1\r\nHost: %s\r\n"+wsFields+"\r\n", uid, tok, addr)
	r := &rawWS{Conn: c, br: bufio.NewReader(c)}
	resp, err := http.ReadResponse(r.br, nil)
	if err != nil || resp.StatusCode != 101 {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	return r
}

// closeCode reads frames until the server's close frame and returns its
// code (1005 without one).
func (r *rawWS) closeCode(t *testing.T) int {
	t.Helper()
	for {
		var h [2]byte
		if _, err := io.ReadFull(r.br, h[:]); err != nil {
			t.Fatalf("no close frame: %v", err)
		}
		n := int(h[1] & 0x7f)
		if n == 126 {
			var b [2]byte
			io.ReadFull(r.br, b[:])
			n = int(binary.BigEndian.Uint16(b[:]))
		}
		p := make([]byte, n)
		if _, err := io.ReadFull(r.br, p); err != nil {
			t.Fatalf("frame: %v", err)
		}
		if h[0]&0x0f == 0x8 {
			if n < 2 {
				return 1005
			}
			return int(binary.BigEndian.Uint16(p))
		}
	}
}

// ClientFrame encodes one masked client frame (RFC 6455 section 5.2) with
// first byte b0 (FIN, RSV and opcode), payload p and mask key key; a zero
// key puts the payload on the wire as given.
func ClientFrame(b0 byte, p []byte, key [4]byte) []byte {
	h := []byte{b0, 0x80}
	switch n := len(p); {
	case n < 126:
		h[1] |= byte(n)
	case n < 65536:
		h[1] |= 126
		h = binary.BigEndian.AppendUint16(h, uint16(n))
	default:
		h[1] |= 127
		h = binary.BigEndian.AppendUint64(h, uint64(n))
	}
	h = append(h, key[:]...)
	start := len(h)
	h = append(h, p...)
	if key != [4]byte{} {
		for i := range h[start:] {
			h[start+i] ^= key[i%4]
		}
	}
	return h
}

// maskedZero is ClientFrame with a zero mask key.
func maskedZero(b0 byte, p []byte) []byte { return ClientFrame(b0, p, [4]byte{}) }

// RefusedFrameCases runs finding 1 and 2 of issue 11 against addr (an
// edge with the default --max-message-bytes, or a router in front of
// such edges); tok mints a valid token for a user:
//   - a 1 MiB text frame over the limit whose header arrives first and
//     whose payload is nothing but the bytes 88 80 00 00 00 00 (a masked
//     close): the client reads 1009, the whole payload is taken, and after
//     the client's own close the connection ends cleanly;
//   - client close codes 1012, 1013 and 1014 are echoed, 1015 is 1002.
func RefusedFrameCases(t *testing.T, addr string, tok func(string) string) {
	t.Helper()
	fake := []byte{0x88, 0x80, 0, 0, 0, 0}
	payload := make([]byte, 0, 1<<20)
	for len(payload)+len(fake) <= 1<<20 {
		payload = append(payload, fake...)
	}
	frame := maskedZero(0x81, payload)
	for i := 0; i < 3; i++ {
		uid := fmt.Sprintf("rf%d", i)
		r := dialRaw(t, addr, uid, tok(uid))
		if _, err := r.Write(frame[:14]); err != nil {
			t.Fatal(err)
		}
		if code := r.closeCode(t); code != 1009 {
			t.Fatalf("try %d: close %d, want 1009", i, code)
		}
		if _, err := r.Write(frame[14:]); err != nil {
			t.Fatalf("try %d: the rest of the refused frame was not taken: %v", i, err)
		}
		r.Write(maskedZero(0x88, []byte{0x03, 0xf1}))
		if _, err := r.br.ReadByte(); err != io.EOF {
			t.Fatalf("try %d: after the close handshake: %v, want EOF", i, err)
		}
	}
	for code, want := range map[int]int{1012: 1012, 1013: 1013, 1014: 1014, 1015: 1002} {
		uid := fmt.Sprintf("cc%d", code)
		r := dialRaw(t, addr, uid, tok(uid))
		r.Write(maskedZero(0x88, []byte{byte(code >> 8), byte(code)}))
		if got := r.closeCode(t); got != want {
			t.Fatalf("client close %d answered %d, want %d", code, got, want)
		}
	}
}
