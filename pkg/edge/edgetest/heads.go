package edgetest

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/pushcluster/push/pkg/httphead"
)

// HeadCase is one request head and the status the cluster answers it
// with, the same on an edge and through a router (docs/protocol.md,
// "Conformance").
type HeadCase struct {
	Name   string
	Head   string // with {T} for a valid token of user "hc", {H} for the Host value
	Status int
	// Header names a field the answer must carry besides the one RFC 9110
	// requires for Status (checked always), "" for none.
	Header string
}

const wsFields = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"

// HeadCases are the request-head findings of issue 11, each kind on every
// path it applies to.
func HeadCases() []HeadCase {
	cs := []HeadCase{
		{"ws absolute-form", "GET http://{H}/ws?uid=hc&token={T} HTTP/1.1\r\nHost: {H}\r\n" + wsFields + "\r\n", 101, "Sec-WebSocket-Accept"},
		{"ws origin-form", "GET /ws?uid=hc&token={T} HTTP/1.1\r\nHost: {H}\r\n" + wsFields + "\r\n", 101, "Sec-WebSocket-Accept"},
		{"ws leading empty line", "\r\nGET /ws?uid=hc&token={T} HTTP/1.1\r\nHost: {H}\r\n" + wsFields + "\r\n", 101, ""},
		{"ws key of 24 bangs", "GET /ws?uid=hc&token={T} HTTP/1.1\r\nHost: {H}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: !!!!!!!!!!!!!!!!!!!!!!!!\r\nSec-WebSocket-Version: 13\r\n\r\n", 400, ""},
		{"ws key of 17 bytes", "GET /ws?uid=hc&token={T} HTTP/1.1\r\nHost: {H}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAAA=\r\nSec-WebSocket-Version: 13\r\n\r\n", 400, ""},
		{"ws key of 15 bytes", "GET /ws?uid=hc&token={T} HTTP/1.1\r\nHost: {H}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAA\r\nSec-WebSocket-Version: 13\r\n\r\n", 400, ""},
		{"ws two keys", "GET /ws?uid=hc&token={T} HTTP/1.1\r\nHost: {H}\r\n" + wsFields + "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n", 400, ""},
		{"ws no key", "GET /ws?uid=hc&token={T} HTTP/1.1\r\nHost: {H}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n", 400, ""},
		{"ws no upgrade", "GET /ws?uid=hc&token={T} HTTP/1.1\r\nHost: {H}\r\n\r\n", 426, ""},
		{"ws no connection upgrade", "GET /ws?uid=hc&token={T} HTTP/1.1\r\nHost: {H}\r\nUpgrade: websocket\r\nConnection: keep-alive\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", 400, ""},
		{"ws version 8", "GET /ws?uid=hc&token={T} HTTP/1.1\r\nHost: {H}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n", 426, "Sec-WebSocket-Version"},
		{"ws HTTP/1.0", "GET /ws?uid=hc&token={T} HTTP/1.0\r\nHost: {H}\r\n" + wsFields + "\r\n", 400, ""},
		{"ws POST", "POST /ws?uid=hc&token={T} HTTP/1.1\r\nHost: {H}\r\n" + wsFields + "\r\n", 405, ""},
		{"ws bad token", "GET /ws?uid=hc&token=nope HTTP/1.1\r\nHost: {H}\r\n" + wsFields + "\r\n", 401, ""},
		{"ws forbidden origin", "GET /ws?uid=hc&token={T} HTTP/1.1\r\nHost: {H}\r\nOrigin: https://evil.example\r\n" + wsFields + "\r\n", 403, ""},
		{"ws own origin", "GET /ws?uid=hc&token={T} HTTP/1.1\r\nHost: {H}\r\nOrigin: http://{H}\r\n" + wsFields + "\r\n", 101, ""},
		{"unknown path", "GET /other?uid=hc HTTP/1.1\r\nHost: {H}\r\n\r\n", 404, ""},
		{"HTTP/2.0", "GET /ws?uid=hc&token={T} HTTP/2.0\r\nHost: {H}\r\n" + wsFields + "\r\n", 505, ""},
		{"sse absolute-form", "GET http://{H}/sse?uid=hc&token={T} HTTP/1.1\r\nHost: {H}\r\n\r\n", 200, "Content-Type"},
		{"poll absolute-form", "GET http://{H}/poll?uid=hc&token={T} HTTP/1.1\r\nHost: {H}\r\n\r\n", 200, "Content-Type"},
		{"sse bad token", "GET /sse?uid=hc&token=nope HTTP/1.1\r\nHost: {H}\r\n\r\n", 401, ""},
		{"poll POST", "POST /poll?uid=hc&token={T} HTTP/1.1\r\nHost: {H}\r\n\r\n", 405, ""},
		{"sse bad Last-Event-ID", "GET /sse?uid=hc&token={T} HTTP/1.1\r\nHost: {H}\r\nLast-Event-ID: x:y\r\n\r\n", 400, ""},
	}
	// The same syntax findings on every path.
	for _, p := range []string{"ws", "sse", "poll"} {
		ws := ""
		if p == "ws" {
			ws = wsFields
		}
		q := "/" + p + "?uid=hc&token={T}"
		cs = append(cs,
			HeadCase{p + " no Host", "GET " + q + " HTTP/1.1\r\n" + ws + "\r\n", 400, ""},
			HeadCase{p + " two Hosts", "GET " + q + " HTTP/1.1\r\nHost: {H}\r\nHost: {H}\r\n" + ws + "\r\n", 400, ""},
			HeadCase{p + " empty Host", "GET " + q + " HTTP/1.1\r\nHost: \r\n" + ws + "\r\n", 400, ""},
			HeadCase{p + " space before colon", "GET " + q + " HTTP/1.1\r\nHost: {H}\r\nOrigin : http://{H}\r\n" + ws + "\r\n", 400, ""},
			HeadCase{p + " FOO/1.1", "GET " + q + " FOO/1.1\r\nHost: {H}\r\n" + ws + "\r\n", 400, ""},
			HeadCase{p + " HTTP/1.10", "GET " + q + " HTTP/1.10\r\nHost: {H}\r\n" + ws + "\r\n", 400, ""},
			HeadCase{p + " folded line", "GET " + q + " HTTP/1.1\r\nHost: {H}\r\nX-A: 1\r\n 2\r\n" + ws + "\r\n", 400, ""},
			HeadCase{p + " bare LF", "GET " + q + " HTTP/1.1\r\nHost: {H}\nX-A: 1\r\n" + ws + "\r\n", 400, ""},
			// Lines ending with LF alone, up to the blank line: no CRLF
			// CRLF ever comes, so the 400 must not wait for one.
			HeadCase{p + " LF line endings", strings.ReplaceAll("GET "+q+" HTTP/1.1\r\nHost: {H}\r\n"+ws+"\r\n", "\r\n", "\n"), 400, ""},
			HeadCase{p + " LF before the blank line", "GET " + q + " HTTP/1.1\r\n" + ws + "Host: {H}\n\r\n", 400, ""},
			HeadCase{p + " NUL in value", "GET " + q + " HTTP/1.1\r\nHost: {H}\r\nX-A: a\x00b\r\n" + ws + "\r\n", 400, ""},
			HeadCase{p + " Transfer-Encoding", "GET " + q + " HTTP/1.1\r\nHost: {H}\r\nTransfer-Encoding: chunked\r\n" + ws + "\r\n", 400, ""},
			HeadCase{p + " Content-Length 5", "GET " + q + " HTTP/1.1\r\nHost: {H}\r\nContent-Length: 5\r\n" + ws + "\r\n", 400, ""},
			HeadCase{p + " two spaces", "GET  " + q + " HTTP/1.1\r\nHost: {H}\r\n" + ws + "\r\n", 400, ""},
			HeadCase{p + " fragment", "GET " + q + "#x HTTP/1.1\r\nHost: {H}\r\n" + ws + "\r\n", 400, ""},
			HeadCase{p + " no uid", "GET /" + p + "?token={T} HTTP/1.1\r\nHost: {H}\r\n" + ws + "\r\n", 400, ""},
			HeadCase{p + " bad uid", "GET /" + p + "?uid=a%20b&token={T} HTTP/1.1\r\nHost: {H}\r\n" + ws + "\r\n", 400, ""},
			HeadCase{p + " last_seq over 2^53-1", "GET " + q + "&last_seq=9007199254740992 HTTP/1.1\r\nHost: {H}\r\n" + ws + "\r\n", 400, ""},
			HeadCase{p + " two Origins", "GET " + q + " HTTP/1.1\r\nHost: {H}\r\nOrigin: http://{H}\r\nOrigin: http://{H}\r\n" + ws + "\r\n", 400, ""},
		)
	}
	return cs
}

