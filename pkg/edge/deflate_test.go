package edge_test

import (
	"bufio"
	"bytes"
	"compress/flate"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pushcluster/push/pkg/edge"
	"github.com/pushcluster/push/pkg/edge/edgetest"
	pushv1 "github.com/pushcluster/push/proto/push/v1"
)

// jsonKB is a realistic 1 KB JSON payload (repetitive, as JSON is).
func jsonKB() string {
	var items []string
	for i := 0; len(strings.Join(items, ",")) < 950; i++ {
		items = append(items, fmt.Sprintf(`{"id":%d,"name":"product number %d","price":%d.99,"tags":["sale","new"]}`, 1000+i, i, 9+i))
	}
	return `{"type":"cart.updated","items":[` + strings.Join(items, ",") + `]}`
}

// zraw is a hand-rolled client that offers extensions and reads frames
// with their first byte (RSV1 included), for what libraries hide.
type zraw struct {
	net.Conn
	br  *bufio.Reader
	ext string // the Sec-WebSocket-Extensions answer
}

func zdial(t *testing.T, addr, uid, offer string) *zraw {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ext := ""
	if offer != "" {
		ext = "Sec-WebSocket-Extensions: " + offer + "\r\n"
	}
	fmt.Fprintf(c, "GET /ws?uid=%s&token=%s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n%s\r\n", uid, token(t, uid), addr, ext)
	z := &zraw{Conn: c, br: bufio.NewReader(c)}
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	resp, err := http.ReadResponse(z.br, nil)
	if err != nil || resp.StatusCode != 101 {
		t.Fatalf("upgrade with %q: %v %v", offer, resp, err)
	}
	if v := resp.Header.Values("Sec-WebSocket-Extensions"); len(v) > 1 {
		t.Fatalf("%d extension headers in the answer: %q", len(v), v)
	}
	z.ext = resp.Header.Get("Sec-WebSocket-Extensions")
	return z
}

