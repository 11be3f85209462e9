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

// The admin token is asked for on every change (TokenSource), so a rotated
// token applies at once: the old one is refused, the new one accepted.
func TestAdminTokenRotationAppliesAtOnce(t *testing.T) {
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
	var current atomic.Value
	current.Store("first-admin-token")
	cons, err := console.New(console.Config{Follower: f, Logger: quiet(),
		TokenSource: func() (string, error) { return current.Load().(string), nil }})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	for p, h := range cons.Routes() {
		mux.Handle(p, h)
	}
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
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