// CheckHead sends tc's head to addr (host is the Host value, tok a valid
// token of user "hc") on a real socket and checks the answer's status and
// headers: the one RFC 9110 requires for the status and tc.Header.
func CheckHead(t *testing.T, addr, host, tok string, tc HeadCase) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	head := strings.NewReplacer("{T}", tok, "{H}", host).Replace(tc.Head)
	if _, err := c.Write([]byte(head)); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("%s: no answer: %v", tc.Name, err)
	}
	resp.Body.Close()
	if resp.StatusCode != tc.Status {
		t.Fatalf("%s: status %d, want %d", tc.Name, resp.StatusCode, tc.Status)
	}
	if name, _ := httphead.RequiredHeader(tc.Status); name != "" && resp.Header.Get(name) == "" {
		t.Fatalf("%s: %d without %s", tc.Name, tc.Status, name)
	}
	if tc.Status == 426 && !strings.EqualFold(resp.Header.Get("Upgrade"), "websocket") {
		t.Fatalf("%s: 426 with Upgrade %q", tc.Name, resp.Header.Get("Upgrade"))
	}
	if tc.Header != "" && resp.Header.Get(tc.Header) == "" {
		t.Fatalf("%s: %d without %s", tc.Name, tc.Status, tc.Header)
	}
}

