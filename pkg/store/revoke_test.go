package store_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pushcluster/push/pkg/store"
	"github.com/pushcluster/push/pkg/store/etcdtest"
)

// testRevoker: revocations are stored, merged per user (later before and
// later expires win), listed sorted, and forgotten once expired.
func testRevoker(t *testing.T, rv store.Revoker) {
	ctx := cctx(t)
	now := time.Now().Truncate(time.Second)
	must := func(r store.Revocation) {
		t.Helper()
		if err := rv.Revoke(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	must(store.Revocation{User: "bob", Before: now, Expires: now.Add(time.Hour)})
	must(store.Revocation{User: "alice", Before: now.Add(-time.Minute), Expires: now.Add(2 * time.Second)})
	must(store.Revocation{User: "bob", Before: now.Add(-time.Hour), Expires: now.Add(2 * time.Hour)})
	list, err := rv.Revocations(ctx, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].User != "alice" || list[1].User != "bob" {
		t.Fatalf("revocations %+v, want alice then bob", list)
	}
	if b := list[1]; !b.Before.Equal(now) || !b.Expires.Equal(now.Add(2*time.Hour)) {
		t.Fatalf("bob merged to %+v, want before %v and expires %v", b, now, now.Add(2*time.Hour))
	}
	// Past alice's expiry only bob is in force.
	list, err = rv.Revocations(ctx, now.Add(3*time.Second))
	if err != nil || len(list) != 1 || list[0].User != "bob" {
		t.Fatalf("after alice's expiry: %+v %v", list, err)
	}
	for _, bad := range []store.Revocation{
		{User: "bad id", Before: now, Expires: now.Add(time.Hour)},
		{User: "carol", Expires: now.Add(time.Hour)},
		{User: "carol", Before: now, Expires: now},
	} {
		if err := rv.Revoke(ctx, bad); !errors.Is(err, store.ErrInvalidRevocation) {
			t.Errorf("%+v: %v, want ErrInvalidRevocation", bad, err)
		}
	}
}

func TestFileRevocations(t *testing.T) {
	dir := t.TempDir()
	f, err := store.OpenFile(filepath.Join(dir, "ring.json"), quiet())
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if list, err := f.Revocations(cctx(t), time.Now()); err != nil || len(list) != 0 {
		t.Fatalf("no file yet: %+v %v", list, err)
	}
	testRevoker(t, f)
	if f.RevocationsPath() != filepath.Join(dir, "ring.json.revoked") {
		t.Fatalf("revocations at %s", f.RevocationsPath())
	}
	// A write drops what has expired.
	now := time.Now()
	if err := f.Revoke(cctx(t), store.Revocation{User: "old", Before: now.Add(-time.Hour), Expires: now.Add(time.Millisecond)}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(5 * time.Millisecond)
	if err := f.Revoke(cctx(t), store.Revocation{User: "dave", Before: now, Expires: now.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(f.RevocationsPath())
	if strings.Contains(string(data), `"old"`) || !strings.Contains(string(data), `"dave"`) {
		t.Fatalf("file after a write: %s", data)
	}
	// A file that does not parse is reported and never overwritten.
	os.WriteFile(f.RevocationsPath(), []byte("{not json"), 0o644)
	if _, err := f.Revocations(cctx(t), now); err == nil || !strings.Contains(err.Error(), "ring.json.revoked") {
		t.Fatalf("corrupt file read: %v", err)
	}
	if err := f.Revoke(cctx(t), store.Revocation{User: "erin", Before: now, Expires: now.Add(time.Hour)}); err == nil {
		t.Fatal("a corrupt revocations file was overwritten")
	}
}

func TestEtcdRevocations(t *testing.T) {
	srv := etcdtest.Start(t)
	e := openEtcd(t, srv)
	testRevoker(t, e)
	// The key carries a lease ending at expires: etcd deletes it.
	now := time.Now()
	if err := e.Revoke(cctx(t), store.Revocation{User: "brief", Before: now, Expires: now.Add(time.Second)}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		list, err := e.RawRevocations(cctx(t))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(strings.Join(list, ","), "brief") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("etcd kept an expired revocation's key")
		}
		time.Sleep(100 * time.Millisecond)
	}
}
