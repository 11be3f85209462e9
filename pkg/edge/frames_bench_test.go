package edge

import (
	"testing"

	"golang.org/x/sys/unix"

	"github.com/pushcluster/push/pkg/wire"
)

// BenchmarkClientFrames is the edge's cost to read what an open WebSocket
// client sends on the hot path, through the protocol machine: a read with
// a pong (what a browser sends for every heartbeat) and a 100-byte text
// message that is not a token renewal. Neither allocates.
func BenchmarkClientFrames(b *testing.B) {
	s := fuzzServer(b)
	l := s.loops[0]
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Close(fds[1])
	c := &conn{fd: int32(fds[0]), gen: s.table.Gen(), state: stOpen, kind: kindWS}
	c.m.Accept(&s.wire, wire.WebSocket, false, 1)
	c.tm.Value = c
	s.table.Store(fds[0], c)
	s.open.Add(1)
	text := []byte(`{"note":"0123456789012345678901234567890123456789012345678901234567890123456789"}`)
	in := append([]byte{0x8a, 0x80, 0, 0, 0, 0}, 0x81, 0x80|byte(len(text)), 0, 0, 0, 0)
	in = append(in, text...)
	buf := make([]byte, len(in))
	c.mu.Lock()
	defer c.mu.Unlock()
	b.ReportAllocs()
	b.SetBytes(int64(len(in)))
	for i := 0; i < b.N; i++ {
		copy(buf, in)
		if used := l.feedLocked(c, buf, int64(i)); used != len(buf) || c.state != stOpen {
			b.Fatalf("used %d of %d, state %d", used, len(buf), c.state)
		}
	}
}
