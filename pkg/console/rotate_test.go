package console_test

import (
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pushcluster/push/pkg/console"
	"github.com/pushcluster/push/pkg/ring"
	"github.com/pushcluster/push/pkg/store"
)

// lightConsole serves a console over a one-member file ring, without
// edges or router, with the admin token TokenSource gives.
func lightConsole(t *testing.T, token func() (string, error)) *httptest.Server {
	t.Helper()
	st, err := store.OpenFile(filepath.Join(t.TempDir(), "ring.json"), quiet())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	d := &ring.Document{Version: 1, Algorithm: ring.AlgorithmBounded,
		Members: []ring.Member{{ID: 1, Name: "edge-1", WS: "127.0.0.1:1", GRPC: "127.0.0.1:2", Weight: 1}}}
	if err := st.CompareAndSwap(ctxT(t, 5*time.Second), 0, d, false); err != nil {
		t.Fatal(err)
	}
	f, err := store.Follow(ctxT(t, 10*time.Second), st, store.FollowOptions{Log: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Close)
	cons, err := console.New(console.Config{Follower: f, Logger: quiet(), TokenSource: token})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	for p, h := range cons.Routes() {
		mux.Handle(p, h)
	}
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

// The admin token is asked for on every change (TokenSource), so a rotated
// token applies at once: the old one is refused, the new one accepted.
func TestAdminTokenRotationAppliesAtOnce(t *testing.T) {
	var current atomic.Value
	current.Store("first-admin-token")
	srv := lightConsole(t, func() (string, error) { return current.Load().(string), nil })
	// A malformed body is refused with 400 only once the token passed.
	apply := func(tok string) int {
		req, _ := http.NewRequest(http.MethodPost, srv.URL+"/api/v1/ring/apply", strings.NewReader("{bad"))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "bearer "+tok) // the scheme is case-insensitive
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if got := apply("first-admin-token"); got != http.StatusBadRequest {
		t.Fatalf("first token: %d, want 400 (accepted, then the body refused)", got)
	}
	current.Store("rotated-admin-token")
	if got := apply("first-admin-token"); got != http.StatusForbidden {
		t.Fatalf("old token after the rotation: %d, want 403", got)
	}
	if got := apply("rotated-admin-token"); got != http.StatusBadRequest {
		t.Fatalf("rotated token: %d, want 400", got)
	}
}

// A change body over 64 KiB is 413, data after the JSON object 400, both
// before anything is read from the store.
func TestChangeBodyLimits(t *testing.T) {
	srv := lightConsole(t, func() (string, error) { return "", nil })
	post := func(body string) int {
		resp, err := http.Post(srv.URL+"/api/v1/ring/preview", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	valid := `{"changes":[{"op":"weight","id":1,"weight":2}]}`
	if got := post(valid); got != http.StatusOK {
		t.Fatalf("valid preview: %d", got)
	}
	if got := post(valid + ` {"x":1}`); got != http.StatusBadRequest {
		t.Fatalf("trailing data: %d, want 400", got)
	}
	if got := post(`{"changes":[` + strings.Repeat(" ", 70<<10) + `]}`); got != http.StatusRequestEntityTooLarge {
		t.Fatalf("70 KiB body: %d, want 413", got)
	}
}