// frame reads one whole server frame (header and payload, as sent).
func (z *zraw) frame(t *testing.T) []byte {
	t.Helper()
	z.SetReadDeadline(time.Now().Add(20 * time.Second))
	h := make([]byte, 2, 10)
	if _, err := io.ReadFull(z.br, h); err != nil {
		t.Fatalf("read frame: %v", err)
	}
	n := uint64(h[1] & 0x7f)
	switch n {
	case 126:
		h = h[:4]
		io.ReadFull(z.br, h[2:])
		n = uint64(binary.BigEndian.Uint16(h[2:]))
	case 127:
		h = h[:10]
		io.ReadFull(z.br, h[2:])
		n = binary.BigEndian.Uint64(h[2:])
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(z.br, p); err != nil {
		t.Fatalf("read payload: %v", err)
	}
	return append(h, p...)
}

// payloadOf splits a server frame into its first byte and payload.
func payloadOf(f []byte) (byte, []byte) {
	switch f[1] & 0x7f {
	case 126:
		return f[0], f[4:]
	case 127:
		return f[0], f[10:]
	}
	return f[0], f[2:]
}

// inflate decodes a compressed message the RFC 7692 way with the standard
// library's decoder (an implementation independent of the edge's).
func inflate(t *testing.T, p []byte) []byte {
	t.Helper()
	b, err := io.ReadAll(flate.NewReader(io.MultiReader(bytes.NewReader(p), strings.NewReader("\x00\x00\xff\xff\x01\x00\x00\xff\xff"))))
	if err != nil {
		t.Fatalf("inflate %x: %v", p, err)
	}
	return b
}

// decode returns the JSON text of a server text frame, inflated if RSV1
// is set, and whether it was compressed.
func decode(t *testing.T, f []byte) (string, bool) {
	t.Helper()
	b0, p := payloadOf(f)
	if b0&0x0f != 1 || b0&0x80 == 0 || b0&0x30 != 0 {
		t.Fatalf("frame starts %#x: want a final text frame without RSV2/RSV3", b0)
	}
	if b0&0x40 == 0 {
		return string(p), false
	}
	return string(inflate(t, p)), true
}

// deflated compresses p for a client message (stdlib, sync flush, trailer
// removed).
func deflated(t *testing.T, p []byte) []byte {
	t.Helper()
	var b bytes.Buffer
	w, _ := flate.NewWriter(&b, flate.BestCompression)
	w.Write(p)
	w.Flush()
	return bytes.TrimSuffix(b.Bytes(), []byte{0, 0, 0xff, 0xff})
}

// send writes one masked client frame with first byte b0.
func (z *zraw) send(b0 byte, payload []byte) {
	var key [4]byte
	rand.Read(key[:])
	z.Write(edgetest.ClientFrame(b0, payload, key))
}

// closeCode reads frames until the edge's close frame.
func (z *zraw) closeCode(t *testing.T) int {
	t.Helper()
	for {
		b0, p := payloadOf(z.frame(t))
		if b0&0x0f == 8 {
			return int(binary.BigEndian.Uint16(p))
		}
	}
}

const accepted = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"

// normExt makes an extension answer comparable (parameter spacing may vary).
func normExt(s string) string { return strings.ReplaceAll(strings.ReplaceAll(s, " ", ""), ";", "; ") }

func TestDeflateNegotiation(t *testing.T) {
	e := start(t, nil)
	for i, tc := range []struct {
		name, offer, want string
	}{
		{"not offered", "", ""},
		{"offered", "permessage-deflate", accepted},
		{"browser offer", "permessage-deflate; client_max_window_bits", accepted},
		{"offered with both no_context_takeover", "permessage-deflate; client_no_context_takeover; server_no_context_takeover", accepted},
		{"server window 15", "permessage-deflate; server_max_window_bits=15", accepted + "; server_max_window_bits=15"},
		{"server window below 15 declined", "permessage-deflate; server_max_window_bits=10", ""},
		{"fallback offer taken", "permessage-deflate; server_max_window_bits=10, permessage-deflate; client_max_window_bits", accepted},
		{"unknown parameter", "permessage-deflate; foo=1", ""},
		{"repeated parameter", "permessage-deflate; server_no_context_takeover; server_no_context_takeover", ""},
		{"invalid window", "permessage-deflate; client_max_window_bits=7", ""},
		{"valued flag", "permessage-deflate; server_no_context_takeover=1", ""},
		{"another extension", "x-webkit-deflate-frame", ""},
		{"first of two accepted offers only", "permessage-deflate, permessage-deflate; client_max_window_bits", accepted},
	} {
		t.Run(tc.name, func(t *testing.T) {
			uid := fmt.Sprintf("neg%d", i)
			z := zdial(t, e.addr, uid, tc.offer)
			if normExt(z.ext) != normExt(tc.want) {
				t.Fatalf("offer %q answered %q, want %q", tc.offer, z.ext, tc.want)
			}
			// Either way messages arrive and decode.
			data := jsonKB()
			waitFor(t, "attached", func() bool { return e.srv.Presence(uid) == 1 })
			e.publish(uid, data)
			text, compressed := decode(t, z.frame(t))
			if compressed != (tc.want != "") {
				t.Fatalf("compressed %v with extension %q", compressed, z.ext)
			}
			var m msg
			if err := json.Unmarshal([]byte(text), &m); err != nil || string(m.Data) != data {
				t.Fatalf("got %q (%v)", text, err)
			}
		})
	}
	t.Run("turned off", func(t *testing.T) {
		off := start(t, func(c *edge.Config) { c.NoCompression = true })
		if z := zdial(t, off.addr, "off", "permessage-deflate"); z.ext != "" {
			t.Fatalf("NoCompression answered %q", z.ext)
		}
	})
}

// A real client library (coder/websocket, its own inflater) decodes what
// the edge compresses, in both of its modes, and its own compressed
// messages are accepted.
func TestDeflateRealClient(t *testing.T) {
	e := start(t, nil)
	for _, mode := range []websocket.CompressionMode{websocket.CompressionContextTakeover, websocket.CompressionNoContextTakeover} {
		uid := fmt.Sprintf("real%d", mode)
		c, resp, err := websocket.Dial(ctx(t), e.url(uid, token(t, uid), ""), &websocket.DialOptions{CompressionMode: mode})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.CloseNow() })
		if got := resp.Header.Get("Sec-WebSocket-Extensions"); normExt(got) != normExt(accepted) {
			t.Fatalf("mode %v: extension answer %q", mode, got)
		}
		data := jsonKB()
		waitFor(t, "attached", func() bool { return e.srv.Presence(uid) == 1 })
		e.publish(uid, data)
		e.publish(uid, `{"small":true}`)
		if m := read(t, c); m.Seq != 1 || string(m.Data) != data {
			t.Fatalf("mode %v: got %+v", mode, m)
		}
		if m := read(t, c); m.Seq != 2 || string(m.Data) != `{"small":true}` {
			t.Fatalf("mode %v: got %+v", mode, m)
		}
		// The client compresses what it sends (over its threshold);
		// the edge inflates and accepts it, and the connection lives on.
		if err := c.Write(ctx(t), websocket.MessageText, []byte(strings.Repeat(`{"ack":1}`, 200))); err != nil {
			t.Fatal(err)
		}
		if _, err := e.push.Broadcast(ctx(t), &pushv1.BroadcastRequest{Data: []byte(data)}); err != nil {
			t.Fatal(err)
		}
		if m := read(t, c); !m.Broadcast || string(m.Data) != data {
			t.Fatalf("mode %v: broadcast got %+v", mode, m)
		}
		c.Close(websocket.StatusNormalClosure, "")
	}
}

