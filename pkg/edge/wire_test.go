package edge_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/pushcluster/push/pkg/edge"
	"github.com/pushcluster/push/pkg/edge/edgetest"
	"github.com/pushcluster/push/pkg/proxyproto"
)

// fakeClose is a masked close frame with an empty payload and a zero mask
// key: the bytes a refused payload may hold that the edge must not parse.
var fakeClose = []byte{0x88, 0x80, 0, 0, 0, 0}

// frameWithZeroMask encodes a masked client frame whose mask key is zero,
// so the payload goes on the wire as given.
func frameWithZeroMask(b0 byte, payload []byte) []byte {
	return edgetest.ClientFrame(b0, payload, [4]byte{})
}

// payloadWithFakeCloses is n bytes of 'a' (valid UTF-8) with fakeClose
// written every 4 KiB, so whichever read boundary the edge sees, some
// copy lands inside the remainder it must discard.
func payloadWithFakeCloses(n int) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = 'a'
	}
	for i := 100; i+len(fakeClose) < n; i += 4096 {
		copy(p[i:], fakeClose)
	}
	return p
}

// refusedFrame sends a frame the edge refuses while the frame's payload is
// still arriving, reads the close frame, answers it with a close, and
// returns the code the edge sent and how the connection ended after it.
// With split, the payload is sent only after the close frame came back, so
// the edge has seen the header alone and the payload's first byte is where
// a reader that forgot the frame would look for the next header.
func refusedFrame(t *testing.T, e *env, uid string, frame []byte, split bool) (int, error) {
	t.Helper()
	hl := map[byte]int{126: 4, 127: 10}[frame[1]&0x7f]
	if hl == 0 {
		hl = 2
	}
	if frame[1]&0x80 != 0 {
		hl += 4
	}
	r := rawDial(t, e.addr, uid, token(t, uid), "")
	werr := make(chan error, 1)
	var code int
	if split {
		if _, err := r.Write(frame[:hl]); err != nil {
			t.Fatal(err)
		}
		code = r.closeCode(t)
		go func() {
			_, err := r.Write(frame[hl:])
			werr <- err
		}()
	} else {
		go func() {
			_, err := r.Write(frame)
			werr <- err
		}()
		code = r.closeCode(t)
	}
	if err := <-werr; err != nil {
		return code, fmt.Errorf("writing the refused frame: %w", err)
	}
	r.send(0x88, []byte{byte(code >> 8), byte(code)}, true)
	_, _, err := r.readFrame()
	return code, err
}

// Finding 1: the rest of a refused frame is discarded, never parsed, and
// the close handshake completes: the client reads the close code and then
// a clean end of stream, every time.
func TestRefusedFrameRemainderIsDiscarded(t *testing.T) {
	e := start(t, nil) // --max-message-bytes 4096
	big := payloadWithFakeCloses(1 << 20)
	for i := 0; i < 12; i++ {
		code, err := refusedFrame(t, e, fmt.Sprintf("big%d", i), frameWithZeroMask(0x81, big), false)
		if code != edge.CloseTooBig {
			t.Fatalf("try %d: close %d, want 1009", i, code)
		}
		if !errors.Is(err, io.EOF) {
			t.Fatalf("try %d: after the close handshake: %v, want a clean EOF", i, err)
		}
	}
	// The remainder starts with the bytes of a close frame, and holds
	// nothing else: parsed as frames, the first would end the connection
	// with 1 MiB unread (a reset).
	closes := make([]byte, 0, 1<<20)
	for len(closes)+len(fakeClose) <= 1<<20 {
		closes = append(closes, fakeClose...)
	}
	for i := 0; i < 3; i++ {
		code, err := refusedFrame(t, e, fmt.Sprintf("split%d", i), frameWithZeroMask(0x81, closes), true)
		if code != edge.CloseTooBig || !errors.Is(err, io.EOF) {
			t.Fatalf("split try %d: close %d then %v, want 1009 then a clean EOF", i, code, err)
		}
	}
	// A header violation (reserved bit) with a 64 KiB payload: 1002, and
	// the payload is skipped the same way.
	for _, tc := range []struct {
		name string
		b0   byte
		p    []byte
		want int
	}{
		{"reserved bit", 0xC2, closes[:64<<10], edge.CloseProtocol},
		{"reserved opcode", 0x83, closes[:200<<10], edge.CloseProtocol},
		{"fragment over the limit", 0x02, payloadWithFakeCloses(5000), edge.CloseTooBig},
	} {
		code, err := refusedFrame(t, e, "hv"+fmt.Sprint(len(tc.name)), frameWithZeroMask(tc.b0, tc.p), true)
		if code != tc.want || !errors.Is(err, io.EOF) {
			t.Fatalf("%s: close %d then %v, want %d then EOF", tc.name, code, err, tc.want)
		}
	}
	// An unmasked frame announces no mask key: its payload is skipped
	// from right after the header.
	unmasked := append([]byte{0x82, 126, 0x40, 0x00}, closes[:16<<10]...)
	code, err := refusedFrame(t, e, "unmasked", unmasked, true)
	if code != edge.CloseProtocol || !errors.Is(err, io.EOF) {
		t.Fatalf("unmasked: close %d then %v, want 1002 then EOF", code, err)
	}
	waitFor(t, "every connection closed", func() bool { return e.srv.Open() == 0 })
}

