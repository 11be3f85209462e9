package httphead

import (
	"bytes"
	"strings"
	"testing"
)

const ws = "Upgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"

func TestParseAccepts(t *testing.T) {
	for _, tt := range []struct {
		head                      string
		method, path, query, host string
		authority                 string
		minor                     int
		hasQuery                  bool
	}{
		{"GET /ws?uid=a&token=b HTTP/1.1\r\nHost: x\r\n\r\n", "GET", "/ws", "uid=a&token=b", "x", "", 1, true},
		{"GET http://h:80/ws?uid=a HTTP/1.1\r\nHost: x\r\n\r\n", "GET", "/ws", "uid=a", "x", "h:80", 1, true},
		{"GET https://h?uid=a HTTP/1.1\r\nHost: h\r\n\r\n", "GET", "/", "uid=a", "h", "h", 1, true},
		{"GET /p? HTTP/1.0\r\nHost: [::1]:8080\r\n\r\n", "GET", "/p", "", "[::1]:8080", "", 0, true},
		{"\r\n\r\nGET / HTTP/1.1\r\nhOsT:\t 1.2.3.4 \t\r\n\r\n", "GET", "/", "", "1.2.3.4", "", 1, false},
		{"PATCH /x HTTP/1.9\r\nHost: a\r\nContent-Length: 0\r\n\r\n", "PATCH", "/x", "", "a", "", 9, false},
	} {
		var r Request
		if err := Parse([]byte(tt.head), &r); err != nil {
			t.Errorf("%q: %v", tt.head, err)
			continue
		}
		if string(r.Method) != tt.method || string(r.Path) != tt.path || string(r.Query) != tt.query ||
			string(r.Host) != tt.host || string(r.Authority) != tt.authority || r.Minor != tt.minor || (r.Query != nil) != tt.hasQuery {
			t.Errorf("%q: got %q %q %q(%v) host %q authority %q minor %d", tt.head, r.Method, r.Path, r.Query, r.Query != nil, r.Host, r.Authority, r.Minor)
		}
	}
}

