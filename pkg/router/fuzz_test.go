package router

import (
	"bytes"
	"testing"

	"github.com/pushcluster/push/pkg/httphead"
	"github.com/pushcluster/push/pkg/ring"
)

// FuzzExtractKey: the router's peek never panics; it refuses exactly the
// heads httphead refuses (the edge's parser), with the same status; the
// key it routes by is part of the head, and for url_param it is the uid
// the edge admits (httphead.QueryParam) and what ring.URLParam, the rule
// checked against HAProxy, finds in the target. Seeded with the
// request-head findings of issue 11.
func FuzzExtractKey(f *testing.F) {
	ws := "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
	for _, s := range []string{
		"GET /ws?uid=a&token=t HTTP/1.1\r\nHost: h\r\n" + ws + "\r\n",
		"GET http://h/ws?uid=a&token=t HTTP/1.1\r\nHost: h\r\n" + ws + "\r\n",
		"GET /ws?uid&uid=b HTTP/1.1\r\nHost: h\r\nX-User-Id: k, l\r\nCookie: a=1; uid=\"c\"\r\n\r\n",
		"GET /sse?uid=a HTTP/1.1\r\n\r\n",
		"GET /poll?uid=a HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
		"GET /ws?uid=a HTTP/1.1\r\nHost: a\r\nOrigin : x\r\n\r\n",
		"GET /sse?uid=a FOO/1.1\r\nHost: a\r\n\r\n",
		"GET /ws?uid=a HTTP/2.0\r\nHost: a\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	routers := []*Router{
		{key: keySource{kind: "url_param", name: "uid"}},
		{key: keySource{kind: "hdr", name: "X-User-Id"}},
		{key: keySource{kind: "cookie", name: "uid"}},
	}
	f.Fuzz(func(t *testing.T, head []byte) {
		var want httphead.Request
		perr := httphead.Parse(head, &want)
		for _, r := range routers {
			var req httphead.Request
			key, label, refuse := r.extractKey(head, &req)
			if perr != nil {
				if refuse == nil || refuse.Status != perr.(*httphead.Error).Status || label != rejBadRequest {
					t.Fatalf("%s: httphead refuses %v, the router %v", r.key.kind, perr, refuse)
				}
				continue
			}
			if refuse != nil {
				if label != rejNoKey || refuse.Status != 400 {
					t.Fatalf("%s: refused a valid head: %s %v", r.key.kind, label, refuse)
				}
				continue
			}
			if !bytes.Contains(head, key) {
				t.Fatalf("%s: key %q is not in the head", r.key.kind, key)
			}
			if r.key.kind == "url_param" {
				uid, _ := httphead.QueryParam(want.Query, "uid")
				viaRing, _ := ring.URLParam(want.Target, "uid")
				if !bytes.Equal(key, uid) || !bytes.Equal(key, viaRing) {
					t.Fatalf("router key %q, edge uid %q, ring.URLParam %q", key, uid, viaRing)
				}
			}
		}
	})
}