// A frame after the refused one, in the same write, is still parsed: the
// client's close right behind the payload ends the handshake.
func TestCloseRightBehindARefusedFrame(t *testing.T) {
	e := start(t, nil)
	r := rawDial(t, e.addr, "behind", token(t, "behind"), "")
	b := frameWithZeroMask(0x81, payloadWithFakeCloses(10000))
	b = append(b, frameWithZeroMask(0x88, []byte{0x03, 0xe8})...)
	r.Write(b)
	if got := r.closeCode(t); got != edge.CloseTooBig {
		t.Fatalf("close %d, want 1009", got)
	}
	if _, _, err := r.readFrame(); !errors.Is(err, io.EOF) {
		t.Fatalf("after the close: %v, want EOF", err)
	}
}

// Finding 2: 1012, 1013 and 1014 are registered codes a client may send;
// reserved and unassigned ones are still 1002.
func TestCloseCodesFromTheClient(t *testing.T) {
	e := start(t, nil)
	for _, tc := range []struct{ sent, want int }{
		{1000, 1000}, {1001, 1001}, {1003, 1003}, {1007, 1007}, {1011, 1011},
		{1012, 1012}, {1013, 1013}, {1014, 1014},
		{999, edge.CloseProtocol}, {1004, edge.CloseProtocol}, {1005, edge.CloseProtocol},
		{1006, edge.CloseProtocol}, {1015, edge.CloseProtocol}, {1016, edge.CloseProtocol},
		{2999, edge.CloseProtocol}, {3000, 3000}, {4999, 4999}, {5000, edge.CloseProtocol},
	} {
		uid := fmt.Sprintf("cc%d", tc.sent)
		r := rawDial(t, e.addr, uid, token(t, uid), "")
		r.send(0x88, []byte{byte(tc.sent >> 8), byte(tc.sent)}, true)
		if got := r.closeCode(t); got != tc.want {
			t.Errorf("client close %d: answered %d, want %d", tc.sent, got, tc.want)
		}
	}
}

// Finding 3: one request-head parser for /ws, /sse and /poll; each case
// of edgetest.HeadCases answered with its status and required headers.
func TestRequestHeads(t *testing.T) {
	e := start(t, nil)
	tok := token(t, "hc")
	for _, tc := range edgetest.HeadCases() {
		t.Run(tc.Name, func(t *testing.T) { edgetest.CheckHead(t, e.addr, e.addr, tok, tc) })
	}
}

// Finding 4: a long-poll whose client shut down its sending side while
// nothing was waiting still gets the answer docs/protocol.md promises: the
// JSON array, with the first message or [] at --poll-timeout, then the end
// of the body. An SSE stream ended that way ends with its close event.
func TestHalfClosedPollAndSSE(t *testing.T) {
	e := start(t, func(c *edge.Config) { c.PollTimeout = 500 * time.Millisecond })
	edgetest.HalfClosedCases(t, e.addr, func(uid, data string) { e.publish(uid, data) }, e.srv.Presence, func(uid string) string { return token(t, uid) })
}

