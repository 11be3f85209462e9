package evloop

import (
	"strings"
	"testing"
	"time"
)

// TestMonotonicDeadline: a deadline given as Unix
// nanoseconds (no monotonic reading) is armed with now's monotonic clock,
// the same distance ahead, so the timing wheel (which advances by the
// monotonic clock) does not measure it by a wall clock that may have been
// stepped since the edge started.
func TestMonotonicDeadline(t *testing.T) {
	now := time.Now()
	wall := time.Unix(0, now.UnixNano()+int64(25*time.Second))
	if strings.Contains(wall.String(), "m=") {
		t.Fatalf("time.Unix kept a monotonic reading: %v", wall)
	}
	at := monotonic(now, wall)
	if !strings.Contains(at.String(), "m=") {
		t.Fatalf("monotonic(now, %v) = %v: no monotonic reading", wall, at)
	}
	if d := at.Sub(now); d != 25*time.Second {
		t.Fatalf("deadline %v after now, want 25s", d)
	}
	// A time that has a monotonic reading keeps its distance.
	if d := monotonic(now, now.Add(time.Second)).Sub(now); d != time.Second {
		t.Fatalf("monotonic(now, now+1s) is %v after now", d)
	}
}
