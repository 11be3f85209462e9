package auth

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Rotation without dropping anyone: the edge accepts the current and the
// next secret at once, and picks up file changes while it runs.
func TestKeyFilesRotation(t *testing.T) {
	dir := t.TempDir()
	oldKey := []byte(strings.Repeat("o", 40))
	newKey := []byte(strings.Repeat("n", 40))
	cur, next := filepath.Join(dir, "current"), filepath.Join(dir, "next")
	os.WriteFile(cur, oldKey, 0o600)
	os.WriteFile(next, newKey, 0o600)
	files := ParseKeyFiles(cur+","+next, "")
	k, err := files.Load()
	if err != nil {
		t.Fatal(err)
	}
	tokOld, _ := Mint(oldKey, "u", time.Hour, time.Time{})
	tokNew, _ := Mint(newKey, "u", time.Hour, time.Time{})
	if k.Verify(tokOld, "u") != nil || k.Verify(tokNew, "u") != nil {
		t.Fatal("both secrets must be accepted during a rotation")
	}
	forged, _ := Mint([]byte(strings.Repeat("x", 40)), "u", time.Hour, time.Time{})
	if k.Verify(forged, "u") == nil {
		t.Fatal("a third secret was accepted")
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go files.Watch(ctx, k, 10*time.Millisecond, slog.New(slog.NewTextHandler(io.Discard, nil)))
	// The rotation ends: the new secret becomes current, the old one goes.
	os.WriteFile(cur, newKey, 0o600)
	os.WriteFile(next, newKey, 0o600)
	deadline := time.Now().Add(10 * time.Second)
	for k.Verify(tokOld, "u") == nil {
		if time.Now().After(deadline) {
			t.Fatal("the retired secret is still accepted after the files changed")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if k.Verify(tokNew, "u") != nil {
		t.Fatal("the new secret is refused")
	}
	// An extra secret file that is absent (no rotation going on) is fine.
	if _, err := ParseKeyFiles(cur+","+filepath.Join(dir, "absent"), "").Load(); err != nil {
		t.Fatalf("absent extra secret: %v", err)
	}
	// A broken file keeps the keys in use.
	os.WriteFile(cur, []byte("short"), 0o600)
	time.Sleep(50 * time.Millisecond)
	if k.Verify(tokNew, "u") != nil {
		t.Fatal("a bad key file locked users out")
	}
}
