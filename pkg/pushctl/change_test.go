package pushctl_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pushcluster/push/pkg/pushctl"
	"github.com/pushcluster/push/pkg/ring"
	"github.com/pushcluster/push/pkg/store"
)

func twoMembers() *ring.Document {
	return &ring.Document{Version: 1, Algorithm: ring.AlgorithmBounded, Members: []ring.Member{
		{ID: 1, Name: "e1", WS: "127.0.0.1:1001", GRPC: "127.0.0.1:2001", Weight: 1, State: ring.StateActive},
		{ID: 2, Name: "e2", WS: "127.0.0.1:1002", GRPC: "127.0.0.1:2002", Weight: 1, State: ring.StateActive},
	}}
}

// Simulate's figures are the ones "ring simulate" prints, and its
// per-member key counts add up.
func TestSimulate(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ring.json")
	st, err := store.OpenFile(path, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := st.CompareAndSwap(context.Background(), 0, twoMembers(), false); err != nil {
		t.Fatal(err)
	}
	sim, err := pushctl.Simulate(twoMembers(), []pushctl.Change{{Op: pushctl.OpWeight, ID: 1, Weight: 3}}, 20000)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	sim.Print(&b)
	if out := mustRun(t, path, "simulate", "--weight", "1=3", "--keys", "20000"); out != b.String() {
		t.Fatalf("Print:\n%s\nring simulate:\n%s", b.String(), out)
	}
	out, in, owned := 0, 0, 0
	for _, m := range sim.Members {
		out, in, owned = out+m.KeysOut, in+m.KeysIn, owned+m.KeysBefore
	}
	if out != sim.Moved || in != sim.Moved || owned != sim.Keys || sim.Moved == 0 || sim.NextVersion != 2 {
		t.Fatalf("moved %d, out %d, in %d, owned %d of %d keys", sim.Moved, out, in, owned, sim.Keys)
	}
	for _, bad := range [][]pushctl.Change{nil, {{Op: pushctl.OpDrain, ID: 9}}, {{Op: "explode"}}, {{Op: pushctl.OpDrain, ID: 1}, {Op: pushctl.OpDrain, ID: 2}}} {
		if _, err := pushctl.Simulate(twoMembers(), bad, 100); !errors.Is(err, pushctl.ErrRefused) {
			t.Errorf("%+v: %v, want a refusal", bad, err)
		}
	}
}

func TestCheckEdit(t *testing.T) {
	d := twoMembers()
	for _, tc := range []struct {
		changes []pushctl.Change
		refused string
	}{
		{[]pushctl.Change{{Op: pushctl.OpDrain, ID: 2}}, ""},
		{[]pushctl.Change{{Op: pushctl.OpDrain, ID: 2}, {Op: pushctl.OpRemove, ID: 2}}, ""},
		{[]pushctl.Change{{Op: pushctl.OpDrain, ID: 2}, {Op: pushctl.OpDrain, ID: 1}}, "last active member"},
		{[]pushctl.Change{{Op: pushctl.OpDrain, ID: 2}, {Op: pushctl.OpDrain, ID: 2}}, "already draining"},
		{[]pushctl.Change{{Op: pushctl.OpRemove, ID: 1}}, "drain it first"},
		{[]pushctl.Change{{Op: pushctl.OpWeight, ID: 1, Weight: 1}}, "already has weight 1"},
		{[]pushctl.Change{{Op: pushctl.OpWeight, ID: 1, Weight: 300}}, "want 1..256"},
		{[]pushctl.Change{{Op: pushctl.OpWeight, ID: 7, Weight: 2}}, "no member with id 7"},
	} {
		err := pushctl.CheckEdit(d, tc.changes)
		if tc.refused == "" && err != nil || tc.refused != "" && (!errors.Is(err, pushctl.ErrRefused) || !strings.Contains(err.Error(), tc.refused)) {
			t.Errorf("%+v: %v, want %q", tc.changes, err, tc.refused)
		}
	}
}

// Edit writes with a compare-and-swap on the version given, and asks the
// cluster before adding or removing unless forced.
func TestEdit(t *testing.T) {
	st, err := store.OpenFile(filepath.Join(t.TempDir(), "ring.json"), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx := context.Background()
	if err := st.CompareAndSwap(ctx, 0, twoMembers(), false); err != nil {
		t.Fatal(err)
	}
	opt := pushctl.EditOptions{Keys: 1000, ProbeTimeout: 300 * time.Millisecond}
	drain := []pushctl.Change{{Op: pushctl.OpDrain, ID: 2}}
	if _, err := pushctl.Edit(ctx, st, 7, drain, opt); !errors.Is(err, store.ErrVersionConflict) {
		t.Fatalf("stale version: %v", err)
	}
	sim, err := pushctl.Edit(ctx, st, 1, drain, opt)
	if err != nil || sim.NextVersion != 2 {
		t.Fatalf("drain: %+v %v", sim, err)
	}
	if _, err := pushctl.Edit(ctx, st, 1, []pushctl.Change{{Op: pushctl.OpWeight, ID: 1, Weight: 2}}, opt); !errors.Is(err, store.ErrVersionConflict) {
		t.Fatalf("the version drained from: %v", err)
	}
	remove := []pushctl.Change{{Op: pushctl.OpRemove, ID: 2}}
	if _, err := pushctl.Edit(ctx, st, 2, remove, opt); !errors.Is(err, pushctl.ErrRefused) {
		t.Fatalf("remove without a way to count connections: %v", err)
	}
	opt.Connections = func(context.Context, uint32) (int64, error) { return 3, nil }
	if _, err := pushctl.Edit(ctx, st, 2, remove, opt); !errors.Is(err, pushctl.ErrRefused) || !strings.Contains(err.Error(), "3 connection") {
		t.Fatalf("remove while it holds users: %v", err)
	}
	added := ring.Member{ID: 3, Name: "e3", WS: "127.0.0.1:1003", GRPC: closedAddr(t), Weight: 1, State: ring.StateActive}
	add := []pushctl.Change{{Op: pushctl.OpAdd, Member: &added}}
	if _, err := pushctl.Edit(ctx, st, 2, add, opt); !errors.Is(err, pushctl.ErrRefused) || !strings.Contains(err.Error(), "health check") {
		t.Fatalf("add with its edge down: %v", err)
	}
	if d, _ := st.Load(ctx); d.Version != 2 {
		t.Fatalf("refused edits wrote version %d", d.Version)
	}
	opt.Force = true
	if _, err := pushctl.Edit(ctx, st, 2, remove, opt); err != nil {
		t.Fatalf("forced remove: %v", err)
	}
	if _, err := pushctl.Edit(ctx, st, 3, add, opt); err != nil {
		t.Fatalf("forced add: %v", err)
	}
	if d, _ := st.Load(ctx); d.Version != 4 || len(d.Members) != 2 || d.Members[1].ID != 3 {
		t.Fatalf("after the forced edits: %+v", d)
	}
}