func TestParseRefuses(t *testing.T) {
	for _, tt := range []struct {
		head string
		want *Error
	}{
		{"GET /ws HTTP/1.1\r\n\r\n", ErrNoHost},
		{"GET /ws HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", ErrTwoHosts},
		{"GET /ws HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n", ErrTwoHosts},
		{"GET /ws HTTP/1.1\r\nHost: a b\r\n\r\n", ErrBadHost},
		{"GET /ws HTTP/1.1\r\nHost: a/b\r\n\r\n", ErrBadHost},
		{"GET /ws HTTP/1.1\r\nHost: a:b\r\n\r\n", ErrBadHost},
		{"GET /ws HTTP/1.1\r\nHost: [zz]\r\n\r\n", ErrBadHost},
		{"GET /ws HTTP/1.1\r\nHost: :80\r\n\r\n", ErrBadHost},
		{"GET /ws HTTP/1.1\r\nHost: a\r\nOrigin : x\r\n\r\n", ErrFieldName},
		{"GET /ws HTTP/1.1\r\nHost: a\r\nOrigin\t: x\r\n\r\n", ErrFieldName},
		{"GET /ws HTTP/1.1\r\nHost: a\r\n: x\r\n\r\n", ErrFieldName},
		{"GET /ws HTTP/1.1\r\nHost: a\r\nno colon\r\n\r\n", ErrFieldName},
		{"GET /ws HTTP/1.1\r\nHost: a\r\nX-\x01: x\r\n\r\n", ErrFieldName},
		{"GET /ws HTTP/1.1\r\n Host: a\r\n\r\n", ErrFolded},
		{"GET /ws HTTP/1.1\r\nHost: a\r\nX: 1\r\n\t2\r\n\r\n", ErrFolded},
		{"GET /ws HTTP/1.1\r\nHost: a\nX: 1\r\n\r\n", ErrLineEnding},
		{"GET /ws HTTP/1.1\r\nHost: a\rX: 1\r\n\r\n", ErrLineEnding},
		{"GET /ws\r HTTP/1.1\r\nHost: a\r\n\r\n", ErrLineEnding},
		{"GET /ws HTTP/1.1\r\nHost: a\r\nX: \x00\r\n\r\n", ErrFieldValue},
		{"GET /ws HTTP/1.1\r\nHost: a\r\nX: \x7f\r\n\r\n", ErrFieldValue},
		{"GET /ws FOO/1.1\r\nHost: a\r\n\r\n", ErrProtocol},
		{"GET /ws http/1.1\r\nHost: a\r\n\r\n", ErrProtocol},
		{"GET /ws HTTP/1.10\r\nHost: a\r\n\r\n", ErrProtocol},
		{"GET /ws HTTP/1\r\nHost: a\r\n\r\n", ErrProtocol},
		{"GET /ws HTTP/2.0\r\nHost: a\r\n\r\n", ErrVersion},
		{"GET /ws HTTP/0.9\r\nHost: a\r\n\r\n", ErrVersion},
		{"GET /ws HTTP/1.1 x\r\nHost: a\r\n\r\n", ErrRequestLine},
		{"GET  /ws HTTP/1.1\r\nHost: a\r\n\r\n", ErrRequestLine},
		{"GET /ws\r\nHost: a\r\n\r\n", ErrRequestLine},
		{" GET /ws HTTP/1.1\r\nHost: a\r\n\r\n", ErrRequestLine},
		{"G(T /ws HTTP/1.1\r\nHost: a\r\n\r\n", ErrMethod},
		{"GET ws HTTP/1.1\r\nHost: a\r\n\r\n", ErrTarget},
		{"GET * HTTP/1.1\r\nHost: a\r\n\r\n", ErrTarget},
		{"GET h:80 HTTP/1.1\r\nHost: a\r\n\r\n", ErrTarget},
		{"GET http:/ws HTTP/1.1\r\nHost: a\r\n\r\n", ErrTarget},
		{"GET http:///ws HTTP/1.1\r\nHost: a\r\n\r\n", ErrTarget},
		{"GET http://u@h/ws HTTP/1.1\r\nHost: a\r\n\r\n", ErrTarget},
		{"GET 1http://h/ws HTTP/1.1\r\nHost: a\r\n\r\n", ErrTarget},
		{"GET /ws#f HTTP/1.1\r\nHost: a\r\n\r\n", ErrTarget},
		{"GET /w\x80s HTTP/1.1\r\nHost: a\r\n\r\n", ErrTarget},
		{"GET /ws HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", ErrContent},
		{"GET /ws HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\n", ErrContent},
		{"GET /ws HTTP/1.1\r\nHost: a\r\nContent-Length: 00\r\n\r\n", ErrContent},
		{"GET /ws HTTP/1.1\r\nHost: a\r\n", ErrIncomplete},
		{"GET /ws HTTP/1.1\r\nHost: a\r\n" + strings.Repeat("X: 1\r\n", MaxFields) + "\r\n", ErrTooManyLines},
	} {
		var r Request
		if err := Parse([]byte(tt.head), &r); err != tt.want {
			t.Errorf("%q: %v, want %v", tt.head, err, tt.want)
		}
	}
}

func TestGetAndHasToken(t *testing.T) {
	var r Request
	head := "GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\nx-a: 2\r\nConnection: keep-alive,  UPGRADE \r\n\r\n"
	if err := Parse([]byte(head), &r); err != nil {
		t.Fatal(err)
	}
	if v, n := r.Get("X-A"); string(v) != "1" || n != 2 {
		t.Fatalf("Get = %q %d", v, n)
	}
	if _, n := r.Get("X-B"); n != 0 {
		t.Fatal("absent field found")
	}
	if !r.HasToken("connection", "upgrade") || r.HasToken("Connection", "upgr") || r.HasToken("X-A", "3") {
		t.Fatal("HasToken")
	}
}

