package registry

import (
	"testing"
	"unsafe"
)

// Every connected user has a User, so its size is part of the idle cost per
// connection (target ≤ 512 B in all, bench/README.md).
func TestUserSize(t *testing.T) {
	if got := unsafe.Sizeof(User[*int]{}); got > 48 {
		t.Fatalf("User is %d bytes, want at most 48 (the 48-byte size class)", got)
	}
}
