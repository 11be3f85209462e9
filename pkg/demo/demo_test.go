package demo_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/pushcluster/push/pkg/auth"
	"github.com/pushcluster/push/pkg/client"
	"github.com/pushcluster/push/pkg/demo"
	"github.com/pushcluster/push/pkg/edge"
	"github.com/pushcluster/push/pkg/edge/edgetest"
	"github.com/pushcluster/push/pkg/ring"
	"github.com/pushcluster/push/pkg/store"
)

var secret = []byte("demo-test-secret-demo-test-secret-demo!!")

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// liveEdge runs one edge following a one-member ring in a file store and
// returns it with an SDK client following the same store.
func liveEdge(t *testing.T) (*edge.Server, *client.Client) {
	e := edgetest.Start(t, secret, edge.Config{ID: 7, Dev: true, DrainPeriod: 100 * time.Millisecond})
	srv := e.Srv
	st, err := store.Open("file:"+filepath.Join(t.TempDir(), "ring.json"), quiet())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	doc := &ring.Document{Version: 1, Algorithm: ring.AlgorithmBounded, Members: []ring.Member{e.Member(7, 1)}}
	if err := st.CompareAndSwap(ctx, 0, doc, false); err != nil {
		t.Fatal(err)
	}
	r, err := edge.DesiredRing(ctx, st)
	if err != nil {
		t.Fatal(err)
	}
	srv.SetRing(r)
	sdk, err := client.New(ctx, st, client.WithLogger(quiet()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		sdk.Close()
		st.Close()
	})
	return srv, sdk
}

type served struct{ URL string }

// newServer runs a demo server on a loopback port until the test ends.
func newServer(t *testing.T, c demo.Config) served {
	if c.WSURL == "" {
		c.WSURL = "ws://127.0.0.1:1/ws"
	}
	c.Listen = "127.0.0.1:0"
	s, err := demo.New(c)
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.Shutdown(ctx)
	})
	return served{URL: "http://" + s.Addr().String()}
}

