package pushctl_test

import (
	"context"
	"errors"
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
	"github.com/pushcluster/push/pkg/edge"
	"github.com/pushcluster/push/pkg/edge/edgetest"
	"github.com/pushcluster/push/pkg/pushctl"
	"github.com/pushcluster/push/pkg/ring"
	"github.com/pushcluster/push/pkg/store"
)

// pushctl revoke cuts a connected user off an edge that follows the store
// (4001), the old token gets 401 afterwards, and --list shows the
// revocation.
func TestRevokeCutsOffAndLists(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	path := filepath.Join(t.TempDir(), "ring.json")
	st, err := store.OpenFile(path, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	e := edgetest.Start(t, []byte(secret), edge.Config{ID: 1})
	if err := st.CompareAndSwap(ctx, 0, &ring.Document{Version: 1, Algorithm: ring.AlgorithmBounded,
		Members: []ring.Member{e.Member(1, 1)}}, false); err != nil {
		t.Fatal(err)
	}
	m, err := edge.Join(e.Srv, st, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	tok, _ := auth.Mint([]byte(secret), "trudy", time.Hour, time.Now())
	url := fmt.Sprintf("ws://%s/ws?uid=trudy&token=%s", e.WS(), tok)
	c, _, err := websocket.Dial(ctx, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()

	code, out, errOut := run(map[string]string{"PUSH_RING": "file:" + path}, "revoke", "--user", "trudy")
	if code != 0 || !strings.HasPrefix(out, "revoked trudy: tokens issued before ") {
		t.Fatalf("revoke: %d %q %q", code, out, errOut)
	}
	var ce websocket.CloseError
	for {
		if _, _, err = c.Read(ctx); err != nil {
			break
		}
	}
	if !errors.As(err, &ce) || ce.Code != edge.CloseUnauthorized {
		t.Fatalf("connection ended with %v, want close 4001", err)
	}
	_, resp, err := websocket.Dial(ctx, url, nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("old token after revoke: %v %v, want 401", resp, err)
	}

	code, out, _ = run(nil, "revoke", "--ring", path, "--list")
	if lines := strings.Split(strings.TrimSpace(out), "\n"); code != 0 || len(lines) != 2 ||
		!strings.HasPrefix(lines[0], "USER") || !strings.HasPrefix(lines[1], "trudy ") {
		t.Fatalf("list: %d %q", code, out)
	}
}

func TestRevokeFlags(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ring.json")
	for _, args := range [][]string{
		{"revoke", "--ring", path},
		{"revoke", "--ring", path, "--user", "bad id"},
		{"revoke", "--ring", path, "--user", "u", "--before", "yesterday"},
		{"revoke", "--ring", path, "--user", "u", "--max-token-lifetime", "0s"},
		{"revoke", "--ring", path, "--user", "u", "--before", "2000-01-01T00:00:00Z"},
		{"revoke", "--ring", path, "--list", "--user", "u"},
		{"revoke", "--user", "u"},
		{"revoke", "--ring", path, "--user", "u", "--before", "2100-01-02T03:04:05Z"},
	} {
		if code, _, errOut := run(nil, args...); code != pushctl.ExitUsage || errOut == "" {
			t.Errorf("%v: exit %d, stderr %q; want 2 and a message", args, code, errOut)
		}
	}
	before := time.Now().Add(-time.Minute).UTC().Truncate(time.Second)
	code, out, errOut := run(nil, "revoke", "--ring", path, "--user", "u", "--before", before.Format(time.RFC3339), "--max-token-lifetime", "1h")
	want := fmt.Sprintf("revoked u: tokens issued before %s, kept until %s\n", before.Format(time.RFC3339), before.Add(time.Hour).Format(time.RFC3339))
	if code != 0 || out != want {
		t.Fatalf("revoke with --before: %d %q %q, want %q", code, out, errOut, want)
	}
}