// halfClosed sends a GET for path on a real socket, shuts down the
// socket's sending side (shutdown(SHUT_WR)) and returns the reader of
// the answer, positioned after the head.
func halfClosed(t *testing.T, addr, path string) (*http.Response, *net.TCPConn) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	tc := c.(*net.TCPConn)
	t.Cleanup(func() { tc.Close() })
	tc.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := fmt.Fprintf(tc, "GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", path, addr); err != nil {
		t.Fatal(err)
	}
	if err := tc.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(tc), nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET %s half-closed: %v %v", path, resp, err)
	}
	return resp, tc
}

// HalfClosedCases runs finding 4's cases against addr (an edge, or a
// router in front of edges): publish sends data to uid's edge, presence
// counts uid's connections there.
func HalfClosedCases(t *testing.T, addr string, publish func(uid, data string), presence func(string) int, tok func(string) string) {
	t.Helper()
	// A message after the half-close answers the held poll.
	resp, _ := halfClosed(t, addr, "/poll?uid=hp1&token="+tok("hp1")+"&last_seq=0")
	waitFor(t, "the poll held", func() bool { return presence("hp1") == 1 })
	publish("hp1", `{"n":1}`)
	body, err := io.ReadAll(resp.Body)
	var items []map[string]any
	if err != nil || json.Unmarshal(body, &items) != nil || len(items) != 1 || items[0]["seq"] != float64(1) {
		t.Fatalf("half-closed poll answered %q %v, want one message", body, err)
	}
	// Nothing at all: [] at the poll timeout.
	resp, _ = halfClosed(t, addr, "/poll?uid=hp2&token="+tok("hp2"))
	if body, err := io.ReadAll(resp.Body); err != nil || string(body) != "[]" {
		t.Fatalf("half-closed idle poll answered %q %v, want []", body, err)
	}
	// SSE: the stream ends with its close event, then the connection.
	resp, _ = halfClosed(t, addr, "/sse?uid=hs1&token="+tok("hs1"))
	body, err = io.ReadAll(resp.Body)
	if err != nil || !strings.Contains(string(body), "event: close\ndata: {\"close\":1000,") || !strings.HasSuffix(string(body), "\n\n") {
		t.Fatalf("half-closed SSE stream: %q %v, want its close event", body, err)
	}
	waitFor(t, "nothing held", func() bool { return presence("hp1")+presence("hp2")+presence("hs1") == 0 })
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
