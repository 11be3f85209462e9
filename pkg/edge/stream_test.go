package edge_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/pushcluster/push/pkg/edge"
	"github.com/pushcluster/push/pkg/proxyproto"
	pushv1 "github.com/pushcluster/push/proto/push/v1"
)

// sseReader reads Server-Sent Events from a streaming response.
type sseReader struct {
	resp *http.Response
	br   *bufio.Reader
}

type event struct{ id, name, data string }

func openSSE(t *testing.T, e *env, uid, extra string, hdr http.Header) *sseReader {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx(t), "GET", fmt.Sprintf("http://%s/sse?uid=%s&token=%s%s", e.addr, uid, token(t, uid), extra), nil)
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		t.Fatalf("sse: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	return &sseReader{resp: resp, br: bufio.NewReader(resp.Body)}
}

// next returns the next event, skipping comments (pings).
func (r *sseReader) next(t *testing.T) event {
	t.Helper()
	var ev event
	for {
		line, err := r.br.ReadString('\n')
		if err != nil {
			t.Fatalf("sse read: %v", err)
		}
		line = strings.TrimRight(line, "\n")
		switch {
		case line == "":
			if ev.data != "" {
				return ev
			}
		case strings.HasPrefix(line, ":"):
		case strings.HasPrefix(line, "id: "):
			ev.id = line[4:]
		case strings.HasPrefix(line, "event: "):
			ev.name = line[7:]
		case strings.HasPrefix(line, "data: "):
			ev.data += line[6:]
		}
	}
}

func TestSSEDeliversAndResumes(t *testing.T) {
	e := start(t, nil)
	r := openSSE(t, e, "sam", "", nil)
	waitFor(t, "registration", func() bool { return e.srv.Presence("sam") == 1 })
	e.publish("sam", "{\n  \"text\": \"two lines of JSON\"\n}")
	e.publish("sam", `plain`)
	var epoch string
	for i, want := range []string{`,"data":{"text":"two lines of JSON"}}`, `,"data":"plain"}`} {
		ev := r.next(t)
		var m struct {
			Seq   uint64 `json:"seq"`
			Epoch string `json:"epoch"`
		}
		json.Unmarshal([]byte(ev.data), &m)
		if i == 0 {
			epoch = m.Epoch
		}
		wantData := fmt.Sprintf(`{"seq":%d,"epoch":%q`, i+1, epoch) + want
		if epoch == "" || m.Epoch != epoch || ev.id != fmt.Sprintf("%s:%d", epoch, i+1) || ev.data != wantData {
			t.Fatalf("event %d: id %q data %q, want id %s:%d data %q", i, ev.id, ev.data, epoch, i+1, wantData)
		}
	}
	r.resp.Body.Close()
	waitFor(t, "detach", func() bool { return e.srv.Presence("sam") == 0 })
	e.publish("sam", `3`)
	e.publish("sam", `4`)
	// EventSource resends the last id it saw as Last-Event-ID.
	r2 := openSSE(t, e, "sam", "", http.Header{"Last-Event-Id": {epoch + ":2"}})
	for _, want := range []string{epoch + ":3", epoch + ":4"} {
		if ev := r2.next(t); ev.id != want {
			t.Fatalf("resumed id %q, want %q", ev.id, want)
		}
	}
	// Kicked: a close event with the WebSocket code, then the stream ends.
	if _, err := e.push.Kick(ctx(t), &pushv1.KickRequest{UserId: "sam", Reason: "bye"}); err != nil {
		t.Fatal(err)
	}
	ev := r2.next(t)
	var c struct {
		Close  int    `json:"close"`
		Reason string `json:"reason"`
	}
	if json.Unmarshal([]byte(ev.data), &c); ev.name != "close" || c.Close != edge.CloseKicked || c.Reason != "bye" {
		t.Fatalf("close event %+v", ev)
	}
	if _, err := r2.br.ReadString('\n'); err != io.EOF {
		t.Fatalf("stream should end after the close event: %v", err)
	}
}

func poll(t *testing.T, e *env, uid, extra string) (int, []json.RawMessage, http.Header) {
	t.Helper()
	resp, err := http.Get(fmt.Sprintf("http://%s/poll?uid=%s&token=%s%s", e.addr, uid, token(t, uid), extra))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var items []json.RawMessage
	if resp.StatusCode == 200 {
		if err := json.NewDecoder(resp.Body).Decode(&items); err != nil {
			t.Fatalf("poll body: %v", err)
		}
	}
	return resp.StatusCode, items, resp.Header
}