func post(t *testing.T, url, ctype, body string) (int, map[string]any) {
	t.Helper()
	res, err := http.Post(url, ctype, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var v map[string]any
	json.NewDecoder(res.Body).Decode(&v)
	return res.StatusCode, v
}

func get(t *testing.T, url string) (int, http.Header, string) {
	t.Helper()
	res, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, res.Header, string(b)
}

func TestStaticAndConfig(t *testing.T) {
	h := newServer(t, demo.Config{WSURL: "ws://127.0.0.1:8080/ws"})
	code, hdr, body := get(t, h.URL+"/")
	if code != 200 || !strings.Contains(body, `src="/demo/demo.js"`) || !strings.HasPrefix(hdr.Get("Content-Type"), "text/html") {
		t.Fatalf("GET /: %d %s", code, hdr.Get("Content-Type"))
	}
	for _, p := range []string{"/push.js", "/push-worker.js", "/demo/demo.js"} {
		code, hdr, body := get(t, h.URL+p)
		// Module scripts and workers need a JavaScript MIME type.
		if code != 200 || !strings.HasPrefix(hdr.Get("Content-Type"), "text/javascript") || len(body) == 0 {
			t.Errorf("GET %s: %d %q", p, code, hdr.Get("Content-Type"))
		}
	}
	if code, _, _ := get(t, h.URL+"/demo/demo.css"); code != 200 {
		t.Errorf("GET /demo/demo.css: %d", code)
	}
	if code, _, _ := get(t, h.URL+"/nope.js"); code != 404 {
		t.Errorf("GET /nope.js: %d", code)
	}
	code, _, body = get(t, h.URL+"/config")
	var cfg struct {
		WSURL string `json:"ws_url"`
		Dev   bool   `json:"dev"`
	}
	if err := json.Unmarshal([]byte(body), &cfg); err != nil || code != 200 || cfg.WSURL != "ws://127.0.0.1:8080/ws" || cfg.Dev {
		t.Fatalf("GET /config: %d %s", code, body)
	}
}

func TestDevEndpointsNeedDev(t *testing.T) {
	h := newServer(t, demo.Config{})
	for _, p := range []string{"/token", "/publish"} {
		// GET / catches other methods' paths as files: not found either way.
		if code, _ := post(t, h.URL+p, "application/json", `{"uid":"alice"}`); code != http.StatusNotFound && code != http.StatusMethodNotAllowed {
			t.Errorf("POST %s without --dev: %d", p, code)
		}
	}
	if _, err := demo.New(demo.Config{Listen: "127.0.0.1:0", WSURL: "ws://x/ws", Dev: true}); err == nil {
		t.Error("--dev without a secret accepted")
	}
}

func TestToken(t *testing.T) {
	h := newServer(t, demo.Config{Dev: true, Secret: secret, TokenTTL: time.Minute})
	code, v := post(t, h.URL+"/token", "application/json", `{"uid":"alice"}`)
	if code != 200 {
		t.Fatalf("POST /token: %d %v", code, v)
	}
	verifier, _ := auth.NewVerifier(auth.Config{HMACSecret: secret})
	tok, _ := v["token"].(string)
	if err := verifier.Verify(tok, "alice"); err != nil {
		t.Fatalf("minted token does not verify: %v", err)
	}
	if err := verifier.Verify(tok, "bob"); err == nil {
		t.Fatal("alice's token verifies for bob")
	}
	for _, c := range []struct{ ctype, body string }{
		{"application/json", `{"uid":"al ice"}`},
		{"application/json", `{"uid":""}`},
		{"application/json", `not json`},
		{"text/plain", `{"uid":"alice"}`}, // a cross-site form cannot send JSON
		{"application/json", `{"uid":"` + strings.Repeat("a", 2000) + `"}`},
	} {
		if code, _ := post(t, h.URL+"/token", c.ctype, c.body); code < 400 || code >= 500 {
			t.Errorf("POST /token %s %.40s: %d, want 4xx", c.ctype, c.body, code)
		}
	}
}

// TestPublishReachesBrowser publishes through /publish (the SDK following a
// real ring) to a WebSocket connected to a real edge with a token from
// /token.
func TestPublishReachesBrowser(t *testing.T) {
	srv, sdk := liveEdge(t)
	wsURL := "ws://" + srv.Addr().String() + "/ws"
	h := newServer(t, demo.Config{Dev: true, Secret: secret, Publisher: sdk, WSURL: wsURL})

	_, v := post(t, h.URL+"/token", "application/json", `{"uid":"alice"}`)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, fmt.Sprintf("%s?uid=alice&token=%s", wsURL, v["token"]),
		&websocket.DialOptions{HTTPHeader: http.Header{"Origin": {"http://demo.example"}}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	for srv.Presence("alice") != 1 {
		time.Sleep(10 * time.Millisecond)
	}

	code, res := post(t, h.URL+"/publish", "application/json", `{"user":"alice","data":{"hello":"world"}}`)
	if code != 200 || res["outcome"] != "DELIVERED" || res["seq"] != float64(1) || res["edge"] != float64(7) {
		t.Fatalf("POST /publish: %d %v", code, res)
	}
	_, b, err := c.Read(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ep, _ := res["epoch"].(string)
	if ep == "" || string(b) != `{"seq":1,"epoch":"`+ep+`","data":{"hello":"world"}}` {
		t.Fatalf("frame %s, answer %v", b, res)
	}
	// A JSON string arrives as that string.
	post(t, h.URL+"/publish", "application/json", `{"user":"alice","data":"hi there"}`)
	if _, b, _ = c.Read(ctx); string(b) != `{"seq":2,"epoch":"`+ep+`","data":"hi there"}` {
		t.Fatalf("frame %s", b)
	}
	// Stored for a user who is not connected.
	if code, res = post(t, h.URL+"/publish", "application/json", `{"user":"bob","data":1}`); code != 200 || res["outcome"] != "STORED" {
		t.Fatalf("POST /publish to bob: %d %v", code, res)
	}
	for _, body := range []string{`{"user":"bad user","data":1}`, `{"user":"alice"}`, `{"user":"alice","data":null}`} {
		if code, _ := post(t, h.URL+"/publish", "application/json", body); code != http.StatusBadRequest {
			t.Errorf("POST /publish %s: %d, want 400", body, code)
		}
	}
}

func TestPublishWithoutPublisher(t *testing.T) {
	h := newServer(t, demo.Config{Dev: true, Secret: secret})
	if code, _ := post(t, h.URL+"/publish", "application/json", `{"user":"alice","data":1}`); code != http.StatusServiceUnavailable {
		t.Fatalf("POST /publish: %d, want 503", code)
	}
}

// TestServeShutdown runs the server on its own listener and stops it.
func TestServeShutdown(t *testing.T) {
	s, err := demo.New(demo.Config{Listen: "127.0.0.1:0", WSURL: "ws://x/ws"})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve() }()
	if code, _, _ := get(t, "http://"+s.Addr().String()+"/config"); code != 200 {
		t.Fatalf("GET /config: %d", code)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Serve after Shutdown: %v", err)
	}
}