func TestQueryParam(t *testing.T) {
	for _, tt := range []struct {
		q, name, v string
		ok         bool
	}{
		{"uid=a&token=b", "uid", "a", true},
		{"token=b&uid=a", "uid", "a", true},
		{"uid=a&uid=b", "uid", "a", true},
		{"xuid=1&uid=2", "uid", "2", true},
		{"uid&uid=3", "uid", "3", true},
		{"uid=", "uid", "", true},
		{"UID=1", "uid", "", false},
		{"", "uid", "", false},
	} {
		v, ok := QueryParam([]byte(tt.q), tt.name)
		if string(v) != tt.v || ok != tt.ok {
			t.Errorf("QueryParam(%q, %q) = %q %v", tt.q, tt.name, v, ok)
		}
	}
}

func TestCheckUpgrade(t *testing.T) {
	for _, tt := range []struct {
		head string
		want *Error
	}{
		{"GET /ws HTTP/1.1\r\nHost: a\r\n" + ws + "\r\n", nil},
		{"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: h2c, WebSocket\r\nConnection: upgrade\r\nSec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\nSec-WebSocket-Version: 13\r\n\r\n", nil},
		{"HEAD /ws HTTP/1.1\r\nHost: a\r\n" + ws + "\r\n", ErrWSNotGET},
		{"GET /ws HTTP/1.0\r\nHost: a\r\n" + ws + "\r\n", ErrHTTP11},
		{"GET /ws HTTP/1.1\r\nHost: a\r\n\r\n", ErrNotUpgrade},
		{"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", ErrConnection},
		{"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n", ErrKey},
		{"GET /ws HTTP/1.1\r\nHost: a\r\n" + ws + "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n", ErrKeyRepeated},
		{"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n", ErrVersion13},
		{"GET /ws HTTP/1.1\r\nHost: a\r\n" + ws + "Sec-WebSocket-Version: 13\r\n\r\n", ErrVersion13},
	} {
		var r Request
		if err := Parse([]byte(tt.head), &r); err != nil {
			t.Fatalf("%q: %v", tt.head, err)
		}
		if _, err := CheckUpgrade(&r); err != tt.want {
			t.Errorf("%q: %v, want %v", tt.head, err, tt.want)
		}
	}
}

func TestValidKey(t *testing.T) {
	for key, ok := range map[string]bool{
		"dGhlIHNhbXBsZSBub25jZQ==": true,
		"AAAAAAAAAAAAAAAAAAAAAA==": true,
		"!!!!!!!!!!!!!!!!!!!!!!!!": false,
		"AAAAAAAAAAAAAAAAAAAAAAA=": false, // 17 bytes
		"AAAAAAAAAAAAAAAAAAAAAAAA": false, // 18 bytes
		"AAAAAAAAAAAAAAAAAAAAAB==": false, // non-canonical last character
		"AAAAAAAAAAAAAAAAAAAAAA":   false, // unpadded
		"dGhlIHNhbXBsZSBub25jZQ=":  false,
		"":                         false,
	} {
		if ValidKey([]byte(key)) != ok {
			t.Errorf("ValidKey(%q) = %v", key, !ok)
		}
	}
	// RFC 6455 section 1.3's example.
	if a := AcceptKey([]byte("dGhlIHNhbXBsZSBub25jZQ==")); string(a[:]) != "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" {
		t.Fatalf("AcceptKey = %s", a)
	}
}

func TestAnswersCarryRequiredHeaders(t *testing.T) {
	for _, st := range []int{400, 401, 403, 404, 405, 426, 431, 503, 505} {
		b := string((&Error{Status: st, Reason: "why"}).Append(nil))
		if name, _ := RequiredHeader(st); name != "" && !strings.Contains(b, "\r\n"+name+": ") {
			t.Errorf("%d lacks %s:\n%s", st, name, b)
		}
		if !strings.HasSuffix(b, "\r\n\r\nwhy") || !strings.Contains(b, "Content-Length: 3\r\n") {
			t.Errorf("%d body:\n%s", st, b)
		}
	}
	b := string(ErrVersion13.Append(nil))
	if strings.Count(b, "Upgrade: websocket") != 1 || !strings.Contains(b, "Sec-WebSocket-Version: 13\r\n") || !strings.Contains(b, "Connection: Upgrade, close") {
		t.Fatalf("426 for the version:\n%s", b)
	}
	b = string((&Error{Status: 401, Reason: "x", Header: "www-authenticate: Bearer error=\"invalid_token\"\r\n"}).Append(nil))
	if strings.Count(strings.ToLower(b), "www-authenticate") != 1 {
		t.Fatalf("401 with its own challenge got a second one:\n%s", b)
	}
}