func TestLongPoll(t *testing.T) {
	e := start(t, func(c *edge.Config) { c.PollTimeout = 300 * time.Millisecond })
	// Stored messages come back at once, in one answer.
	e.publish("pia", `1`)
	e.publish("pia", `2`)
	code, items, _ := poll(t, e, "pia", "")
	var first struct {
		Epoch string `json:"epoch"`
	}
	if len(items) > 0 {
		json.Unmarshal(items[0], &first)
	}
	ep := first.Epoch
	if code != 200 || len(items) != 2 || ep == "" || string(items[0]) != `{"seq":1,"epoch":"`+ep+`","data":1}` || string(items[1]) != `{"seq":2,"epoch":"`+ep+`","data":2}` {
		t.Fatalf("poll: %d %s", code, items)
	}
	// Nothing pending: held, and answered by the next publish.
	done := make(chan []json.RawMessage)
	go func() {
		_, items, _ := poll(t, e, "pia", "&last_seq=2&epoch="+ep)
		done <- items
	}()
	waitFor(t, "poll held", func() bool { return e.srv.Presence("pia") == 1 })
	e.publish("pia", `"three"`)
	if got := <-done; len(got) != 1 || string(got[0]) != `{"seq":3,"epoch":"`+ep+`","data":"three"}` {
		t.Fatalf("held poll answered %s", got)
	}
	// Nothing at all: an empty answer after PollTimeout.
	if code, items, _ := poll(t, e, "pia", "&last_seq=3&epoch="+ep); code != 200 || len(items) != 0 {
		t.Fatalf("timed-out poll: %d %s", code, items)
	}
	// Bad token: 401 like the WebSocket endpoint.
	resp, err := http.Get(fmt.Sprintf("http://%s/poll?uid=pia&token=forged", e.addr))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("forged token: %d", resp.StatusCode)
	}
}

func TestStreamsGetBroadcastsAndCORS(t *testing.T) {
	e := start(t, func(c *edge.Config) { c.AllowedOrigins = []string{"https://app.example.com"} })
	r := openSSE(t, e, "sid", "", http.Header{"Origin": {"https://app.example.com"}})
	if got := r.resp.Header.Get("Access-Control-Allow-Origin"); got != "https://app.example.com" {
		t.Fatalf("CORS header %q", got)
	}
	done := make(chan []json.RawMessage)
	go func() { _, items, _ := poll(t, e, "pol", ""); done <- items }()
	waitFor(t, "both attached", func() bool { return e.srv.Presence("sid")+e.srv.Presence("pol") == 2 })
	if _, err := e.push.Broadcast(ctx(t), &pushv1.BroadcastRequest{Data: []byte(`"all"`)}); err != nil {
		t.Fatal(err)
	}
	ev := r.next(t)
	for ev.data == `{"seq":0,"hb":true}` {
		ev = r.next(t)
	}
	if ev.data != `{"seq":0,"broadcast":true,"data":"all"}` {
		t.Fatalf("sse broadcast %q", ev.data)
	}
	if got := <-done; len(got) != 1 || string(got[0]) != `{"seq":0,"broadcast":true,"data":"all"}` {
		t.Fatalf("poll broadcast %s", got)
	}
	// A 401 to an allowed Origin carries CORS, so the page sees it.
	req401, _ := http.NewRequest("GET", fmt.Sprintf("http://%s/poll?uid=x&token=forged", e.addr), nil)
	req401.Header.Set("Origin", "https://app.example.com")
	resp401, err := http.DefaultClient.Do(req401)
	if err != nil {
		t.Fatal(err)
	}
	resp401.Body.Close()
	if resp401.StatusCode != http.StatusUnauthorized || resp401.Header.Get("Access-Control-Allow-Origin") != "https://app.example.com" {
		t.Fatalf("401 to an allowed origin: %d, CORS %q", resp401.StatusCode, resp401.Header.Get("Access-Control-Allow-Origin"))
	}
	// A disallowed Origin is refused before anything else.
	req, _ := http.NewRequest("GET", fmt.Sprintf("http://%s/sse?uid=x&token=%s", e.addr, token(t, "x")), nil)
	req.Header.Set("Origin", "https://evil.example.com")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("bad origin: %d", resp.StatusCode)
	}
}

// Handshakes are limited per browser address (from the router's PROXY
// header): one address over its budget gets 429, another is untouched.
func TestHandshakesPerIP(t *testing.T) {
	e := start(t, func(c *edge.Config) {
		c.AcceptProxy, c.HandshakesPerIP, c.PollTimeout = true, 0.01, 100*time.Millisecond // a burst of 1, then 1 per 100 s
	})
	try := func(src string) int {
		c, err := net.Dial("tcp", e.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write(proxyproto.AppendV2(nil, netip.MustParseAddrPort(src+":4000"), netip.MustParseAddrPort("127.0.0.1:80")))
		fmt.Fprintf(c, "GET /poll?uid=rl&token=%s HTTP/1.1\r\nHost: x\r\n\r\n", token(t, "rl"))
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode
	}
	if got := []int{try("198.51.100.1"), try("198.51.100.1")}; got[0] != 200 || got[1] != http.StatusTooManyRequests {
		t.Fatalf("two handshakes from one address with a burst of 1: %v, want [200 429]", got)
	}
	if got := try("198.51.100.2"); got != 200 {
		t.Fatalf("another address got %d", got)
	}
}
