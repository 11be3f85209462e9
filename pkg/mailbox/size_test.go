package mailbox

import (
	"testing"
	"unsafe"
)

// Every connected user has a Box (its stream's epoch lives there), so its
// size is part of the idle cost per connection (target ≤ 512 B in all,
// bench/README.md). The rarely used fields live behind Box.extra.
func TestBoxSize(t *testing.T) {
	if got := unsafe.Sizeof(Box{}); got > 96 {
		t.Fatalf("Box is %d bytes, want at most 96 (the 96-byte size class)", got)
	}
	b := New(8, "e.1")
	if b.extra != nil {
		t.Fatal("a new box allocated its extra fields")
	}
	b.Resume(nil, 0, false, 1)
	b.Expire(2)
	if b.extra != nil {
		t.Fatal("resume and expire of an empty box allocated its extra fields")
	}
}