func TestParseAllocatesNothing(t *testing.T) {
	head := []byte("GET /ws?uid=a&token=b HTTP/1.1\r\nHost: x\r\nOrigin: http://x\r\n" + ws + "\r\n")
	var r Request
	allocs := testing.AllocsPerRun(100, func() {
		if Parse(head, &r) != nil {
			t.Fatal("parse")
		}
		if _, err := CheckUpgrade(&r); err != nil {
			t.Fatal(err)
		}
		r.Param("uid")
		AcceptKey([]byte("dGhlIHNhbXBsZSBub25jZQ=="))
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per parse", allocs)
	}
}

func BenchmarkParse(b *testing.B) {
	head := []byte("GET /ws?uid=user-42&token=eyJhbGciOiJIUzI1NiJ9.e30.sig HTTP/1.1\r\nHost: push.example.com\r\n" +
		"User-Agent: Mozilla/5.0\r\nOrigin: https://app.example.com\r\nCookie: a=1; b=2\r\n" + ws + "\r\n")
	var r Request
	b.SetBytes(int64(len(head)))
	b.ReportAllocs()
	for b.Loop() {
		if Parse(head, &r) != nil {
			b.Fatal("parse")
		}
	}
}

// FuzzParse: Parse never panics, and what it accepts is self-consistent.
// Seeded with the request-head findings of issue 11.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"GET /ws?uid=a&token=b HTTP/1.1\r\nHost: x\r\n" + ws + "\r\n",
		"GET http://host/ws?uid=a&token=b HTTP/1.1\r\nHost: host\r\n" + ws + "\r\n",
		"GET /sse?uid=a HTTP/1.1\r\n\r\n",
		"GET /poll?uid=a HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
		"GET /ws?uid=a HTTP/1.1\r\nHost: a\r\nOrigin : x\r\n\r\n",
		"GET /sse?uid=a FOO/1.1\r\nHost: a\r\n\r\n",
		"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: !!!!!!!!!!!!!!!!!!!!!!!!\r\nSec-WebSocket-Version: 13\r\n\r\n",
		"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAAA=\r\nSec-WebSocket-Version: 13\r\n\r\n",
		"GET /ws HTTP/1.1\r\nHost: a\r\n" + ws + "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
		"GET /ws HTTP/1.1\r\nHost: [::1]:80\r\nX: 1\r\n 2\r\n\r\n",
		"\r\nGET http://u@h/ HTTP/2.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, head []byte) {
		var r Request
		err := Parse(head, &r)
		if err != nil {
			if _, ok := err.(*Error); !ok {
				t.Fatalf("error of type %T", err)
			}
			return
		}
		if !isToken(r.Method) || len(r.Path) == 0 || r.Path[0] != '/' || !validHost(r.Host) || len(r.Fields) > MaxFields {
			t.Fatalf("accepted %q as %+v", head, r)
		}
		for _, fl := range r.Fields {
			if !isToken(fl.Name) || bytes.ContainsAny(fl.Value, "\r\n\x00") {
				t.Fatalf("accepted field %q: %q", fl.Name, fl.Value)
			}
		}
		if r.Query != nil {
			if v, ok := r.Param("uid"); ok && !bytes.Contains(r.Query, v) {
				t.Fatalf("uid %q not in query %q", v, r.Query)
			}
		}
		if key, herr := CheckUpgrade(&r); herr == nil && !ValidKey(key) {
			t.Fatalf("upgrade accepted key %q", key)
		}
		var again Request
		if Parse(head, &again) != nil || string(again.Target) != string(r.Target) {
			t.Fatal("a second parse disagrees")
		}
	})
}
