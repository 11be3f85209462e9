package edge

import (
	"testing"
	"unsafe"
)

// An idle connection's struct stays in the 128-byte size class with the
// token's exp and iat in it (112 bytes before them).
func TestConnSize(t *testing.T) {
	if got := unsafe.Sizeof(conn{}); got > 128 {
		t.Fatalf("conn is %d bytes, over the 128-byte size class", got)
	}
}