func compressions(t *testing.T, reg *prometheus.Registry) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "push_edge_compressions_total" {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatal("no push_edge_compressions_total")
	return 0
}

// A message is compressed once and the same bytes go to every connection
// that negotiated compression: a user's several connections and a
// broadcast's recipients get identical frames, PublishMulti's users
// identical compressed bodies behind their own seq; a connection without
// the extension gets the plain frame, and small messages go uncompressed.
func TestDeflateOnceForEveryRecipient(t *testing.T) {
	reg := prometheus.NewRegistry()
	e := start(t, func(c *edge.Config) { c.MaxConnsPerUser = 2; c.Metrics = reg })
	a1 := zdial(t, e.addr, "a", "permessage-deflate")
	a2 := zdial(t, e.addr, "a", "permessage-deflate; client_max_window_bits")
	b := zdial(t, e.addr, "b", "permessage-deflate")
	plain := zdial(t, e.addr, "p", "")
	waitFor(t, "four connections", func() bool {
		return e.srv.Presence("a") == 2 && e.srv.Presence("b") == 1 && e.srv.Presence("p") == 1
	})
	data := jsonKB()

	// Several connections of one user.
	e.publish("a", data)
	f1, f2 := a1.frame(t), a2.frame(t)
	if !bytes.Equal(f1, f2) {
		t.Fatalf("the user's two connections got different frames:\n%x\n%x", f1, f2)
	}
	text, compressed := decode(t, f1)
	if !compressed || !strings.Contains(text, data) {
		t.Fatalf("compressed %v: %q", compressed, text)
	}
	if len(f1) >= len(data) {
		t.Fatalf("compressed frame of %d bytes for a %d-byte payload", len(f1), len(data))
	}
	if n := compressions(t, reg); n != 1 {
		t.Fatalf("%v compressions for one message to two connections, want 1", n)
	}

	// PublishMulti: one compression for every user.
	if _, err := e.push.PublishMulti(ctx(t), &pushv1.PublishMultiRequest{UserIds: []string{"a", "b", "p"}, Data: []byte(data)}); err != nil {
		t.Fatal(err)
	}
	fa, fa2, fb, fp := a1.frame(t), a2.frame(t), b.frame(t), plain.frame(t)
	if !bytes.Equal(fa, fa2) {
		t.Fatal("PublishMulti: the user's two connections got different frames")
	}
	for _, f := range []struct {
		frame      []byte
		seq        uint64
		compressed bool
	}{{fa, 2, true}, {fb, 1, true}, {fp, 1, false}} {
		text, c := decode(t, f.frame)
		var m msg
		if err := json.Unmarshal([]byte(text), &m); err != nil || m.Seq != f.seq || string(m.Data) != data || c != f.compressed {
			t.Fatalf("PublishMulti: got %q (compressed %v, %v), want seq %d compressed %v", text, c, err, f.seq, f.compressed)
		}
	}
	// Behind each user's own stored prefix block, the same compressed bytes.
	_, pa := payloadOf(fa)
	_, pb := payloadOf(fb)
	za := pa[5+binary.LittleEndian.Uint16(pa[1:]):]
	zb := pb[5+binary.LittleEndian.Uint16(pb[1:]):]
	if pa[0] != 0 || pb[0] != 0 || !bytes.Equal(za, zb) {
		t.Fatalf("PublishMulti compressed the body per user:\n%x\n%x", pa, pb)
	}
	if n := compressions(t, reg); n != 2 {
		t.Fatalf("%v compressions after a PublishMulti, want 2", n)
	}

	// Broadcast: one compressed frame for all, the plain one for the rest.
	if _, err := e.push.Broadcast(ctx(t), &pushv1.BroadcastRequest{Data: []byte(data)}); err != nil {
		t.Fatal(err)
	}
	g1, g2, g3, g4 := a1.frame(t), a2.frame(t), b.frame(t), plain.frame(t)
	if !bytes.Equal(g1, g2) || !bytes.Equal(g1, g3) {
		t.Fatal("broadcast frames differ between compressed connections")
	}
	bt, bc := decode(t, g1)
	pt, pc := decode(t, g4)
	if !bc || pc || bt != pt || !strings.Contains(bt, `"broadcast":true`) {
		t.Fatalf("broadcast: compressed %q (%v), plain %q (%v)", bt, bc, pt, pc)
	}
	if n := compressions(t, reg); n != 3 {
		t.Fatalf("%v compressions after a broadcast, want 3", n)
	}

	// Below the threshold (256 bytes by default): sent as is.
	e.publish("a", `{"n":1}`)
	if _, c := decode(t, a1.frame(t)); c {
		t.Fatal("a 7-byte message was compressed")
	}
	if n := compressions(t, reg); n != 3 {
		t.Fatalf("a small message counted a compression (%v)", n)
	}
}