// Finding 5: no message ever carries a seq over 2^53-1, whatever position
// a client resumes from: a stream that would pass it continues in a new
// epoch from 1.
func TestSeqNeverExceedsMaxSeq(t *testing.T) {
	e := start(t, nil)
	max := fmt.Sprint(uint64(edge.MaxSeq))
	type wire struct {
		Seq   uint64 `json:"seq"`
		Epoch string `json:"epoch"`
		Gap   bool   `json:"gap"`
		From  uint64 `json:"from"`
		To    uint64 `json:"to"`
	}
	readAll := func(t *testing.T, c interface {
		Read(ctx context.Context) (websocket.MessageType, []byte, error)
	}, n int) []wire {
		var got []wire
		for len(got) < n {
			_, b, err := c.Read(ctx(t))
			if err != nil {
				t.Fatalf("read: %v", err)
			}
			var w wire
			if err := json.Unmarshal(b, &w); err != nil {
				t.Fatalf("%q: %v", b, err)
			}
			if w.Seq > edge.MaxSeq || w.From > edge.MaxSeq || w.To > edge.MaxSeq {
				t.Fatalf("%s went past 2^53-1", b)
			}
			got = append(got, w)
		}
		return got
	}
	for _, tc := range []struct {
		name   string
		stored int    // messages stored before the client connects
		resume string // last_seq given
	}{
		{"at the end, nothing stored", 0, max},
		{"at the end, two stored", 2, max},
		{"one before the end, two stored", 2, fmt.Sprint(uint64(edge.MaxSeq - 1))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			uid := fmt.Sprintf("max%d%s", tc.stored, tc.resume[len(tc.resume)-1:])
			for i := 0; i < tc.stored; i++ {
				e.publish(uid, fmt.Sprint(i))
			}
			c := e.dial(uid, "&last_seq="+tc.resume)
			got := readAll(t, c, tc.stored)
			for i := 0; i < 3; i++ {
				if r := e.publish(uid, `"live"`); r.Seq > edge.MaxSeq {
					t.Fatalf("publish answered seq %d", r.Seq)
				}
			}
			got = append(got, readAll(t, c, 3)...)
			// Within each epoch seq increases by one.
			for i := 1; i < len(got); i++ {
				if got[i].Epoch == got[i-1].Epoch && got[i].Seq != got[i-1].Seq+1 {
					t.Fatalf("seq %d after %d in epoch %s", got[i].Seq, got[i-1].Seq, got[i].Epoch)
				}
			}
			// The client can resume from what it saw last.
			last := got[len(got)-1]
			c2 := e.dial(uid, fmt.Sprintf("&last_seq=%d&epoch=%s", last.Seq, last.Epoch))
			e.publish(uid, `"after"`)
			if w := readAll(t, c2, 1)[0]; w.Seq != last.Seq+1 || w.Epoch != last.Epoch {
				t.Fatalf("after resuming at %d/%s: %+v", last.Seq, last.Epoch, w)
			}
		})
	}
}

// Finding 7 on the edge's socket: header kinds HAProxy accepts (LOCAL of
// any family, TLVs, the longest v2 length) upgrade; the rest get a 400
// naming the reason (the parser's own table is pkg/proxyproto's
// TestReceiverTable).
func TestProxyHeadersOnTheEdge(t *testing.T) {
	e := start(t, func(c *edge.Config) { c.AcceptProxy = true })
	sig := append([]byte{}, proxyproto.Signature[:]...)
	v2 := func(verCmd, fam byte, body []byte) []byte {
		b := append(append([]byte{}, sig...), verCmd, fam, byte(len(body)>>8), byte(len(body)))
		return append(b, body...)
	}
	addrs := []byte{203, 0, 113, 7, 127, 0, 0, 1, 0x15, 0xb3, 0, 80}
	bigTLV := append(append([]byte{}, addrs...), 0xe0, 0xff, 0xf0)
	bigTLV = append(bigTLV, make([]byte, 0xfff0)...)
	for _, tc := range []struct {
		name   string
		header []byte
		status int
		reason string
	}{
		{"v2 LOCAL unix", v2(0x20, 0x31, make([]byte, 216)), 101, ""},
		{"v2 LOCAL unknown family", v2(0x20, 0xff, nil), 101, ""},
		{"v2 PROXY with a NOOP TLV", v2(0x21, 0x11, append(append([]byte{}, addrs...), 0x04, 0, 1, 0)), 101, ""},
		{"v2 PROXY, 64 KiB of TLV", v2(0x21, 0x11, bigTLV), 101, ""},
		{"v1 UNKNOWN with addresses", []byte("PROXY UNKNOWN ::1 ::2 1 2\r\n"), 101, ""},
		{"v2 PROXY unspec", v2(0x21, 0x00, nil), 400, "family and transport 0x00"},
		{"v2 PROXY broken TLV", v2(0x21, 0x11, append(append([]byte{}, addrs...), 0x04, 0, 9)), 400, "value bytes"},
		{"v1 port over 65535", []byte("PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n"), 400, "over 65535"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.Dial("tcp", e.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			uid := "pp" + fmt.Sprint(len(tc.name))
			go func() {
				c.Write(tc.header)
				fmt.Fprintf(c, "GET /ws?uid=%s&token=%s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
					"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", uid, token(t, uid))
			}()
			c.SetReadDeadline(time.Now().Add(20 * time.Second))
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil || resp.StatusCode != tc.status {
				t.Fatalf("%v %v, want %d", resp, err, tc.status)
			}
			body, _ := io.ReadAll(resp.Body)
			if !strings.Contains(string(body), tc.reason) {
				t.Fatalf("body %q, want it to mention %q", body, tc.reason)
			}
		})
	}
}

// The same cases as through the router (pkg/router), on the edge.
func TestRefusedFrameCases(t *testing.T) {
	e := start(t, nil)
	edgetest.RefusedFrameCases(t, e.addr, func(uid string) string { return token(t, uid) })
}
