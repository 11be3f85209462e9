package admin

import (
	"context"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
)

func request(t *testing.T, url, token string) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func drainRoute(drained *int) map[string]http.Handler {
	return map[string]http.Handler{"/drain": http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { *drained++ })}
}

// The mutating and costly routes need the admin token; probes and metrics
// do not.
func TestAdminTokenGuardsDrainAndPprof(t *testing.T) {
	file := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(file, []byte("s3cret-admin-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	drained := 0
	_, base := start(t, Config{Auth: Auth{TokenFile: file}, Extra: drainRoute(&drained)})
	for _, tc := range []struct {
		path, token string
		want        int
	}{
		{"/drain", "", http.StatusUnauthorized},
		{"/drain", "wrong", http.StatusUnauthorized},
		{"/drain", "s3cret-admin-token-and-more", http.StatusUnauthorized},
		{"/debug/pprof/", "", http.StatusUnauthorized},
		{"/debug/pprof/cmdline", "wrong", http.StatusUnauthorized},
		{"/healthz", "", http.StatusOK},
		{"/readyz", "", http.StatusOK},
		{"/metrics", "", http.StatusOK},
		{"/debug/pprof/cmdline", "s3cret-admin-token", http.StatusOK},
		{"/drain", "s3cret-admin-token", http.StatusOK},
	} {
		if got := request(t, base+tc.path, tc.token); got != tc.want {
			t.Errorf("%s with token %q: %d, want %d", tc.path, tc.token, got, tc.want)
		}
	}
	if drained != 1 {
		t.Fatalf("/drain ran %d times, want once (with the token only)", drained)
	}
	// A rotated token file applies at once.
	if err := os.WriteFile(file, []byte("next-token"), 0o600); err != nil {
		t.Fatal(err)
	}
	if request(t, base+"/drain", "s3cret-admin-token") != http.StatusUnauthorized || request(t, base+"/drain", "next-token") != http.StatusOK {
		t.Fatal("the rotated token file was not applied")
	}
}

// Without a token, guarded routes are served on a loopback port only.
func TestNoAdminTokenServesGuardedRoutesOnLoopbackOnly(t *testing.T) {
	drained := 0
	_, base := start(t, Config{Extra: drainRoute(&drained)})
	if got := request(t, base+"/drain", ""); got != http.StatusOK || drained != 1 {
		t.Fatalf("loopback without a token: %d", got)
	}

	s, err := New(Config{Addr: ":0", Extra: drainRoute(&drained)})
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve()
	defer s.Shutdown(context.Background())
	_, port, _ := net.SplitHostPort(s.Addr().String())
	wild := "http://127.0.0.1:" + port
	if got := request(t, wild+"/drain", ""); got != http.StatusForbidden || drained != 1 {
		t.Fatalf("all interfaces without a token: /drain %d", got)
	}
	if got := request(t, wild+"/debug/pprof/", "anything"); got != http.StatusForbidden {
		t.Fatalf("all interfaces without a token: pprof %d", got)
	}
	if got := request(t, wild+"/metrics", ""); got != http.StatusOK {
		t.Fatalf("all interfaces without a token: /metrics %d", got)
	}
}

// Without a token, a loopback admin port still refuses what a browser marks
// as cross-site (a page the operator has open pointing an <img> at /drain).
func TestNoAdminTokenRefusesCrossSiteBrowserRequests(t *testing.T) {
	drained := 0
	_, base := start(t, Config{Extra: drainRoute(&drained)})
	for _, h := range []map[string]string{
		{"Sec-Fetch-Site": "cross-site"},
		{"Sec-Fetch-Site": "same-site"},
		{"Origin": "http://evil.example"},
	} {
		req, _ := http.NewRequest(http.MethodGet, base+"/drain", nil)
		for k, v := range h {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden || drained != 0 {
			t.Fatalf("%v: %d (drained %d), want 403", h, resp.StatusCode, drained)
		}
	}
	if got := request(t, base+"/drain", ""); got != http.StatusOK || drained != 1 {
		t.Fatalf("a tool's request: %d", got)
	}
}