// Compressed client messages are inflated within --max-message-bytes: a
// deflate bomb (a few hundred bytes that inflate to megabytes) gets 1009
// whole or fragmented, corrupt data 1007, RSV1 where it may not be 1002.
func TestDeflateClientMessages(t *testing.T) {
	e := start(t, nil)
	bomb := deflated(t, make([]byte, 2<<20)) // 2 MiB in about 2 KB
	if len(bomb) > 4096 {
		t.Fatalf("bomb of %d bytes does not fit the frame limit", len(bomb))
	}
	for _, tc := range []struct {
		name  string
		offer string
		send  func(z *zraw)
		want  int
	}{
		{"bomb", "permessage-deflate", func(z *zraw) { z.send(0xC1, bomb) }, edge.CloseTooBig},
		{"bomb fragmented", "permessage-deflate", func(z *zraw) {
			z.send(0x41, bomb[:len(bomb)/2]) // text, RSV1, not final
			z.send(0x80, bomb[len(bomb)/2:]) // continuation, final
		}, edge.CloseTooBig},
		{"just over the limit", "permessage-deflate", func(z *zraw) { z.send(0xC2, deflated(t, make([]byte, 4097))) }, edge.CloseTooBig},
		{"corrupt", "permessage-deflate", func(z *zraw) { z.send(0xC1, []byte{0xff, 0xff, 0xff, 0xff}) }, edge.CloseInvalidData},
		{"invalid UTF-8 inside", "permessage-deflate", func(z *zraw) { z.send(0xC1, deflated(t, []byte("ok \xff\xfe"))) }, edge.CloseInvalidData},
		{"RSV1 without the extension", "", func(z *zraw) { z.send(0xC1, deflated(t, []byte("hello"))) }, edge.CloseProtocol},
		{"RSV1 on a continuation", "permessage-deflate", func(z *zraw) {
			z.send(0x41, deflated(t, []byte("hel")))
			z.send(0xC0, deflated(t, []byte("lo")))
		}, edge.CloseProtocol},
		{"RSV1 on a ping", "permessage-deflate", func(z *zraw) { z.send(0xC9, nil) }, edge.CloseProtocol},
	} {
		t.Run(tc.name, func(t *testing.T) {
			z := zdial(t, e.addr, "in"+strings.ReplaceAll(tc.name, " ", "-"), tc.offer)
			tc.send(z)
			if got := z.closeCode(t); got != tc.want {
				t.Fatalf("close %d, want %d", got, tc.want)
			}
		})
	}
	t.Run("valid messages are accepted", func(t *testing.T) {
		z := zdial(t, e.addr, "ok", "permessage-deflate")
		z.send(0xC1, deflated(t, []byte(strings.Repeat("é", 2000)))) // 4000 bytes inflated
		z.send(0x41, deflated(t, []byte("frag")))                    // fragmented, compressed
		z.send(0x00, []byte{})
		z.send(0x80, []byte{})
		z.send(0x81, []byte("plain")) // uncompressed messages still do
		waitFor(t, "attached", func() bool { return e.srv.Presence("ok") == 1 })
		e.publish("ok", `"after"`)
		if text, _ := decode(t, z.frame(t)); !strings.Contains(text, `"data":"after"`) {
			t.Fatalf("got %q", text)
		}
	})
}
